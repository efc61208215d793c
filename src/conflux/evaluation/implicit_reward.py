"""Implicit rewards r_w(y) = β log π(y|x; w)/π_ref(y|x) of a trained policy: log-probs at w, margins, β.

The policy is evaluated through the same :class:`~conflux.modeling.policy.PreferencePolicy` abstraction it was
trained with, and π_ref comes from the cached reference log-probs, so an evaluation costs one forward per pair
and w.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from conflux.data.pairs import PairTable
from conflux.errors import ConfluxError
from conflux.modeling.logprobs import score_rows
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import Row, TokenizeSettings, encode_pairs, pad_id_of
from conflux.training.losses import length_controlled


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
    return rows_logps(policy, rows_a, rows_b, w, pad_id_of(tokenizer), batch_size=batch_size)


@torch.no_grad()
def rows_logps(
    policy: PreferencePolicy,
    rows_a: Sequence[Row],
    rows_b: Sequence[Row],
    w: Sequence[float],
    pad_id: int,
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`policy_logps` of pairs already tokenized (an evaluation scores the same rows at every w)."""
    policy.model.eval()
    with policy.at(w) as model:
        return score_rows(model, rows_a, rows_b, pad_id, batch_size=batch_size)


def implicit_reward_margin(
    logp_a: np.ndarray,
    logp_b: np.ndarray,
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    beta: float,
    *,
    length: tuple[str, float, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """r_w(y_a) − r_w(y_b) = β[(log π(y_a; w) − log π_ref(y_a)) − (log π(y_b; w) − log π_ref(y_b))] per pair.

    Positive means the policy at w prefers response a. Every evaluation margin of the curriculum study is
    computed here, from sequence log-probs of the policy at w and the cached reference. ``length``
    (control, α, |y_a|, |y_b|): a length-controlled method's margin, with the log-ratios it was trained on
    (:func:`conflux.training.losses.length_controlled`).
    """
    h_a, h_b = logp_a - ref_a, logp_b - ref_b
    if length is not None and length[0] != "none":
        control, alpha, len_a, len_b = length
        tensors = [torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (h_a, h_b, len_a, len_b)]
        a, b = length_controlled(*tensors, control, alpha, beta)  # the function the losses use
        h_a, h_b = a.numpy(), b.numpy()
    return beta * (h_a - h_b)


def run_length_control(run_dirs: Sequence[str | Path]) -> tuple[str, float]:
    """(length_control, length_alpha) the runs were trained with (``train_config.json``; older runs: none)."""
    found = set()
    for run in run_dirs:
        saved = json.loads((Path(run) / "train_config.json").read_text(encoding="utf-8"))
        found.add((saved.get("length_control", "none"), float(saved.get("length_alpha", 0.0))))
    if len(found) != 1:
        raise ConfluxError(f"the runs of one method were trained with different length control: {found}")
    return next(iter(found))


def run_beta(run_dirs: Sequence[str | Path]) -> float:
    """β of the runs (``train_config.json``), which scales the implicit reward; all runs must agree."""
    if not run_dirs:
        raise ConfluxError("no run directories given")
    betas = {}
    for run in run_dirs:
        path = Path(run) / "train_config.json"
        try:
            betas[str(run)] = float(json.loads(path.read_text(encoding="utf-8"))["beta"])
        except (OSError, ValueError, KeyError) as err:
            raise ConfluxError(f"{path}: cannot read beta ({err})") from None
    if len(set(betas.values())) != 1:
        raise ConfluxError(f"the runs of one method were trained with different beta: {betas}")
    return next(iter(betas.values()))
