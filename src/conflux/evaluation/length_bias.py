"""Length bias of the implicit reward (the curriculum paper's Appendix C): does the margin follow length?

The paper explains its weak cases (complexity and verbosity in HelpSteer2) by a length bias: the implicit
reward r = β log π/π_ref sums token log-ratios, so a longer response can collect a larger reward whatever its
quality. Per method, seed and weight w this reports, over the held-out pairs scored at w:

- ``spearman``: the rank correlation between the margin r_w(y_a) − r_w(y_b) and the length difference
  |y_a| − |y_b| (response tokens scored). Near 0: the margin ignores length; near 1: it tracks it.
- ``accuracy_longer`` / ``accuracy_shorter``: accuracy on the pairs whose preferred response (under w) is the
  longer / the shorter one, with their counts; pairs of equal length and ties under w are left out and
  counted. A length-following reward is right where the longer response is preferred and wrong elsewhere.

Spearman's ρ is Pearson's r of the average ranks (ties share their mean rank), computed here with pandas'
rank and numpy: the definition itself, without adding scipy as a dependency (tests compare it with scipy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from conflux.errors import DataError
from conflux.evaluation.records import read_records, w_columns
from conflux.evaluation.report_files import MEAN, write_csv, write_figure, write_table_files

COLUMNS = ("len_a", "len_b")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant or n < 3."""
    if len(x) < 3:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def weight_name(w: Sequence[float], dims: Sequence[str]) -> str:
    """``helpfulness`` for a unit weight, ``helpfulness=0.75 verbosity=0.25`` for a mix."""
    parts = [(d, v) for d, v in zip(dims, w, strict=True) if v]
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return " ".join(f"{d}={v:g}" for d, v in parts)


def _row(frame: pd.DataFrame) -> dict[str, float]:
    margin = frame["margin"].to_numpy(float)
    diff = (frame["len_a"] - frame["len_b"]).to_numpy(float)
    label = frame["label"].to_numpy()
    used = label != 0
    correct = np.sign(margin) == label
    longer = used & (np.sign(diff) == label)  # the preferred response is the longer one
    shorter = used & (np.sign(diff) == -label)
    return {
        "n": int(used.sum()),
        "spearman": spearman(margin[used], diff[used]),
        "accuracy_longer": float(correct[longer].mean()) if longer.any() else float("nan"),
        "n_longer": int(longer.sum()),
        "accuracy_shorter": float(correct[shorter].mean()) if shorter.any() else float("nan"),
        "n_shorter": int(shorter.sum()),
        "n_equal_length": int((used & (diff == 0)).sum()),
    }


def length_bias(records: pd.DataFrame, dims: Sequence[str]) -> pd.DataFrame:
    """One row per (method, seed, w): see the module docstring. ``seed`` "mean" averages the seeds' rows."""
    missing = [c for c in COLUMNS if c not in records.columns]
    if missing:
        raise DataError("records without response lengths: rerun evaluate_method", file="records", row="all",
                        field=", ".join(missing))  # fmt: skip
    wcols = w_columns(len(dims))
    rows = []
    for (method, seed, *w), part in records.groupby(["method", "seed", *wcols], sort=False):
        rows.append({"method": method, "seed": str(seed), "w": weight_name(w, dims), **_row(part)})
    frame = pd.DataFrame(rows)
    values = [c for c in frame.columns if c not in ("method", "seed", "w")]
    mean = frame.groupby(["method", "w"], sort=False)[values].mean().reset_index()
    mean.insert(1, "seed", MEAN)
    for col in ("n", "n_longer", "n_shorter", "n_equal_length"):
        mean[col] = frame.groupby(["method", "w"], sort=False)[col].sum().to_numpy()  # counts over seeds
    return pd.concat([mean, frame], ignore_index=True)


def length_bias_figure(table: pd.DataFrame, dims: Sequence[str]) -> Figure:
    """Per dimension (its unit weight): the margin-length correlation of each method, and its accuracy where
    the preferred response is the longer vs the shorter one."""
    data = table[(table["seed"] == MEAN) & table["w"].isin(dims)]
    methods = list(dict.fromkeys(data["method"]))
    fig = Figure(figsize=(4.0 + 1.4 * len(dims), 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    x = np.arange(len(dims))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        part = data[data["method"] == method].set_index("w").reindex(list(dims))
        offset = (j - (len(methods) - 1) / 2) * width
        top.bar(x + offset, part["spearman"].to_numpy(float), width, label=method)
        bottom.bar(x + offset, part["accuracy_longer"].to_numpy(float), width, label=f"{method}: longer")
        bottom.scatter(x + offset, part["accuracy_shorter"].to_numpy(float), marker="_", s=200, color="k")
    top.set_ylabel("Spearman(margin, length diff.)", fontsize=8)
    top.axhline(0.0, color="0.5", linewidth=0.8)
    top.set_ylim(-1.0, 1.0)
    bottom.set_ylabel("accuracy (bars: longer preferred;\n marks: shorter preferred)", fontsize=8)
    bottom.set_ylim(0.0, 1.0)
    bottom.axhline(0.5, color="0.7", linewidth=0.8, linestyle=":")
    for ax in (top, bottom):
        ax.set_xticks(x, list(dims), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    top.legend(fontsize=7, ncols=min(len(methods), 3))
    fig.suptitle("Length bias of the implicit reward at w = 1_i (mean over seeds)", fontsize=10)
    return fig


def length_bias_job(records: Sequence[str | Path], *, csv: str | Path, md: str | Path, html: str | Path,
                    png: str | Path, svg: str | Path, label: str = "") -> pd.DataFrame:  # fmt: skip
    """The ``length_bias`` rule: the table (every w in the CSV; unit weights in the Markdown) and figure."""
    frame, dims = read_records(records)
    table = length_bias(frame, dims)
    write_csv(csv, table)
    shown = table[(table["seed"] == MEAN) & table["w"].isin(dims)].drop(columns="seed")
    notes = [
        "Per method and dimension (w = 1_i) over the held-out conflict pairs: Spearman's rank correlation "
        "between the implicit-reward margin and the response-length difference (tokens scored), and the "
        "accuracy on pairs whose preferred response is the longer / the shorter one (equal lengths and ties "
        "under w left out). Mean over seeds; counts summed over seeds. Every weight and seed: the CSV.",
        "A reward that follows length has a high correlation, high accuracy where the longer response is "
        "preferred and low accuracy where the shorter one is.",
    ]
    title = "Length bias of the implicit reward" + (f" ({label})" if label else "")
    write_table_files(md, html, title, notes, [(None, shown.round(3))])
    write_figure(length_bias_figure(table, dims), png, svg)
    return table
