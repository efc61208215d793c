"""Task-vector dumps: τ = θ_ft − θ_base itself, entry by entry, as a Hive-partitioned Parquet dataset.

The statistics and CL-L2 tables answer the questions conflux asks. A dump lets a researcher ask their own
(which rows of ``down_proj`` moved, the distribution of |τ| per head, the overlap of two trims at another
density) with an engine they already have, DuckDB on a laptop, Spark or Dask on a cluster, without rewriting
the streaming code. At 8B a dump does not fit a notebook, so it is laid out for partition pruning:

    <dump>/layer=<l>/module=<m>/part-<seq>.parquet     one file per (source, parameter)
    <dump>/_dump.json                                  what is where (engines skip names starting with _)

``layer`` is the parameter's layer index, null (``__HIVE_DEFAULT_PARTITION__``) for the embeddings, the final
norm and the head; ``module`` its type (q, k, v, o, gate, up, down, embed, norm, lm_head, other). Columns:

    source  string   the task vector: ``sft``, ``dpo``, or an adapter's ΔW (``shared``, ``dim0``, ...)
    param   string   the parameter's name in the base model
    index   int64    flat row-major index into the parameter: row, col = index // cols, index % cols
    value   float32 or float16 (``dtype``)   τ at that index

``mode: full`` writes every entry; ``mode: trimmed`` exactly the k = max(1, int(density·numel)) entries
that the TIES trim keeps (:func:`conflux.analysis.ties.trim_top_k`: the largest |τ|, ties at the cut going
to the lower index), which is what CL-L2 and TIES look at, about density × the size. Rows are in index
order. Each file's metadata (key ``conflux.dump``) and ``_dump.json`` record the source, parameter, shape,
numel, entries kept, mode, dtype and density.

Encodings, chosen for size and for the engines (measured on 4M Gaussian entries, zstd): ``index`` delta
encoded (consecutive indices cost ~0 bytes), float32 ``value`` byte-stream split (3.7 bytes an entry);
float16 stays plain, because DuckDB reads byte-stream-split floats of 4 and 8 bytes only (1.8 bytes an
entry). Row groups of 2^20 rows (4 MB of float32 values) keep a streaming reader's memory small.

Streamed tensor by tensor like the statistics (:mod:`conflux.analysis.stats`): τ of one parameter in a
float32 buffer reused across parameters (two parameters at a time on two cores), written in row groups;
never the whole model in memory.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conflux.analysis.param_names import parse_param_name
from conflux.analysis.task_vectors import TaskVectors
from conflux.analysis.tensor_io import ScratchBuffer
from conflux.analysis.ties import trim_k
from conflux.analysis.topk import top_k_indices
from conflux.atomic import atomic_path
from conflux.errors import ConfluxError
from conflux.progress import with_progress
from conflux.threads import ordered_map

log = logging.getLogger(__name__)

MODES = ("full", "trimmed")
DTYPES = {"float32": (torch.float32, pa.float32()), "float16": (torch.float16, pa.float16())}
# DuckDB reads byte-stream-split floats of 4 and 8 bytes only, so float16 values stay plain
VALUE_ENCODING = {"float32": "BYTE_STREAM_SPLIT", "float16": "PLAIN"}
ROW_GROUP = 1 << 20
NULL_PARTITION = (
    "__HIVE_DEFAULT_PARTITION__"  # the Hive name of a null partition value (pyarrow, DuckDB, Spark)
)
MANIFEST = "_dump.json"
META_KEY = b"conflux.dump"


def _schema(dtype: str) -> pa.Schema:
    return pa.schema(
        [
            ("source", pa.dictionary(pa.int32(), pa.string())),
            ("param", pa.dictionary(pa.int32(), pa.string())),
            ("index", pa.int64()),
            ("value", DTYPES[dtype][1]),
        ]
    )


def kept_entries(flat: torch.Tensor, mode: str, density: float) -> np.ndarray | None:
    """Flat indices (ascending) that a dump keeps of one τ, or None for all of them.

    ``trimmed``: the TIES trim's selection (:func:`~conflux.analysis.topk.top_k_indices`, which
    :func:`~conflux.analysis.ties.trim_top_k` uses too), so a trimmed dump is exactly the trimmed τ's support.
    """
    if mode == "full":
        return None
    k = trim_k(flat.numel(), density)
    if k >= flat.numel():
        return None
    return top_k_indices(flat.abs().numpy(), k)


def _write_part(
    path: Path, schema: pa.Schema, flat: torch.Tensor, keep: np.ndarray | None, meta: dict[str, Any]
) -> None:
    """One (source, parameter) file: the kept entries of ``flat`` in row groups of :data:`ROW_GROUP`."""
    values = flat.to(DTYPES[meta["dtype"]][0]).numpy()
    n = values.size if keep is None else keep.size
    dictionary = {"source": pa.array([meta["source"]]), "param": pa.array([meta["param"]])}
    with pq.ParquetWriter(
        path,
        schema.with_metadata({META_KEY: json.dumps(meta).encode()}),
        compression="zstd",
        use_dictionary=["source", "param"],
        # Statistics of the two constant columns cost a third of the write; a file holds one (source,
        # parameter), which its path and metadata name, so readers prune by partition instead.
        write_statistics=["index", "value"],
        column_encoding={"index": "DELTA_BINARY_PACKED", "value": VALUE_ENCODING[meta["dtype"]]},
    ) as writer:
        for start in range(0, n, ROW_GROUP):
            stop = min(start + ROW_GROUP, n)
            index = np.arange(start, stop, dtype=np.int64) if keep is None else keep[start:stop]
            zeros = np.zeros(stop - start, dtype=np.int32)
            columns = [
                pa.DictionaryArray.from_arrays(zeros, dictionary["source"]),
                pa.DictionaryArray.from_arrays(zeros, dictionary["param"]),
                pa.array(index),
                pa.array(values[start:stop] if keep is None else values[index]),
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=ROW_GROUP)


def dump_task_vectors(
    sources: Mapping[str, TaskVectors],
    out_dir: str | Path,
    *,
    mode: str,
    dtype: str,
    density: float,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the dump of every source (label -> task vectors) to ``out_dir``, atomically; return its manifest.

    Args:
        sources: Task-vector sources by label (the ``source`` column), e.g. ``{"sft": FullTaskVectors(...)}``
            or an adapter set (:func:`conflux.analysis.task_vectors.adapter_set`).
        out_dir: The dump's directory (replaced if it exists; nothing is left of it on an error).
        mode: ``full`` or ``trimmed`` (see the module docstring).
        dtype: ``float32`` or ``float16``, the stored dtype of ``value`` (τ is computed in float32).
        density: The trim density; kept by ``trimmed``, recorded by both for CL-L2 queries.
        progress: Show a tqdm bar.
    """
    if mode not in MODES:
        raise ConfluxError(f"dump mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ConfluxError(f"dump dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    trim_k(1, density)  # a bad density fails before anything is read
    schema = _schema(dtype)
    todo = [(label, tv, name) for label, tv in sources.items() for name in tv.names]
    local = threading.local()  # each worker thread's τ buffer, reused from tensor to tensor

    def one(seq: int, root: Path) -> dict[str, Any]:
        label, tv, name = todo[seq]
        if not hasattr(local, "tau"):
            local.tau = ScratchBuffer()
        shape = tuple(tv.shape(name))
        flat = tv.tau(name, out=local.tau.take(math.prod(shape))).reshape(-1)
        # NaN and ±inf propagate into the sum (one pass, no temporary); a finite τ cannot overflow it
        if not math.isfinite(float(flat.sum())):
            raise ConfluxError(f"{label}: task vector of {name} has non-finite entries (NaN or inf)")
        keep = kept_entries(flat, mode, density)
        layer, module = parse_param_name(name)
        part = root / f"layer={NULL_PARTITION if layer is None else layer}" / f"module={module}"
        part.mkdir(parents=True, exist_ok=True)
        meta = {
            "source": label,
            "param": name,
            "shape": list(shape),
            "numel": flat.numel(),
            "kept": flat.numel() if keep is None else keep.size,
            "mode": mode,
            "dtype": dtype,
            "density": density,
        }
        file = part / f"part-{seq:05d}.parquet"
        _write_part(file, schema, flat, keep, meta)
        return {**meta, "layer": layer, "module": module, "file": str(file.relative_to(root))}

    # Two parameters at a time when the job may use two cores (torch's threads are the rule's threads): one
    # is read and selected while the other is encoded; each writes its own file.
    workers = max(1, min(2, torch.get_num_threads()))
    with atomic_path(out_dir, directory=True) as tmp:
        with closing(ordered_map(lambda seq: one(seq, tmp), range(len(todo)), workers)) as results:
            shown = with_progress(results, desc="task-vector dump", total=len(todo)) if progress else results
            entries = list(shown)
        manifest = {
            "mode": mode,
            "dtype": dtype,
            "density": density,
            "sources": list(sources),
            "numel": sum(e["numel"] for e in entries),
            "kept": sum(e["kept"] for e in entries),
            "parameters": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    log.info(
        "dumped %d task-vector entries of %d (%s, %s) from %s -> %s",
        manifest["kept"],
        manifest["numel"],
        mode,
        dtype,
        list(sources),
        out_dir,
    )
    return manifest
