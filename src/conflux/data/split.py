"""Agree / conflict split of preference pairs, as the curriculum paper (Nishida & Nishida) defines them.

With d = s_a - s_b per pair:
  * *agree*    - every nonzero entry of d has the same sign (the dimensions agree on the winner);
  * *conflict* - d has both a positive and a negative entry;
  * d == 0 everywhere carries no preference: dropped and counted, never silently.
The evaluation set holds out whole prompts (all pairs of a held-out prompt leave training) so no prompt is
seen in training and evaluation; it keeps the held-out conflict pairs (``eval_conflict``) and, so that nothing
is lost, the held-out agree pairs (``eval_agree``). ``agree_sub`` is the training agree set down-sampled
(seeded) to the size of the training conflict set.

Everything here is vectorised numpy over ``(n, k)`` score arrays so a million pairs split in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from conflux.atomic import write_json
from conflux.data.pairs import PairTable, read_pairs, write_pairs
from conflux.errors import DataError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("agree", "conflict", "agree_sub", "eval_conflict", "eval_agree")


@dataclass(frozen=True)
class SplitConfig:
    """How to split: share of conflict pairs held out for evaluation, seed, and whether conflict is needed."""

    eval_fraction: float = 0.2
    seed: int = 0
    require_conflict: bool = True


@dataclass(frozen=True)
class SplitResult:
    parts: dict[str, PairTable]
    stats: dict


def classify(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks ``(agree, conflict, zero)`` for score differences ``d`` of shape ``(n, k)``."""
    positive = (d > 0).any(axis=1)
    negative = (d < 0).any(axis=1)
    conflict = positive & negative
    zero = ~positive & ~negative
    return positive ^ negative, conflict, zero


def dim_pair_conflict(d: np.ndarray, i: int, j: int) -> np.ndarray:
    """Pairs on which dimensions ``i`` and ``j`` prefer opposite responses (both nonzero, signs differ)."""
    return d[:, i] * d[:, j] < 0


def dimension_labels(d: np.ndarray) -> np.ndarray:
    """Per-dimension preference: +1 if a is preferred, -1 if b, 0 for a tie (masked out of L_DPO,i)."""
    return np.sign(d).astype(np.int8)


def _hold_out_prompts(
    prompt_codes: np.ndarray, conflict: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Mask of pairs whose prompt is held out, chosen until ~``fraction`` of conflict pairs are covered."""
    n_prompts = int(prompt_codes.max()) + 1 if prompt_codes.size else 0
    conflict_per_prompt = np.bincount(prompt_codes[conflict], minlength=n_prompts)
    candidates = np.flatnonzero(conflict_per_prompt)
    total = int(conflict_per_prompt.sum())
    if total == 0:
        return np.zeros(prompt_codes.shape, dtype=bool)
    target = max(1, round(fraction * total))
    order = rng.permutation(candidates)
    covered = np.cumsum(conflict_per_prompt[order])
    n_take = int(np.searchsorted(covered, target) + 1)
    held = np.zeros(n_prompts, dtype=bool)
    held[order[:n_take]] = True
    return held[prompt_codes]


def split_pairs(pairs: PairTable, cfg: SplitConfig, *, file: str | Path = "<memory>") -> SplitResult:
    """Split ``pairs`` into the five parts of :data:`SPLIT_NAMES` and compute their statistics.

    Raises :class:`DataError` when conflict pairs are required but the data has none (or too few to leave
    any for training after the evaluation hold-out).
    """
    sa, sb = pairs.scores()
    d = sa - sb
    agree, conflict, zero = classify(d)
    n_conflict_all = int(conflict.sum())
    if cfg.require_conflict and n_conflict_all == 0:
        what = (
            "every pair is a tie (d = 0 in every dimension), so none carries a preference"
            if zero.all()
            else f"the dimensions of every pair agree ({int(zero.sum())} ties)"
        )
        raise DataError(
            f"no conflict pairs among {len(pairs)} pairs (dims {list(pairs.dims)}): {what}; the curriculum's "
            "conflict stages and the conflict evaluation have no data",
            file=file,
            row="all",
            field="scores_a/scores_b",
        )
    rng_eval = np.random.default_rng([cfg.seed, 0])
    rng_sub = np.random.default_rng([cfg.seed, 1])
    prompt_codes = pc.dictionary_encode(pairs.table.column("prompt")).combine_chunks().indices.to_numpy()
    held = _hold_out_prompts(prompt_codes, conflict, cfg.eval_fraction, rng_eval)
    train = ~held & ~zero
    masks = {
        "agree": train & agree,
        "conflict": train & conflict,
        "eval_conflict": held & conflict,
        "eval_agree": held & agree,
    }
    n_train_conflict = int(masks["conflict"].sum())
    if cfg.require_conflict and n_train_conflict == 0:
        raise DataError(
            f"only {n_conflict_all} conflict pair(s): after holding out {cfg.eval_fraction:.0%} for eval "
            "none is left for training; add data or lower split.eval_fraction",
            file=file,
            row="all",
            field="scores_a/scores_b",
        )
    indices = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    agree_idx = indices["agree"]
    short = agree_idx.size < n_train_conflict
    if short:
        log.warning(
            "%s: only %d agree pairs for %d conflict pairs; agree_sub keeps all agree pairs",
            file,
            agree_idx.size,
            n_train_conflict,
        )
    n_sub = min(agree_idx.size, n_train_conflict)
    indices["agree_sub"] = np.sort(rng_sub.choice(agree_idx, size=n_sub, replace=False))
    parts = {name: pairs.take(indices[name]) for name in SPLIT_NAMES}
    stats = _stats(pairs, d, zero, masks, {n: len(p) for n, p in parts.items()}, cfg, short)
    return SplitResult(parts, stats)


def _stats(
    pairs: PairTable,
    d: np.ndarray,
    zero: np.ndarray,
    masks: dict[str, np.ndarray],
    counts: dict[str, int],
    cfg: SplitConfig,
    agree_sub_short: bool,
) -> dict:
    """Counts, conflict rates (overall and per dimension pair) and drops, as plain JSON-able values."""
    kept = ~zero
    n_kept = int(kept.sum())
    train = masks["agree"] | masks["conflict"]
    held = masks["eval_conflict"] | masks["eval_agree"]
    dim_pairs = []
    for i, j in combinations(range(pairs.k), 2):
        opposed = dim_pair_conflict(d, i, j)
        dim_pairs.append(
            {
                "dims": [pairs.dims[i], pairs.dims[j]],
                "conflict": int(opposed.sum()),
                "conflict_rate": _rate(int(opposed.sum()), n_kept),
                "train_conflict": int((opposed & train).sum()),
                "eval_conflict": int((opposed & held).sum()),
            }
        )
    n_conflict = int((masks["conflict"] | masks["eval_conflict"]).sum())
    return {
        "source": pairs.source,
        "dims": list(pairs.dims),
        "k": pairs.k,
        "input_pairs": len(pairs),
        "dropped": {"zero_difference": int(zero.sum())},
        "counts": counts,
        "conflict_rate": _rate(n_conflict, n_kept),
        "dim_pairs": dim_pairs,
        "train_ties_per_dim": {
            name: int(((d[:, i] == 0) & train).sum()) for i, name in enumerate(pairs.dims)
        },
        "agree_sub_short": agree_sub_short,
        "eval": {"fraction": cfg.eval_fraction, "seed": cfg.seed, "held_out_pairs": int(held.sum())},
    }


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def split_pairs_job(
    pairs_path: str | Path, outputs: dict[str, str | Path], stats_path: str | Path, cfg: SplitConfig
) -> dict:
    """Read canonical pairs, split them, and write every part and the stats (nothing is written on error)."""
    pairs = read_pairs(pairs_path)
    result = split_pairs(pairs, cfg, file=pairs_path)
    for name in SPLIT_NAMES:
        write_pairs(outputs[name], result.parts[name])
    write_json(stats_path, result.stats)
    counts = result.stats["counts"]
    log.info("%s: %s, dropped %s", pairs_path, counts, result.stats["dropped"])
    return result.stats
