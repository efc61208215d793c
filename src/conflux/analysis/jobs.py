"""The weight-analysis rules' jobs: task-vector statistics and dumps, CL-L2 tables and SFT+DPO merges.

Each function maps one rule's inputs (training output directories and the base model's manifest) onto the
streaming library (:mod:`conflux.analysis.task_vectors`, :mod:`conflux.analysis.stats`,
:mod:`conflux.analysis.dumps`, :mod:`conflux.analysis.conflict_tables`, :mod:`conflux.analysis.merge`) and
writes one output atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from conflux.analysis.conflict_tables import pairwise_conflict_table, write_conflict_table
from conflux.analysis.dumps import dump_task_vectors
from conflux.analysis.merge import merge_sft_dpo
from conflux.analysis.stats import STATS_SCHEMA, task_vector_stats, write_frame
from conflux.analysis.task_vectors import adapter_set, open_task_vectors
from conflux.modeling.base_model import base_model_dir
from conflux.modeling.variants import resolve_model_dir


def run_sources(run_dirs: Mapping[str, str | Path], manifest: str | Path) -> dict:
    """Task-vector sources of trained runs: a TRL output (model/) is one source labelled by its key; a
    preference run (adapters/) gives one source per adapter, labelled ``<key>/<adapter>`` when there are
    several runs (DPO-Soup members are runs with one adapter each, labelled by the adapter alone)."""
    base = base_model_dir(manifest)
    sources = {}
    for key, run in run_dirs.items():
        run = Path(run)
        if (run / "adapters").is_dir():
            for name, tv in adapter_set(run / "adapters", base).items():
                sources[name if len(run_dirs) == 1 or key == name else f"{key}/{name}"] = tv
        else:
            sources[key] = open_task_vectors(resolve_model_dir(run), base, label=key)
    return sources


def taskvec_stats_job(
    run_dirs: Mapping[str, str | Path], manifest: str | Path, out: str | Path, *, density: float
) -> None:
    """Rules ``taskvec_stats_persona`` (SFT and DPO) and ``taskvec_stats_adapters`` (a method's adapters):
    per-parameter task-vector statistics of every source of the runs, one Parquet file (column model)."""
    sources = run_sources(run_dirs, manifest)
    frames = [
        task_vector_stats(tv, model=label, density=density, progress=True) for label, tv in sources.items()
    ]
    write_frame(
        pd.concat(frames, ignore_index=True), out, STATS_SCHEMA, {"density": density, "models": list(sources)}
    )


def dump_task_vectors_job(
    run_dirs: Mapping[str, str | Path],
    manifest: str | Path,
    out_dir: str | Path,
    *,
    mode: str,
    dtype: str,
    density: float,
) -> None:
    """Rules ``dump_task_vectors_persona`` (one fine-tune) and ``dump_task_vectors_adapters`` (a method's
    adapters): the task vectors of the runs' sources as a Hive-partitioned Parquet dataset."""
    sources = run_sources(run_dirs, manifest)
    dump_task_vectors(sources, out_dir, mode=mode, dtype=dtype, density=density, progress=True)


def conflict_table_job(
    run_dirs: Mapping[str, str | Path],
    manifest: str | Path,
    out: str | Path,
    *,
    density: float,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> None:
    """Rules ``conflict_methods``, ``conflict_datasets`` and ``conflict_dims``: pairwise Conflict-Limited L2
    per parameter between the runs' sources (SFT vs DPO vs SFT→DPO, dataset vs dataset, dim_i vs dim_j)."""
    sources = run_sources(run_dirs, manifest)
    sources.pop("shared", None)  # the shared module is common to every w; conflicts are between dimensions
    table = pairwise_conflict_table(sources, density=density, pairs=pairs, progress=True)
    write_conflict_table(table, out, density=density)


def merge_sft_dpo_job(
    manifest: str | Path,
    sft_run: str | Path,
    dpo_run: str | Path,
    outputs: Mapping[float, str | Path],
    *,
    method: str,
    density: float,
) -> None:
    """The ``merge_sft_dpo`` rule: the SFT+DPO combination grid (λ -> model directory), merged once and
    written as models transformers loads."""
    merge_sft_dpo(
        base_model_dir(manifest),
        resolve_model_dir(sft_run),
        resolve_model_dir(dpo_run),
        outputs,
        method=method,
        density=density,
    )
