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
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from conflux.analysis.ties import TensorStack, _broadcast_weights, _stack, _work_dtype, elect_sign, trim_top_k
from conflux.data.pairs import PairTable
from conflux.errors import ConfluxError
from conflux.evaluation.implicit_reward import implicit_reward_margin, policy_logps
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import PairBatch, TokenizeSettings, collate_rows, encode_pair, pad_id_of
from conflux.training.losses import _sigmoid_loss
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


# ---- TIES and task arithmetic on whole tensors (the workflow merges in place: analysis/merge_kernels) ----


def disjoint_merge(
    tensors: torch.Tensor, weights: torch.Tensor | Sequence[float], elected_sign: torch.Tensor
) -> torch.Tensor:
    """Weighted mean over the entries that agree with the elected sign (TIES "disjoint merge", mergekit).

    An entry i agrees when sgn(w_i τ_i) equals the elected sign, so zeros (and zero weights) never agree.
    Result = Σ_{i agrees} w_i τ_i / Σ_{i agrees} w_i, and 0 where no entry agrees (mergekit replaces a zero
    divisor by 1; the numerator is then 0).

    Args:
        tensors: Task vectors (usually trimmed, not yet weighted) stacked on dim 0, shape [n, ...].
        weights: Shape [n].
        elected_sign: Shape [...] of ±1, e.g. from :func:`elect_sign`.

    Returns:
        Shape [...] merged tensor in the dtype of ``tensors`` (computed in at least float32).
    """
    tensors = _stack(tensors)
    if elected_sign.shape != tensors.shape[1:]:
        expected = tuple(tensors.shape[1:])
        raise ConfluxError(f"elected sign has shape {tuple(elected_sign.shape)}, expected {expected}")
    work = tensors.to(_work_dtype(tensors.dtype))
    w = _broadcast_weights(weights, work)
    weighted = work * w
    agree = weighted.sign() == elected_sign.to(work.dtype).sign()
    numerator = torch.where(agree, weighted, 0.0).sum(dim=0)
    divisor = torch.where(agree, w, 0.0).sum(dim=0)
    divisor = torch.where(divisor == 0, 1.0, divisor)
    return (numerator / divisor).to(tensors.dtype)


def ties(
    task_vectors: TensorStack, weights: torch.Tensor | Sequence[float], density: float, lam: float = 1.0
) -> torch.Tensor:
    """TIES-Merging (Yadav et al., 2023, arXiv:2306.01708): trim, elect sign, disjoint merge, scale by λ.

    conflux follows **mergekit**'s ``ties`` (``normalize=True``): each τ_i is trimmed to its top-k magnitudes
    (:func:`trim_top_k`), the sign is elected from the *weighted* trimmed vectors (:func:`elect_sign`), and
    the agreeing weighted entries are divided by the *sum of agreeing weights* (:func:`disjoint_merge`), then
    multiplied by λ::

        ties = λ · Σ_{i agrees} w_i τ̂_i / Σ_{i agrees} w_i

    PEFT's ``merge_utils.ties`` differs: it elects from the *unweighted* trimmed vectors and divides by the
    *count* of agreeing entries, PEFT = Σ_{i agrees} w_i τ̂_i / #agrees, and it has no λ (and keeps
    int(density·numel) entries, possibly 0). With equal weights w > 0 both elect the same sign and
    PEFT(τ, w·1, d) = w · ties(τ, w·1, d, λ=1) = ties(τ, w·1, d, λ=w), up to tie-breaking
    among equal magnitudes at the trim.

    Args:
        task_vectors: Shape [n, ...] (or a sequence of n same-shape tensors).
        weights: Shape [n].
        density: Fraction of each τ_i kept, in (0, 1].
        lam: λ, the scale of the merged task vector.

    Returns:
        Shape [...] merged task vector (add it to the base) in the dtype of ``task_vectors``.
    """
    stacked = _stack(task_vectors)
    trimmed = torch.stack([trim_top_k(tau, density) for tau in stacked])
    sign = elect_sign(trimmed, weights)
    merged = disjoint_merge(trimmed, weights, sign)
    return (merged.to(_work_dtype(merged.dtype)) * lam).to(stacked.dtype)


def task_arithmetic(
    task_vectors: TensorStack, weights: torch.Tensor | Sequence[float], lam: float = 1.0
) -> torch.Tensor:
    """Task arithmetic (Ilharco et al., 2023, arXiv:2212.04089): λ Σ_i w_i τ_i, no trim and no normalisation.

    Args:
        task_vectors: Shape [n, ...] (or a sequence of n same-shape tensors).
        weights: Shape [n].
        lam: λ, the scale of the merged task vector.

    Returns:
        Shape [...] merged task vector in the dtype of ``task_vectors`` (summed in at least float32).
    """
    stacked = _stack(task_vectors)
    work = stacked.to(_work_dtype(stacked.dtype))
    return (lam * (work * _broadcast_weights(weights, work)).sum(dim=0)).to(stacked.dtype)


# ---- losses in their textbook form (the trainer computes them per pass: training/objectives) ----------


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    *,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid DPO loss per pair (no reduction), as TRL's ``loss_type="sigmoid"``.

    logits  = (log π(y_c) − log π(y_r)) − (log π_ref(y_c) − log π_ref(y_r)) = h(y_c) − h(y_r)
    loss    = −(1−ε) log σ(β·logits) − ε log σ(−β·logits)
    rewards = β (log π(y) − log π_ref(y)), detached (they are metrics, not part of the loss)

    With ε = 0 this is TRL 1.16's ``sigmoid`` loss. TRL 1.16 no longer applies ``label_smoothing`` to
    ``sigmoid``; ε > 0 gives the conservative-DPO form that older TRL's ``sigmoid`` used (and TRL 1.16 still
    uses for ``aot``): the label is assumed flipped with probability ε.

    Args:
        chosen_logps, rejected_logps: policy sequence log-probs, shape [B].
        ref_chosen_logps, ref_rejected_logps: reference sequence log-probs, shape [B].
        beta: the DPO temperature β.
        label_smoothing: ε in [0, 0.5).

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]).
    """
    logits = (chosen_logps - rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = _sigmoid_loss(beta * logits, label_smoothing)
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def linear_scalarization_loss(per_dim_losses: Tensor, weights: Tensor) -> Tensor:
    """Panacea's L_LS = Σ_i w_i L_DPO,i for one weight vector w (shapes [k] and [k])."""
    if per_dim_losses.shape != weights.shape or per_dim_losses.dim() != 1:
        raise ConfluxError(
            f"linear scalarization needs losses and weights of one shape [k]; got "
            f"{tuple(per_dim_losses.shape)} and {tuple(weights.shape)}"
        )
    return (weights * per_dim_losses).sum()


def panacea_loss(per_weight_dim_losses: Tensor, weight_vectors: Tensor) -> Tensor:
    """Panacea's step loss over m weight vectors: Σ_j Σ_i w_ji L_ji.

    L_ji is L_DPO,i of the policy at weight vector w_j; each step uses m = k+1 vectors (the k one-hots and
    one Dirichlet draw). A sum, not a mean, over j, as in the design: every w_j contributes a full L_LS.
    Shapes: [m, k] and [m, k].
    """
    if per_weight_dim_losses.shape != weight_vectors.shape or per_weight_dim_losses.dim() != 2:
        raise ConfluxError(
            f"panacea_loss needs losses and weights of one shape [m, k]; got "
            f"{tuple(per_weight_dim_losses.shape)} and {tuple(weight_vectors.shape)}"
        )
    return (weight_vectors * per_weight_dim_losses).sum()
