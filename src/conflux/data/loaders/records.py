"""Reading raw records with ``datasets``: local CSV/JSON(L)/Parquet files, or a hub id when online.

Local files are pre-scanned (:mod:`conflux.data.loaders.scan`) so that errors name the record, then read with
``datasets.load_dataset``. A hub id never touches the network when running offline: it fails at once with a
message that says how to point the config at downloaded files, instead of hanging or failing deep in
``huggingface_hub``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from conflux.data.loaders.scan import scan_csv, scan_json, scan_parquet
from conflux.data.sources import is_hub_id
from conflux.errors import DataError
from conflux.hub import HubUnavailable, hub_snapshot

log = logging.getLogger(__name__)

BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Records:
    """Raw records of one source, with the row number to report for each (JSONL: its line number)."""

    dataset: datasets.Dataset
    file: str
    lines: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def row(self, index: int) -> int:
        """The 1-based row number of record ``index`` as a reader of the file would count it."""
        return self.lines[index] if self.lines is not None else index + 1

    def columns(self, names: Sequence[str]) -> dict[str, list[Any]]:
        """The named columns as Python lists (JSON values decoded)."""
        return self.dataset.select_columns(list(names)).to_dict()

    def remap(self, err: DataError) -> DataError:
        """Re-point an error that counted rows by position (``validate_pairs``) at the file's row number."""
        if self.lines is None or not isinstance(err.row, int) or not 1 <= err.row <= len(self.lines):
            return err
        return DataError(err.reason, file=self.file, row=self.lines[err.row - 1], field=err.field)


def read_records(
    source: str, *, split: str = "train", offline: bool = True, columns: Sequence[str]
) -> tuple[datasets.Dataset, str]:
    """Read the records of a local file or hub dataset and check that ``columns`` are present.

    Returns the dataset and the name to show for it in messages (the source as given).
    """
    records = open_records(source, split=split, offline=offline, columns=columns)
    return records.dataset, records.file


def open_records(
    source: str,
    *,
    split: str = "train",
    offline: bool = True,
    columns: Sequence[str] = (),
    revision: str | None = None,
    config: str | None = None,
) -> Records:
    """Like :func:`read_records`, keeping the row numbers that error messages use.

    A hub id is read from its repository snapshot, downloaded or (offline) found in the hub cache that
    ``snakemake download`` filled, so online and offline runs read the same files; ``config`` names one of
    its configurations (subsets).
    """
    path = Path(source).expanduser()
    if path.exists():
        return _read_local(path, source, columns)
    if path.suffix.lower() in BUILDERS or source.startswith(("/", ".", "~")) or not is_hub_id(source):
        raise DataError("file not found", file=source, row="all", field="path")
    try:
        snapshot = hub_snapshot(source, repo_type="dataset", revision=revision, offline=offline)
    except HubUnavailable as err:
        raise DataError(
            f"{err} Or download it yourself (e.g. `hf download {source} --repo-type dataset --local-dir "
            f"data/{source.split('/')[-1]}`) and set the dataset's `path:` to the local .jsonl, .parquet or "
            ".csv file.",
            file=source,
            row="all",
            field="path",
        ) from None
    return _read_hub(snapshot, source, split, columns, config)


def _read_local(path: Path, file: str, columns: Sequence[str]) -> Records:
    if not path.is_file():
        raise DataError("not a file (point `path:` at one data file)", file=file, row="all", field="path")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"unsupported file type '{path.suffix}'; use one of {sorted(BUILDERS)}",
            file=file,
            row="all",
            field="path",
        )
    if path.stat().st_size == 0:
        raise DataError("the file is empty", file=file, row="all", field="-")
    options: dict[str, Any] = {}
    lines = None
    if builder == "csv":
        header = scan_csv(path, file, columns)
        # Every column as text: pandas would otherwise guess a type per 10k-row chunk (and may disagree
        # between chunks) and turn "NA" replies into nulls. The loaders parse numbers themselves.
        options = {
            "features": datasets.Features({name: datasets.Value("string") for name in header}),
            "keep_default_na": False,
        }
    elif builder == "json":
        lines = scan_json(path, file, columns)
    else:
        scan_parquet(path, file, columns)
    try:
        dataset = datasets.load_dataset(builder, data_files=str(path.resolve()), split="train", **options)
    except Exception as err:  # datasets wraps parser errors in several exception types
        raise DataError(f"datasets could not read the file: {err}", file=file, row="all", field="-") from err
    if lines is not None and len(lines) != len(dataset):
        log.warning("%s: %d records, %d JSON lines; rows counted by record", file, len(dataset), len(lines))
        lines = None
    log.info("%s: %d records", file, len(dataset))
    return Records(dataset, file, lines)


def _read_hub(snapshot: Path, source: str, split: str, columns: Sequence[str], config: str | None) -> Records:
    log.info("%s: loading split '%s' (config %s) from its hub snapshot %s", source, split, config, snapshot)
    try:
        dataset = datasets.load_dataset(str(snapshot), name=config, split=split)
    except Exception as err:  # an unknown split or config, unreadable data files: all end the same way
        what = f"split '{split}'" + (f" of config '{config}'" if config else "")
        raise DataError(f"could not load {what} of the hub dataset: {err}", file=source, row="all",
                        field="hub_config" if config else "path") from err  # fmt: skip
    for name in columns:
        if name not in dataset.column_names:
            raise DataError(
                f"column is missing (dataset has {dataset.column_names})",
                file=source,
                row="header",
                field=name,
            )
    if len(dataset) == 0:
        raise DataError(f"split '{split}' holds no rows", file=source, row="all", field="-")
    return Records(dataset, source, None)
