"""Wall time of the paper-matrix dry-run with the SLURM profile, against Snakemake's own start-up.

    .venv/bin/python bench/dryrun.py [--repeat 5] [--configfile config/paper.yaml] [--profile profiles/slurm]

Runs ``snakemake -n --configfile config/paper.yaml --profile profiles/slurm`` in a scratch working
directory (so no results/ or .snakemake/ state of the checkout is read) and, alternating with it,
``snakemake --version``: the floor no workflow change can go below (interpreter, Snakemake and plugin
imports; Snakemake imports every installed executor plugin, and the SLURM plugin imports pandas). Prints the
planned job count, best and median wall seconds of both, the ratio of the medians and the goal line;
exits 1 when the goal is missed.

Why the ratio: this VM's speed drifts by up to 2x within hours (the floor measured 1.28 s to 2.3 s), and both
commands drift together, so dry-run / floor is the figure that says whether the workflow got slower; wall
seconds say whether the goal holds on this machine now. Runs alternate so that a slow spell hits both.

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
GOAL_S = 3.0


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
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--configfile", default="config/paper.yaml")
    parser.add_argument("--profile", default="profiles/slurm")
    args = parser.parse_args()

    version = [str(SNAKEMAKE), "--version"]
    dry, floor, first_output = [], [], ""
    with tempfile.TemporaryDirectory(prefix="conflux-dryrun-") as work:
        cmd = [str(SNAKEMAKE), "-n", "--profile", args.profile, "--configfile", args.configfile, "-d", work]
        for _ in range(args.repeat):
            seconds, output = timed(cmd)
            dry.append(seconds)
            first_output = first_output or output
            floor.append(timed(version)[0])
    jobs = re.search(r"^total\s+(\d+)$", first_output, flags=re.M)
    print(f"{args.configfile} with {args.profile}: {jobs.group(1) if jobs else '?'} jobs planned")
    report("dry-run", dry)
    report("snakemake --version (start-up floor)", floor)
    best, median = min(dry), statistics.median(dry)
    ratio = median / statistics.median(floor)
    print(f"dry-run / floor: {ratio:.2f} (medians); the workflow's part: {best - min(floor):.2f} s (bests)")
    verdict = "met" if best < GOAL_S else "missed"
    print(f"goal: under {GOAL_S:.0f} s: {verdict} (best {best:.2f} s, median {median:.2f} s)")
    if verdict == "missed":
        sys.exit(1)


if __name__ == "__main__":
    main()
