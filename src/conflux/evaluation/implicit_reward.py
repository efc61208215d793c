"""Implicit rewards r_w(y) = β log π(y|x; w)/π_ref(y|x) of a trained policy, and their pair accuracy.

The policy is evaluated through the same :class:`~conflux.modeling.policy.PreferencePolicy` abstraction it was
trained with, and π_ref comes from the cached reference log-probs, so an evaluation costs one forward per pair
and w.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from conflux.data.pairs import PairTable
from conflux.modeling.logprobs import score_rows
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import TokenizeSettings, encode_pairs, pad_id_of
from conflux.training.reference import read_reference


@torch.no_grad()
def policy_logps(
    policy: PreferencePolicy,
    tokenizer,
    pairs: PairTable,
    w: Sequence[float],
    settings: TokenizeSettings,
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """log π(y_a|x; w), log π(y_b|x; w) of every pair, in the pairs' order."""
    rows_a, rows_b, _ = encode_pairs(tokenizer, pairs, settings)
    policy.model.eval()
    with policy.at(w) as model:
        return score_rows(model, rows_a, rows_b, pad_id_of(tokenizer), batch_size=batch_size)


def implicit_reward_margins(
    policy: PreferencePolicy,
    tokenizer,
    pairs: PairTable,
    references: Sequence[str | Path],
    w: Sequence[float],
    settings: TokenizeSettings,
    beta: float,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """r_w(y_a) − r_w(y_b) per pair: positive means the policy at w prefers response a."""
    ref_a, ref_b = read_reference(references, settings, pairs.table.column("pair_id").to_pylist())
    logp_a, logp_b = policy_logps(policy, tokenizer, pairs, w, settings, batch_size=batch_size)
    return beta * ((logp_a - ref_a) - (logp_b - ref_b))


def pair_accuracy(margins: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Share of pairs whose margin sign matches the label (+1: a better, −1: b better); ties (0) excluded.

    A margin of exactly 0 counts as wrong: the policy expressed no preference. Returns (accuracy, n used).
    """
    used = labels != 0
    n = int(used.sum())
    if n == 0:
        return float("nan"), 0
    correct = np.sign(margins[used]) == np.sign(labels[used])
    return float(correct.mean()), n
