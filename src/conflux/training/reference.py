"""Cached reference log-probs: log π_ref(y_a|x), log π_ref(y_b|x) once per (base model, split part).

Every method and stage uses the same reference (the base model with adapters disabled), so running it inside
each training step would repeat identical work k+1 times per step across five methods. The cache is a
Parquet file keyed by ``pair_id``; its metadata records the tokenization (max length, truncation) and the base
model, and a reader with other settings gets an error instead of silently mismatched numbers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from conflux.atomic import atomic_path
from conflux.data.pairs import PairTable
from conflux.errors import DataError
from conflux.modeling.logprobs import score_rows
from conflux.modeling.tokenize import TokenizeSettings, encode_pairs, pad_id_of

log = logging.getLogger(__name__)
_META_KEY = b"conflux_reference"
REFERENCE_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("ref_logp_a", pa.float64(), nullable=False),
        pa.field("ref_logp_b", pa.float64(), nullable=False),
        pa.field("n_tokens_a", pa.int32(), nullable=False),
        pa.field("n_tokens_b", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)


def compute_reference_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: PairTable,
    settings: TokenizeSettings,
    *,
    batch_size: int = 16,
) -> pa.Table:
    """Reference log-probs of every pair, in the pairs' order, as a :data:`REFERENCE_SCHEMA` table."""
    model.eval()
    rows_a, rows_b, cut = encode_pairs(tokenizer, pairs, settings)
    logp_a, logp_b = score_rows(
        model, rows_a, rows_b, pad_id_of(tokenizer), batch_size=batch_size, desc="reference log-probs"
    )
    n_cut = int(sum(cut))
    if n_cut:
        log.warning("%d of %d pairs were truncated to max_length=%d", n_cut, len(pairs), settings.max_length)
    return pa.table(
        {
            "pair_id": pairs.table.column("pair_id"),
            "ref_logp_a": logp_a,
            "ref_logp_b": logp_b,
            "n_tokens_a": np.array([len(r) for _, r in rows_a], dtype=np.int32),
            "n_tokens_b": np.array([len(r) for _, r in rows_b], dtype=np.int32),
            "truncated": cut,
        },
        schema=REFERENCE_SCHEMA,
    )


def write_reference(path: str | Path, table: pa.Table, settings: TokenizeSettings, model_name: str) -> None:
    meta = {"max_length": settings.max_length, "truncation": settings.truncation, "model": model_name}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_reference(
    paths: str | Path | Sequence[str | Path], settings: TokenizeSettings, pair_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Reference log-probs (a, b) for ``pair_ids``, in that order, from one or more cache files.

    Fails naming the file when a cache was computed with other tokenization settings, and naming the files
    when a pair is in none of them.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    ids, col_a, col_b = [], [], []
    for path in paths:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        for key in ("max_length", "truncation"):
            if meta.get(key) != getattr(settings, key):
                raise DataError(
                    f"reference log-probs were computed with {key}={meta.get(key)!r}, training uses "
                    f"{getattr(settings, key)!r}; rerun the reference_logps rule",
                    file=path,
                    row="header",
                    field=key,
                )
        ids += table.column("pair_id").to_pylist()
        col_a.append(table.column("ref_logp_a").to_numpy())
        col_b.append(table.column("ref_logp_b").to_numpy())
    index = {pid: i for i, pid in enumerate(ids)}
    missing = [pid for pid in pair_ids if pid not in index]
    if missing:
        raise DataError(
            f"{len(missing)} pairs have no reference log-probs (first: {missing[:3]})",
            file=", ".join(str(p) for p in paths),
            row="all",
            field="pair_id",
        )
    rows = np.fromiter((index[pid] for pid in pair_ids), dtype=np.int64, count=len(pair_ids))
    return np.concatenate(col_a)[rows], np.concatenate(col_b)[rows]


def reference_logps_job(
    pairs_path: str | Path,
    manifest_path: str | Path,
    out: str | Path,
    settings: TokenizeSettings,
    *,
    batch_size: int,
) -> None:
    """The ``reference_logps`` rule: the base model (no adapters) scores one split part."""
    from conflux.data.pairs import read_pairs
    from conflux.modeling.base_model import load_base_model, read_manifest, to_work_device, working_dtype

    manifest = read_manifest(manifest_path)
    model, tokenizer = load_base_model(manifest, dtype=working_dtype())
    model = to_work_device(model)
    pairs = read_pairs(pairs_path, allow_empty=True)
    table = compute_reference_logps(model, tokenizer, pairs, settings, batch_size=batch_size)
    write_reference(out, table, settings, manifest["name"])
    log.info("%s: reference log-probs of %d pairs -> %s", pairs_path, len(pairs), out)
