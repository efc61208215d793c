"""Atomic outputs: write to a temporary sibling, then rename.

A job killed half-way must never leave a file that Snakemake (or a person) would take for a finished output.
``os.replace`` within one directory is atomic on POSIX, so readers see either nothing or the whole file.

The temporary sibling is ``.<name>.tmp-<host>-<pid>``. A process killed before the rename leaves it behind;
the next write of the same output removes the siblings of dead processes on its host (a live process, or one
on another host of a shared file system, may still be writing its own), and ``snakemake check`` lists any
that remain (:mod:`conflux.check`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


def temporary_owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) of the process that writes the temporary sibling ``path``, or None if it is not one."""
    name = path.name
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    host, _, pid = name.rsplit(TMP_MARK, 1)[1].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def process_alive(host: str, pid: int) -> bool:
    """Whether a process may still run: on another host nothing can be known, so yes."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary siblings of ``path`` whose writers died on this host; return them."""
    removed = []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            owner = temporary_owner(sibling)
            if owner and sibling.name.startswith(f".{path.name}{TMP_MARK}") and not process_alive(*owner):
                _remove(sibling)
                removed.append(sibling)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, on error remove it.

    With ``directory=True`` the temporary path is created as an empty directory (for ``save_pretrained``).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _tmp_sibling(final)
    _remove(tmp)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and final.exists():
            # os.replace cannot replace a non-empty directory; the old one is an output we are rebuilding.
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n", encoding="utf-8"
        )


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
