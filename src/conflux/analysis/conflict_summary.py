"""CL-L2 tables over seeds: each pair of a pairwise conflict file (:mod:`conflux.analysis.conflict_tables`)
summed up over all parameters and per module type, and its share heatmaps. Kept apart from the streaming
tables (which load torch) so the report job that reads them starts without it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from conflux.analysis.figures import heatmaps, share_panels
from conflux.evaluation.report_files import MEAN, write_csv, write_figure, write_table_files

SUMMARY_COLUMNS = ["l2_a", "cl_l2_a", "share_a", "l2_b", "cl_l2_b", "share_b", "conflict_fraction"]


def _pair_summary(part: pd.DataFrame) -> dict[str, float]:
    """Norms over many parameters combine in quadrature (‖τ‖₂ of the whole set), the conflict fraction by
    entry count: the numbers one would get from the concatenated task vectors."""
    out = {}
    for side in ("a", "b"):
        l2 = float((part[f"l2_{side}"] ** 2).sum() ** 0.5)
        cl = float((part[f"cl_l2_{side}"] ** 2).sum() ** 0.5)
        out |= {f"l2_{side}": l2, f"cl_l2_{side}": cl, f"share_{side}": cl / l2 if l2 > 0 else 0.0}
    numel = part["numel"].sum()
    out["conflict_fraction"] = (
        float((part["conflict_fraction"] * part["numel"]).sum() / numel) if numel else 0.0
    )
    return out


def conflict_summary(frames: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Per seed and pair (a, b) of pairwise CL-L2 frames: ‖τ‖₂, CL-L2 and its share of each side, and the
    share of entries in conflict, over all parameters (module ``all``) and per module type; then rows with
    seed ``mean``, the mean over seeds."""
    rows = []
    for seed, frame in frames.items():
        for (a, b), pair in frame.groupby(["a", "b"], sort=False):
            groups = [("all", pair), *pair.groupby("module", sort=True)]
            rows += [{"seed": seed, "a": a, "b": b, "module": m, **_pair_summary(p)} for m, p in groups]
    table = pd.DataFrame(rows, columns=["seed", "a", "b", "module", *SUMMARY_COLUMNS])
    mean = table.groupby(["a", "b", "module"], sort=False)[SUMMARY_COLUMNS].mean().reset_index()
    return pd.concat([table.astype({"seed": object}), mean.assign(seed=MEAN)], ignore_index=True)


def conflict_summary_job(
    conflicts: Mapping[int, str | Path],
    *,
    csv: str | Path,
    md: str | Path,
    html: str | Path,
    png: str | Path,
    svg: str | Path,
    title: str,
    label: str,
) -> pd.DataFrame:
    """Rules ``conflict_summary_methods`` and ``conflict_summary_datasets``: the CL-L2 table of pairwise
    conflict files (seed -> file; CSV: every seed, Markdown/HTML: the mean) and its share heatmaps, pooled
    over seeds."""
    frames = {seed: pq.read_table(path).to_pandas() for seed, path in conflicts.items()}
    table = conflict_summary(frames)
    write_csv(csv, table)
    mean = table[table["seed"] == MEAN].drop(columns="seed")
    density = float(next(iter(frames.values()))["density"].iloc[0])
    notes = [
        f"{label}: mean over {len(frames)} seed(s) (per seed in the CSV). Task vectors trimmed to their "
        f"top {density:.0%} magnitudes; an entry is in conflict where both trimmed τ are nonzero with "
        "opposite signs.",
        "cl_l2_a = ‖τ_a ⊙ conflict mask‖₂, share_a = cl_l2_a / l2_a (likewise b); conflict_fraction: share "
        "of the entries in conflict. Module all: every parameter (norms in quadrature).",
    ]
    overall = mean[mean["module"] == "all"].drop(columns="module")
    write_table_files(
        md,
        html,
        title,
        notes,
        [("All parameters", overall), ("Per module type", mean[mean["module"] != "all"])],
    )
    pooled = pd.concat(frames.values(), ignore_index=True)
    write_figure(heatmaps(share_panels(pooled), title=f"{title}: {label}, pooled over seeds"), png, svg)
    return table
