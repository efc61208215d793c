"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd in a private temp directory.

:func:`session_cluster` (behind the ``slurm_cluster`` fixture of tests/test_slurm.py) installs ``slurm-wlm``
and ``munge`` from the Debian archive when ``slurmctld`` is missing, writes a ``slurm.conf`` whose state,
spool, log and pid files all live in one temp directory, starts the three daemons on free ports and waits
until ``sinfo`` reports the node idle. Client commands reach this cluster, and no other, through
:attr:`SlurmCluster.env` (``SLURM_CONF``). Finalizers, registered before the first daemon starts, cancel
leftover jobs, stop the daemons by the pids in their pid files and kill any job process still running with the
cluster's ``SLURM_CONF``, whatever happened in the tests.

Why the settings are what they are (measured on Debian 12, slurm 22.05, a 2-core container):
- ``TaskPlugin=task/none`` and ``ProctrackType=proctrack/linuxproc``: the cgroup plugins fail in containers.
- ``SlurmdParameters=config_overrides``: the node claims more memory than a CI runner may have, so the
  config's default ``mem_mb`` (resources.default) fits; jobs are tiny and nothing enforces the limit (no
  cgroups).
- ``AccountingStorageType=accounting_storage/none``: no slurmdbd, so job status comes from ``squeue``;
  ``JobCompType=jobcomp/filetxt`` still records every finished job in a file the tests read.
- munged gets its own socket (``AuthInfo=socket=...``): a system munged, if any, is neither used nor touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from debian import apt_install

PACKAGES = ["slurm-wlm", "munge"]
SBIN = Path("/usr/sbin")


@dataclass
class SlurmCluster:
    """A running test cluster: where its files are and how to talk to it."""

    root: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment for this cluster's clients: sbatch, squeue, ``snakemake --executor slurm``."""
        path = f"{self.root / 'bin'}:{os.environ['PATH']}"
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf"), "PATH": path}

    @property
    def jobcomp_log(self) -> Path:
        return self.root / "jobcomp.log"

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def finished_jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld has finished, from the jobcomp file: ``JobId``, ``JobName``, ``JobState``..."""
        if not self.jobcomp_log.exists():
            return []
        jobs = []
        for line in self.jobcomp_log.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            jobs.append(fields)
        return jobs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_installed() -> float:
    """Install slurm-wlm and munge when slurmctld is missing; return the seconds it took (0 if present)."""
    if (SBIN / "slurmctld").exists() and (SBIN / "munged").exists():
        return 0.0
    return apt_install(PACKAGES, what="SLURM")


def slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    cpus = max(1, os.cpu_count() or 1)
    return f"""\
ClusterName=conflux-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=64000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _alive(pid: int, name: str) -> bool:
    """Whether ``pid`` is still the process ``name`` (never signal a recycled pid)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name[:15]
    except OSError:
        return False


def _stop(pid_file: Path, name: str, grace: float = 15) -> None:
    """SIGTERM the pid in ``pid_file``; wait for the process (not the file: daemons delete it first); KILL."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid, name):
        time.sleep(0.1)
    if _alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def _wait_for(what: str, check, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"SLURM test cluster: {what} not reached in {timeout:.0f} s\n{tail}")


def _cancel_all(cluster: SlurmCluster) -> None:
    """Cancel this cluster's jobs (a failed test may leave some) and wait until their steps are gone."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cluster.run("scancel", "--user", "root", timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = cluster.run("squeue", "-h", "-o", "%i", timeout=10).stdout
            if not out.strip():
                break
            time.sleep(0.5)


def _kill_job_leftovers(conf: Path) -> None:
    """SIGKILL every process still running with this cluster's ``SLURM_CONF`` (its jobs inherit it).

    With ``proctrack/linuxproc`` a job's process that outlives its slurmstepd escapes SLURM: the scancel
    test once left the cancelled job's batch snakemake hung at exit, parented to init, after the session.
    """
    needle = f"SLURM_CONF={conf}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue  # gone meanwhile, or not ours to read


def _srun_wrapper(root: Path) -> None:
    """An ``srun`` first on the jobs' PATH that knows this cluster's slurm.conf.

    Inside a job, snakemake-executor-plugin-slurm-jobstep runs the rule with ``srun`` after dropping every
    ``SLURM_*`` variable but the job's identity, ``SLURM_CONF`` included; a real cluster's srun then reads
    /etc/slurm/slurm.conf. This cluster keeps its config in the temp directory, so the wrapper puts it back.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={root}/slurm.conf exec /usr/bin/srun "$@"\n')
    srun.chmod(0o755)


def start_cluster(root: Path, addfinalizer) -> SlurmCluster:
    host = socket.gethostname().split(".")[0]
    munge_dir = root / "munge"
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    munge_dir.mkdir(mode=0o755)
    shutil.chown(munge_dir, "munge", "munge")
    munge_socket = munge_dir / "munge.socket"
    (root / "slurm.conf").write_text(slurm_conf(root, host, munge_socket))
    _srun_wrapper(root)
    cluster = SlurmCluster(root)

    def stop() -> None:
        if (root / "slurmctld.pid").exists():
            _cancel_all(cluster)
        _stop(root / "slurmd.pid", "slurmd")
        _stop(root / "slurmctld.pid", "slurmctld")
        _stop(munge_dir / "munged.pid", "munged")
        _kill_job_leftovers(root / "slurm.conf")  # after the daemons, which carry SLURM_CONF too

    addfinalizer(stop)  # before the first daemon starts: whatever starts is stopped
    start = time.monotonic()
    munged = [
        str(SBIN / "munged"),
        f"--socket={munge_socket}",
        f"--pid-file={munge_dir}/munged.pid",
        f"--log-file={munge_dir}/munged.log",
        f"--seed-file={munge_dir}/munged.seed",
    ]
    subprocess.run(["runuser", "-u", "munge", "--", *munged], check=True, capture_output=True, timeout=30)
    _wait_for("munged socket", munge_socket.exists, 15, munge_dir / "munged.log")
    for daemon in ("slurmctld", "slurmd"):
        subprocess.run([str(SBIN / daemon)], env=cluster.env, check=True, capture_output=True, timeout=30)
    _wait_for(
        "node idle",
        lambda: cluster.run("sinfo", "-h", "-o", "%t", timeout=10).stdout.strip() == "idle",
        60,
        root / "slurmctld.log",
    )
    cluster.timings["start_s"] = time.monotonic() - start
    return cluster


def session_cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    """Install if needed, start, and register the stop of a cluster for a session-scoped fixture."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root: apt-get install, and slurmd runs as root")
    install_s = ensure_installed()
    # Not pytest's tmp_path: its directories are private to root, and munged runs as the munge user.
    root = Path(tempfile.mkdtemp(prefix="conflux-slurm-"))
    root.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    cluster = start_cluster(root, request.addfinalizer)
    cluster.timings["install_s"] = install_s
    return cluster
