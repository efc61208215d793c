"""The benches' memory figures are each child's own peak, not the launching bench's (issue 21)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from peak import own_peak_bytes, run_python

MIB = 2**20


def test_a_small_child_of_a_large_parent_reports_its_own_peak():
    """A parent holding 600 MiB starts a child that touches 100 MiB and exits through sys.exit: VmHWM says
    ~100 MiB plus the interpreter; ru_maxrss of the waited child says at least the parent's 600 MiB."""
    ballast = np.ones(600 * MIB // 8)  # touched: resident
    assert own_peak_bytes() >= 600 * MIB
    code = "import sys, numpy as np; a = np.ones(100 * 2**20 // 8); a += 1; sys.exit(0)"
    result = run_python(sys.executable, code, [])
    assert 100 * MIB < result["peak_rss"] < 300 * MIB
    child = subprocess.Popen([sys.executable, "-c", code])  # what the benches measured before
    _, _, usage = os.wait4(child.pid, 0)
    assert usage.ru_maxrss * 1024 >= 600 * MIB  # the parent's pages, folded into the child's figure at exec
    del ballast
