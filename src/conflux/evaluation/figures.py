"""Figures of the curriculum study, drawn with matplotlib's object API (no pyplot, no global backend state).

A ``matplotlib.figure.Figure`` made directly renders through the Agg canvas, so figures are written on a
headless cluster node without choosing a backend and without touching other code's pyplot state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from conflux.evaluation.report_files import MEAN


def figure2(
    settings: pd.DataFrame, *, seed: str = MEAN, ncols: int = 5, paired_with: str | None = None
) -> Figure:
    """Accuracy against the preference weight, one panel per dimension pair (the paper's Figure 2).

    x is the weight on the pair's first dimension a (the second gets 1 − x); each method is a line with its
    bootstrap interval as error bars. Panel titles give the number of conflict pairs of that dimension pair;
    a weight's n can be lower where ties under w were dropped (see the settings table).

    Args:
        settings: the ``settings`` frame of :func:`conflux.evaluation.accuracy.table2`.
        seed: which seed group to draw: ``"mean"`` (default) or one seed as a string.
        paired_with: only the pairs of this dimension with each other one, this dimension on x (the paper's
            Figure 3: helpfulness against each other dimension).
    """
    data = settings[settings["seed"] == seed]
    if paired_with is not None:
        data = _paired_with(data, paired_with)
    pairs = list(dict.fromkeys(zip(data["dim_a"], data["dim_b"], strict=True)))
    methods = list(dict.fromkeys(data["method"]))
    ncols = max(1, min(ncols, len(pairs)))
    nrows = int(np.ceil(len(pairs) / ncols)) if pairs else 1
    fig = Figure(figsize=(3.0 * ncols, 2.8 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in axes.flat[len(pairs) :]:
        ax.set_visible(False)
    for ax, (a, b) in zip(axes.flat, pairs, strict=False):
        panel = data[(data["dim_a"] == a) & (data["dim_b"] == b)]
        conflict_pairs = int((panel["n"] + panel["ties_dropped"]).max()) if len(panel) else 0
        for method in methods:
            line = panel[panel["method"] == method].sort_values("w_a")
            acc = line["accuracy"].to_numpy(dtype=float)
            # Clipped at 0: a percentile interval need not contain the point estimate (rare, small n).
            err = np.vstack([acc - line["ci_low"].to_numpy(float), line["ci_high"].to_numpy(float) - acc])
            err = np.clip(err, 0.0, None)
            ax.errorbar(
                line["w_a"].to_numpy(float),
                acc,
                yerr=None if np.isnan(err).all() else np.nan_to_num(err),
                marker="o",
                markersize=3.5,
                capsize=2.5,
                linewidth=1.2,
                label=method,
            )
        ax.set_title(f"{a} vs {b} (n={conflict_pairs})", fontsize=9)
        ax.set_xlabel(f"weight on {a} (on {b}: 1 − w)", fontsize=8)
        ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylim(0.0, 1.0)
        ax.axhline(0.5, color="0.7", linewidth=0.8, linestyle=":")
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(methods), 5), fontsize=8)
    fig.suptitle(_seed_title(seed, settings), fontsize=10)
    return fig


def _paired_with(data: pd.DataFrame, dim: str) -> pd.DataFrame:
    """The settings of ``dim`` against each other dimension, turned so that ``dim`` is a (w_a its weight)."""
    first = data[data["dim_a"] == dim]
    second = data[data["dim_b"] == dim].rename(columns={"dim_a": "dim_b", "dim_b": "dim_a", "w_a": "w_b",
                                                        "w_b": "w_a"})  # fmt: skip
    return pd.concat([first, second[first.columns]], ignore_index=True)


def _seed_title(seed: str, settings: pd.DataFrame) -> str:
    seeds: Sequence[str] = [s for s in dict.fromkeys(settings["seed"]) if s != MEAN]
    if seed == MEAN:
        return f"Implicit-reward accuracy vs weight on conflict pairs, mean over seeds {', '.join(seeds)}"
    return f"Implicit-reward accuracy vs weight on conflict pairs, seed {seed}"
