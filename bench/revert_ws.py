"""A persona-revert workspace of a chosen size for bench/revert.py (and nothing else)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch


def workspace(
    root: Path, *, hidden: int, layers: int, vocab: int, pairs: int, new_tokens: int = 32, seed: int = 0
) -> dict:
    """Write base model, manifest, a noisy full fine-tune and held-out persona data under ``root`` (reused
    when present); return revert_sweep_job's path and settings arguments."""
    from conflux.data.jobs import bundled_corpus
    from conflux.data.pairs import make_pair_table, write_pairs, write_sft
    from conflux.data.persona_text import persona_sets
    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
    from conflux.modeling.generation import GenerationSettings
    from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
    from conflux.modeling.tokenize import TokenizeSettings

    if not (root / "ft").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        cfg = TinyModelConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=max(1, hidden // 64),
            num_kv_heads=max(1, hidden // 128),
            intermediate_size=hidden * 8 // 3 // 16 * 16,
        )
        build_tiny_model(bundled_corpus(seed=0), cfg, root / "hf")
        base_model_manifest_job(
            BaseModelSpec(name="bench", source="embedded"), root / "manifest.json", built_dir=root / "hf"
        )
        sets = persona_sets(seed=0)
        held = list(range(len(sets["ojousama"]) - pairs, len(sets["ojousama"])))
        ojou, general = sets["ojousama"], sets["general"]
        prompts = [ojou[i][0] for i in held]
        replies = [ojou[i][1] for i in held]
        write_sft(
            root / "sft_eval.parquet",
            pa.table({"prompt": prompts, "response": replies, "persona": ["ojousama"] * len(held)}),
        )
        write_pairs(
            root / "pairs_eval.parquet",
            make_pair_table(
                pair_id=[f"p{i}" for i in held],
                prompt=prompts,
                response_a=replies,
                response_b=[general[i][1] for i in held],
                scores_a=np.ones((len(held), 1)),
                scores_b=np.zeros((len(held), 1)),
                dims=("persona",),
                source="bench",
            ),
        )
        model, _ = load_base_model(root / "manifest.json", dtype="float32")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * p.std() * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / "ft")
    return {
        "manifest": root / "manifest.json",
        "model_dir": root / "ft",
        "sft_eval": root / "sft_eval.parquet",
        "pairs_eval": root / "pairs_eval.parquet",
        "settings": TokenizeSettings(256),
        "generation": GenerationSettings(max_new_tokens=new_tokens, batch_size=32),
    }
