"""Check a finished run's outputs: ``snakemake check`` after a node crash on a shared file system.

Snakemake trusts an output that exists; a file system that lost writes when a node died can leave a file
that exists but is cut short. This walks ``results/`` and verifies what can be verified without the
workflow: every safetensors file's header covers its data, every Parquet file's footer reads, every JSON
file parses and every JSONL line too, every model directory's index names shards that are there, and no
temporary sibling of an atomic write (``.<name>.tmp-<host>-<pid>``) is left. Each problem is named with its
path; a temporary whose writer may still run (on another host, or alive here) is reported as such.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from conflux.atomic import process_alive, temporary_owner
from conflux.errors import ConfluxError
from conflux.modeling.base_model import INDEX_FILE, check_safetensors, weight_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _check_file(path: Path) -> str | None:
    """What is wrong with one output file, or None."""
    try:
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix == ".parquet":
            pq.read_metadata(path)  # the footer: a file cut short has none (pyarrow raises ArrowInvalid)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    json.loads(line)
                except ValueError as err:
                    return f"line {number} is not JSON ({err})"
    except (ConfluxError, OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        return str(err)
    return None


def check_outputs(root: str | Path) -> tuple[list[Problem], int]:
    """(problems, files checked) of every output under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise ConfluxError(f"{root}: no such directory; run the workflow first")
    problems: list[Problem] = []
    checked = 0
    for path in sorted(root.rglob("*")):
        owner = temporary_owner(path)
        if owner is not None:
            state = "may still be written" if process_alive(*owner) else "its writer is dead"
            problems.append(
                Problem(path, f"temporary of an unfinished write by {owner[0]} pid {owner[1]} ({state})")
            )
            continue
        if any(temporary_owner(parent) for parent in path.parents):
            continue  # inside a temporary directory, reported above
        if path.is_dir():
            if (path / "config.json").is_file() and (
                (path / INDEX_FILE).is_file() or any(path.glob("*.safetensors"))
            ):
                try:
                    weight_files(path)
                except ConfluxError as err:
                    problems.append(Problem(path, str(err)))
            continue
        checked += 1
        reason = _check_file(path)
        if reason is not None:
            problems.append(Problem(path, reason))
    return problems, checked


def check_job(root: str | Path) -> None:
    """The ``check`` rule: log every problem and fail when there is one."""
    problems, checked = check_outputs(root)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfluxError(f"{len(problems)} problem(s) among the outputs under {root}:\n{listed}")
    log.info("%s: %d files checked, no problem found", root, checked)
