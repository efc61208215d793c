"""Merging task vectors: TIES (trim, elect sign, disjoint merge) and task arithmetic, as pure functions.

Modelled on PEFT's ``peft/utils/merge_utils.py``: small functions on tensors, each unit-tested on hand-made
inputs, then composed in :func:`ties`. A streaming driver applies them tensor by tensor.

Task vectors of one parameter are stacked on dimension 0: ``task_vectors[i]`` is τ_i = θ_i − θ_base, and
``weights[i]`` is w_i. conflux follows **mergekit**'s conventions (see :func:`ties`), so a merge here equals
``mergekit``'s ``ties`` / ``task_arithmetic`` on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from conflux.errors import ConfluxError

TensorStack = torch.Tensor | Sequence[torch.Tensor]


def _stack(task_vectors: TensorStack) -> torch.Tensor:
    stacked = task_vectors if isinstance(task_vectors, torch.Tensor) else torch.stack(list(task_vectors))
    if stacked.dim() < 1 or stacked.shape[0] == 0:
        raise ConfluxError(f"need task vectors stacked on dim 0, got shape {tuple(stacked.shape)}")
    return stacked


def _broadcast_weights(weights: torch.Tensor | Sequence[float], tensors: torch.Tensor) -> torch.Tensor:
    """Weights [n] as a tensor shaped [n, 1, ..., 1] that broadcasts against ``tensors`` [n, ...]."""
    w = torch.as_tensor(weights, dtype=tensors.dtype, device=tensors.device)
    if w.shape != tensors.shape[:1]:
        raise ConfluxError(f"weights have shape {tuple(w.shape)}, expected ({tensors.shape[0]},)")
    return w.view(-1, *([1] * (tensors.dim() - 1)))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are merged in float32 (sums of bf16 lose too many digits); wider stays wider."""
    return torch.promote_types(dtype, torch.float32)


def trim_k(numel: int, density: float) -> int:
    """Entries the TIES trim keeps of a tensor: k = max(1, int(density · numel)), at most numel."""
    if not (isinstance(density, int | float) and 0.0 < density <= 1.0):  # NaN fails too
        raise ConfluxError(f"density must be in (0, 1], got {density!r}")
    return min(numel, max(1, int(density * numel)))


def top_k_values(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries of a flat array, unordered except that the smallest of them comes first.

    Exact, and much cheaper than a sort (O(n log n), mergekit's way) or a full selection: a strided sample
    gives a value ``lo`` just below the k-th largest, one pass keeps the entries >= ``lo`` (about k of them),
    and ``np.partition`` (introselect) runs on that small remainder only. If the sample misjudged (fewer than
    k entries >= ``lo``), the whole array is partitioned instead, so the result never depends on the sample.
    """
    return _top_k(magnitude, k)[0]


def top_k_cut(magnitude: np.ndarray, k: int) -> tuple[float, int, int]:
    """(t, #entries > t, #entries >= t) for t the k-th largest entry (as in :func:`top_k_values`)."""
    top, candidates = _top_k(magnitude, k)
    threshold = top[0]
    return (
        float(threshold),
        int(np.count_nonzero(top > threshold)),
        int(np.count_nonzero(candidates >= threshold)),
    )


def _top_k(magnitude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries and the candidate set they were selected from (every entry >= some lo <= t)."""
    n = magnitude.size
    if not 0 < k <= n:
        raise ConfluxError(f"k must be in [1, {n}], got {k}")
    candidates = None
    if n > 1 << 16:
        sample = magnitude[:: n // (1 << 15)]
        m = sample.size
        # rank of the k-th largest within the sample, pushed down by ~4 standard deviations plus a margin
        rank = min(m, int(k * m / n + 4 * math.sqrt(k * m / n) + 32))
        lo = np.partition(sample, m - rank)[m - rank]
        candidates = np.compress(magnitude >= lo, magnitude)  # np.compress: 3x faster than a[mask]
        if candidates.size < k:
            candidates = None
    if candidates is None:
        candidates = magnitude.copy()
    candidates.partition(candidates.size - k)  # in place: candidates stays a superset of the top k
    return candidates[candidates.size - k :], candidates


def top_k_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest entries of a flat ``magnitude``, ties at the cut going to lower indices.

    Equal to taking the first k of a *stable* descending argsort, in O(n): :func:`top_k_values` finds the
    k-th largest value t, every entry > t is kept, and the lowest-indexed entries equal to t fill the
    remaining places. A full argsort (mergekit's way) is O(n log n) and 50-100x slower on the
    10⁷-10⁸-entry tensors of a 7B model, which made trimming the cost of a whole merge.
    """
    n = magnitude.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=magnitude.device)
    if magnitude.device.type == "cpu":
        threshold = float(top_k_values(magnitude.numpy(), k)[0])
    else:  # no introselect on accelerators; topk is their fast path
        threshold = float(torch.topk(magnitude, k, sorted=False).values.min())
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        mask[torch.nonzero(magnitude == threshold).view(-1)[:missing]] = True
    return mask


def trim_top_k(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, int(density · numel)) entries of largest magnitude and zero the rest (TIES "trim").

    Same selection as mergekit's ``sparsify.magnitude``: the first k indices of ``argsort(|x|, descending)``
    (magnitudes compared in float32). mergekit's argsort is not stable, so its choice among equal magnitudes
    at the cut is unspecified; conflux keeps the lower flat index among equal magnitudes (as a stable sort
    would; see :func:`top_k_mask`). Unlike mergekit (which refuses k = 0) at least one entry is kept.
    ``density`` 1 returns the tensor as is.

    Args:
        tensor: Any shape and floating dtype.
        density: Fraction of entries to keep, in (0, 1].

    Returns:
        A tensor of the same shape and dtype with exactly k entries kept (fewer nonzeros if some were 0).
    """
    k = trim_k(tensor.numel(), density)
    if density >= 1.0 or tensor.numel() == 0:
        return tensor
    magnitude = tensor.detach().abs().reshape(-1).to(_work_dtype(tensor.dtype))
    mask = top_k_mask(magnitude, k)
    return torch.where(mask.view(tensor.shape), tensor, torch.zeros_like(tensor))


def elect_sign(tensors: torch.Tensor, weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Elect a sign per entry from the summed (weighted) mass (TIES "elect", mergekit's ``"sum"`` method).

    γ = sgn(Σ_i w_i τ_i), with +1 where the sum is >= 0: an entry whose mass is exactly 0 (all zero, or
    cancelling) elects +1, as in mergekit and PEFT.

    Args:
        tensors: Task vectors (usually trimmed) stacked on dim 0, shape [n, ...].
        weights: Shape [n]; ``None`` elects from the unweighted sum Σ_i τ_i (PEFT's ``"total"``).

    Returns:
        Shape [...] tensor of ±1 in the dtype of ``tensors``.
    """
    tensors = _stack(tensors)
    work = tensors.to(_work_dtype(tensors.dtype))
    if weights is not None:
        work = work * _broadcast_weights(weights, work)
    mass = work.sum(dim=0)
    return torch.where(mass >= 0, 1.0, -1.0).to(tensors.dtype)


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
    PEFT(τ, w·1, d) = w · conflux.ties(τ, w·1, d, λ=1) = conflux.ties(τ, w·1, d, λ=w), up to tie-breaking
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
