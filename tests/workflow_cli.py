"""Snakemake as a user runs it, from the tests: the CLI in this venv, and the dry run's job table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# The whole-workflow runs of tests/test_workflow.py and tests/test_persona_workflow.py: a guard against a
# hung run, not a speed check. Under pytest-xdist a run shares the cores with the other worker (the two runs
# overlap by design) and with whatever else the machine runs: it may take several times its serial 7-9 min.
RUN_TIMEOUT = 3600


def snakemake(
    root: Path, *args: str, workdir: Path | None = None, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(root / "Snakefile"), *args]
    if workdir is not None:
        cmd += ["-d", str(workdir)]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("job") and "count" in line)
    for line in lines[start + 2 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts
