"""The Conflict-Limited L2 norm: how much of a task vector's mass sits where task vectors disagree in sign.

For a set of task vectors trimmed with the same density, the conflict mask marks the entries where their
*nonzero* signs disagree (at least one positive and one negative); a zero never creates a conflict. Then

    CL-L2(τ_t) = ‖τ_t ⊙ mask‖₂        share(τ_t) = CL-L2(τ_t) / ‖τ_t‖₂   (0 when ‖τ_t‖₂ = 0)

computed per layer and parameter. The mask can also be taken against the elected TIES sign
(:func:`conflict_mask_vs_sign`): the mass of τ_t that the disjoint merge throws away. Norms are accumulated
in float32 (float64 stays float64), so bf16 / fp16 task vectors give float32 results.
"""

from __future__ import annotations

import torch

from conflux.analysis.ties import trim_top_k
from conflux.errors import ConfluxError


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ConfluxError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


def conflict_mask(trimmed: torch.Tensor) -> torch.Tensor:
    """Entries where the nonzero signs of the task vectors disagree.

    Args:
        trimmed: Task vectors (trimmed with the same density) stacked on dim 0, shape [n, ...].

    Returns:
        Bool tensor of shape [...]: True where at least one τ_i > 0 and at least one τ_j < 0.
    """
    if trimmed.dim() < 1 or trimmed.shape[0] == 0:
        raise ConfluxError(f"need task vectors stacked on dim 0, got shape {tuple(trimmed.shape)}")
    return (trimmed > 0).any(dim=0) & (trimmed < 0).any(dim=0)


def conflict_mask_vs_sign(trimmed_t: torch.Tensor, elected_sign: torch.Tensor) -> torch.Tensor:
    """Entries where τ_t is nonzero and its sign differs from the elected sign.

    Args:
        trimmed_t: One (trimmed) task vector, shape [...].
        elected_sign: Shape [...] of ±1, e.g. :func:`conflux.analysis.ties.elect_sign`.

    Returns:
        Bool tensor of shape [...].
    """
    _check_same_shape(trimmed_t, elected_sign, "conflict_mask_vs_sign")
    sign = trimmed_t.sign()
    return (sign != 0) & (sign != elected_sign.sign().to(sign.dtype))


def conflict_limited_l2(tau: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CL-L2 = ‖τ ⊙ mask‖₂.

    Args:
        tau: A task vector, shape [...], any floating dtype.
        mask: Bool tensor of the same shape (e.g. :func:`conflict_mask`).

    Returns:
        0-dim tensor in float32 (float64 for float64 input).
    """
    _check_same_shape(tau, mask, "conflict_limited_l2")
    work = tau.to(_norm_dtype(tau.dtype))
    return torch.linalg.vector_norm(torch.where(mask, work, torch.zeros_like(work)))


def conflict_share(tau: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of τ's L2 norm that is in conflict: CL-L2(τ) / ‖τ‖₂, and 0 when ‖τ‖₂ = 0.

    Args:
        tau: A task vector, shape [...].
        mask: Bool tensor of the same shape.

    Returns:
        0-dim tensor in [0, 1], float32 (float64 for float64 input).
    """
    total = torch.linalg.vector_norm(tau.to(_norm_dtype(tau.dtype)))
    limited = conflict_limited_l2(tau, mask)
    return torch.where(total > 0, limited / torch.where(total > 0, total, 1.0), torch.zeros_like(total))


def pairwise_conflict(tau_a: torch.Tensor, tau_b: torch.Tensor, density: float) -> dict[str, float]:
    """Conflict statistics of two task vectors (SFT vs DPO, dataset vs dataset, dim_i vs dim_j).

    Both are trimmed with the same ``density`` (:func:`conflux.analysis.ties.trim_top_k`) before the mask is
    taken; all norms are of the *trimmed* vectors (with density 1, of the vectors themselves).

    Args:
        tau_a: Task vector a, shape [...].
        tau_b: Task vector b, same shape.
        density: Fraction kept by the trim, in (0, 1].

    Returns:
        ``l2_a``, ``l2_b`` (‖τ̂‖₂), ``cl_l2_a``, ``cl_l2_b`` (CL-L2), ``share_a``, ``share_b`` (CL-L2 / ‖τ̂‖₂),
        and ``conflict_fraction`` (entries in conflict / all entries; 0 for an empty tensor), as floats.
    """
    _check_same_shape(tau_a, tau_b, "pairwise_conflict")
    trim_a, trim_b = trim_top_k(tau_a, density), trim_top_k(tau_b, density)
    mask = conflict_mask(torch.stack([trim_a, trim_b]))
    stats: dict[str, float] = {}
    for name, trimmed in (("a", trim_a), ("b", trim_b)):
        stats[f"l2_{name}"] = float(torch.linalg.vector_norm(trimmed.to(_norm_dtype(trimmed.dtype))))
        stats[f"cl_l2_{name}"] = float(conflict_limited_l2(trimmed, mask))
        stats[f"share_{name}"] = float(conflict_share(trimmed, mask))
    stats["conflict_fraction"] = float(mask.sum()) / mask.numel() if mask.numel() else 0.0
    return stats
