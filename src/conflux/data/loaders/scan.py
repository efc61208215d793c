"""Pre-scan of a local file before ``datasets`` reads it, so every error names the row and the field.

``datasets`` reports a bad byte or a broken JSON line as a parser traceback deep in pandas or pyarrow, without
the record number; a researcher then bisects the file by hand. These scans stream the file once, check what
the parsers would choke on (encoding, JSON syntax, missing columns, an empty file) and raise a
:class:`DataError` pointing at the record instead. Row numbers: for CSV the data record (header not counted),
for JSONL the line, for a JSON array the element.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from conflux.errors import DataError

# Undecodable bytes survive ``errors="surrogateescape"`` as lone surrogates U+DC80..U+DCFF.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
_NOT_UTF8 = "bytes are not valid UTF-8 (save the file as UTF-8)"


def scan_csv(path: Path, file: str, columns: Sequence[str]) -> list[str]:
    """Check a CSV file and return its header; the caller reads every column as text."""
    header: list[str] | None = None
    records = 0
    limit = csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long responses exceed the 128 KiB default
    try:
        # surrogateescape keeps undecodable bytes as lone surrogates, so the scan can name the cell
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            # strict: a quote never closed is an error (non-strict reading takes the rest of the file as one
            # cell, which pandas then refuses without a row number)
            reader = csv.reader(handle, strict=True)
            try:
                for cells in reader:
                    if not any(cell.strip() for cell in cells):
                        continue  # the reader skips blank lines too, so they are not records
                    if header is None:
                        header = _check_header(cells, file, columns)
                    else:
                        records += 1
                        _check_cells(cells, header, file, records)
            except csv.Error as err:
                reason = (
                    "a quoted cell that starts in this record is never closed"
                    if "unexpected end of data" in str(err)
                    else str(err)
                )
                raise DataError(
                    f"CSV syntax error near line {reader.line_num}: {reason}",
                    file=file,
                    row=records + 1,
                    field="-",
                ) from None
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise DataError("the file is empty", file=file, row="all", field="-")
    if records == 0:
        raise DataError("the file has a header but no data rows", file=file, row="all", field="-")
    return header


def _check_header(cells: list[str], file: str, columns: Sequence[str]) -> list[str]:
    header = list(cells)  # names as pandas reads them: " completion" is not "completion"
    for name in header:
        if _BAD_BYTE.search(name):
            raise DataError(_NOT_UTF8, file=file, row="header", field="-")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError("column name appears twice", file=file, row="header", field=repeated[0])
    for name in columns:
        if name not in header:
            raise DataError(f"column is missing (header has {header})", file=file, row="header", field=name)
    return header


def _check_cells(cells: list[str], header: list[str], file: str, record: int) -> None:
    for index, cell in enumerate(cells):
        if _BAD_BYTE.search(cell):
            field = header[index] if index < len(header) else "-"
            raise DataError(_NOT_UTF8, file=file, row=record, field=field)
    if len(cells) > len(header):
        raise DataError(
            f"record has {len(cells)} fields but the header has {len(header)} (unquoted comma?)",
            file=file,
            row=record,
            field="-",
        )


def scan_json(path: Path, file: str, columns: Sequence[str]) -> list[int] | None:
    """Check a JSON Lines file (or a JSON array); return the line number of each record for JSONL."""
    if _first_byte(path) == b"[":
        _scan_json_array(path, file, columns)
        return None
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(_NOT_UTF8, file=file, row=number, field=_bad_json_field(raw)) from None
            try:
                record = json.loads(text.lstrip("\ufeff") if number == 1 else text)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"line is not valid JSON ({err.msg}: column {err.colno}); expected one JSON object per "
                    "line (JSONL) or a JSON array of objects",
                    file=file,
                    row=number,
                    field="-",
                ) from None
            _check_record(record, file, number, columns)
            lines.append(number)
    if not lines:
        raise DataError("the file is empty", file=file, row="all", field="-")
    return lines


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped[:1]
    return b""


def _scan_json_array(path: Path, file: str, columns: Sequence[str]) -> None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{_NOT_UTF8} at line {line}", file=file, row="all", field="-") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"not valid JSON ({err.msg}: line {err.lineno}, column {err.colno})",
            file=file,
            row="all",
            field="-",
        ) from None
    if not records:
        raise DataError("the file is empty (an empty JSON array)", file=file, row="all", field="-")
    for index, record in enumerate(records, start=1):
        _check_record(record, file, index, columns)


def _check_record(record: Any, file: str, row: int, columns: Sequence[str]) -> None:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=file, row=row, field="-")
    for key, value in record.items():
        # Python reads 1e400 as inf; the JSON reader of datasets refuses the whole file without a row.
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and math.isinf(v) for v in values):
            raise DataError(
                "a number is beyond the float64 range (e.g. 1e400)", file=file, row=row, field=str(key)
            )
    for name in columns:
        if name not in record:
            raise DataError(f"field is missing (record has {sorted(record)})", file=file, row=row, field=name)


def _bad_json_field(raw: bytes) -> str:
    """The top-level key whose value holds the undecodable bytes, when the line is otherwise valid JSON."""
    try:
        record = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return "-"
    if isinstance(record, dict):
        for key, value in record.items():
            if _BAD_BYTE.search(json.dumps(value, ensure_ascii=False)):
                return str(key)
    return "-"


def scan_parquet(path: Path, file: str, columns: Sequence[str]) -> None:
    """Check that a Parquet file opens, has the columns, and holds rows."""
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"not a readable Parquet file ({err})", file=file, row="all", field="-") from None
    for name in columns:
        if name not in schema.names:
            raise DataError(
                f"column is missing (file has {schema.names})", file=file, row="header", field=name
            )
    if meta.num_rows == 0:
        raise DataError("the file holds no rows", file=file, row="all", field="-")
