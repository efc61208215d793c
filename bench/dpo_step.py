"""DPO training throughput: conflux's PreferenceTrainer against TRL's DPOTrainer, same model, data and batch.

    .venv/bin/python bench/dpo_step.py [--hidden 256 --layers 4 --vocab 4096] [--steps 20 --batch 8]
                                       [--max-length 256] [--device cpu|cuda]

Both trainers run plain sigmoid DPO with the same LoRA (r=8, α=16, all projections) on the same random Llama,
tokenizer, pairs, batch size, max length, optimizer settings and number of steps. Reported: tokens/s (non-pad
prompt+response tokens of chosen and rejected, per second of ``train_runtime``) and the ratio ours/TRL, in
two reference modes:

- online: the reference model runs inside every step (TRL's default; conflux via a bench-only subclass);
- cached: reference log-probs are computed once before training (conflux's ``reference_logps`` rule; TRL's
  ``precompute_ref_log_probs=True``). The one-off precompute time is printed separately, not in the step.

Goal (issue 4): ours/TRL >= 1.2 in both modes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


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


def common_args(args, out):
    return {
        "output_dir": str(out),
        "per_device_train_batch_size": args.batch,
        "learning_rate": 1e-4,
        "max_steps": args.steps,
        "logging_steps": args.steps,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
        "bf16": args.device == "cuda",
        "use_cpu": args.device == "cpu",
        "dataloader_pin_memory": False,
    }


def rows_of(pairs):
    cols = pairs.table.to_pydict()
    s_a, s_b = pairs.scores()
    a_wins = (s_a[:, 0] > s_b[:, 0]).tolist()
    chosen = [a if w else b for a, b, w in zip(cols["response_a"], cols["response_b"], a_wins, strict=True)]
    rejected = [b if w else a for a, b, w in zip(cols["response_a"], cols["response_b"], a_wins, strict=True)]
    return cols["prompt"], chosen, rejected


def count_tokens(dataset, steps, batch):
    """Non-pad tokens the steps process (prompt + response, both sides); the same rows feed TRL."""
    n = 0
    for i in range(steps * batch):
        a, b = dataset.rows[i % len(dataset)]
        n += len(a[0]) + len(a[1]) + len(b[0]) + len(b[1])
    return n


def run_ours(args, model_dir, tokenizer, pairs, online: bool):
    import numpy as np
    from transformers import TrainingArguments

    from conflux.modeling.lora import LoraSpec
    from conflux.modeling.policy import PreferencePolicy
    from conflux.modeling.tokenize import TokenizeSettings
    from conflux.training.objectives import CurriculumStage1, StepInputs
    from conflux.training.preference_trainer import PairDataset, PreferenceTrainer
    from conflux.training.reference import compute_reference_logps

    settings = TokenizeSettings(args.max_length, "keep_start")
    model = load(model_dir, args.device, getattr(args, "base_dtype", "float32"))
    # Agree-only pairs (conflict_rate 0) and stage 1's objective: plain sigmoid DPO on one adapter.
    t0 = time.perf_counter()
    if online:
        ref_a = ref_b = np.zeros(len(pairs))
        precompute = 0.0
    else:
        ref = compute_reference_logps(model, tokenizer, pairs, settings, batch_size=args.batch * 2)
        ref_a, ref_b = ref.column("ref_logp_a").to_numpy(), ref.column("ref_logp_b").to_numpy()
        precompute = time.perf_counter() - t0
    policy = PreferencePolicy.create(model, 1, LoraSpec(), shared=True, seed=0)

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
    with tempfile.TemporaryDirectory() as out:
        trainer = PreferenceTrainer(
            policy=policy,
            objective=objective,
            seed=0,
            args=TrainingArguments(**common_args(args, out), remove_unused_columns=False),
            train_dataset=dataset,
            data_collator=dataset.collate,
        )
        runtime = trainer.train().metrics["train_runtime"]
    return runtime, count_tokens(dataset, args.steps, args.batch), precompute


def run_trl(args, model_dir, tokenizer, pairs, online: bool):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from conflux.modeling.lora import LoraSpec

    prompt, chosen, rejected = rows_of(pairs)
    data = Dataset.from_dict({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    model = load(model_dir, args.device, getattr(args, "base_dtype", "float32"))
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            **common_args(args, out),
            beta=0.1,
            max_length=args.max_length,
            precompute_ref_log_probs=not online,
            precompute_ref_batch_size=args.batch * 2,
        )
        t0 = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraSpec().to_peft(),
        )
        setup = time.perf_counter() - t0
        runtime = trainer.train().metrics["train_runtime"]
    return runtime, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model_dir, tokenizer, pairs = build(args)
    results = {}
    for mode in ("online", "cached"):
        online = mode == "online"
        ours_time, tokens, precompute = run_ours(args, model_dir, tokenizer, pairs, online)
        trl_time, _ = run_trl(args, model_dir, tokenizer, pairs, online)
        results[mode] = {
            "tokens": tokens,
            "conflux_s": round(ours_time, 3),
            "trl_s": round(trl_time, 3),
            "conflux_tokens_per_s": round(tokens / ours_time),
            "trl_tokens_per_s": round(tokens / trl_time),
            "ratio_conflux_over_trl": round(trl_time / ours_time, 3),
        }
        if not online:
            results[mode]["conflux_precompute_s"] = round(precompute, 3)
        print(
            f"{mode:>6}: conflux {tokens / ours_time:,.0f} tok/s, TRL {tokens / trl_time:,.0f} tok/s, "
            f"ratio {trl_time / ours_time:.2f}x",
            flush=True,
        )
    print(json.dumps({"device": args.device, "config": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
