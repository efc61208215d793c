"""Project exceptions.

Every input problem is raised as a :class:`DataError` that names the file, the row and the field, so a
researcher can open the file at the right line instead of reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ConfluxError(Exception):
    """Base class of every error conflux raises on purpose."""


class DataError(ConfluxError):
    """A problem with an input file.

    ``row`` is the 1-based number of the record in the file (a CSV header is not counted; for JSONL it is
    the line number), or a word such as ``"header"`` or ``"all"`` when no single record is at fault.
    """

    def __init__(self, message: str, *, file: str | Path, row: int | str, field: str) -> None:
        self.file = str(file)
        self.row = row
        self.field = field
        self.reason = message
        super().__init__(f"{self.file}: row {row}, field '{field}': {message}")


class ConfigError(ConfluxError):
    """A configuration value that breaks a rule; names the dotted key and the rule."""

    def __init__(self, key: str, rule: str, message: str) -> None:
        self.key = key
        self.rule = rule
        super().__init__(f"config key '{key}' breaks rule '{rule}': {message}")
