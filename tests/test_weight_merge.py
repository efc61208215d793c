"""Streamed TIES / task-arithmetic merges, SFT+DPO λ points and reverts, written as loadable models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from conflux.analysis.merge import merge_lambda_grid, merge_sft_dpo, merge_task_vectors, revert_to_base
from conflux.analysis.merge_kernels import MergeBuffers, task_arithmetic_in_place, ties_in_place
from conflux.analysis.sharded_writer import ShardedWriter
from conflux.analysis.task_vectors import FullTaskVectors, LoraTaskVectors
from conflux.analysis.tensor_io import WeightFiles
from conflux.analysis.ties import trim_top_k
from conflux.analysis.topk import top_k_values
from conflux.errors import ConfluxError, DataError
from reference_impl import task_arithmetic, ties
from weight_checkpoints import perturbed, save_checkpoint, tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """base/, sft/ (single file) and dpo/ (sharded): a tiny Llama and two synthetic full fine-tunes."""
    root = tmp_path_factory.mktemp("models")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    for name, seed, shard in (("sft", 1, "1GB"), ("dpo", 2, "20KB")):
        model = tiny_llama()
        model.load_state_dict(perturbed(base, seed))
        model.save_pretrained(root / name, max_shard_size=shard)
    assert (root / "dpo" / "model.safetensors.index.json").is_file()
    return root


def state(path: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_ties_merge_loads_and_equals_in_memory_merge(models: Path, tmp_path: Path) -> None:
    sources = [
        FullTaskVectors(models / "sft", models / "base"),
        FullTaskVectors(models / "dpo", models / "base"),
    ]
    out = merge_task_vectors(
        models / "base",
        sources,
        tmp_path / "m",
        weights=[1.0, 0.5],
        lam=0.8,
        density=0.3,
        max_shard_bytes=8_000,
    )
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    record = json.loads((out / "conflux_merge.json").read_text())
    assert record["method"] == "ties" and record["weights"] == [1.0, 0.5] and record["density"] == 0.3
    base, sft, dpo, merged = (state(p) for p in (models / "base", models / "sft", models / "dpo", out))
    for name, theta in base.items():
        taus = torch.stack([sft[name] - theta, dpo[name] - theta])
        expected = theta + ties(taus, [1.0, 0.5], density=0.3, lam=0.8)
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=0)
    logits = AutoModelForCausalLM.from_pretrained(out)(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_task_arithmetic_hand_example(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])})
    a = save_checkpoint(tmp_path / "a", {"w": torch.tensor([2.0, 0.0, 1.0, 1.5])})  # τa = [1, -1, 0, 0.5]
    b = save_checkpoint(tmp_path / "b", {"w": torch.tensor([1.5, 1.5, 0.0, 1.0])})  # τb = [0.5, 0.5, -1, 0]
    sources = [FullTaskVectors(a, base), FullTaskVectors(b, base)]
    # 0.5 · (τa + 2 τb) = 0.5 · [2, 0, -2, 0.5] = [1, 0, -1, 0.25]
    out = merge_task_vectors(
        base, sources, tmp_path / "ta", method="task_arithmetic", weights=[1, 2], lam=0.5, density=0.2
    )
    assert WeightFiles(out).get("w").tolist() == [2.0, 1.0, 0.0, 1.25]
    # TIES without trim: weighted rows [1,-1,0,0.5], [1,1,-2,0]; sums [2,0,-2,0.5] elect [+,+,-,+];
    # agreeing mean Σw τ / Σw: [(1+1)/3, 1/2, -2/2, 0.5/1]
    out = merge_task_vectors(base, sources, tmp_path / "ties", weights=[1, 2], density=1.0)
    torch.testing.assert_close(WeightFiles(out).get("w"), torch.tensor([1 + 2 / 3, 1.5, 0.0, 1.5]))


def test_merge_of_lora_and_full_sources(models: Path, tmp_path: Path) -> None:
    peft_model = get_peft_model(
        tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "up_proj"])
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    lora_merged = peft_model.merge_and_unload().state_dict()
    sources = [
        LoraTaskVectors(tmp_path / "adapter", models / "base"),
        FullTaskVectors(models / "sft", models / "base"),
    ]
    out = merge_task_vectors(
        models / "base", sources, tmp_path / "m", method="task_arithmetic", lam=0.5, density=0.2
    )
    base, sft, merged = state(models / "base"), state(models / "sft"), state(out)
    for name, theta in base.items():
        expected = theta + task_arithmetic(
            torch.stack([lora_merged[name] - theta, sft[name] - theta]), [1, 1], 0.5
        )
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)


def test_sft_dpo_lambda_grid(models: Path, tmp_path: Path) -> None:
    base, sft, dpo = state(models / "base"), state(models / "sft"), state(models / "dpo")
    grid = {lam: tmp_path / f"lam{lam}" for lam in (0.0, 0.5, 1.0)}
    outs = merge_sft_dpo(models / "base", models / "sft", models / "dpo", grid, density=0.2)
    assert outs == list(grid.values())
    for lam, out in grid.items():
        record = json.loads((out / "conflux_merge.json").read_text())
        assert record["sources"] == ["sft", "dpo"] and record["lambda"] == lam
        merged = state(out)
        for name, theta in base.items():
            expected = theta + ties(torch.stack([sft[name] - theta, dpo[name] - theta]), [1, 1], 0.2, lam)
            torch.testing.assert_close(merged[name], expected, rtol=0, atol=0)
            if lam == 0.0:
                assert torch.equal(merged[name], theta)


def test_lambda_grid_of_bf16_checkpoints_equals_one_merge_per_lambda(tmp_path: Path) -> None:
    # bf16 weights take the other output path (θ + λm in float32, cast back); each grid output must be the
    # single-λ merge bit for bit, and the grid leaves nothing behind when it fails
    gen = torch.Generator().manual_seed(3)
    theta = {
        f"model.layers.0.mlp.{p}.weight": torch.randn(24, 16, generator=gen) for p in ("up_proj", "down_proj")
    }
    dirs = {}
    for name, scale in (("base", 0.0), ("a", 0.05), ("b", 0.05)):
        tensors = {k: (v + scale * torch.randn(v.shape, generator=gen)).bfloat16() for k, v in theta.items()}
        dirs[name] = save_checkpoint(tmp_path / name, tensors)
    sources = [FullTaskVectors(dirs["a"], dirs["base"]), FullTaskVectors(dirs["b"], dirs["base"])]
    grid = merge_lambda_grid(
        dirs["base"], sources, {0.25: tmp_path / "g25", 0.7: tmp_path / "g70"}, density=0.2
    )
    for lam, out in zip((0.25, 0.7), grid, strict=True):
        single = merge_task_vectors(dirs["base"], sources, tmp_path / f"s{lam}", lam=lam, density=0.2)
        for name in theta:
            a, b = WeightFiles(out).get(name), WeightFiles(single).get(name)
            assert a.dtype == torch.bfloat16 and torch.equal(a, b)

    class Broken(FullTaskVectors):  # a read error at the second tensor, after the first was written
        @staticmethod
        def fail(name: str) -> None:
            if name.endswith("up_proj.weight"):  # names are read sorted: down_proj, then up_proj
                raise OSError("disk gone")

        def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
            self.fail(name)
            return super().tau(name, out=out)

        def stored(self, name: str):  # the compiled TIES path reads the stored tensors instead of τ
            self.fail(name)
            return super().stored(name)

    broken = [sources[0], Broken(dirs["b"], dirs["base"])]
    with pytest.raises(OSError, match="disk gone"):
        merge_lambda_grid(dirs["base"], broken, {0.5: tmp_path / "x1", 1.0: tmp_path / "x2"}, density=0.2)
    assert not (tmp_path / "x1").exists() and not (tmp_path / "x2").exists() and leftovers(tmp_path) == []


def test_revert_layer_sets_exactly_that_layer_to_base(models: Path, tmp_path: Path) -> None:
    chosen = revert_to_base(models / "dpo", models / "base", tmp_path / "r", layers=[1])
    base, dpo, reverted = state(models / "base"), state(models / "dpo"), state(tmp_path / "r")
    assert set(chosen) == {n for n in base if n.startswith("model.layers.1.")}
    for name in base:
        assert torch.equal(reverted[name], base[name] if name in chosen else dpo[name]), name
    record = json.loads((tmp_path / "r" / "conflux_revert.json").read_text())
    assert record["layers"] == [1] and record["reverted"] == chosen


def test_revert_module_type_across_layers(models: Path, tmp_path: Path) -> None:
    chosen = revert_to_base(models / "sft", models / "base", tmp_path / "r", modules=["q", "norm"])
    base, sft, reverted = state(models / "base"), state(models / "sft"), state(tmp_path / "r")
    expected = {n for n in base if ".q_proj." in n or "norm" in n}
    assert set(chosen) == expected and "model.norm.weight" in expected
    for name in base:
        assert torch.equal(reverted[name], base[name] if name in expected else sft[name]), name


def test_revert_of_a_lora_adapter(models: Path, tmp_path: Path) -> None:
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    lora_merged = peft_model.merge_and_unload().state_dict()
    chosen = revert_to_base(tmp_path / "adapter", models / "base", tmp_path / "r", layers=[0])
    base, reverted = state(models / "base"), state(tmp_path / "r")
    for name in base:
        expected = base[name] if name in chosen or "v_proj" not in name else lora_merged[name]
        torch.testing.assert_close(reverted[name], expected, rtol=0, atol=1e-6)
    assert not torch.equal(
        reverted["model.layers.1.self_attn.v_proj.weight"], base["model.layers.1.self_attn.v_proj.weight"]
    )


def test_revert_of_nothing_is_an_error(models: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfluxError, match="no parameter"):
        revert_to_base(models / "sft", models / "base", tmp_path / "r", layers=[7])
    with pytest.raises(ConfluxError, match="unknown module"):
        revert_to_base(models / "sft", models / "base", tmp_path / "r", modules=["attention"])
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_merge_leaves_no_output(models: Path, tmp_path: Path) -> None:
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    for file in (models / "dpo").iterdir():
        (dpo / file.name).write_bytes(file.read_bytes())
    sources = [FullTaskVectors(models / "sft", models / "base"), FullTaskVectors(dpo, models / "base")]
    files = WeightFiles(dpo)
    first = files.file(WeightFiles(models / "base").names[0])
    shard = next(f for f in sorted(dpo.glob("model-*.safetensors")) if f != first)
    shard.unlink()  # vanishes after the headers were read: the merge fails after writing a shard or more
    with pytest.raises(DataError) as err:
        merge_task_vectors(models / "base", sources, tmp_path / "out", max_shard_bytes=2_000, density=0.2)
    assert err.value.file == str(shard) and files.file(err.value.row) == shard
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_mismatched_source_is_rejected_before_writing(models: Path, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "other", {"model.layers.0.self_attn.q_proj.weight": torch.zeros(3, 3)})
    with pytest.raises(DataError) as err:
        merge_task_vectors(
            tmp_path / "other",
            [FullTaskVectors(models / "sft", models / "base")],
            tmp_path / "out",
            density=0.2,
        )
    assert err.value.field == "tensor" and str(tmp_path / "other") in err.value.file
    assert not (tmp_path / "out").exists()


def test_sharded_writer_names_and_index(tmp_path: Path) -> None:
    writer = ShardedWriter(tmp_path, max_shard_bytes=64)
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(3)}  # 40 bytes each: one per shard
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 120 and index["weight_map"]["t2"] == files[2].name
    read = WeightFiles(tmp_path)
    assert all(torch.equal(read.get(n), t) for n, t in tensors.items())
    with pytest.raises(ConfluxError, match="twice"):
        writer.add("t0", tensors["t0"])


def test_planned_writer_streams_the_same_shards(tmp_path: Path) -> None:
    # A plan lets each tensor go to its shard at once; files, index and contents equal the buffered writer's.
    # 40- and 20-byte tensors under a 64-byte limit: shards of 40 + 20, 40 + 20, 40.
    tensors = {
        f"t{i}": torch.full((10,), float(i), dtype=torch.bfloat16 if i % 2 else torch.float32)
        for i in range(5)
    }
    plan = [(name, tuple(t.shape), t.dtype) for name, t in tensors.items()]
    for label, kwargs in (("buffered", {}), ("planned", {"plan": plan})):
        (tmp_path / label).mkdir()
        writer = ShardedWriter(tmp_path / label, max_shard_bytes=64, **kwargs)
        for name, tensor in tensors.items():
            writer.add(name, tensor.clone())
        assert [f.name for f in writer.close()] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = {
        label: json.loads((tmp_path / label / "model.safetensors.index.json").read_text())
        for label in ("buffered", "planned")
    }
    assert index["planned"] == index["buffered"]
    read = WeightFiles(tmp_path / "planned")
    assert all(torch.equal(read.get(n), t) and read.dtype(n) == t.dtype for n, t in tensors.items())
    writer = ShardedWriter(tmp_path / "wrong", plan=plan)
    with pytest.raises(ConfluxError, match="not the planned"):
        writer.add("t1", tensors["t1"])


@pytest.mark.parametrize("n", [1, 100, 300_000])
@pytest.mark.parametrize("density", [0.001, 0.2, 0.9, 1.0])
def test_top_k_values_is_an_exact_selection(n: int, density: float) -> None:
    gen = torch.Generator().manual_seed(n)
    values = torch.randint(0, 50, (n,), generator=gen).float().numpy()  # many ties and zeros
    k = max(1, int(density * n))
    top = top_k_values(values, k)
    expected = np.sort(values)[n - k :]
    assert np.array_equal(np.sort(top), expected) and top[0] == expected[0]


def test_top_k_values_falls_back_when_the_sample_misleads() -> None:
    # Every sampled position (a stride of n // 2^15 = 8) holds a large value, nothing else does: the sample
    # puts the k-th largest far too high, fewer than k entries pass, and the full selection takes over.
    n = 1 << 18
    values = np.zeros(n, dtype=np.float32)
    values[::8] = np.arange(1, n // 8 + 1, dtype=np.float32)
    top = top_k_values(values, n // 2)
    assert np.array_equal(np.sort(top), np.sort(values)[n // 2 :])


def test_trim_on_large_tensor_matches_stable_argsort() -> None:
    tensor = torch.randint(-20, 21, (400, 700), generator=torch.Generator().manual_seed(5)).float()
    k = int(0.2 * tensor.numel())
    keep = torch.argsort(tensor.abs().reshape(-1), descending=True, stable=True)[:k]
    expected = torch.zeros(tensor.numel())
    expected[keep] = tensor.reshape(-1)[keep]
    torch.testing.assert_close(trim_top_k(tensor, 0.2), expected.view(tensor.shape), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("n", "numel", "density", "weights"),
    [
        (2, 7, 0.5, [1.0, 1.0]),
        (3, 1000, 0.2, [1.0, 2.0, 0.5]),
        (4, 100_000, 0.1, [0.3, 0.0, 1.7, 0.9]),  # a zero weight: that source never agrees
        (2, 150_000, 1.0, [0.7, 0.1]),
    ],
)
def test_in_place_kernels_equal_merge_functions_bitwise(n: int, numel: int, density: float, weights) -> None:
    gen = torch.Generator().manual_seed(numel)
    taus = torch.randn(n, numel, generator=gen)
    taus[:, ::5] = torch.randint(-3, 4, (n, len(range(0, numel, 5))), generator=gen).float()  # ties, zeros
    buffers = MergeBuffers(n)
    for _ in range(2):  # the second round reuses grown buffers
        stack = buffers.stack(numel)
        stack.copy_(taus)
        got = ties_in_place(stack, weights, density, 0.8, buffers)
        assert torch.equal(got, ties(taus, weights, density, lam=0.8))
        stack = buffers.stack(numel)
        stack.copy_(taus)
        got = task_arithmetic_in_place(stack, weights, 0.8, buffers)
        assert torch.equal(got, task_arithmetic(taus, weights, lam=0.8))
