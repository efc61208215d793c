"""Versions live in one place (pyproject.toml); the conda env repeats them and must not drift."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib
import yaml


def test_conda_env_pins_equal_pyproject_pins(project_root):
    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text())
    pinned = set(pyproject["project"]["dependencies"])
    env = yaml.safe_load((project_root / "envs" / "conflux.yaml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    assert set(pip_section) == pinned
    assert all("==" in requirement for requirement in pinned), "every runtime dependency is pinned exactly"


def test_ci_entry_point_runs_make_test(project_root):
    script = (project_root / ".ci" / "run").read_text()
    assert "make test" in script
    makefile = (project_root / "Makefile").read_text()
    assert "-eq 5" in makefile, "pytest's exit code 5 (no tests) must fail the run"


def test_package_layers_hold(project_root):
    """import-linter's layers contract (pyproject.toml): subpackages depend one way, leaves on nothing."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr


def test_every_module_reads_in_one_sitting(project_root):
    """A module past 400 lines is usually two concepts; split it (style guide)."""
    long = {
        str(p.relative_to(project_root)): n
        for p in (project_root / "src").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, long
