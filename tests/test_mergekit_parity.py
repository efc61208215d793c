"""conflux's streamed merges against mergekit (the reference implementation of TIES) on the same checkpoints.

mergekit is a test dependency (the ``dev`` extra pins it), so this runs in ``make test``. bench/ties.py does
the same comparison at ~100M parameters and adds wall time and peak RSS.

Tie-breaking convention: both keep k = max(1, int(density · n)) entries of each task vector; where entries of
*equal* magnitude straddle the cut, mergekit's unstable ``argsort`` keeps an unspecified one and conflux keeps
the lowest flat index. The fine-tunes here add Gaussian noise, so no two magnitudes are equal and the outputs
must agree everywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge

from conflux.analysis.merge import merge_task_vectors
from conflux.analysis.task_vectors import FullTaskVectors
from conflux.analysis.tensor_io import WeightFiles
from weight_checkpoints import perturbed, tiny_llama


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("mergekit")
    base = tiny_llama()
    base.config.architectures = ["LlamaForCausalLM"]  # mergekit picks its tensor layout from this
    base.save_pretrained(root / "base")
    models = []
    for seed in (1, 2):
        ft = tiny_llama()
        ft.load_state_dict(perturbed(base, seed, scale=0.05))
        ft.config.architectures = ["LlamaForCausalLM"]
        ft.save_pretrained(root / f"ft{seed}")
        models.append(root / f"ft{seed}")
    return root / "base", models


def run_mergekit(config: dict, out: Path) -> Path:
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(config), str(out), options)
    return out


@pytest.mark.parametrize(
    ("method", "density", "lam"),
    [("ties", 0.2, 0.8), ("ties", 0.5, 1.0), ("task_arithmetic", 1.0, 0.7)],
)
def test_merge_equals_mergekit(checkpoints, tmp_path: Path, method: str, density: float, lam: float) -> None:
    base, models = checkpoints
    weights = [1.0, 0.5]
    config = {
        "merge_method": method,
        "base_model": str(base),
        "models": [
            {"model": str(m), "parameters": {"weight": w, "density": density}}
            for m, w in zip(models, weights, strict=True)
        ],
        # ties: the disjoint mean divides by the weights of the entries that agree with the elected sign
        # (mergekit's normalize); task arithmetic is the plain weighted sum
        "parameters": {"normalize": method == "ties", "lambda": lam},
        "dtype": "float32",
    }
    if method == "task_arithmetic":
        for entry in config["models"]:
            entry["parameters"].pop("density")
    theirs = WeightFiles(run_mergekit(config, tmp_path / "mergekit"))
    sources = [FullTaskVectors(m, base) for m in models]
    ours = WeightFiles(
        merge_task_vectors(
            base, sources, tmp_path / "conflux", method=method, weights=weights, lam=lam, density=density
        )
    )
    assert sorted(ours.names) == sorted(theirs.names)
    for name in ours.names:
        a, b = ours.get(name), theirs.get(name)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{method}: {name}")
    # and the merge moved the weights (not a copy of the base)
    base_files = WeightFiles(base)
    assert any(not torch.equal(ours.get(n), base_files.get(n)) for n in ours.names)
