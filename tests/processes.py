"""Finding the processes a test left behind, by what their command line names (a path, a profile)."""

from __future__ import annotations

from pathlib import Path


def processes_naming(text: str | Path) -> list[int]:
    """Pids of the live (not zombie) processes whose command line contains ``text``."""
    needle = str(text).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            named = needle in (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if named and state != "Z":
            pids.append(int(entry.name))
    return pids
