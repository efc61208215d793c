"""Hold out prompts of a persona dataset for evaluation (generation, persona preference, perplexity)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def split_persona(sft: pa.Table, cfg) -> tuple[dict[str, pa.Table], dict]:
    """Split SFT rows by prompt into ``sft_train`` and ``sft_eval``; the DPO pairs are made from each part
    (``persona_pairs``), so held-out prompts are unseen by both SFT and DPO.

    Returns the parts and a stats dict with the counts.
    """
    prompts = sorted(set(sft.column("prompt").to_pylist()))
    rng = np.random.default_rng([cfg.seed, 2])
    n_eval = max(1, round(cfg.eval_fraction * len(prompts)))
    held = {prompts[i] for i in rng.permutation(len(prompts))[:n_eval]}
    held_array = pa.array(sorted(held), type=pa.string())
    sft_held = pc.is_in(sft.column("prompt"), value_set=held_array).to_numpy(zero_copy_only=False)
    parts = {"sft_train": sft.filter(pa.array(~sft_held)), "sft_eval": sft.filter(pa.array(sft_held))}
    stats = {
        "prompts": len(prompts),
        "eval_prompts": len(held),
        "counts": {name: len(part) for name, part in parts.items()},
        "eval": {"fraction": cfg.eval_fraction, "seed": cfg.seed},
    }
    return parts, stats
