"""Hold out prompts of a persona dataset for evaluation (generation, persona preference, perplexity)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from conflux.data.loaders import PersonaData
from conflux.data.pairs import PairTable


def split_persona(data: PersonaData, cfg) -> tuple[dict[str, pa.Table | PairTable], dict]:
    """Split SFT rows and DPO pairs by prompt, so held-out prompts are unseen by both SFT and DPO.

    Returns the parts ``sft_train, sft_eval, pairs_train, pairs_eval`` and a stats dict with counts and drops.
    """
    prompts = sorted(set(data.sft.column("prompt").to_pylist()))
    rng = np.random.default_rng([cfg.seed, 2])
    n_eval = max(1, round(cfg.eval_fraction * len(prompts)))
    held = {prompts[i] for i in rng.permutation(len(prompts))[:n_eval]}
    held_array = pa.array(sorted(held), type=pa.string())

    def is_held(table: pa.Table) -> np.ndarray:
        return pc.is_in(table.column("prompt"), value_set=held_array).to_numpy(zero_copy_only=False)

    sft_held = is_held(data.sft)
    pair_held = is_held(data.pairs.table)
    parts = {
        "sft_train": data.sft.filter(pa.array(~sft_held)),
        "sft_eval": data.sft.filter(pa.array(sft_held)),
        "pairs_train": data.pairs.take(np.flatnonzero(~pair_held)),
        "pairs_eval": data.pairs.take(np.flatnonzero(pair_held)),
    }
    stats = {
        "rows_read": {role: info["rows_read"] for role, info in data.files.items()},
        "general_matched": data.general_matched,
        "prompts": len(prompts),
        "eval_prompts": len(held),
        "counts": {name: len(part) for name, part in parts.items()},
        "dropped": {
            "pairs": data.drops,
            **{f"{role}_file": info["dropped"] for role, info in data.files.items()},
        },
        "eval": {"fraction": cfg.eval_fraction, "seed": cfg.seed},
    }
    return parts, stats
