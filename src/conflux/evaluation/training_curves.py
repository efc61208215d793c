"""Training curves: each run's loss, reward accuracy and reward margin against the step, from metrics.jsonl.

Every training run logs TRL's metric names (:mod:`conflux.training.losses`): ``loss``; per objective
``rewards/accuracies`` and ``rewards/margins`` with a suffix naming the dimension (``/dim0``; none for plain
DPO and curriculum stage 1). Two figures per (model, dataset), both report items:

- **runs**: one row per run (curriculum stage, Panacea, DPO-Soup member, SFT, DPO) and three panels, loss,
  accuracy and margin, with one line per dimension and seed, so each run's learning can be read off;
- **methods**: the runs side by side, mean over seeds, accuracy and margin averaged over dimensions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from conflux.errors import DataError
from conflux.evaluation.report_files import write_figure

PANELS = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin"))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The logged training records (those with a loss) of one finished run, by step."""
    path = Path(run_dir) / "metrics.jsonl"
    rows, final = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError as err:
            raise DataError(f"not a JSON record ({err})", file=path, row=number, field="-") from None
        if "loss" in record:
            rows.append(record)
        elif "train_loss" in record:  # the Trainer's closing summary: the mean loss of the whole run
            final = {"step": record["step"], "loss": record["train_loss"]}
    if not rows and final is not None:
        rows = [final]  # a run shorter than logging_steps logged no step: its mean loss stands in, one point
    if not rows:
        msg = "no training loss was logged"
        raise DataError(msg, file=path, row="all", field="loss")
    return pd.DataFrame(rows).sort_values("step")


def _series(frame: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """``metric`` (``loss`` or a reward statistic) per dimension suffix: {"": ...} or {"dim0": ...}."""
    if metric == "loss":
        return {"": frame.set_index("step")["loss"]}
    out = {}
    for column in frame.columns:
        if column == metric or column.startswith(metric + "/"):
            label = column[len(metric) :].lstrip("/")
            if label != "w":  # Panacea's pass at a sampled w has no single dimension's labels
                out[label] = frame.set_index("step")[column].dropna()
    return out


def runs_figure(runs: Mapping[str, Mapping[int, pd.DataFrame]], *, title: str) -> Figure:
    """One row per run, panels loss / accuracy / margin, a line per (dimension, seed)."""
    fig = Figure(figsize=(11, 1.9 * len(runs) + 0.8), layout="constrained")
    axes = fig.subplots(len(runs), len(PANELS), squeeze=False, sharex="row")
    for row, (label, seeds) in zip(axes, runs.items(), strict=True):
        for ax, (metric, name) in zip(row, PANELS, strict=True):
            for seed, frame in seeds.items():
                for dim, series in _series(frame, metric).items():
                    key = " ".join(x for x in (dim, f"seed {seed}" if len(seeds) > 1 else "") if x)
                    ax.plot(series.index, series.to_numpy(), marker=".", lw=1, label=key or None)
            if metric == "rewards/accuracies":
                ax.axhline(0.5, color="grey", ls=":", lw=0.8)
            ax.set_title(f"{label}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0] and metric != "loss":
                ax.legend(fontsize=6, ncols=2)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def _mean_over_dims(frame: pd.DataFrame, metric: str) -> pd.Series | None:
    series = _series(frame, metric)
    if not series:
        return None
    return pd.concat(series.values(), axis=1).mean(axis=1)


def methods_figure(runs: Mapping[str, Mapping[int, pd.DataFrame]], *, title: str) -> Figure:
    """The runs side by side: loss, and accuracy and margin averaged over dimensions, mean over seeds."""
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    colours = {label: f"C{i % 10}" for i, label in enumerate(runs)}  # one colour per run in every panel
    for ax, (metric, name) in zip(axes, PANELS, strict=True):
        for label, seeds in runs.items():
            per_seed = [s for s in (_mean_over_dims(f, metric) for f in seeds.values()) if s is not None]
            if per_seed:
                mean = pd.concat(per_seed, axis=1).mean(axis=1)
                ax.plot(mean.index, mean.to_numpy(), marker=".", lw=1.2, color=colours[label], label=label)
        if metric == "rewards/accuracies":
            ax.axhline(0.5, color="grey", ls=":", lw=0.8)
        ax.set_title(name + (" (mean over dimensions)" if metric != "loss" else ""), fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0].get_legend_handles_labels()  # every run logs a loss
    fig.legend(handles, labels, loc="outside right center", fontsize=7)
    seeds = sorted({seed for s in runs.values() for seed in s})
    fig.suptitle(f"{title} (mean over seeds {', '.join(map(str, seeds))})", fontsize=11)
    return fig


def training_curves_job(
    runs: Mapping[str, Sequence[tuple[int, str | Path]]],
    *,
    runs_png: str | Path,
    runs_svg: str | Path,
    methods_png: str | Path,
    methods_svg: str | Path,
    label: str,
) -> None:
    """The ``training_curves`` rule: ``runs`` maps a run's name to its (seed, output directory) pairs."""
    frames = {name: {int(seed): read_metrics(d) for seed, d in pairs} for name, pairs in runs.items()}
    write_figure(runs_figure(frames, title=f"Training curves: {label}"), runs_png, runs_svg)
    write_figure(
        methods_figure(frames, title=f"Training curves by method: {label}"), methods_png, methods_svg
    )
