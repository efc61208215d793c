"""The key-layers table of the revert sweeps (:mod:`conflux.analysis.revert`): per target, how much of the
fine-tune's persona margin gain its revert removes, ranked, beside its share of ‖τ‖₂. Kept apart from the
sweep (which loads torch and the model code) so the table job that reads the sweeps starts without either."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from conflux.errors import ConfluxError, DataError
from conflux.evaluation.report_files import MEAN, write_csv, write_figure, write_table_files

KINDS = ("layer", "module", "cell")


def _margin(metrics: Mapping[str, Any]) -> float:
    return float(metrics["persona_margin"]["mean"])


def _style(metrics: Mapping[str, Any], persona: str) -> float:
    style = metrics.get("style", {})
    return float(style[persona]["share"]) if persona in style and style[persona]["n"] else math.nan


def revert_rows(sweep: Mapping[str, Any], base_metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per target of one sweep: the effect numbers against the fine-tune and the base."""
    ft = sweep["finetuned"]
    persona = sweep["persona"]
    gain = _margin(ft) - _margin(base_metrics)
    rows = []
    for t in sweep["targets"]:
        m = t["metrics"]
        rows.append(
            {
                "method": sweep["method"],
                "seed": str(sweep["seed"]),
                "kind": t["kind"],
                "target": t["label"],
                "layer": t["layer"],
                "module": t["module"],
                "n_params": t["n_params"],
                "tau_l2": t["tau_l2"],
                "tau_l2_share": t["tau_l2"] / sweep["tau_l2_total"] if sweep["tau_l2_total"] else math.nan,
                "margin": _margin(m),
                "effect_removed": (_margin(ft) - _margin(m)) / gain if gain else math.nan,
                "d_accuracy": m["persona_margin"]["accuracy"] - ft["persona_margin"]["accuracy"],
                "ppl_ratio": m["perplexity_general"] / ft["perplexity_general"],
                "d_style_share": _style(m, persona) - _style(ft, persona),
            }
        )
    return rows


NUMERIC = ["tau_l2", "tau_l2_share", "margin", "effect_removed", "d_accuracy", "ppl_ratio", "d_style_share"]


def key_layers_table(sweeps: Sequence[Mapping[str, Any]], base_metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Every target of every seed, plus the mean over seeds, ranked by ``effect_removed`` within its kind."""
    if not sweeps:
        raise ConfluxError("no revert sweep to tabulate")
    for key in ("method", "persona"):
        values = {s[key] for s in sweeps}
        if len(values) != 1:
            raise ConfluxError(f"revert sweeps of one table must share their {key}, got {sorted(values)}")
    targets = [[t["label"] for t in s["targets"]] for s in sweeps]
    if any(t != targets[0] for t in targets):
        raise ConfluxError("revert sweeps of one table must revert the same targets (check analysis.revert)")
    frame = pd.DataFrame([row for s in sweeps for row in revert_rows(s, base_metrics)])
    frame["layer"] = frame["layer"].astype("Int64")  # module targets have none; keep the rest integers
    keys = ["method", "kind", "target", "layer", "module", "n_params"]
    mean = frame.groupby(keys, dropna=False, sort=False)[NUMERIC].mean().reset_index()
    mean["seed"] = MEAN
    table = pd.concat([frame, mean], ignore_index=True)
    table["n_seeds"] = len(sweeps)
    table["rank"] = (
        table.groupby(["seed", "kind"])["effect_removed"].rank(ascending=False, method="min").astype("Int64")
    )
    order = {k: i for i, k in enumerate(KINDS)}
    table = table.sort_values(
        ["seed", "kind", "rank"], key=lambda c: c.map(order) if c.name == "kind" else c, kind="stable"
    )
    cols = ["method", "seed", "kind", "rank", "target", "layer", "module", "n_params", *NUMERIC, "n_seeds"]
    return table[cols].reset_index(drop=True)


def read_sweeps(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Revert sweep (or persona metrics) JSON files."""
    sweeps = []
    for path in paths:
        try:
            sweeps.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise DataError(f"not a readable revert sweep ({err})", file=path, row="all", field="-") from None
    return sweeps


def key_layers_job(
    sweeps: Sequence[str | Path],
    base_metrics: str | Path,
    *,
    csv: str | Path,
    md: str | Path,
    png: str | Path,
    svg: str | Path,
    label: str,
    html: str | Path | None = None,
) -> pd.DataFrame:
    """The key-layers table (CSV: every seed; Markdown: the mean) and its figure (by layer, module, cell)."""
    from conflux.analysis.figures import revert_figure

    records = read_sweeps(sweeps)
    base = read_sweeps([base_metrics])[0]["metrics"]
    table = key_layers_table(records, base)
    write_csv(csv, table)
    method = records[0]["method"]
    mean = table[table["seed"] == MEAN].drop(columns=["method", "seed", "layer", "module", "n_seeds"])
    sections = [(f"{kind} reverts", mean[mean["kind"] == kind].drop(columns="kind")) for kind in KINDS]
    notes = [
        f"{label}: {method} with one part at a time set back to the base model, mean over "
        f"{len(records)} seed(s) (per seed in the CSV).",
        "effect_removed = (margin_ft − margin_revert) / (margin_ft − margin_base), persona log-prob margin "
        "on the held-out pairs; rank 1 = the part whose revert removes most of the fine-tune's gain.",
        "tau_l2_share: the part's share of the task vector's L2 norm; ppl_ratio: general perplexity after / "
        "before the revert; d_style_share: change of the persona style share (– without generation).",
    ]
    title = f"Key layers and parameters: {method}"
    write_table_files(md, html, title, notes, [(h, f) for h, f in sections if len(f)])
    write_figure(revert_figure(table, title=f"Revert effect of {method}: {label}"), png, svg)
    return table
