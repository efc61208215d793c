"""Shared test set-up: offline Hugging Face libraries, private caches, project paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# No hub at test time: any accidental hub access must fail fast instead of hanging on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_hf_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the datasets cache out of the user's home so tests never see stale cached files."""
    cache = tmp_path_factory.mktemp("hf_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    os.environ["HF_HOME"] = str(cache / "home")


@pytest.fixture
def project_root() -> Path:
    return ROOT
