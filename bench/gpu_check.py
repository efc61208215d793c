"""The GPU check: is conflux at scale what the memory plan and the CPU tests say? One JSON on stdout.

    bash bench/gpu_check.sh                 # one GPU machine, offline: a random ~1B Llama, max length 1024
    bash bench/gpu_check.sh --cpu --tiny    # the same code paths on a tiny model and CPU (run by the tests)

1. LoRA DPO steps, conflux's PreferenceTrainer against TRL's DPOTrainer on the same model, pairs, batch and
   cached reference (bench/dpo_step.py): tokens/s of each and their ratio, the MFU of ours (model FLOPs per
   second over the GPU's dense bf16 peak), and torch's peak allocated memory against the memory plan's
   estimate of that job (conflux.plan, its components but the fixed CUDA overhead).
2. A full fine-tuning step under FSDP2 and bf16_mixed (fp32 master weights) through conflux's TRL SFT job,
   launched by torchrun on every GPU (on --cpu: 2 gloo ranks), with its peak memory against the plan.

Random weights and the bundled corpus's prompts repeated to the max length: no hub, no network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

# Dense bf16 peak FLOP/s of the GPUs a cluster is likely to have (vendor figures, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A40": 150e12}
TINY = {"hidden": 64, "layers": 2, "vocab": 1024, "max_length": 128, "batch": 4, "steps": 4}
ONE_B = {"hidden": 2048, "layers": 20, "vocab": 32000, "max_length": 1024, "batch": 4, "steps": 10}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def long_pairs(pairs, tokenizer, max_length: int):
    """The pairs with prompts of about 3/4 of the max length (the synthetic prompts are a sentence long)."""
    import pyarrow as pa

    table = pairs.table
    prompts = table.column("prompt").to_pylist()
    per = max(1, len(tokenizer(prompts[0])["input_ids"]))
    repeat = max(1, (max_length * 3 // 4) // per)
    longer = [" ".join(prompts[(i + j) % len(prompts)] for j in range(repeat)) for i in range(len(prompts))]
    index = table.schema.get_field_index("prompt")
    return replace(pairs, table=table.set_column(index, "prompt", pa.array(longer, pa.string())))


def model_flops_per_token(config, max_length: int) -> float:
    """Training FLOPs per token of a LoRA step: forward (2N + attention 4·L·T·H) and the backward to the
    inputs (as much again); the frozen weights get no gradient (6N would count one)."""
    n = sum(p.numel() for p in _meta_model(config).parameters())
    attention = 4 * config.num_hidden_layers * max_length * config.hidden_size
    return 2 * (2 * n + attention)


def _meta_model(config):
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(config)


def plan_bytes(config, rule: str, cfg, world: int) -> int:
    """The memory plan's estimate of a job on this model, without the fixed CUDA overhead (which torch's
    allocated-memory peak does not see)."""
    from conflux.plan.arch import Arch
    from conflux.plan.memory import training_estimate

    arch = Arch.from_dict(config.to_dict(), "check model")
    parts = training_estimate(arch, cfg, rule, k=1, shared=True, world=world, gpu=torch.cuda.is_available())
    return sum(v for k, v in parts.components.items() if k != "overhead")


def lora_dpo(args, model_dir, tokenizer, pairs) -> dict:
    from dpo_step import adapter_init, run_ours, run_trl, token_rows
    from transformers import AutoConfig

    from conflux.training.config import TrainConfig

    config = AutoConfig.from_pretrained(model_dir)
    init = adapter_init(model_dir)  # both sides start from the same adapter and see the same token rows
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    ours = run_ours(args, model_dir, tokenizer, pairs, init, online=False)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    trl = run_trl(args, model_dir, tokenizer, token_rows(tokenizer, pairs, args), init, online=False)
    ours_s, tokens, trl_s = ours["runtime"], ours["tokens"], trl["runtime"]
    cfg = TrainConfig(
        finetune="lora",
        precision="bf16_mixed" if args.device == "cuda" else "fp32",
        per_device_batch_size=args.batch,
        max_length=args.max_length,
    )
    flops = model_flops_per_token(config, args.max_length) * tokens / ours_s
    peak_gpu = peak_flops()
    plan = plan_bytes(config, "curriculum_stage1", cfg, 1)
    return {
        "conflux_tokens_per_s": round(tokens / ours_s),
        "trl_tokens_per_s": round(tokens / trl_s),
        "ratio_conflux_over_trl": round(trl_s / ours_s, 3),
        "model_tflops_per_s": round(flops / 1e12, 2),
        "mfu": round(flops / peak_gpu, 3) if peak_gpu else None,
        "peak_allocated_gib": None if peak is None else round(peak / 2**30, 2),
        "plan_gib": round(plan / 2**30, 2),
        "peak_over_plan": None if peak is None else round(peak / plan, 3),
    }


def fsdp_full(args, model_dir, tokenizer, pairs, work: Path) -> dict:
    """A few FSDP2 full fine-tuning steps, as the sft rule launches them (torchrun, conflux's job)."""
    import pyarrow as pa
    from transformers import AutoConfig

    from conflux.atomic import write_json
    from conflux.data.pairs import SFT_SCHEMA, write_sft
    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job
    from conflux.training.config import TrainConfig
    from conflux.training.launch import job_to_dict, torchrun_command
    from conflux.training.trl_jobs import TrlJob

    ranks = torch.cuda.device_count() if args.device == "cuda" else 2
    rows = pairs.table.slice(0, args.steps * args.batch * ranks).to_pydict()
    n = len(rows["prompt"])
    table = pa.table(
        {"prompt": rows["prompt"], "response": rows["response_a"], "persona": ["p"] * n}, SFT_SCHEMA
    )
    write_sft(work / "sft.parquet", table)
    spec = BaseModelSpec(name="check", source="local", path=str(model_dir), dtype="float32")
    base_model_manifest_job(spec, work / "manifest.json", offline=True)
    cfg = TrainConfig(
        finetune="full",
        distributed="fsdp",
        precision="bf16_mixed" if args.device == "cuda" else "fp32",
        per_device_batch_size=args.batch,
        batch_size=args.batch * ranks,
        max_length=args.max_length,
        max_steps=args.steps,
        learning_rate=1e-5,
        gradient_checkpointing=True,
        save_steps=10**6,
        logging_steps=1,
        save_dtype="bfloat16",
    )
    job = TrlJob(
        method="sft",
        data=work / "sft.parquet",
        manifest=work / "manifest.json",
        out_dir=work / "out",
        work_dir=work / "ckpt",
        cfg=cfg,
        seed=0,
    )
    job.work_dir.mkdir(parents=True)
    write_json(job.work_dir / "job.json", job_to_dict(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    subprocess.run(torchrun_command(job.work_dir / "job.json", ranks), check=True, env=env, stdout=sys.stderr)
    seconds = time.perf_counter() - started
    summary = json.loads((job.out_dir / "summary.json").read_text())
    plan = plan_bytes(AutoConfig.from_pretrained(model_dir), "sft", cfg, ranks)
    peak = summary.get("peak_gpu_bytes")
    return {
        "ranks": ranks,
        "distributed": summary["distributed"],
        "precision": summary["precision"],
        "global_steps": summary["global_steps"],
        "train_loss": summary["train_loss"],
        "seconds_with_launch": round(seconds, 1),
        "peak_allocated_gib": None if peak is None else round(peak / 2**30, 2),
        "plan_gib": round(plan / 2**30, 2),
        "peak_over_plan": None if peak is None else round(peak / plan, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (FSDP over 2 gloo ranks)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the ~1B Llama")
    parser.add_argument("--steps", type=int)
    options = parser.parse_args()
    if not options.cpu and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --cpu (and --tiny)")
    sizes = TINY if options.tiny else ONE_B
    args = argparse.Namespace(**sizes, device="cpu" if options.cpu else "cuda")
    if options.steps:
        args.steps = options.steps
    args.base_dtype = "bfloat16" if args.device == "cuda" else "float32"  # LoRA: a bf16 base under bf16_mixed

    from dpo_step import build

    started = time.perf_counter()
    model_dir, tokenizer, pairs = build(args)
    pairs = long_pairs(pairs, tokenizer, args.max_length)
    out = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": {k: sizes[k] for k in ("hidden", "layers", "vocab")},
        "max_length": args.max_length,
        "micro_batch": args.batch,
        "parameters": sum(p.numel() for p in _meta_model(_config(model_dir)).parameters()),
    }
    # the trainers print their logs to stdout: keep it for the JSON alone
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as work:
        out["lora_dpo"] = lora_dpo(args, model_dir, tokenizer, pairs)
        out["fsdp_full_sft"] = fsdp_full(args, model_dir, tokenizer, pairs, Path(work))
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2), flush=True)


def _config(model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


if __name__ == "__main__":
    main()
