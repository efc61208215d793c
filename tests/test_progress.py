"""Long loops report how far they are: a bar on a terminal, periodic log lines in a log file."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from conflux.progress import with_progress


def test_without_a_terminal_progress_is_logged_with_counts_and_time_left(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file, as a SLURM job's stderr
    caplog.set_level(logging.INFO, logger="conflux.progress")
    assert list(with_progress(range(4), desc="revert sweep", unit="target", every=0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("revert sweep: 1/4 target (25%)") and "left" in lines[0]
    assert lines[-1].startswith("revert sweep: 4 target done in") and len(lines) == 4  # 1/4, 2/4, 3/4, done
    assert sys.stderr.getvalue() == ""  # no bar in a log file


def test_log_lines_are_spaced_by_the_interval(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="conflux.progress")
    list(with_progress(iter(range(1000)), desc="merge", every=3600))
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["merge"]  # only the final line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("total", [None, 3])
def test_on_a_terminal_progress_is_a_bar(caplog, monkeypatch, total):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    caplog.set_level(logging.INFO, logger="conflux.progress")
    assert list(with_progress(iter("abc"), desc="generate", total=total, unit="batch")) == ["a", "b", "c"]
    assert "generate" in terminal.getvalue() and "3" in terminal.getvalue()
    assert not caplog.records
