"""DPO training throughput: conflux's PreferenceTrainer against TRL's DPOTrainer, same model, data and batch.

    .venv/bin/python bench/dpo_step.py [--hidden 256 --layers 4 --vocab 4096] [--steps 20 --batch 8]
                                       [--max-length 256] [--device cpu|cuda] [--repeat 2] [--threads N]

A fair race first: both trainers run plain sigmoid DPO (β 0.1) on the same random Llama with the *same* LoRA
weights (r=8, α=16, all projections: conflux's seeded init, copied into TRL's adapter, with B drawn nonzero
so that the first step's loss is not the trivial log 2 of policy = reference), on the *same token rows*
(conflux's ``encode_pairs``, handed to TRL as ``prompt_ids/chosen_ids/rejected_ids`` through
``TokenizedDPOMixin``, as the persona DPO job does), the same batch size, max length, optimizer, data order
and number of steps. Both log every step's loss; the bench exits 1 when the two loss curves differ by more
than ``--loss-tol`` (the first step, and the largest gap over all steps, are printed), because a speed ratio
between trainers that compute different things means nothing.

Speed, in two reference modes:

- online: the reference model runs inside every step (TRL's default; conflux via a bench-only subclass);
- cached: reference log-probs are computed once before training (conflux's ``reference_logps`` rule; TRL's
  ``precompute_ref_log_probs=True``). The one-off precompute time is not in the step.

Reported per mode: tokens/s (non-pad prompt+response tokens of chosen and rejected, per second of
``train_runtime``), the median wall time and CPU time of a step (the first step, a warm-up, left out), and
the ratios TRL/conflux. The machine this runs on is shared, so the sides are interleaved ``--repeat`` times
and each side's best run counts; the load average is printed beside the figures. With ``--threads 1`` the
CPU-time ratio hardly moves with other jobs' load (one thread's CPU time is the work done).

``--src DIR/src`` times another checkout's package (``git archive <commit> src | tar -x -C DIR``) against
the same TRL, so a change is measured against its parent the same way.

Goal (issue 21): TRL/conflux >= 1.5 in both modes, at equal loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# --src times another checkout's package (e.g. the commit before a change) with this bench.
_SRC = (
    sys.argv[sys.argv.index("--src") + 1]
    if "--src" in sys.argv
    else Path(__file__).resolve().parents[1] / "src"
)
sys.path.insert(0, str(_SRC))

ADAPTER_SEED = 0


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    from conflux.data.jobs import bundled_corpus
    from conflux.data.synthetic import synthetic_pku
    from conflux.modeling.tiny_model import train_tokenizer

    tokenizer = train_tokenizer(bundled_corpus(seed=0), args.vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 16 * 16,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=max(512, args.max_length),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp()) / "model"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    pairs = synthetic_pku(args.steps * args.batch + 64, conflict_rate=0.0, seed=0)
    return model_dir, tokenizer, pairs


def load(model_dir, device, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device)


def settings_of(args):
    from conflux.modeling.tokenize import TokenizeSettings

    return TokenizeSettings(args.max_length, "keep_start")  # TRL's default truncation


def adapter_init(model_dir) -> dict[str, torch.Tensor]:
    """The LoRA weights both sides start from, by module path (``...q_proj.lora_A``): conflux's seeded init of
    A, and B drawn nonzero (PEFT starts B at 0, which makes every first step's loss log 2 on both sides)."""
    from conflux.modeling.lora import LoraSpec
    from conflux.modeling.policy import SHARED, PreferencePolicy

    policy = PreferencePolicy.create(load(model_dir, "cpu"), 1, LoraSpec(), shared=True, seed=ADAPTER_SEED)
    gen = torch.Generator().manual_seed(ADAPTER_SEED)
    init = {}
    for name, p in policy.model.named_parameters():
        if f".{SHARED}." in name:
            value = p.detach().clone()
            if ".lora_B." in name:
                value = 0.05 * torch.randn(value.shape, generator=gen)
            init[name.replace(f".{SHARED}.weight", "")] = value
    return init


def load_init(model, init: dict[str, torch.Tensor], adapter: str) -> None:
    """Copy the shared init into ``adapter`` of a PEFT model, checking that every LoRA weight gets one."""
    loaded = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in name:
                p.copy_(init[name.replace(f".{adapter}.weight", "")])
                loaded += 1
    if loaded != len(init):
        raise SystemExit(f"adapter init: {loaded} LoRA weights in the model, {len(init)} in the init")


def common_args(args, out):
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": args.batch,
        "learning_rate": 1e-4,
        "max_steps": args.steps,
        "logging_steps": 1,  # every step's loss, to compare the two curves
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "bf16": args.device == "cuda",
        "use_cpu": args.device == "cpu",
        "dataloader_pin_memory": False,
    }


def step_timer():
    """A callback recording each optimizer step's wall and process CPU seconds."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            self.wall.append(time.perf_counter() - self._t[0])
            self.cpu.append(time.process_time() - self._t[1])

    return StepTimer()


def outcome(trainer, timer, runtime: float) -> dict:
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {
        "runtime": runtime,
        "step_wall": statistics.median(timer.wall[1:]),
        "step_cpu": statistics.median(timer.cpu[1:]),
        "losses": losses,
    }


def token_rows(tokenizer, pairs, args):
    """conflux's token rows of every pair, and the same rows as chosen/rejected for TRL."""
    from conflux.data.split import dimension_labels
    from conflux.modeling.tokenize import encode_pairs

    rows_a, rows_b, _ = encode_pairs(tokenizer, pairs, settings_of(args))
    s_a, s_b = pairs.scores()
    labels = dimension_labels(s_a - s_b)
    if not ((labels == labels[:, :1]).all() and (labels != 0).all()):
        raise SystemExit("the bench pairs must be agree pairs without ties (stage 1 trains on those)")
    a_wins = (labels[:, 0] > 0).tolist()
    chosen = [a if w else b for a, b, w in zip(rows_a, rows_b, a_wins, strict=True)]
    rejected = [b if w else a for a, b, w in zip(rows_a, rows_b, a_wins, strict=True)]
    return {
        "prompt_ids": [p for p, _ in chosen],
        "chosen_ids": [r for _, r in chosen],
        "rejected_ids": [r for _, r in rejected],
    }


def count_tokens(dataset, steps, batch):
    """Non-pad tokens the steps process (prompt + response, both sides); the same rows feed TRL."""
    n = 0
    for i in range(steps * batch):
        a, b = dataset.rows[i % len(dataset)]
        n += len(a[0]) + len(a[1]) + len(b[0]) + len(b[1])
    return n


def run_ours(args, model_dir, tokenizer, pairs, init, online: bool):
    import numpy as np
    from transformers import TrainingArguments

    from conflux.modeling.lora import LoraSpec
    from conflux.modeling.policy import SHARED, PreferencePolicy
    from conflux.training.objectives import CurriculumStage1, StepInputs
    from conflux.training.preference_trainer import PairDataset, PreferenceTrainer
    from conflux.training.reference import compute_reference_logps

    settings = settings_of(args)
    model = load(model_dir, args.device, getattr(args, "base_dtype", "float32"))
    # Agree-only pairs (conflict_rate 0) and stage 1's objective: plain sigmoid DPO on one adapter.
    if online:
        ref_a = ref_b = np.zeros(len(pairs))
    else:
        ref = compute_reference_logps(model, tokenizer, pairs, settings, batch_size=args.batch * 2)
        ref_a, ref_b = ref.column("ref_logp_a").to_numpy(), ref.column("ref_logp_b").to_numpy()
    policy = PreferencePolicy.create(model, 1, LoraSpec(), shared=True, seed=ADAPTER_SEED)
    load_init(policy.model, init, SHARED)

    class Objective(CurriculumStage1):
        def passes(self, policy, ctx, inputs: StepInputs):
            if online:  # the bench-only "no cache" mode: reference forward inside the step, as TRL does
                from conflux.modeling.logprobs import sequence_logps

                with torch.no_grad(), policy.reference() as ref_model, ctx.forward_context():
                    inputs.ref_a, inputs.ref_b = sequence_logps(ref_model, inputs.batch)
            yield from super().passes(policy, ctx, inputs)

    objective = Objective(1, 0.1)
    policy.train_only(objective.trained(policy))
    dataset = PairDataset(pairs, ref_a, ref_b, tokenizer, settings)
    timer = step_timer()
    with tempfile.TemporaryDirectory() as out:
        trainer = PreferenceTrainer(
            policy=policy,
            objective=objective,
            seed=0,
            args=TrainingArguments(**common_args(args, out), remove_unused_columns=False),
            train_dataset=dataset,
            data_collator=dataset.collate,
            callbacks=[timer],
        )
        runtime = trainer.train().metrics["train_runtime"]
    return {**outcome(trainer, timer, runtime), "tokens": count_tokens(dataset, args.steps, args.batch)}


def run_trl(args, model_dir, tokenizer, rows, init, online: bool):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from conflux.modeling.lora import LoraSpec
    from conflux.training.trl_jobs import TokenizedDPOMixin

    class TokenizedDPOTrainer(TokenizedDPOMixin, DPOTrainer): ...

    model = load(model_dir, args.device, getattr(args, "base_dtype", "float32"))
    timer = step_timer()
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            **common_args(args, out),
            beta=0.1,
            max_length=args.max_length,
            precompute_ref_log_probs=not online,
            precompute_ref_batch_size=args.batch * 2,
        )
        trainer = TokenizedDPOTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_dict(rows),
            processing_class=tokenizer,
            peft_config=LoraSpec().to_peft(),
            callbacks=[timer],
        )
        load_init(trainer.model, init, "default")  # before train(): the optimizer is built there
        runtime = trainer.train().metrics["train_runtime"]
    return outcome(trainer, timer, runtime)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs per side and mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--loss-tol", type=float, default=1e-4, help="largest allowed |loss_conflux − loss_TRL|"
    )
    parser.add_argument("--modes", default="online,cached")
    parser.add_argument("--src", help="the conflux package directory to time (default: this checkout's src/)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir, tokenizer, pairs = build(args)
    init = adapter_init(model_dir)
    rows = token_rows(tokenizer, pairs, args)
    results, failed = {}, False
    for mode in args.modes.split(","):
        online = mode == "online"
        runs = {"conflux": [], "trl": []}
        loads = []
        for _ in range(args.repeat):
            loads.append(load_average())
            runs["conflux"].append(run_ours(args, model_dir, tokenizer, pairs, init, online))
            runs["trl"].append(run_trl(args, model_dir, tokenizer, rows, init, online))
        ours = min(runs["conflux"], key=lambda r: r["runtime"])
        trl = min(runs["trl"], key=lambda r: r["runtime"])
        gaps = [abs(a - b) for a, b in zip(ours["losses"], trl["losses"], strict=True)]
        tokens = ours["tokens"]
        results[mode] = {
            "tokens": tokens,
            "conflux_s": round(ours["runtime"], 3),
            "trl_s": round(trl["runtime"], 3),
            "conflux_tokens_per_s": round(tokens / ours["runtime"]),
            "trl_tokens_per_s": round(tokens / trl["runtime"]),
            "ratio_runtime": round(trl["runtime"] / ours["runtime"], 3),
            "ratio_step_wall": round(
                min(r["step_wall"] for r in runs["trl"]) / min(r["step_wall"] for r in runs["conflux"]), 3
            ),
            "ratio_step_cpu": round(
                min(r["step_cpu"] for r in runs["trl"]) / min(r["step_cpu"] for r in runs["conflux"]), 3
            ),
            "first_loss": {"conflux": ours["losses"][0], "trl": trl["losses"][0]},
            "max_loss_gap": max(gaps),
            "mean_loss": {
                "conflux": statistics.fmean(ours["losses"]),
                "trl": statistics.fmean(trl["losses"]),
            },
            "load_average_1_5_15": loads,
        }
        r = results[mode]
        print(
            f"{mode:>6}: conflux {r['conflux_tokens_per_s']:,} tok/s, TRL {r['trl_tokens_per_s']:,} tok/s, "
            f"ratio {r['ratio_runtime']:.2f}x (step wall {r['ratio_step_wall']:.2f}x, "
            f"step CPU {r['ratio_step_cpu']:.2f}x); first loss conflux {ours['losses'][0]:.5f} "
            f"TRL {trl['losses'][0]:.5f}, largest gap over {len(gaps)} steps {max(gaps):.2e}; "
            f"load {loads}",
            flush=True,
        )
        if max(gaps) > args.loss_tol:
            print(f"{mode}: LOSSES DIFFER by {max(gaps):.3g} > {args.loss_tol}: not the same computation",
                  flush=True)  # fmt: skip
            failed = True
    print(json.dumps({"device": args.device, "config": vars(args), "results": results}, indent=2))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
