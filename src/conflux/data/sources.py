"""Where a dataset's raw input lives and a cheap fingerprint of it: what the workflow needs to plan a DAG.

Kept apart from :mod:`conflux.data.jobs` (which imports the loaders and with them ``datasets``) so that
parsing the config and a dry run stay fast.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from conflux.data.persona_text import bundled_persona_path
from conflux.data.specs import GENERATE

if TYPE_CHECKING:
    from conflux.data.specs import DatasetSpec

BUNDLED_PREFIX = "bundled:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(source: str) -> bool:
    """Whether a dataset's ``path:`` names a hub repository (``org/name``) rather than a file."""
    return (
        not source.startswith(BUNDLED_PREFIX)
        and not Path(source).expanduser().exists()
        and bool(_HUB_ID.match(source))
        and Path(source).suffix.lower() not in (".csv", ".json", ".jsonl", ".parquet")
    )


def resolve_path(path: str) -> str:
    """``bundled:<name>`` -> the file shipped with conflux; anything else unchanged (a path or a hub id)."""
    if path.startswith(BUNDLED_PREFIX):
        return str(bundled_persona_path(path[len(BUNDLED_PREFIX) :]))
    return path


def source_fingerprint(spec: DatasetSpec) -> str:
    """Identify the input files' content cheaply (path, size, mtime), so a changed file reruns the load rule.

    Raw inputs are params rather than Snakemake inputs so that a dry run of a config whose data are not on
    this machine (the paper matrix on a laptop) still plans; a missing file is reported when the job runs.
    """
    parts = []
    for raw in (spec.path, spec.general):
        if raw is None or raw == GENERATE:  # generated replies are a target of their own
            continue
        resolved = Path(resolve_path(raw))
        if resolved.is_file():
            stat = resolved.stat()
            parts.append(f"{raw}:{stat.st_size}:{int(stat.st_mtime)}")
        else:
            parts.append(f"{raw}:not-local")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16] if parts else "generated"
