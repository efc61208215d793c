"""Per-value checks shared by the loaders: each names the file, row and field of a bad value.

Values arrive as whatever the file format gives: CSV cells are text (the reader keeps every column as a
string), JSON values keep their JSON type, Parquet values their column type. The checks accept the forms a
real file uses for a value and reject the rest with a message that quotes it.
"""

from __future__ import annotations

import math
from typing import Any

from conflux.errors import DataError


def is_missing(value: Any) -> bool:
    """None or a float NaN (how pandas-written files mark an absent value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def require_text(value: Any, *, file: str, row: int, field: str) -> str:
    """A non-empty string; an empty reply or prompt is a broken row, not a pair to learn from."""
    if is_missing(value):
        raise DataError("value is missing", file=file, row=row, field=field)
    if not isinstance(value, str):
        what = f"{type(value).__name__} {value!r:.60}"
        raise DataError(f"expected text, got {what}", file=file, row=row, field=field)
    if not value.strip():
        raise DataError("text is empty", file=file, row=row, field=field)
    return value


def parse_choice(value: Any, *, file: str, row: int, field: str) -> int:
    """A response index 0 or 1, given as bool, integer (or integral float) or the text "0"/"1"."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    what = "value is missing" if is_missing(value) or value == "" else f"value {value!r} is not 0 or 1"
    raise DataError(f"{what} (expected the index 0 or 1 of a response)", file=file, row=row, field=field)


def parse_score(
    value: Any, *, file: str, row: int, field: str, bounds: tuple[float, float] | None = None
) -> float:
    """A finite number (int, float or numeric text), optionally within ``bounds`` (inclusive)."""
    if value is None or value == "":
        raise DataError("value is missing", file=file, row=row, field=field)
    if isinstance(value, bool):  # True is an int to Python, but not a score
        raise DataError(f"value {value!r} is not a number", file=file, row=row, field=field)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise DataError(f"value {value!r} is not a number", file=file, row=row, field=field) from None
    else:
        raise DataError(f"value {value!r} is not a number", file=file, row=row, field=field)
    if not math.isfinite(number):
        raise DataError(f"score {value!r} is not finite", file=file, row=row, field=field)
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        low, high = bounds
        raise DataError(f"score {value!r} is outside {low:g}..{high:g}", file=file, row=row, field=field)
    return number
