"""Shared test set-up: offline Hugging Face libraries, private caches, project paths; the order in which
pytest-xdist's workers get the test files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The files that take minutes, longest first (serial minutes on an idle 2-core machine). pyproject's addopts
# hand whole files to 2 workers in collection order, so these go out first: the two workflow runs start
# together, one on each worker, and the short files fill in behind the long ones instead of a workflow run
# starting last on one worker while the other sits idle.
HEAVIEST_FIRST = [
    "test_workflow.py",  # ~9: small_run, the whole default workflow
    "test_persona_workflow.py",  # ~7: the persona study's workflow
    "test_slurm.py",  # ~4.5: slurmctld, and the slice run locally and on SLURM
    "test_distributed.py",  # ~4: torchrun processes
    "test_training.py",  # ~2
    "test_batch_seeds.py",  # ~2: the same targets batched and per seed
]

# No hub at test time: any accidental hub access must fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Under pytest-xdist the workers share the cores. torch's default of one intra-op thread per core in each
# worker leaves a worker's OpenMP threads spinning for cores the other worker holds: the curriculum stages of
# tests/test_training.py took 160-220 s of CPU with 2 threads and 15 s with 1 on a busy 2-core machine. Each
# worker gets its share of the cores instead, its subprocesses too (snakemake jobs set their rule's threads).
if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    _share = max(1, len(os.sched_getaffinity(0)) // _workers)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))
    if "torch" in sys.modules:  # imported before this conftest (by a plugin): the variables came too late
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """Accept (and ignore) the xdist options of pyproject's addopts where xdist is not loaded (``-p
    no:xdist``, or a venv without it), so the suite then runs serially instead of stopping at the options."""
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist", "pytest-xdist is not loaded: its options from addopts are ignored")
    group.addoption("--numprocesses", help="ignored: pytest-xdist is not loaded")
    group.addoption("--dist", help="ignored: pytest-xdist is not loaded")
    group.addoption("--no-loadscope-reorder", action="store_true", help="ignored: pytest-xdist is not loaded")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker (whose collection order the scheduler follows), move HEAVIEST_FIRST's files to the
    front, in that order; the sort is stable, so every file keeps its own tests' order."""
    if not hasattr(config, "workerinput"):
        return  # a serial run keeps pytest's order: the quick files report first
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _private_hf_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the datasets cache out of the user's home so tests never see stale cached files."""
    cache = tmp_path_factory.mktemp("hf_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    os.environ["HF_HOME"] = str(cache / "home")


@pytest.fixture
def project_root() -> Path:
    return ROOT
