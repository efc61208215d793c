"""Writing tables (CSV, Markdown, HTML) and figures (PNG, SVG) atomically, and formatting their numbers.

Every file here is a Snakemake target that ``snakemake --report`` embeds, so each is written to a temporary
sibling and renamed (a killed job leaves nothing that looks finished). Markdown is rendered here rather than
through ``DataFrame.to_markdown`` because that needs ``tabulate``, which conflux does not depend on.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from conflux.atomic import atomic_path, write_text

MEAN = "mean"  # a table's seed column for the row that averages over seeds


def fmt_number(value: object, digits: int = 3) -> str:
    """A cell as text: floats to ``digits`` decimals, NaN as an en dash, anything else as ``str``."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def fmt_estimate(point: float, low: float, high: float, digits: int = 3) -> str:
    """``0.712 [0.650, 0.770]``; the bracket is left out when there is no interval (resamples = 0)."""
    if math.isnan(point):
        return "–"
    if math.isnan(low) or math.isnan(high):
        return fmt_number(point, digits)
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (column names as the header, no index)."""

    def cell(value: object) -> str:
        return fmt_number(value, digits).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    """CSV with full float precision (the Markdown is the rounded view)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")


def write_markdown(
    path: str | Path, title: str, notes: Sequence[str], sections: Sequence[tuple[str | None, pd.DataFrame]]
) -> None:
    """A Markdown file: ``# title``, the notes (n, seeds, interval method) as lines, then each table."""
    parts = [f"# {title}\n", *(f"{line}  " for line in notes), ""]
    for heading, frame in sections:
        if heading:
            parts.append(f"## {heading}\n")
        parts.append(markdown_table(frame))
    write_text(path, "\n".join(parts))


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:1em}h1{font-size:16px}h2{font-size:14px}"
    "table{border-collapse:collapse;margin:0.4em 0 1em}th,td{border:1px solid #ccc;padding:2px 6px;"
    "text-align:right;white-space:nowrap}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
    "p{margin:0.2em 0;color:#333}"
)


def html_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """``frame`` as an HTML table, cells formatted as in :func:`markdown_table` (``**x**`` in bold)."""

    def cell(value: object) -> str:
        return _BOLD.sub(r"<strong>\1</strong>", html.escape(fmt_number(value, digits)))

    head = "".join(f"<th>{cell(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(
    path: str | Path, title: str, notes: Sequence[str], sections: Sequence[tuple[str | None, pd.DataFrame]]
) -> None:
    """The Markdown file's content as one self-contained HTML page: the form the HTML report shows inline
    (it offers a Markdown file only as a download)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             *(f"<p>{html.escape(line)}</p>" for line in notes)]  # fmt: skip
    for heading, frame in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(html_table(frame))
    write_text(path, "\n".join([*parts, "</body></html>\n"]))


def write_table_files(
    md: str | Path,
    html_path: str | Path | None,
    title: str,
    notes: Sequence[str],
    sections: Sequence[tuple[str | None, pd.DataFrame]],
) -> None:
    """The Markdown file of a table and, when asked, its HTML page for the report."""
    write_markdown(md, title, notes, sections)
    if html_path is not None:
        write_html(html_path, title, notes, sections)


def write_figure(fig: Figure, png: str | Path, svg: str | Path, *, dpi: int = 150) -> None:
    """Save ``fig`` as PNG and SVG; no timestamp in the metadata, so a rerun gives the same bytes."""
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None}, bbox_inches="tight")
    # A fixed hash salt makes the SVG's element ids (otherwise from uuid4) the same on every run.
    with atomic_path(svg) as tmp, rc_context({"svg.hashsalt": "conflux"}):
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")


def interval_note(
    resamples: int, level: float, seed: int, over: str = "eval pairs", rows: str = "method"
) -> str:
    """The sentence that says how an interval was made (or that there is none)."""
    if resamples == 0:
        return "No confidence intervals (bootstrap resamples = 0)."
    return (
        f"Brackets: {level:.0%} percentile bootstrap interval over {over} ({resamples} resamples, "
        f"RNG seed {seed}), the same resampled {over} for every {rows} and seed."
    )
