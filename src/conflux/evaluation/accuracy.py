"""Accuracy of implicit-reward margins under preference weights: the papers' Table 1 and Table 2 numbers.

A *setting* is a weight w and the held-out pairs it is judged on. A pair counts as correct when the sign of
r_w(y_a) − r_w(y_b) equals its label sign(w·s_a − w·s_b); a margin of exactly 0 is wrong (no preference
expressed), and pairs whose label is 0 (a tie under w) are dropped from that setting and counted.

* Table 1 (k = 2): w = 1_i on every held-out conflict pair, i.e. accuracy against dimension i's own label.
* Table 2 (k = 5): every dimension pair (a, b) × each grid weight (w_a, w_b) on the pairs where a and b
  prefer opposite responses → 10 × 5 = 50 settings; per method the *win rate* (share of settings where it
  has the highest accuracy; methods tied for best split that setting's win equally) and the mean accuracy
  over settings.

Every number is given per seed and as the mean over seeds. Intervals come from one paired bootstrap over
the eval pairs (:class:`conflux.evaluation.bootstrap.PairResampler`): each resample reweights the same pairs
for every method, seed and setting, and the win rate and mean accuracy are recomputed on it. Methods must
share the seed list and the pair sets (they are scored on the same eval file); anything else is an error, not
a silent average.
Accuracies are compared as integer counts of correct pairs, so "tied for best" means exactly equal.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from conflux.errors import ConfluxError
from conflux.evaluation.bootstrap import PairResampler, percentile_interval
from conflux.evaluation.records import WEIGHT_GRID, Weight, d_columns, pair_weight, unit_weight, w_columns
from conflux.evaluation.report_files import MEAN


@dataclass(frozen=True)
class Cell:
    """Correctness of every method and seed on one setting's used pairs (ties under w already dropped)."""

    methods: list[str]
    seeds: list[int]
    pair_ids: list[str]
    ties_dropped: int
    correct: np.ndarray  # (methods, seeds, pairs) bool


@dataclass(frozen=True)
class GroupStats:
    """Integer correct counts of each method over one seed group (one seed, or all), point and resampled."""

    seed: str
    n_seeds: int
    totals: np.ndarray  # (methods,)
    denom: int  # used pairs × seeds in the group
    boot_totals: np.ndarray  # (resamples, methods)
    boot_denom: np.ndarray  # (resamples,)

    def accuracy(self) -> np.ndarray:
        return self.totals / self.denom if self.denom else np.full(len(self.totals), np.nan)

    def boot_accuracy(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.boot_totals / self.boot_denom[:, None]


def method_order(records: pd.DataFrame) -> list[str]:
    """Methods in order of first appearance (the order the caller listed the records files in)."""
    return list(dict.fromkeys(records["method"]))


def seed_list(records: pd.DataFrame) -> list[int]:
    """The common seeds of every method; an error names a method whose seeds differ."""
    per_method = {m: sorted(set(g["seed"].astype(int))) for m, g in records.groupby("method", sort=False)}
    seeds = next(iter(per_method.values()))
    for method, own in per_method.items():
        if own != seeds:
            raise ConfluxError(
                f"method {method!r} has seeds {own}, others have {seeds}; rerun the missing seeds"
            )
    return seeds


def select(records: pd.DataFrame, w: Weight, conflict_dims: tuple[int, int] | None = None) -> pd.DataFrame:
    """Records at weight w, optionally only the pairs where dimensions a and b prefer opposite responses."""
    cols = w_columns(len(w))
    mask = np.all(np.isclose(records[cols].to_numpy(dtype=np.float64), np.asarray(w), atol=1e-9), axis=1)
    if conflict_dims is not None:
        da, db = (records[d_columns(len(w))[i]].to_numpy() for i in conflict_dims)
        mask &= da * db < 0
    return records[mask]


def score_cell(sub: pd.DataFrame, methods: Sequence[str], seeds: Sequence[int]) -> Cell:
    """Correctness matrix of a setting; every (method, seed) must hold the same pairs with the same labels."""
    if sub.duplicated(["method", "seed", "pair_id"]).any():
        raise ConfluxError("a (method, seed, pair) appears twice at one weight in the records")
    index = pd.MultiIndex.from_product([list(methods), [int(s) for s in seeds]], names=["method", "seed"])
    keyed = sub.assign(seed=sub["seed"].astype(int)).set_index(["method", "seed", "pair_id"])
    margins = keyed["margin"].unstack("pair_id").reindex(index)
    labels = keyed["label"].unstack("pair_id").reindex(index)
    pair_ids = list(margins.columns)
    if pair_ids and margins.isna().to_numpy().any():
        rows = margins.index[margins.isna().any(axis=1)].tolist()
        raise ConfluxError(
            f"(method, seed) {rows} lack pairs that others have at this weight: not one eval set"
        )
    label_matrix = labels.to_numpy(dtype=np.float64)
    if pair_ids and (label_matrix != label_matrix[:1]).any():
        raise ConfluxError("the same pair has different labels in two records files: not one eval set")
    label = label_matrix[0] if pair_ids else np.zeros(0)
    used = label != 0
    m = margins.to_numpy(dtype=np.float64)[:, used]
    correct = (np.sign(m) == label[used]).reshape(len(methods), len(seeds), int(used.sum()))
    return Cell(
        list(methods),
        [int(s) for s in seeds],
        [p for p, u in zip(pair_ids, used, strict=True) if u],
        int((~used).sum()),
        correct,
    )


def group_stats(cell: Cell, resampler: PairResampler) -> list[GroupStats]:
    """Per seed and for the mean over seeds (sums over seeds: same pairs, so the mean of accuracies)."""
    counts = resampler.counts_for(cell.pair_ids)  # (resamples, pairs)
    size = counts.sum(axis=1).astype(np.int64)
    n = len(cell.pair_ids)
    groups = [(str(s), [j]) for j, s in enumerate(cell.seeds)] + [(MEAN, list(range(len(cell.seeds))))]
    out = []
    for name, cols in groups:
        per_pair = cell.correct[:, cols, :].sum(axis=1).astype(np.int64)  # (methods, pairs)
        out.append(
            GroupStats(
                name,
                len(cols),
                per_pair.sum(axis=1),
                n * len(cols),
                counts.astype(np.int64) @ per_pair.T,
                size * len(cols),
            )
        )
    return out


def win_shares(totals: np.ndarray) -> np.ndarray:
    """Each method's share of one setting's win: 1 for a sole best, 1/t each when t methods tie for best.

    ``totals`` is ``(..., methods)`` integer counts of correct pairs over the same pairs and seeds.
    """
    best = totals.max(axis=-1, keepdims=True)
    is_best = totals == best
    return is_best / is_best.sum(axis=-1, keepdims=True)


# ---- Table 1 -----------------------------------------------------------------------------------------------


def table1(
    records: pd.DataFrame, dims: Sequence[str], *, resamples: int, level: float, seed: int
) -> pd.DataFrame:
    """Accuracy at w = 1_i against dimension i's label, per method × dimension, per seed and mean.

    Returns a long frame: method, seed (a seed or ``"mean"``), dim, accuracy, ci_low, ci_high, n (used
    pairs), ties_dropped, seeds (how many seeds the row averages).
    """
    methods, seeds = method_order(records), seed_list(records)
    resampler = PairResampler(records["pair_id"].unique().tolist(), resamples, level, seed)
    rows = []
    for i, dim in enumerate(dims):
        cell = score_cell(select(records, unit_weight(len(dims), i)), methods, seeds)
        for g in group_stats(cell, resampler):
            acc, (low, high) = g.accuracy(), percentile_interval(g.boot_accuracy(), level)
            for j, method in enumerate(methods):
                rows.append(
                    {
                        "method": method,
                        "seed": g.seed,
                        "dim": dim,
                        "accuracy": acc[j],
                        "ci_low": low[j],
                        "ci_high": high[j],
                        "n": len(cell.pair_ids),
                        "ties_dropped": cell.ties_dropped,
                        "seeds": g.n_seeds,
                    }
                )
    return _order(pd.DataFrame(rows), seeds)


def table1_wide(long: pd.DataFrame, dims: Sequence[str]) -> pd.DataFrame:
    """Table-1 shape: one row per (method, seed), per dimension its accuracy, interval, n and ties."""
    out = long[["method", "seed"]].drop_duplicates().reset_index(drop=True)
    for dim in dims:
        part = long[long["dim"] == dim].set_index(["method", "seed"])
        keyed = out.set_index(["method", "seed"]).index
        for col, name in (
            ("accuracy", dim),
            ("ci_low", f"{dim}_ci_low"),
            ("ci_high", f"{dim}_ci_high"),
            ("n", f"{dim}_n"),
            ("ties_dropped", f"{dim}_ties_dropped"),
        ):
            out[name] = part[col].reindex(keyed).to_numpy()
    return out


# ---- Table 2 -----------------------------------------------------------------------------------------------


def table2(
    records: pd.DataFrame,
    dims: Sequence[str],
    *,
    resamples: int,
    level: float,
    seed: int,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dimension-pair × weight settings and the per-method win rate and mean accuracy over them.

    Returns ``(settings, summary)``. ``settings``: dim_a, dim_b, w_a, w_b, method, seed, accuracy, ci_low,
    ci_high, n, ties_dropped, win_share. ``summary``: method, seed, win_rate (+ ci), mean_accuracy (+ ci),
    settings (with at least one used pair), settings_empty, seeds. A setting without pairs is listed with
    n = 0 and left out of win rate and mean accuracy (and counted in settings_empty).
    """
    methods, seeds = method_order(records), seed_list(records)
    k = len(dims)
    resampler = PairResampler(records["pair_id"].unique().tolist(), resamples, level, seed)
    rows = []
    per_group: dict[str, list[GroupStats]] = {}
    for a, b in combinations(range(k), 2):
        for w_a, w_b in grid:
            cell = score_cell(select(records, pair_weight(k, a, b, w_a, w_b), (a, b)), methods, seeds)
            for g in group_stats(cell, resampler):
                acc, (low, high) = g.accuracy(), percentile_interval(g.boot_accuracy(), level)
                share = win_shares(g.totals) if cell.pair_ids else np.full(len(methods), np.nan)
                for j, method in enumerate(methods):
                    rows.append(
                        {
                            "dim_a": dims[a],
                            "dim_b": dims[b],
                            "w_a": w_a,
                            "w_b": w_b,
                            "method": method,
                            "seed": g.seed,
                            "accuracy": acc[j],
                            "ci_low": low[j],
                            "ci_high": high[j],
                            "n": len(cell.pair_ids),
                            "ties_dropped": cell.ties_dropped,
                            "win_share": share[j],
                        }
                    )
                per_group.setdefault(g.seed, []).append(g)
    settings = pd.DataFrame(rows)
    summary = []
    for group, stats in per_group.items():
        used = [g for g in stats if g.denom > 0]
        if used:
            acc = np.stack([g.accuracy() for g in used])  # (settings, methods)
            wins = np.stack([win_shares(g.totals) for g in used])
            boot_acc = np.stack([g.boot_accuracy() for g in used])  # (settings, resamples, methods)
            boot_wins = np.stack([_boot_shares(g) for g in used])
            with np.errstate(invalid="ignore"):
                acc_low, acc_high = percentile_interval(_nanmean0(boot_acc), level)
                win_low, win_high = percentile_interval(_nanmean0(boot_wins), level)
            win_rate, mean_acc = wins.mean(axis=0), acc.mean(axis=0)
        else:
            nan = np.full(len(methods), np.nan)
            win_rate = mean_acc = acc_low = acc_high = win_low = win_high = nan
        for j, method in enumerate(methods):
            summary.append(
                {
                    "method": method,
                    "seed": group,
                    "win_rate": win_rate[j],
                    "win_rate_ci_low": win_low[j],
                    "win_rate_ci_high": win_high[j],
                    "mean_accuracy": mean_acc[j],
                    "mean_accuracy_ci_low": acc_low[j],
                    "mean_accuracy_ci_high": acc_high[j],
                    "settings": len(used),
                    "settings_empty": len(stats) - len(used),
                    "seeds": stats[0].n_seeds,
                }
            )
    return _order(settings, seeds), _order(pd.DataFrame(summary), seeds)


def _boot_shares(g: GroupStats) -> np.ndarray:
    """Win shares in every resample; NaN in a resample that drew none of the setting's pairs."""
    shares = win_shares(g.boot_totals).astype(np.float64)
    shares[g.boot_denom == 0] = np.nan
    return shares


def _nanmean0(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may miss every setting: NaN, no interval
        return np.nanmean(x, axis=0)


def _order(frame: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """The mean over seeds first, then each seed; within a group the rows keep their built order."""
    if frame.empty:
        return frame
    rank = frame["seed"].map({MEAN: -1, **{str(s): i for i, s in enumerate(seeds)}})
    return frame.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)
