"""TIES and task arithmetic on one parameter's stacked task vectors, in place on reused buffers.

TIES-Merging (Yadav et al., 2023, arXiv:2306.01708) and task arithmetic (Ilharco et al., 2023,
arXiv:2212.04089). conflux follows **mergekit**'s ``ties`` (``normalize=True``) and ``task_arithmetic``, and a
merge here equals mergekit's on the same inputs (tests/test_mergekit_parity.py):

1. trim: zero every entry of τ_i below the k-th largest |τ_i|, k = max(1, int(density·n)), and, among
   entries equal to it, all but the lowest-indexed ones (:func:`conflux.analysis.ties.trim_top_k`'s
   selection; mergekit's argsort leaves that choice unspecified);
2. weight: τ_i ← w_i τ_i;
3. elect: e = +1 where Σ_i w_i τ_i >= 0, else −1 (the sign is elected from the *weighted* vectors);
4. disjoint mean: Σ_{agree} w_i τ_i / Σ_{agree} w_i, where τ_i agrees when sgn(w_i τ_i) = e, i.e.
   w_i τ_i · e > 0 (a divisor of 0 becomes 1), divided by the *sum of agreeing weights*;
5. scale by λ.

PEFT's ``merge_utils.ties`` differs: it elects from the *unweighted* trimmed vectors, divides by the *count*
of agreeing entries and has no λ. With equal weights w > 0 both elect the same sign and
PEFT(τ, w·1, d) = conflux(τ, w·1, d, λ=w), up to tie-breaking among equal magnitudes at the trim.

Why in place: on the 10⁷-10⁸-entry tensors of a 7B model every temporary is a fresh allocation that the
kernel page-faults in, and those faults, not the arithmetic, dominated a streamed merge. So each step works
on a caller-owned stack of task vectors and a few buffers kept across tensors; the results are bitwise equal
to a pure step-by-step reference (tests/reference_impl.py, pinned by tests/test_weight_merge.py).

Where the compiled kernels exist (:mod:`conflux.analysis.native`) and n <= 4, the threshold of each row is
selected from the band of entries a sample places near it (one kernel pass, as the statistics do) and the
steps 2-5 run per entry in C, in the same float32 operations and order: bitwise the same result, ~5x faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from conflux.analysis import native
from conflux.analysis.tensor_io import ScratchBuffer, thread_buffer
from conflux.analysis.ties import trim_k
from conflux.analysis.topk import StreamingTopK, kth_largest, top_k_cut

CUT_SAMPLE = 1 << 13  # strided sample that brackets a row's trim threshold for the compiled path


class MergeBuffers:
    """Scratch space for merging n task vectors, grown to the largest parameter and reused."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._stack = ScratchBuffer()
        self._entries = [ScratchBuffer() for _ in range(4)]
        self._flags = ScratchBuffer(torch.bool)

    def stack(self, numel: int) -> torch.Tensor:
        """[n, numel] float32 rows (contents undefined): the task vectors."""
        return self._stack.take(self.n * numel).view(self.n, numel)

    def entry(self, i: int, numel: int) -> torch.Tensor:
        return self._entries[i].take(numel)

    def flags(self, numel: int, rows: int = 1) -> torch.Tensor:
        """[rows, numel] bools (``rows`` <= n; contents undefined), or flat [numel] when rows is 1."""
        flags = self._flags.take(max(rows, 1) * numel)
        return flags if rows == 1 else flags.view(rows, numel)


def trim_in_place(row: torch.Tensor, k: int, buffers: MergeBuffers) -> None:
    """Zero all but the k largest |row| entries, ties at the cut going to lower indices (flat float32 row).

    Zeroing multiplies by a 0/1 mask (4x faster than ``masked_fill_``), as mergekit's ``tensor * mask``
    does; a dropped negative entry becomes -0.0, which compares and sums like 0.0.
    """
    numel = row.numel()
    if k >= numel:
        return
    magnitude = torch.abs(row, out=buffers.entry(0, numel))
    threshold, above, at_or_above = top_k_cut(magnitude.numpy(), k)
    row.mul_(torch.ge(magnitude, threshold, out=buffers.entry(3, numel)))
    if at_or_above > k:  # more entries equal the k-th largest than fit: keep the lowest-indexed ones
        at_threshold = torch.nonzero(torch.eq(magnitude, threshold, out=buffers.flags(numel))).view(-1)
        row[at_threshold[k - above :]] = 0.0


def magnitude_cut(
    a: torch.Tensor,
    k: int,
    buffers: MergeBuffers,
    b: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[float, int, int]:
    """(t, #|τ| > t, #|τ| >= t) for t the k-th largest |τ| of a flat τ: ``a`` (float32, not modified), or
    a − b for the stored tensors of a full fine-tune, then written to ``out`` by the same pass.

    With the compiled kernels: a strided sample brackets t, one pass counts the entries above the bracket
    and keeps those inside it (a few %), and t is selected among them; a sample that misled falls back to
    :func:`conflux.analysis.topk.top_k_cut` over all of |τ|, as does a machine without the kernels (which
    must be given τ itself).
    """
    n = a.numel()
    tau = a if out is None else out[:n]
    if native.load() is not None:
        stride = -(-n // CUT_SAMPLE)
        sample = a[::stride].to(torch.float32, copy=True)
        if b is not None:
            sample.sub_(b[::stride])
        sample = sample.abs_().numpy()
        top = StreamingTopK(sample, n, k)
        lo, hi = (top.lo, top.hi) if top.active else (math.inf, math.inf)
        share = np.count_nonzero((sample >= lo) & (sample <= hi)) / sample.size
        capacity = min(n, int(n * share * 1.5) + 4096)
        band = thread_buffer("band", torch.float32).take(capacity + native.SPILL)
        sums = native.tau_pass(a, b, shift=0.0, lo=lo, hi=hi, band=band, out=out)
        if top.active and sums.band <= capacity and sums.above < k <= sums.above + sums.band:
            kept = band[: sums.band]
            t = kth_largest(kept.numpy(), k - sums.above, top.guess)
            at = native.tau_pass(kept, None, shift=0.0, lo=t, hi=t, band=torch.empty(native.SPILL))
            return t, sums.above + at.above, sums.above + at.above + at.band
    return top_k_cut(torch.abs(tau, out=buffers.entry(0, n)).numpy(), k)


def ties_in_place(
    taus: torch.Tensor,
    weights: Sequence[float],
    density: float,
    lam: float,
    buffers: MergeBuffers,
    cuts: Sequence[tuple[float, int, int] | None] | None = None,
) -> torch.Tensor:
    """λ · TIES(τ) of a [n, numel] float32 stack, which is overwritten; returns a buffer view [numel].

    ``cuts[i]``, where given, is row i's :func:`magnitude_cut`, found while the row was written (the compiled
    path only: without the kernels every row's cut is found here).
    """
    n, numel = taus.shape
    if native.load() is not None and n <= 4 and numel:
        k = trim_k(numel, density)
        thresholds = []
        for i, row in enumerate(taus):
            if density >= 1.0 or k >= numel:
                thresholds.append(-math.inf)  # no trim
                continue
            cut = cuts[i] if cuts is not None else None
            t, above, at_or_above = cut if cut is not None else magnitude_cut(row, k, buffers)
            if at_or_above > k:  # more entries equal the k-th largest than fit: keep the lowest-indexed ones
                native.zero_ties_after(row, t, k - above)
            thresholds.append(t)
        return native.ties_merge(taus, [float(w) for w in weights], thresholds, lam, buffers.entry(1, numel))
    if density < 1.0 and numel:
        k = trim_k(numel, density)
        for row in taus:
            trim_in_place(row, k, buffers)
    for row, w in zip(taus, weights, strict=True):
        row.mul_(w)
    mass = torch.sum(taus, dim=0, out=buffers.entry(1, numel))
    elected = torch.ge(mass, 0, out=buffers.entry(2, numel)).mul_(2).sub_(1)  # ±1
    agree = buffers.flags(numel, rows=n)  # bools, not a second float32 stack: n·numel·3 bytes less
    for i in range(n):  # sgn(w_i τ_i) = e  <=>  w_i τ_i · e > 0
        torch.gt(torch.mul(taus[i], elected, out=buffers.entry(0, numel)), 0, out=agree[i])
        taus[i].mul_(agree[i])
    merged = torch.sum(taus, dim=0, out=buffers.entry(1, numel))
    # The task vectors are summed; their rows now hold w_i · agree_i, summed as mergekit sums them.
    for i, w in enumerate(weights):
        torch.mul(agree[i], w, out=taus[i])
    divisor = torch.sum(taus, dim=0, out=buffers.entry(2, numel))
    divisor.add_(torch.eq(divisor, 0, out=buffers.entry(3, numel)))  # 0 -> 1 (mergekit's divisor fix)
    return merged.div_(divisor).mul_(lam)


def task_arithmetic_in_place(
    taus: torch.Tensor, weights: Sequence[float], lam: float, buffers: MergeBuffers
) -> torch.Tensor:
    """λ Σ_i w_i τ_i of a [n, numel] float32 stack, which is overwritten; returns a buffer view [numel]."""
    for row, w in zip(taus, weights, strict=True):
        row.mul_(w)
    return torch.sum(taus, dim=0, out=buffers.entry(1, taus.shape[1])).mul_(lam)
