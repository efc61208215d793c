"""Conflict-Limited L2 tables, streamed: per layer and parameter, how much of each task vector is in conflict.

Two views, both from the pure functions of :mod:`conflux.analysis.conflict_norm` applied one parameter at a
time (every source's τ of that parameter trimmed with the same density, then discarded):

- :func:`pairwise_conflict_table`: every pair (a, b) of sources — SFT vs DPO, dataset vs dataset, dim_i vs
  dim_j adapters of the curriculum or of DPO-Soup. The mask marks entries where the trimmed τ_a and τ_b have
  opposite nonzero signs; columns as :func:`conflux.analysis.conflict_norm.pairwise_conflict`.
- :func:`elected_conflict_table`: a set against its elected TIES sign (weighted like the merge): per source,
  the mass the disjoint merge throws away (``*_elected``), and the set's own conflict mask (``*_set``:
  entries where any two nonzero signs disagree).

A source that does not change a parameter (a LoRA adapter without that target) contributes τ = 0 there: it
neither conflicts nor votes. All norms are of the trimmed task vectors, in float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from conflux.analysis.conflict_norm import (
    conflict_limited_l2,
    conflict_mask,
    conflict_mask_vs_sign,
    conflict_share,
)
from conflux.analysis.param_names import parse_param_name
from conflux.analysis.stats import to_frame, write_frame
from conflux.analysis.task_vectors import TaskVectors
from conflux.analysis.ties import elect_sign, trim_k, trim_top_k
from conflux.errors import ConfluxError
from conflux.progress import with_progress

_KEYS = [("param", pa.string()), ("layer", pa.int32()), ("module", pa.string()), ("numel", pa.int64())]
PAIR_SCHEMA = pa.schema(
    [("a", pa.string()), ("b", pa.string()), *_KEYS, ("density", pa.float64())]
    + [(c, pa.float64()) for c in ("l2_a", "l2_b", "cl_l2_a", "cl_l2_b", "share_a", "share_b")]
    + [("conflict_fraction", pa.float64())]
)
ELECTED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        *_KEYS,
        ("density", pa.float64()),
        ("weight", pa.float64()),
        ("l2", pa.float64()),
    ]
    + [
        (f"{c}_{v}", pa.float64())
        for v in ("set", "elected")
        for c in ("cl_l2", "share", "conflict_fraction")
    ]
)


def _labelled(sources: Mapping[str, TaskVectors] | Sequence[TaskVectors]) -> dict[str, TaskVectors]:
    named = dict(sources) if isinstance(sources, Mapping) else {s.label: s for s in sources}
    if len(named) < 2 or (not isinstance(sources, Mapping) and len(named) != len(sources)):
        raise ConfluxError(f"need at least two task-vector sources with distinct labels, got {list(named)}")
    return named


def _union(sources: dict[str, TaskVectors]) -> dict[str, tuple[int, ...]]:
    """Every parameter any source changes, in first-seen order, with its (common) shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for label, source in sources.items():
        for name in source.names:
            shape = source.shape(name)
            if shapes.setdefault(name, shape) != shape:
                raise ConfluxError(f"{label}: {name} has shape {shape}, another source has {shapes[name]}")
    return shapes


def _trimmed(
    sources: dict[str, TaskVectors],
    changes: list[frozenset[str]],
    name: str,
    shape: tuple[int, ...],
    density: float,
) -> torch.Tensor:
    """[n, ...] trimmed τ of one parameter from every source (zeros where a source leaves it alone)."""
    out = torch.zeros((len(sources), *shape), dtype=torch.float32)
    for i, (source, changed) in enumerate(zip(sources.values(), changes, strict=True)):
        if name in changed:
            out[i] = trim_top_k(source.tau(name, out=out[i].view(-1)), density)
    return out


def pairwise_conflict_table(
    sources: Mapping[str, TaskVectors] | Sequence[TaskVectors],
    *,
    density: float,
    pairs: Sequence[tuple[str, str]] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """CL-L2 of every pair of sources, per parameter, reading each source's τ once per parameter.

    Args:
        sources: Labelled task-vector sources (a mapping, or sources with distinct ``label``s).
        density: Trim density applied to every τ before the mask (1 = no trim).
        pairs: Label pairs to compute; default every pair (a before b in the order given).
        progress: Show a tqdm bar.

    Returns:
        One row per (pair, parameter) with the columns of ``PAIR_SCHEMA``.
    """
    named = _labelled(sources)
    trim_k(1, density)
    labels = list(named)
    todo = list(pairs) if pairs is not None else list(itertools.combinations(labels, 2))
    unknown = {x for pair in todo for x in pair} - set(labels)
    if unknown:
        raise ConfluxError(f"pairs name unknown sources {sorted(unknown)}; the sources are {labels}")
    rows = []
    changes = [frozenset(source.names) for source in named.values()]
    params = _union(named).items()
    for name, shape in with_progress(params, desc="pairwise conflict", unit="tensor") if progress else params:
        trimmed = _trimmed(named, changes, name, shape, density)
        layer, module = parse_param_name(name)
        for a, b in todo:
            ta, tb = trimmed[labels.index(a)], trimmed[labels.index(b)]
            mask = conflict_mask(torch.stack([ta, tb]))
            row = {"a": a, "b": b, "param": name, "layer": layer, "module": module, "numel": ta.numel()}
            row["density"] = density
            for side, tau in (("a", ta), ("b", tb)):
                row[f"l2_{side}"] = float(torch.linalg.vector_norm(tau))
                row[f"cl_l2_{side}"] = float(conflict_limited_l2(tau, mask))
                row[f"share_{side}"] = float(conflict_share(tau, mask))
            row["conflict_fraction"] = float(mask.sum()) / mask.numel() if mask.numel() else 0.0
            rows.append(row)
    return to_frame(rows, PAIR_SCHEMA)


def elected_conflict_table(
    sources: Mapping[str, TaskVectors] | Sequence[TaskVectors],
    *,
    density: float,
    weights: Sequence[float] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """CL-L2 of each source against the set's elected sign and against the set's own conflict mask.

    Args:
        sources: Labelled task-vector sources, as for :func:`pairwise_conflict_table`.
        density: Trim density.
        weights: The merge weights w_i (the sign is elected from Σ w_i τ̂_i, as in TIES); default all 1.
        progress: Show a tqdm bar.

    Returns:
        One row per (source, parameter) with the columns of ``ELECTED_SCHEMA``.
    """
    named = _labelled(sources)
    trim_k(1, density)
    w = [1.0] * len(named) if weights is None else [float(x) for x in weights]
    if len(w) != len(named):
        raise ConfluxError(f"{len(w)} weights for {len(named)} sources")
    rows = []
    changes = [frozenset(source.names) for source in named.values()]
    params = _union(named).items()
    for name, shape in with_progress(params, desc="elected conflict", unit="tensor") if progress else params:
        trimmed = _trimmed(named, changes, name, shape, density)
        sign = elect_sign(trimmed, w)
        set_mask = conflict_mask(trimmed)
        layer, module = parse_param_name(name)
        for (label, tau), wi in zip(zip(named, trimmed, strict=True), w, strict=True):
            elected_mask = conflict_mask_vs_sign(tau, sign)
            row = {"source": label, "param": name, "layer": layer, "module": module, "numel": tau.numel()}
            row.update(density=density, weight=wi, l2=float(torch.linalg.vector_norm(tau)))
            for view, mask in (("set", set_mask), ("elected", elected_mask)):
                row[f"cl_l2_{view}"] = float(conflict_limited_l2(tau, mask))
                row[f"share_{view}"] = float(conflict_share(tau, mask))
                row[f"conflict_fraction_{view}"] = float(mask.sum()) / max(1, mask.numel())
            rows.append(row)
    return to_frame(rows, ELECTED_SCHEMA)


def write_conflict_table(frame: pd.DataFrame, out: str | Path, *, density: float) -> None:
    """Write a table from :func:`pairwise_conflict_table` or :func:`elected_conflict_table` atomically."""
    schema = PAIR_SCHEMA if "a" in frame.columns else ELECTED_SCHEMA
    write_frame(frame, out, schema, {"density": density})
