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


def magnitude_cut(row: torch.Tensor, k: int, buffers: MergeBuffers) -> tuple[float, int, int]:
    """(t, #|row| > t, #|row| >= t) for t the k-th largest |row| of a flat float32 row (not modified).

    With the compiled kernels: a strided sample brackets t, one pass counts the entries above the bracket
    and keeps those inside it (a few %), and t is selected among them; a sample that misled falls back to
    :func:`conflux.analysis.topk.top_k_cut` over all of |row|, as does a machine without the kernels.
    """
    n = row.numel()
    if native.load() is not None:
        sample = row[:: -(-n // CUT_SAMPLE)].abs().numpy()
        top = StreamingTopK(sample, n, k)
        if top.active:
            share = np.count_nonzero((sample >= top.lo) & (sample <= top.hi)) / sample.size
            capacity = min(n, int(n * share * 1.5) + 4096)
            band = thread_buffer("band", torch.float32).take(capacity + native.SPILL)
            sums = native.tau_pass(row, None, shift=0.0, lo=top.lo, hi=top.hi, band=band)
            if sums.band <= capacity and sums.above < k <= sums.above + sums.band:
                kept = band[: sums.band]
                t = kth_largest(kept.numpy(), k - sums.above, top.guess)
                at = native.tau_pass(kept, None, shift=0.0, lo=t, hi=t, band=torch.empty(native.SPILL))
                return t, sums.above + at.above, sums.above + at.above + at.band
    return top_k_cut(torch.abs(row, out=buffers.entry(0, n)).numpy(), k)


def ties_in_place(
    taus: torch.Tensor, weights: Sequence[float], density: float, lam: float, buffers: MergeBuffers
) -> torch.Tensor:
    """λ · TIES(τ) of a [n, numel] float32 stack, which is overwritten; returns a buffer view [numel]."""
    n, numel = taus.shape
    if native.load() is not None and n <= 4 and numel:
        k = trim_k(numel, density)
        thresholds = []
        for row in taus:
            if density >= 1.0 or k >= numel:
                thresholds.append(-math.inf)  # no trim
                continue
            t, above, at_or_above = magnitude_cut(row, k, buffers)
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
