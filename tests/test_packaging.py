"""Versions live in one place (pyproject.toml); the conda env repeats them and must not drift."""

from __future__ import annotations

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
