"""Figures of the weight analysis: layer × module heatmaps, per-layer norm lines and revert effects.

Input frames are the Parquet tables of :mod:`conflux.analysis.stats` (one row per model and parameter) and
:mod:`conflux.analysis.conflict_tables` (one row per pair and parameter) and the key-layers table of
:mod:`conflux.analysis.revert`. A cell aggregates the parameters of one (layer, module type): norms add in
quadrature (‖τ‖ over the cell = sqrt(Σ ‖τ_p‖²)), a CL-L2 share is the cell's CL-L2 over the cell's L2.
Parameters outside the layers (embeddings, final norm, head) form the row ``-``. Drawn with matplotlib's
object API, as :mod:`conflux.evaluation.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from conflux.analysis.param_names import MODULE_TYPES
from conflux.evaluation.report_files import MEAN, write_figure

NON_LAYER = "-"


def _row_key(layer: object) -> object:
    return NON_LAYER if layer is None or pd.isna(layer) else int(layer)


def _ordered(grid: pd.DataFrame) -> pd.DataFrame:
    """Rows: layers ascending, then the non-layer row; columns: module types in their usual order."""
    rows = sorted((r for r in grid.index if r != NON_LAYER), key=int) + [
        r for r in grid.index if r == NON_LAYER
    ]
    cols = [m for m in MODULE_TYPES if m in grid.columns]
    return grid.loc[rows, cols]


def quadrature_grid(frame: pd.DataFrame, num: str, den: str | None = None) -> pd.DataFrame:
    """Layer × module grid of sqrt(Σ num²), or of sqrt(Σ num²) / sqrt(Σ den²) when ``den`` is given."""
    keyed = frame.assign(row=frame["layer"].map(_row_key), sq=frame[num].astype(float) ** 2)
    grid = keyed.pivot_table(index="row", columns="module", values="sq", aggfunc="sum") ** 0.5
    if den is not None:
        keyed = keyed.assign(sq_den=frame[den].astype(float) ** 2)
        total = keyed.pivot_table(index="row", columns="module", values="sq_den", aggfunc="sum") ** 0.5
        grid = grid / total.where(total > 0)
    return _ordered(grid)


Panel = tuple[str, str, pd.DataFrame]  # (family: panels of one family share a colour scale, title, grid)


def stats_panels(stats: pd.DataFrame) -> list[Panel]:
    """One L2 grid per model of a task-vector statistics frame."""
    return [
        ("l2", f"‖τ‖₂ {m}", quadrature_grid(part, "l2")) for m, part in stats.groupby("model", sort=False)
    ]


def share_panels(conflict: pd.DataFrame) -> list[Panel]:
    """CL-L2 share grids of a pairwise conflict frame: per pair, each side's conflicting share."""
    panels = []
    for (a, b), part in conflict.groupby(["a", "b"], sort=False):
        panels.append(("share", f"CL-L2 share {a} (vs {b})", quadrature_grid(part, "cl_l2_a", "l2_a")))
        panels.append(("share", f"CL-L2 share {b} (vs {a})", quadrature_grid(part, "cl_l2_b", "l2_b")))
    return panels


def heatmaps(panels: Sequence[Panel], *, title: str, ncols: int = 4) -> Figure:
    """One heatmap per panel, one colour scale per family (runs and pairs compare at a glance); cells are
    annotated when the grid is small enough to read."""
    ncols = max(1, min(ncols, len(panels)))
    nrows = int(np.ceil(len(panels) / ncols)) if panels else 1
    height = max((len(g.index) for _, _, g in panels), default=4)
    limits: dict[str, tuple[float, float]] = {}
    for family, _, grid in panels:
        values = grid.to_numpy(dtype=float)
        if np.isfinite(values).any():
            lo, hi = limits.get(family, (np.inf, -np.inf))
            limits[family] = (min(lo, float(np.nanmin(values))), max(hi, float(np.nanmax(values))))
    fig = Figure(figsize=(3.6 * ncols, (0.28 * height + 1.6) * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (family, name, grid) in zip(axes.flat, panels, strict=False):
        vmin, vmax = limits.get(family, (None, None))
        _draw_grid(fig, ax, grid, name, vmin=vmin, vmax=vmax, annotate=grid.size <= 120)
    fig.suptitle(title, fontsize=10)
    return fig


def _draw_grid(
    fig: Figure,
    ax,
    grid: pd.DataFrame,
    title: str,
    *,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
) -> None:
    """One layer × module heatmap with its colour bar; empty cells (NaN) stay blank."""
    values = grid.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns], fontsize=7, rotation=45)
    ax.set_yticks(range(len(grid.index)), [str(r) for r in grid.index], fontsize=7)
    ax.set_xlabel("module", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(title, fontsize=9)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                colour = _text_colour(image.cmap(image.norm(v)))
                ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, ax=ax, shrink=0.8)


def _text_colour(rgba: tuple[float, ...]) -> str:
    """Black on bright cells (the yellow end of viridis), white on dark ones: by the cell's relative luminance
    (Rec. 709 weights on the colour map's sRGB values, close enough to tell light from dark)."""
    r, g, b = rgba[:3]
    return "k" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "w"


def layer_norms(stats: pd.DataFrame, *, title: str) -> Figure:
    """‖τ‖₂ of each layer (all its parameters) against the layer index, one line per model (SFT vs DPO)."""
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    layered = stats[stats["layer"].notna()]
    for model, part in layered.groupby("model", sort=False):
        per_layer = (part["l2"].astype(float) ** 2).groupby(part["layer"].astype(int)).sum() ** 0.5
        ax.plot(per_layer.index, per_layer.to_numpy(), marker="o", markersize=3.5, linewidth=1.2, label=model)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("‖τ‖₂ of the layer", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def revert_figure(table: pd.DataFrame, *, title: str) -> Figure:
    """Effect of each revert (mean over seeds): bars by layer and by module with the τ-norm share beside
    them, and the layer × module heatmap when cells were reverted."""
    mean = table[table["seed"] == MEAN]
    cells = mean[mean["kind"] == "cell"]
    ncols = 3 if len(cells) else 2
    fig = Figure(figsize=(4.2 * ncols, 3.6), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    order = {m: i for i, m in enumerate(MODULE_TYPES)}
    for ax, kind in zip(axes, ("layer", "module"), strict=False):
        part = mean[mean["kind"] == kind]  # in model order; the table has the ranking
        part = part.sort_values(kind, key=lambda c: c.map(order) if kind == "module" else c)
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["effect_removed"].to_numpy(float), width=0.4, label="effect removed")
        ax.bar(x + 0.2, part["tau_l2_share"].to_numpy(float), width=0.4, label="share of ‖τ‖₂")
        labels = part["layer"] if kind == "layer" else part["module"]
        ax.set_xticks(x, [str(v) for v in labels], fontsize=7, rotation=45)
        ax.set_xlabel(kind, fontsize=8)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    if len(cells):
        grid = _ordered(cells.pivot(index="layer", columns="module", values="effect_removed"))
        _draw_grid(fig, axes[2], grid, "effect removed per cell", cmap="magma")
    fig.suptitle(title, fontsize=10)
    return fig


def weight_figures_job(
    stats: str | Path,
    conflict: str | Path,
    *,
    heatmap_png: str | Path,
    heatmap_svg: str | Path,
    norms_png: str | Path,
    norms_svg: str | Path,
    label: str,
) -> None:
    """Rules ``weight_figures_persona`` and ``weight_figures_adapters``: heatmaps (‖τ‖₂ per model, CL-L2
    share per pair) and per-layer norm lines of one set of runs."""
    stats_frame = pq.read_table(stats).to_pandas()
    conflict_frame = pq.read_table(conflict).to_pandas()
    panels = stats_panels(stats_frame) + share_panels(conflict_frame)
    write_figure(
        heatmaps(panels, title=f"Task vectors by layer and module: {label}"), heatmap_png, heatmap_svg
    )
    write_figure(layer_norms(stats_frame, title=f"Per-layer ‖τ‖₂: {label}"), norms_png, norms_svg)
