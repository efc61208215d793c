"""Wall time of the paper-matrix dry-run with the SLURM profile, and of Snakemake's own start-up.

    .venv/bin/python bench/dryrun.py [--repeat 3] [--configfile config/paper.yaml] [--profile profiles/slurm]

Runs ``snakemake -n --configfile config/paper.yaml --profile profiles/slurm`` in a scratch working directory
(so no results/ or .snakemake/ state of the checkout is read) ``--repeat`` times and prints the number of
planned jobs and the best and median wall seconds; then the same for ``snakemake --version``, the floor
that no workflow change can go below (interpreter, Snakemake and plugin imports).

Goal (issue 7): the paper-matrix dry-run under 3 s.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def report(label: str, times: list[float]) -> None:
    print(f"{label}: best {min(times):.2f} s, median {statistics.median(times):.2f} s ({len(times)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configfile", default="config/paper.yaml")
    parser.add_argument("--profile", default="profiles/slurm")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="conflux-dryrun-") as work:
        cmd = [str(SNAKEMAKE), "-n", "--profile", args.profile, "--configfile", args.configfile, "-d", work]
        runs = [timed(cmd) for _ in range(args.repeat)]
    jobs = re.search(r"^total\s+(\d+)$", runs[0][1], flags=re.M)
    print(f"{args.configfile} with {args.profile}: {jobs.group(1) if jobs else '?'} jobs planned")
    report("dry-run", [seconds for seconds, _ in runs])
    report("snakemake --version (start-up floor)", [timed([str(SNAKEMAKE), "--version"])[0] for _ in runs])


if __name__ == "__main__":
    main()
