"""The curriculum study's report files: Table 1, Table 2 (settings and summary) and Figure 2, from records.

Each ``*_job`` reads the records files of every method and seed (:mod:`conflux.evaluation.records`), computes
the table (:mod:`conflux.evaluation.accuracy`), and writes CSV (full precision, every seed and the mean),
Markdown (a header stating n, seeds and how intervals were made, then the mean over seeds and each seed).
The report's captions are report/*.rst.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from conflux.evaluation.accuracy import table1, table1_wide, table2
from conflux.evaluation.figures import figure2
from conflux.evaluation.records import WEIGHT_GRID, read_records
from conflux.evaluation.report_files import (
    MEAN,
    fmt_estimate,
    interval_note,
    write_csv,
    write_figure,
    write_table_files,
)

ACCURACY_RULE = (
    "A pair is correct when the sign of the implicit-reward margin r_w(y_a) − r_w(y_b), "
    "r_w(y) = β log π(y; w)/π_ref(y), equals its label; a zero margin counts as wrong."
)


def _seeds_note(frame: pd.DataFrame) -> str:
    seeds = [s for s in dict.fromkeys(frame["seed"]) if s != MEAN]
    return f"Seeds: {', '.join(seeds)} ({len(seeds)}); the first table is the mean over seeds."


def seed_spread(frame: pd.DataFrame, by: str, col: str) -> dict[str, str]:
    """Per ``by`` value (a method), ``min–max`` of ``col`` over its per-seed rows: how much the training seed
    moves a number, beside the interval over pairs (which a mean over seeds narrows). Single seed: the value.
    """
    per_seed = frame[frame["seed"] != MEAN]
    return {
        key: f"{part[col].min():.3f}–{part[col].max():.3f}" if len(part) > 1 else f"{part[col].iloc[0]:.3f}"
        for key, part in per_seed.groupby(by, sort=False)
    }


def _estimates(frame: pd.DataFrame, point: str, low: str, high: str) -> list[str]:
    """``point [low, high]`` per row, from three columns."""
    return [fmt_estimate(p, lo, hi) for p, lo, hi in zip(frame[point], frame[low], frame[high], strict=True)]


# ---- Table 1 -----------------------------------------------------------------------------------------------


def table1_job(
    records: Sequence[str | Path],
    *,
    csv: str | Path,
    md: str | Path,
    html: str | Path | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    label: str = "",
) -> pd.DataFrame:
    """Table 1 (method × dimension accuracy at w = 1_i) from records files; returns the wide frame."""
    frame, dims = read_records(records)
    title = "Table 1: accuracy at w = 1_i on held-out conflict pairs" + (f" ({label})" if label else "")
    return _write_table1(frame, dims, csv, md, html, title, resamples=resamples, level=level, seed=seed)


def _write_table1(
    frame: pd.DataFrame,
    dims: Sequence[str],
    csv: str | Path,
    md: str | Path,
    html: str | Path | None,
    title: str,
    *,
    resamples: int,
    level: float,
    seed: int,
) -> pd.DataFrame:
    long = table1(frame, dims, resamples=resamples, level=level, seed=seed)
    wide = table1_wide(long, dims)
    write_csv(csv, wide)
    first = long.drop_duplicates("dim").set_index("dim")
    n_note = ", ".join(f"{d} {int(first.loc[d, 'n'])}" for d in dims)
    ties_note = ", ".join(f"{d} {int(first.loc[d, 'ties_dropped'])}" for d in dims)
    notes = [
        f"n (held-out conflict pairs per dimension): {n_note}; ties in that dimension dropped: {ties_note}.",
        _seeds_note(long),
        ACCURACY_RULE + " The label at w = 1_i is dimension i's preference.",
        interval_note(resamples, level, seed),
        "Seeds min–max: the lowest and highest per-seed accuracy of the method (the spread over training "
        "seeds; the interval beside the mean is over pairs only).",
    ]
    sections = []
    for heading, part in (
        ("Mean over seeds", wide[wide["seed"] == MEAN]),
        ("Per seed", wide[wide["seed"] != MEAN]),
    ):
        mean = heading.startswith("Mean")
        shown = part[["method"]].copy() if mean else part[["method", "seed"]].copy()
        for dim in dims:
            shown[dim] = _estimates(part, dim, f"{dim}_ci_low", f"{dim}_ci_high")
            if mean:  # the spread over seeds beside the interval over pairs
                shown[f"{dim} seeds min–max"] = (
                    part["method"].map(seed_spread(wide, "method", dim)).to_numpy()
                )
        sections.append((heading, shown))
    write_table_files(md, html, title, notes, sections)
    return wide


# ---- Table 2 and Figure 2 ----------------------------------------------------------------------------------


def table2_job(
    records: Sequence[str | Path],
    *,
    settings_csv: str | Path,
    settings_md: str | Path,
    summary_csv: str | Path,
    summary_md: str | Path,
    settings_html: str | Path | None = None,
    summary_html: str | Path | None = None,
    figure_png: str | Path | None = None,
    figure_svg: str | Path | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
    label: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (settings, and win rate / mean accuracy per method) and optionally Figure 2, from records."""
    frame, dims = read_records(records)
    settings, summary = table2(frame, dims, resamples=resamples, level=level, seed=seed, grid=grid)
    write_csv(settings_csv, settings)
    write_csv(summary_csv, summary)
    suffix = f" ({label})" if label else ""
    n_settings = len(settings[["dim_a", "dim_b", "w_a", "w_b"]].drop_duplicates())
    mean = settings[settings["seed"] == MEAN]
    per_setting = mean.drop_duplicates(["dim_a", "dim_b", "w_a", "w_b"])
    setting_notes = [
        f"{n_settings} settings: each dimension pair (a, b) × w = (w_a, w_b) on a and b (others 0), judged "
        "on the held-out pairs where a and b prefer opposite responses; label = sign(w·s_a − w·s_b).",
        f"n per setting: {int(per_setting['n'].min())}–{int(per_setting['n'].max())} pairs; ties under w "
        f"dropped: {int(per_setting['ties_dropped'].sum())} in all (column 'ties').",
        _seeds_note(settings),
        ACCURACY_RULE,
        interval_note(resamples, level, seed),
    ]
    summary_notes = [_win_rate_note(summary), *setting_notes[1:]]
    write_table_files(
        settings_md,
        settings_html,
        "Table 2 settings: accuracy per dimension pair and weight" + suffix,
        [
            *setting_notes,
            "Bold: best method in the setting (mean over seeds). Per-seed values are in the CSV.",
        ],
        [(None, _settings_view(mean))],
    )
    title = "Table 2: win rate and mean accuracy over the settings" + suffix
    write_table_files(summary_md, summary_html, title, summary_notes, _summary_sections(summary))
    if figure_png is not None and figure_svg is not None:
        write_figure(figure2(settings), figure_png, figure_svg)
    return settings, summary


def _win_rate_note(summary: pd.DataFrame) -> str:
    return (
        f"Win rate: share of the {int(summary['settings'].max())} settings with pairs in which a method has "
        "the highest accuracy; methods tied for best share that setting equally. Mean accuracy: mean over "
        f"those settings. Settings without pairs: {int(summary['settings_empty'].max())} (left out)."
    )


def _summary_sections(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    mean = _summary_view(summary[summary["seed"] == MEAN], False)
    for col, name in (("win_rate", "win rate"), ("mean_accuracy", "mean accuracy")):
        mean[f"{name} seeds min–max"] = mean["method"].map(seed_spread(summary, "method", col)).to_numpy()
    return [
        ("Mean over seeds", mean),
        ("Per seed", _summary_view(summary[summary["seed"] != MEAN], True)),
    ]


# ---- the ablation ------------------------------------------------------------------------------------------


def ablation_job(
    records: Sequence[str | Path],
    *,
    csv: str | Path,
    md: str | Path,
    html: str | Path | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    label: str = "",
) -> pd.DataFrame:
    """The ``ablation`` rule: the curriculum after each of its stages, and each variant beside its method
    (:func:`conflux.methods.ablation_variants`), side by side.

    Table 1, Table 2 and Figure 2 compare the paper's three methods (the curriculum after stage 3, Panacea,
    DPO-Soup); the earlier stages and the variants would take shares of the win rate that the paper gives to
    those three, so they are compared here instead. k = 2: Table 1's accuracies at w = 1_i; k > 2: Table 2's
    win rate (among the rows) and mean accuracy over the same settings.
    """
    frame, dims = read_records(records)
    title = "Ablation: the curriculum after each stage, and each variant beside its method"
    suffix = f" ({label})" if label else ""
    if len(dims) == 2:
        title += ", accuracy at w = 1_i on held-out conflict pairs" + suffix
        return _write_table1(frame, dims, csv, md, html, title, resamples=resamples, level=level, seed=seed)
    _, summary = table2(frame, dims, resamples=resamples, level=level, seed=seed)
    write_csv(csv, summary)
    notes = [
        _win_rate_note(summary),
        _seeds_note(summary),
        ACCURACY_RULE,
        interval_note(resamples, level, seed),
    ]
    heading = title + ", win rate among the rows and mean accuracy over Table 2's settings"
    write_table_files(md, html, heading + suffix, notes, _summary_sections(summary))
    return summary


def figure2_job(
    records: Sequence[str | Path],
    *,
    png: str | Path,
    svg: str | Path,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
) -> None:
    """Figure 2 alone (for a rule of its own); the same numbers as :func:`table2_job`'s settings."""
    frame, dims = read_records(records)
    settings, _ = table2(frame, dims, resamples=resamples, level=level, seed=seed, grid=grid)
    write_figure(figure2(settings), png, svg)


def figure3_job(
    records: Sequence[str | Path],
    *,
    png: str | Path,
    svg: str | Path,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
) -> str:
    """The ``figure3`` rule: the paper's Figure 3 (Appendix C), accuracy against the weight on helpfulness
    paired with each other dimension; a dataset without helpfulness pairs its first dimension. Returns it."""
    frame, dims = read_records(records)
    anchor = "helpfulness" if "helpfulness" in dims else dims[0]
    settings, _ = table2(frame, dims, resamples=resamples, level=level, seed=seed, grid=grid)
    write_figure(figure2(settings, paired_with=anchor, ncols=len(dims) - 1), png, svg)
    return anchor


def _settings_view(mean: pd.DataFrame) -> pd.DataFrame:
    """One row per setting, one column per method, the best accuracy in bold."""
    rows = []
    for (a, b, w_a, w_b), part in mean.groupby(["dim_a", "dim_b", "w_a", "w_b"], sort=False):
        row = {
            "dims": f"{a} vs {b}",
            "w": f"({w_a:g}, {w_b:g})",
            "n": int(part["n"].iloc[0]),
            "ties": int(part["ties_dropped"].iloc[0]),
        }
        for r in part.itertuples(index=False):
            text = fmt_estimate(r.accuracy, r.ci_low, r.ci_high)
            row[r.method] = f"**{text}**" if r.win_share > 0 else text
        rows.append(row)
    return pd.DataFrame(rows)


def _summary_view(summary: pd.DataFrame, with_seed: bool) -> pd.DataFrame:
    out = summary[["method", "seed"]].copy() if with_seed else summary[["method"]].copy()
    out["win rate"] = _estimates(summary, "win_rate", "win_rate_ci_low", "win_rate_ci_high")
    out["mean accuracy"] = _estimates(
        summary, "mean_accuracy", "mean_accuracy_ci_low", "mean_accuracy_ci_high"
    )
    out["settings"] = summary["settings"].to_numpy()
    return out
