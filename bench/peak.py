"""Each side's own peak memory, for benches that run the peers as child processes.

``ru_maxrss`` of a waited child is not its own peak: Python starts children with vfork (or fork) and exec,
and Linux folds the parent's high-water mark into the child's at exec, so a bench that holds 1.4 GB reports
at least 1.4 GB for every child. ``VmHWM`` in /proc/<pid>/status belongs to the process's address space,
which exec replaces, so read in the child at exit it is the child's own peak. :data:`PEAK_PREFIX` makes a
``python -c`` program write it to the file named by ``CONFLUX_PEAK_FILE`` when it exits (also through
``sys.exit``, as CLIs end).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

PEAK_PREFIX = """\
import atexit as _atexit, os as _os
def _conflux_peak():
    with open('/proc/self/status') as _status:
        for _line in _status:
            if _line.startswith('VmHWM:'):
                with open(_os.environ['CONFLUX_PEAK_FILE'], 'w') as _out:
                    _out.write(str(int(_line.split()[1]) * 1024))
_atexit.register(_conflux_peak)
"""


def own_peak_bytes() -> int:
    """This process's peak resident memory since its exec (VmHWM), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_python(python: str, code: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``python -c code args...``; its wall time and its own peak memory (VmHWM at exit)."""
    with tempfile.TemporaryDirectory(prefix="conflux-peak-") as tmp:
        peak_file = Path(tmp) / "peak"
        child_env = {**(env or os.environ), "CONFLUX_PEAK_FILE": str(peak_file)}
        start = time.perf_counter()
        proc = subprocess.run([python, "-c", PEAK_PREFIX + code, *args], env=child_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{python} -c ... failed ({proc.returncode}):\n{proc.stderr.decode()[-4000:]}")
        return {"seconds": seconds, "peak_rss": int(peak_file.read_text())}
