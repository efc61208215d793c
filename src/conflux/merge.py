"""Merging task vectors: TIES (trim, elect sign, disjoint merge) and task arithmetic, as pure functions.

Modelled on PEFT's ``peft/utils/merge_utils.py``: small functions on tensors, each unit-tested on hand-made
inputs, then composed in :func:`ties`. A streaming driver applies them tensor by tensor.

Task vectors of one parameter are stacked on dimension 0: ``task_vectors[i]`` is τ_i = θ_i − θ_base, and
``weights[i]`` is w_i. conflux follows **mergekit**'s conventions (see :func:`ties`), so a merge here equals
``mergekit``'s ``ties`` / ``task_arithmetic`` on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def trim_top_k(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, int(density · numel)) entries of largest magnitude and zero the rest (TIES "trim").

    Same selection as mergekit's ``sparsify.magnitude``: the first k indices of ``argsort(|x|, descending)``
    (magnitudes compared in float32). mergekit's argsort is not stable, so its choice among equal magnitudes
    at the cut is unspecified; conflux sorts stably, so among equal magnitudes the lower flat index is kept.
    Unlike mergekit (which refuses k = 0) at least one entry is kept. ``density`` 1 returns the tensor as is.

    Args:
        tensor: Any shape and floating dtype.
        density: Fraction of entries to keep, in (0, 1].

    Returns:
        A tensor of the same shape and dtype with exactly k entries kept (fewer nonzeros if some were 0).
    """
    if not (isinstance(density, int | float) and 0.0 < density <= 1.0):  # NaN fails too
        raise ConfluxError(f"density must be in (0, 1], got {density!r}")
    if density >= 1.0 or tensor.numel() == 0:
        return tensor
    k = min(tensor.numel(), max(1, int(density * tensor.numel())))
    magnitude = tensor.detach().abs().reshape(-1).to(_work_dtype(tensor.dtype))
    keep = torch.argsort(magnitude, descending=True, stable=True)[:k]
    mask = torch.zeros(tensor.numel(), dtype=torch.bool, device=tensor.device)
    mask[keep] = True
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
