"""Snakemake as a user runs it, from the tests: the CLI in this venv, and the dry run's job table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

BIN = Path(sys.executable).parent
# The whole-workflow runs of tests/test_workflow.py and tests/test_persona_workflow.py: a guard against a
# hung run, not a speed check. Under pytest-xdist a run shares the cores with the other worker (the two runs
# overlap by design) and with whatever else the machine runs: it may take several times its serial 7-9 min.
RUN_TIMEOUT = 3600
# Keys of the JSON outputs that record when or how long, not what.
TIMING_KEYS = {"elapsed_s", "seconds", "created_at", "started_at", "finished_at", "train_runtime",
               "train_samples_per_second", "train_steps_per_second"}  # fmt: skip
# Sets written as lists, in an order of the writing process's string hashes (PEFT's adapter_config.json).
UNORDERED_KEYS = {"target_modules"}


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


def untimed(value):
    """A JSON value without its wall-clock keys, at any depth (the tiny model's manifest nests its
    pretraining's seconds), and with its sets sorted."""
    if isinstance(value, dict):
        kept = {k: v for k, v in value.items() if k not in TIMING_KEYS}
        return {k: sorted(v) if k in UNORDERED_KEYS else untimed(v) for k, v in kept.items()}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def equal_outputs(a: Path, b: Path) -> list[str]:
    """Differences between two results/ trees (or two outputs): Parquet by table contents, JSON and JSON
    lines by value less the wall-clock keys, the rest by bytes."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diffs = [f"only in one run: {sorted(map(str, files_a ^ files_b))}"] if files_a != files_b else []
    for rel in sorted(files_a & files_b):
        fa, fb = a / rel, b / rel
        if rel.suffix == ".parquet":
            same = pq.read_table(fa).equals(pq.read_table(fb))
        elif rel.suffix == ".json":
            same = untimed(json.loads(fa.read_text())) == untimed(json.loads(fb.read_text()))
        elif rel.suffix == ".jsonl":
            lines_a, lines_b = fa.read_text().splitlines(), fb.read_text().splitlines()
            same = [untimed(json.loads(x)) for x in lines_a] == [untimed(json.loads(x)) for x in lines_b]
        else:
            same = fa.read_bytes() == fb.read_bytes()
        if not same:
            diffs.append(str(rel))
    return diffs


def planned(output: str) -> list[dict]:
    """The jobs of a dry run, each as {'rule', 'threads', 'resources': {name: value}}."""
    jobs: list[dict] = []
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            jobs.append({"rule": m.group(1), "threads": 1, "resources": {}})
        elif jobs and (m := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[-1]["threads"] = int(m.group(1))
        elif jobs and (m := re.match(r"^\s+resources: (.*)$", line)):
            pairs = re.findall(r"(\w+)=(.*?)(?=, \w+=|$)", m.group(1))
            jobs[-1]["resources"] = dict(pairs)
    return jobs
