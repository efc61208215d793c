"""Percentile bootstrap over evaluation items (pairs or prompts), the confidence intervals of every table.

Why resample *counts* instead of index lists: a resample of n items is a vector of multiplicities
``c ~ Multinomial(n, 1/n)``, and every statistic that is a sum over items becomes a matrix product
``counts @ values``. One counts matrix, drawn once per evaluation set, is then shared by all methods, seeds
and settings, so their intervals come from the *same* resampled eval sets (a paired bootstrap): differences
between methods are not blurred by independent noise, and a setting that is a subset of the eval set gets
the subset's rows of the same draw.

The interval is the percentile interval of the resampled statistic at the requested level (Efron &
Tibshirani 1993, ch. 13). Resample count, level and RNG seed are arguments, so a table states them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from conflux.errors import ConfluxError


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile interval and the number of items it rests on."""

    point: float
    low: float
    high: float
    n: int


def check_bootstrap_args(resamples: int, level: float) -> None:
    """``resamples = 0`` switches intervals off (NaN); a level must lie strictly between 0 and 1."""
    if resamples < 0:
        raise ConfluxError(f"bootstrap resamples must be >= 0, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ConfluxError(f"confidence level must be in (0, 1), got {level}")


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n)`` multiplicities of n items in each bootstrap resample (each row sums to n)."""
    if n == 0 or resamples == 0:
        return np.zeros((resamples, n), dtype=np.int32)
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.int32)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) quantiles of ``samples`` along axis 0; NaN resamples (an empty subset) are ignored."""
    if samples.shape[0] == 0:
        nan = np.full(samples.shape[1:], np.nan)
        return nan, nan
    alpha = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column means "no interval": NaN
        low, high = np.nanquantile(samples, [alpha, 1.0 - alpha], axis=0)
    return low, high


class PairResampler:
    """One bootstrap draw over a fixed universe of item ids, sliced for any subset of them.

    The universe is sorted, so the draw depends on the set of ids and the seed, not on file order.
    Memory is ``resamples × len(universe)`` int32 (1000 × 10,000 pairs = 40 MB).
    """

    def __init__(self, ids: Sequence[str], resamples: int, level: float, seed: int) -> None:
        check_bootstrap_args(resamples, level)
        self.ids = sorted(set(ids))
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        self.resamples = resamples
        self.level = level
        self.seed = seed
        self.counts = resample_counts(len(self.ids), resamples, seed)

    def counts_for(self, ids: Sequence[str]) -> np.ndarray:
        """``(resamples, len(ids))`` multiplicities of these ids (their columns of the shared draw)."""
        missing = [pid for pid in ids if pid not in self.index]
        if missing:
            raise ConfluxError(f"{len(missing)} ids are not in the bootstrap universe (first: {missing[:3]})")
        cols = np.fromiter((self.index[pid] for pid in ids), dtype=np.int64, count=len(ids))
        return self.counts[:, cols]


def bootstrap_mean(values: np.ndarray, counts: np.ndarray, level: float) -> Estimate:
    """Mean of ``values`` over items (axis 0), averaged over any further axis (seeds), with its interval.

    ``values`` is ``(n,)`` or ``(n, S)`` for S seeds scored on the same n items; the point estimate is the
    mean over seeds of each seed's item mean, and each resample reweights the items of every seed alike.
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    n = v.shape[0]
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(v.mean(axis=0).mean())
    size = counts.sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ v).mean(axis=1) / size
    low, high = percentile_interval(boot, level)
    return Estimate(point, float(low), float(high), n)


def bootstrap_ratio(
    numer: np.ndarray,
    denom: np.ndarray,
    counts: np.ndarray,
    level: float,
    transform: Callable[[np.ndarray], np.ndarray] = lambda x: x,
) -> Estimate:
    """transform(Σ numer / Σ denom) over items, per seed column, averaged over seeds, with its interval.

    Perplexity is ``transform=np.exp`` of total NLL / total tokens: a ratio of sums, not a mean of
    per-item ratios, so long responses weigh by their token count as in a corpus perplexity.
    """
    a = np.asarray(numer, dtype=np.float64).reshape(len(numer), -1)
    b = np.asarray(denom, dtype=np.float64).reshape(len(denom), -1)
    n = a.shape[0]
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    point = float(transform(a.sum(axis=0) / b.sum(axis=0)).mean())
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        boot = transform((counts @ a) / (counts @ b)).mean(axis=1)
    low, high = percentile_interval(boot, level)
    return Estimate(point, float(low), float(high), n)
