"""Debian packages that tests need (SLURM, Chromium), installed by the tests themselves when missing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# One apt_install at a time on the machine: pytest-xdist's workers (the SLURM tests on one, Chromium's on the
# other) would otherwise meet at dpkg's lock, and one could delete the policy-rc.d the other installs under.
LOCK = Path(tempfile.gettempdir()) / "conflux-apt-install.lock"


def apt_install(packages: list[str], *, what: str) -> float:
    """Install ``packages`` with apt-get (root); return the seconds it took. Skips without apt-get."""
    if shutil.which("apt-get") is None:
        pytest.skip(f"{what} is not installed and there is no apt-get to install it with")
    if os.geteuid() != 0:
        pytest.skip(f"{what} is not installed, and installing it needs root")
    start = time.monotonic()
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        _install(packages)
    return time.monotonic() - start


def _install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the packages' maintainer scripts from starting system-wide daemons (a munged on /run/munge) that
    # the tests would then leave behind: policy-rc.d exit 101 is the documented "do not start" answer.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        ):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                pytest.fail(
                    f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}"
                )
    finally:
        if own_policy:
            policy.unlink()
