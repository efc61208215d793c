"""Pure reference implementations and conveniences that exist for tests only (the workflow never calls them).

Each is the textbook form of something the package computes another way (in place, streamed, or per pass),
so a test can compare the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedTokenizerBase

from conflux.data.pairs import PairTable
from conflux.evaluation.implicit_reward import implicit_reward_margin, policy_logps
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import PairBatch, TokenizeSettings, collate_rows, encode_pair, pad_id_of
from conflux.training.reference import read_reference


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    max_length: int,
    truncation: str = "keep_end_of_prompt",
) -> tuple[PairBatch, int]:
    """Tokenize B pairs into one right-padded [2B, T] batch; also return the number of truncated rows.

    Rows are counted rather than dropped so the caller can report how much of the data did not fit.
    """
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"prompts, responses_a, responses_b differ in length: "
            f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}"
        )
    pad_id = pad_id_of(tokenizer)
    rows_a, rows_b, n_truncated = [], [], 0
    for prompt, a, b in zip(prompts, responses_a, responses_b, strict=True):
        row_a, row_b, n_cut = encode_pair(
            tokenizer, prompt, a, b, max_length=max_length, truncation=truncation
        )
        rows_a.append(row_a)
        rows_b.append(row_b)
        n_truncated += n_cut
    return collate_rows(rows_a, rows_b, pad_id), n_truncated


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
    return implicit_reward_margin(logp_a, logp_b, ref_a, ref_b, beta)


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


@contextmanager
def policy_at(policy: PreferencePolicy, w: Sequence[float] | torch.Tensor) -> Iterator[PeftModel]:
    """Function form of :meth:`PreferencePolicy.at`, in the papers' notation π(·; w)."""
    with policy.at(w) as model:
        yield model


def merged_delta(policy: PreferencePolicy, w: Sequence[float] | torch.Tensor) -> dict[str, torch.Tensor]:
    """ΔW(w) = Σ_adapters scale·(α/r)·B·A per target weight, keyed by the base model's parameter name.

    Computed from the LoRA matrices directly (not from the forward pass), so adding it to a copy of the base
    weights is an independent check that ``policy.at(w)`` interpolates the merged weights.
    """
    scales = policy.weights(w)
    prefix = "base_model.model."
    deltas: dict[str, torch.Tensor] = {}
    for module_name, layer in policy.model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        total = None
        for name, s in scales.items():
            if name not in layer.lora_A or s == 0.0:
                continue
            alpha, r = layer.lora_alpha[name], layer.r[name]
            base_scale = alpha / r**0.5 if layer.use_rslora.get(name, False) else alpha / r
            product = layer.lora_B[name].weight @ layer.lora_A[name].weight
            term = (s * base_scale) * product.detach()
            total = term if total is None else total + term
        if total is not None:
            deltas[module_name.removeprefix(prefix) + ".weight"] = total
    return deltas
