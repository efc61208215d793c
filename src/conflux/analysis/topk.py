"""Exact top-k selection of magnitudes |τ|: of one array in memory, and of an array read in chunks.

In memory (:func:`top_k_cut`, :func:`top_k_indices`, :func:`top_k_mask`): the TIES trim of the merges, the
conflict tables and the dumps, for one tensor at a time.

In chunks (:class:`StreamingTopK`): the exact k-th largest entry, and the sum of squares of the k largest, of
a non-negative array that the statistics pass reads chunk by chunk. The TIES trim threshold of a task
vector is the k-th largest |τ| with k ≈ density·n, often a fifth of the entries. A selection over all of |τ|
(``np.partition``) costs ~2 ns an entry, more than every other statistic together. Instead, a strided sample
of |τ| taken before the chunks arrive brackets where the k-th largest should be, a few standard deviations
either side: ``lo`` below, ``hi`` above. Each chunk, while it is in cache, counts its entries above hi and
keeps only those in [lo, hi] (a few % of n); the k-th largest overall is then selected among those kept
(:func:`kth_largest`). The result is an order statistic: the same whichever of several equal entries is
counted.

Exactness never depends on the sample. When it misled (fewer than k entries >= lo, or k or more above hi),
or when keeping the entries >= lo would keep most of the array (a high density, or so many equal entries
that lo sits inside a run of them), :meth:`StreamingTopK.result` selects over the whole array instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from conflux.errors import ConfluxError

SAMPLE = 1 << 15  # sample size aimed at: it places lo and hi within ~1% of n of the k-th largest
MAX_KEPT = 0.5  # share of entries >= lo above which keeping them saves nothing over a full selection
_BLOCK = 1 << 16  # sum_squares: entries per float32 dot product
_SMALL, _GUESS_SAMPLE = 1 << 12, 1 << 10  # kth_largest: partition below _SMALL entries; re-guess sample


# ---- one array in memory ----------------------------------------------------------------------------------


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


def top_k_indices(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Flat indices (ascending) of the k largest entries, ties at the cut going to lower indices.

    Equal to the first k of a *stable* descending argsort, in O(n): :func:`top_k_cut` finds the k-th largest
    value t, one pass lists every entry >= t, and when more entries equal t than there is room for, the
    highest-indexed of them are dropped. A full argsort (mergekit's way) is O(n log n) and 50-100x slower on
    the 10⁷-10⁸-entry tensors of a 7B model, which made trimming the cost of a whole merge.
    """
    threshold, above, at_or_above = top_k_cut(magnitude, k)
    keep = np.flatnonzero(magnitude >= threshold)
    if at_or_above > k:
        tied = np.flatnonzero(magnitude[keep] == threshold)
        keep = np.delete(keep, tied[k - above :])
    return keep


def top_k_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest entries of a flat ``magnitude`` (:func:`top_k_indices`' selection)."""
    n = magnitude.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=magnitude.device)
    if magnitude.device.type == "cpu":
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.from_numpy(top_k_indices(magnitude.numpy(), k))] = True
        return mask
    # no introselect on accelerators; topk is their fast path
    threshold = float(torch.topk(magnitude, k, sorted=False).values.min())
    mask = magnitude > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        mask[torch.nonzero(magnitude == threshold).view(-1)[:missing]] = True
    return mask


# ---- chunks of a stream -----------------------------------------------------------------------------------


def sum_squares(values: np.ndarray) -> float:
    """Σ x² of a float32 array: float32 dot products over blocks, added in float64.

    One float32 dot over 10⁷ entries is off by ~1e-4 relative; blocks of 2^16 keep the error ~1e-6.
    """
    return math.fsum(float(np.dot(b, b)) for b in np.split(values, range(_BLOCK, values.size, _BLOCK)))


def sample_rank(sample: np.ndarray, rank: int) -> float:
    """The ``rank``-th largest entry of a (small) array, 1 <= rank <= size."""
    return float(np.partition(sample, sample.size - rank)[sample.size - rank])


def kth_largest(values: np.ndarray, k: int, guess: float | None = None) -> float:
    """The k-th largest entry of a float32 array (1 <= k <= size); ``values`` is not modified.

    Rounds of counting around a guess (the caller's, or one from a strided sample) keep only the side of it
    that holds the answer and stop at once when the guess is the answer; ``np.partition`` finishes when few
    entries remain. Quantised task vectors (both checkpoints bf16) have few distinct magnitudes: the guess
    is then usually exact, and np.partition, several-fold slower on long runs of equal values, never runs
    on many entries.
    """
    while values.size > _SMALL:
        if guess is None:
            sample = values[:: -(-values.size // _GUESS_SAMPLE)]
            guess = sample_rank(sample, min(sample.size, max(1, round(k * sample.size / values.size))))
        above = int(np.count_nonzero(np.greater(values, guess)))
        equal = int(np.count_nonzero(np.equal(values, guess)))
        if above < k <= above + equal:
            return guess
        size = values.size
        if k <= above:
            values = np.compress(np.greater(values, guess), values)
        else:
            k -= above + equal
            values = np.compress(np.less(values, guess), values)
        if values.size == size:  # a guess that is not an entry and below or above all of them: no progress
            break
        guess = None
    return sample_rank(values, k)


@dataclass(frozen=True)
class TopK:
    """The k-th largest entry (the trim threshold), the largest entry and Σ x² over the k largest."""

    threshold: float
    largest: float
    sum_squares: float


def exact_top_k(values: np.ndarray, k: int, guess: float | None = None) -> TopK:
    """:class:`TopK` by a selection over the whole array (``guess``: a value near the k-th largest)."""
    threshold = kth_largest(values, k, guess)
    greater = np.compress(np.greater(values, threshold), values)  # fewer than k entries, all in the top k
    top_squares = sum_squares(greater) + (k - greater.size) * threshold * threshold
    return TopK(threshold, float(values.max()), top_squares)


class StreamingTopK:
    """:class:`TopK` of an array of n non-negative float32 entries that arrives in chunks, in order.

    Args:
        sample: Entries at positions chosen without looking at the values (a stride), for the bracket.
        n: Number of entries in the whole array.
        k: Rank wanted, 1 <= k <= n.
    """

    def __init__(self, sample: np.ndarray, n: int, k: int) -> None:
        self.k = k
        m = sample.size
        expected = k * m / n  # rank of the k-th largest within the sample, counted from the top
        margin = 4 * math.sqrt(expected) + 32
        rank_lo, rank_hi = min(m, math.ceil(expected + margin)), math.floor(expected - margin)
        self.lo = self.hi = math.inf
        self.guess: float | None = None
        if m > 0:
            rank_guess = min(m, max(1, round(expected)))
            cuts = sorted({m - rank_lo, m - rank_guess, *([m - rank_hi] if rank_hi >= 1 else [])})
            part = np.partition(sample, cuts)
            self.lo, self.guess = float(part[m - rank_lo]), float(part[m - rank_guess])
            self.hi = float(part[m - rank_hi]) if rank_hi >= 1 else math.inf
        self.active = m > 0 and np.count_nonzero(np.greater_equal(sample, self.lo)) <= MAX_KEPT * m
        self._band: list[np.ndarray] = []  # entries in [lo, hi], the only ones kept
        self._kept = self._above = 0  # entries >= lo; entries > hi
        self._kept_squares = 0.0  # Σ x² over the entries >= lo
        self._largest = -math.inf

    def add(self, magnitude: np.ndarray, mask: np.ndarray) -> None:
        """Take the next chunk; ``mask`` is a bool scratch array of the chunk's size (overwritten)."""
        if not self.active:
            return
        kept = np.compress(np.greater_equal(magnitude, self.lo, out=mask), magnitude)
        if kept.size == 0:
            return
        self._kept += kept.size
        self._kept_squares += sum_squares(kept)
        self._largest = max(self._largest, float(kept.max()))
        band = kept if self.hi == math.inf else np.compress(np.less_equal(kept, self.hi), kept)
        self._above += kept.size - band.size
        self._band.append(band)

    def result(self, whole: Callable[[], np.ndarray]) -> TopK:
        """The :class:`TopK` of everything added; ``whole()`` gives the full array if a fallback needs it."""
        if not self.active or self._kept < self.k or self._above >= self.k:
            self._band.clear()
            return exact_top_k(whole(), self.k, self.guess)
        # Fewer than k entries are above hi, so all are among the k largest; the rest are the band's largest.
        band = np.concatenate(self._band)
        self._band.clear()
        need = self.k - self._above
        threshold = kth_largest(band, need, self.guess)
        greater = np.compress(np.greater(band, threshold), band)
        top_of_band = sum_squares(greater) + (need - greater.size) * threshold * threshold
        return TopK(threshold, self._largest, self._kept_squares - sum_squares(band) + top_of_band)
