"""The canonical preference-pair table and its Parquet file format.

One row per pair: ``pair_id, prompt, response_a, response_b, scores_a, scores_b`` with score vectors of length
k, plus file metadata (dimension names, source, k). Everything downstream (split, training, evaluation) reads
this one format, so it is checked on write *and* on read.

In memory a pair set is a :class:`PairTable`: a pyarrow table plus its dimensions. Scores are exposed as dense
``(n, k)`` float32 arrays so the split and the evaluation are vectorised numpy, fast on millions of pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conflux.atomic import atomic_path
from conflux.errors import DataError

TEXT_FIELDS = ("pair_id", "prompt", "response_a", "response_b")
SCORE_FIELDS = ("scores_a", "scores_b")
PAIR_SCHEMA = pa.schema(
    [pa.field(name, pa.string(), nullable=False) for name in TEXT_FIELDS]
    + [pa.field(name, pa.list_(pa.float32()), nullable=False) for name in SCORE_FIELDS]
)
SFT_FIELDS = ("prompt", "response", "persona")
SFT_SCHEMA = pa.schema([pa.field(name, pa.string(), nullable=False) for name in SFT_FIELDS])
_META_KEY = b"conflux"


@dataclass(frozen=True)
class PairTable:
    """A validated set of preference pairs over named dimensions."""

    table: pa.Table
    dims: tuple[str, ...]
    source: str

    @property
    def k(self) -> int:
        return len(self.dims)

    def __len__(self) -> int:
        return self.table.num_rows

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(scores_a, scores_b)`` as ``(n, k)`` float32 arrays."""
        return _score_matrix(self.table, "scores_a", self.k), _score_matrix(self.table, "scores_b", self.k)

    def take(self, indices: np.ndarray) -> PairTable:
        """Rows at ``indices``, in that order, with the same dimensions and source."""
        return PairTable(self.table.take(pa.array(indices, type=pa.int64())), self.dims, self.source)


def _score_matrix(table: pa.Table, field: str, k: int) -> np.ndarray:
    column = table.column(field).combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), k)


def make_pair_table(
    *,
    pair_id: list[str],
    prompt: list[str],
    response_a: list[str],
    response_b: list[str],
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    dims: tuple[str, ...] | list[str],
    source: str,
    file: str | Path = "<memory>",
    allow_empty: bool = False,
) -> PairTable:
    """Build and validate a :class:`PairTable` from columns; ``scores_*`` are ``(n, k)`` arrays."""
    k = len(dims)
    arrays = [pa.array(col, type=pa.string()) for col in (pair_id, prompt, response_a, response_b)]
    for scores in (scores_a, scores_b):
        matrix = np.asarray(scores, dtype=np.float32).reshape(-1, k)
        offsets = pa.array(np.arange(0, matrix.size + 1, k, dtype=np.int32))
        arrays.append(pa.ListArray.from_arrays(offsets, pa.array(matrix.ravel(), type=pa.float32())))
    table = pa.Table.from_arrays(arrays, schema=PAIR_SCHEMA)
    return validate_pairs(table, tuple(dims), source, file=file, allow_empty=allow_empty)


def validate_pairs(
    table: pa.Table, dims: tuple[str, ...], source: str, *, file: str | Path, allow_empty: bool = False
) -> PairTable:
    """Check a table against the canonical schema; raise :class:`DataError` at the first bad row.

    Checks: every column present with the right type, no nulls, at least one row, score vectors of length k
    with finite values, unique ``pair_id``.
    """
    if not dims:
        raise DataError("no dimension names in the file metadata", file=file, row="header", field="dims")
    if len(set(dims)) != len(dims):
        raise DataError(f"dimension names repeat: {list(dims)}", file=file, row="header", field="dims")
    for field in PAIR_SCHEMA:
        if field.name not in table.column_names:
            raise DataError("column is missing", file=file, row="header", field=field.name)
    if table.num_rows == 0 and not allow_empty:
        raise DataError("the file holds no pairs", file=file, row="all", field="pair_id")
    columns = {}
    for field in PAIR_SCHEMA:
        column = table.column(field.name)
        if column.null_count:
            bad = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("value is missing (null)", file=file, row=bad + 1, field=field.name)
        if not column.type.equals(field.type):
            column = _cast_or_raise(column, field, file)
        columns[field.name] = column
    k = len(dims)
    for name in SCORE_FIELDS:
        column = columns[name].combine_chunks()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        wrong = np.flatnonzero(lengths != k)
        if wrong.size:
            row = int(wrong[0])
            raise DataError(
                f"score vector has length {int(lengths[row])}, expected k={k} for dims {list(dims)}",
                file=file,
                row=row + 1,
                field=name,
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        bad_values = np.flatnonzero(~np.isfinite(values))
        if bad_values.size:
            flat_index = int(bad_values[0])
            raise DataError(
                f"score {values[flat_index]} for dimension '{dims[flat_index % k]}' is not finite",
                file=file,
                row=flat_index // k + 1,
                field=name,
            )
    ids = columns["pair_id"].combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        duplicated = pc.is_in(ids, value_set=_repeated_values(ids)).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(duplicated)
        raise DataError(
            f"pair_id '{ids[int(rows[1])].as_py()}' is not unique (also row {int(rows[0]) + 1})",
            file=file,
            row=int(rows[1]) + 1,
            field="pair_id",
        )
    table = pa.Table.from_arrays([columns[f.name] for f in PAIR_SCHEMA], schema=PAIR_SCHEMA)
    return PairTable(table, tuple(dims), source)


def _repeated_values(ids: pa.Array) -> pa.Array:
    counts = pc.value_counts(ids)
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    return repeated.field("values")


def _cast_or_raise(column: pa.ChunkedArray, field: pa.Field, file: str | Path) -> pa.ChunkedArray:
    try:
        return column.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Find the first row that does not convert, so the message can point at it.
    for index, value in enumerate(column.to_pylist()):
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            raise DataError(
                f"value {value!r} is not of type {field.type}", file=file, row=index + 1, field=field.name
            ) from None
    raise DataError(
        f"column of type {column.type} is not {field.type}", file=file, row="all", field=field.name
    )


def write_pairs(path: str | Path, pairs: PairTable) -> None:
    """Write pairs to Parquet atomically, with dims, source and k in the file metadata."""
    meta = {"dims": list(pairs.dims), "source": pairs.source, "k": pairs.k}
    table = pairs.table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_pairs(path: str | Path, *, allow_empty: bool = False) -> PairTable:
    """Read and validate a canonical pair file written by :func:`write_pairs`.

    A split part may legitimately be empty (e.g. no held-out agree pairs); readers that need data keep the
    default and get a clear error instead of training on nothing.
    """
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=path, row="all", field="-") from None
    meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    if "dims" not in meta:
        raise DataError(
            "no conflux metadata; write it with write_pairs", file=path, row="header", field="dims"
        )
    return validate_pairs(
        table, tuple(meta["dims"]), meta.get("source", str(path)), file=path, allow_empty=allow_empty
    )


def write_sft(path: str | Path, table: pa.Table) -> None:
    """Write persona SFT rows (prompt, response, persona) atomically."""
    table = table.select(list(SFT_FIELDS)).cast(SFT_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_sft(path: str | Path) -> pa.Table:
    """Read persona SFT rows and check their schema."""
    table = pq.read_table(path)
    for name in SFT_FIELDS:
        if name not in table.column_names:
            raise DataError("column is missing", file=path, row="header", field=name)
    return table.select(list(SFT_FIELDS)).cast(SFT_SCHEMA)
