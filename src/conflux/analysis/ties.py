"""The TIES steps that merges and conflict norms share: trim to the top-k magnitudes, and elect a sign.

TIES-Merging (Yadav et al., 2023, arXiv:2306.01708) trims each task vector, elects a sign per entry and
averages the entries that agree with it. The Conflict-Limited L2 norm (:mod:`conflux.analysis.conflict_norm`)
uses the same trim and election to find where task vectors disagree, so both live here as small pure
functions on tensors (modelled on PEFT's ``peft/utils/merge_utils.py``), unit-tested on hand-made inputs.
The merge itself runs in place (:mod:`conflux.analysis.merge_kernels`).

Task vectors of one parameter are stacked on dimension 0: ``task_vectors[i]`` is τ_i = θ_i − θ_base, and
``weights[i]`` is w_i. conflux follows **mergekit**'s conventions (see :mod:`conflux.analysis.merge_kernels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from conflux.analysis.topk import top_k_mask
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
