"""Users' own pairs, already in the canonical columns: ``pair_id, prompt, response_a, response_b, scores_a,
scores_b`` (score lists of length k, one entry per configured dimension).

Parquet files with numeric list columns go straight to :func:`conflux.data.pairs.validate_pairs`. Other forms
are converted value by value first, because a score list in CSV is text (``"[1, 0]"``) and a JSON list may
hold a string; a bad entry then gets a :class:`DataError` naming its row instead of a raw pyarrow cast error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from conflux.data.loaders.records import Records, open_records
from conflux.data.loaders.result import LoadResult
from conflux.data.loaders.values import is_missing, require_text
from conflux.data.pairs import PAIR_SCHEMA, SCORE_FIELDS, TEXT_FIELDS, validate_pairs
from conflux.errors import DataError

log = logging.getLogger(__name__)

CANONICAL_COLUMNS = TEXT_FIELDS + SCORE_FIELDS


def load_canonical(
    source: str, *, dims: Sequence[str], offline: bool = True, name: str | None = None
) -> LoadResult:
    """Load canonical pairs from a jsonl/json/parquet/csv file and validate them against ``dims``."""
    name = name or Path(source).stem
    if not dims:
        raise DataError(
            "no dimension names given; list the score dimensions under the dataset's `dims:`",
            file=source,
            row="header",
            field="dims",
        )
    records = open_records(source, offline=offline, columns=CANONICAL_COLUMNS)
    table = pa.table({field: _column(records, field) for field in CANONICAL_COLUMNS})
    try:
        pairs = validate_pairs(table, tuple(dims), source, file=records.file)
    except DataError as err:
        raise records.remap(err) from None
    log.info("%s: %d pairs over dims %s", name, len(pairs), list(pairs.dims))
    return LoadResult(pairs=pairs, drops={}, rows_read=len(records))


def _column(records: Records, field: str) -> pa.ChunkedArray | pa.Array:
    """One canonical column: the Arrow column when its type is already right, else converted row by row."""
    column = records.dataset.data.table.column(field)
    kind = column.type
    if field in SCORE_FIELDS and _is_numeric_list(kind):
        return column  # validate_pairs casts to list<float32> and checks lengths and finiteness
    values = records.columns([field])[field]
    if field == "pair_id":
        return pa.array([_pair_id(v, records, i) for i, v in enumerate(values)], type=pa.string())
    if field in TEXT_FIELDS:
        return pa.array(
            [_text(v, records, i, field) for i, v in enumerate(values)],
            type=pa.string(),
        )
    return pa.array(
        [_score_list(v, records, i, field) for i, v in enumerate(values)], type=PAIR_SCHEMA.field(field).type
    )


def _is_numeric_list(kind: pa.DataType) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return False
    item = kind.value_type
    return pa.types.is_integer(item) or pa.types.is_floating(item)


def _pair_id(value: Any, records: Records, index: int) -> str:
    # Integer ids are common in hand-made files; they identify a pair as well as text does.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return require_text(value, file=records.file, row=records.row(index), field="pair_id")


def _text(value: Any, records: Records, index: int, field: str) -> str:
    return require_text(value, file=records.file, row=records.row(index), field=field)


def _score_list(value: Any, records: Records, index: int, field: str) -> list[float]:
    row = records.row(index)
    if isinstance(value, str):  # CSV cells hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(
                f"value {value!r} is not a JSON list of numbers", file=records.file, row=row, field=field
            ) from None
    if is_missing(value):
        raise DataError("value is missing", file=records.file, row=row, field=field)
    if not isinstance(value, list):
        raise DataError(f"value {value!r} is not a list of scores", file=records.file, row=row, field=field)
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise DataError(
                f"score {item!r} at position {position} is not a number",
                file=records.file,
                row=row,
                field=field,
            )
    return [float(item) for item in value]
