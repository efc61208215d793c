"""Task vectors streamed from safetensors (full fine-tunes, LoRA, policies at w) and per-parameter stats."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from conflux.analysis import native
from conflux.analysis.param_names import parse_param_name
from conflux.analysis.stats import task_vector_stats, tensor_stats, write_task_vector_stats
from conflux.analysis.task_vectors import (
    FullTaskVectors,
    LoraTaskVectors,
    adapter_set,
    open_task_vectors,
    policy_task_vectors,
)
from conflux.analysis.tensor_io import WeightFiles
from conflux.errors import ConfluxError, DataError
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy
from reference_impl import merged_delta
from weight_checkpoints import CONFIG, save_checkpoint, tiny_llama

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "model.embed_tokens.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
    "model.layers.0.self_attn.q_proj.weight": torch.tensor([[0.5, -0.5], [1.0, 0.0]]),
    "model.layers.1.mlp.down_proj.weight": torch.tensor([[2.0, 2.0, 2.0]]),
    "model.norm.weight": torch.tensor([1.0, 1.0]),
}
FT = {
    "model.embed_tokens.weight": torch.tensor([[1.5, 2.0], [2.0, 4.25]]),
    "model.layers.0.self_attn.q_proj.weight": torch.tensor([[0.5, 0.5], [1.0, -1.0]]),
    "model.layers.1.mlp.down_proj.weight": torch.tensor([[5.0, -2.0, 2.0]]),
    "model.norm.weight": torch.tensor([1.0, 0.75]),
}
# τ = FT − BASE by hand
TAU = {
    "model.embed_tokens.weight": torch.tensor([[0.5, 0.0], [-1.0, 0.25]]),
    "model.layers.0.self_attn.q_proj.weight": torch.tensor([[0.0, 1.0], [0.0, -1.0]]),
    "model.layers.1.mlp.down_proj.weight": torch.tensor([[3.0, -4.0, 0.0]]),
    "model.norm.weight": torch.tensor([0.0, -0.25]),
}


@pytest.mark.parametrize(
    ("name", "layer", "module"),
    [
        ("model.embed_tokens.weight", None, "embed"),
        ("model.layers.0.self_attn.q_proj.weight", 0, "q"),
        ("model.layers.11.self_attn.k_proj.weight", 11, "k"),
        ("model.layers.3.self_attn.v_proj.bias", 3, "v"),
        ("model.layers.3.self_attn.o_proj.weight", 3, "o"),
        ("model.layers.7.mlp.gate_proj.weight", 7, "gate"),
        ("model.layers.7.mlp.up_proj.weight", 7, "up"),
        ("model.layers.7.mlp.down_proj.weight", 7, "down"),
        ("model.layers.2.input_layernorm.weight", 2, "norm"),
        ("model.layers.2.post_attention_layernorm.weight", 2, "norm"),
        ("model.layers.2.self_attn.q_norm.weight", 2, "norm"),
        ("model.norm.weight", None, "norm"),
        ("lm_head.weight", None, "lm_head"),
        ("model.rotary_emb.something", None, "other"),
    ],
)
def test_param_name_parsed_into_layer_and_module(name: str, layer: int | None, module: str) -> None:
    assert parse_param_name(name) == (layer, module)


def test_full_task_vector_is_ft_minus_base(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", BASE)
    tv = FullTaskVectors(save_checkpoint(tmp_path / "ft", FT), base)
    assert tv.names == sorted(BASE)  # safetensors stores names sorted
    for name, expected in TAU.items():
        torch.testing.assert_close(tv.tau(name), expected, rtol=0, atol=0)


def test_sharded_reading_equals_single_file(tmp_path: Path) -> None:
    single = WeightFiles(save_checkpoint(tmp_path / "single", FT))
    sharded = WeightFiles(save_checkpoint(tmp_path / "sharded", FT, shards=3))
    assert len({sharded.file(n) for n in sharded.names}) == 3
    assert sorted(sharded.names) == sorted(single.names)
    for name in single.names:
        assert sharded.shape(name) == single.shape(name) and sharded.dtype(name) == single.dtype(name)
        torch.testing.assert_close(sharded.get(name), single.get(name), rtol=0, atol=0)


def test_read_into_reads_any_range_of_a_tensor(tmp_path: Path) -> None:
    tensors = {"a": torch.arange(12.0).view(3, 4), "b": torch.arange(5, dtype=torch.bfloat16)}
    files = WeightFiles(save_checkpoint(tmp_path / "m", tensors, shards=2))
    out = torch.empty(5)
    assert files.read_into("a", 3, out).tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert files.read_into("b", 1, torch.empty(3, dtype=torch.bfloat16)).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ConfluxError, match="bfloat16 buffer"):
        files.read_into("b", 0, torch.empty(2))
    with pytest.raises(ConfluxError, match="out of range"):
        files.read_into("a", 10, out)


def test_read_into_a_truncated_shard_is_a_data_error(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m", {"a": torch.ones(1000)}) / "model.safetensors"
    files = WeightFiles(path.parent)
    path.write_bytes(path.read_bytes()[:-100])  # truncated after the headers were read
    with pytest.raises(DataError, match="end of file") as err:
        files.read_into("a", 0, torch.empty(1000))
    assert err.value.row == "a"


def test_task_vector_read_in_many_chunks_with_mixed_dtypes(tmp_path: Path) -> None:
    # 300 000 entries: read and subtracted in chunks; bf16 fine-tune against an fp16 base meet in float32.
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(600, 500, generator=gen).half()
    ft = (base.float() + torch.randn(600, 500, generator=gen) * 1e-2).bfloat16()
    tv = FullTaskVectors(
        save_checkpoint(tmp_path / "ft", {"w": ft}), save_checkpoint(tmp_path / "b", {"w": base})
    )
    expected = ft.float() - base.float()
    torch.testing.assert_close(tv.tau("w"), expected, rtol=0, atol=0)
    out = torch.full((400_000,), float("nan"))
    torch.testing.assert_close(tv.tau("w", out=out), expected, rtol=0, atol=0)


def test_transformers_sharded_checkpoint_reads_like_the_model(tmp_path: Path) -> None:
    model = tiny_llama()
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    files = WeightFiles(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    state = model.state_dict()
    assert set(files.names) == set(state)
    for name in files.names:
        torch.testing.assert_close(files.get(name), state[name], rtol=0, atol=0)


def test_bf16_inputs_give_exact_float32_task_vector(tmp_path: Path) -> None:
    # 1.0078125 − 256 = −254.9921875 needs 15 significant bits: exact in float32, −255 if rounded to bf16.
    base = save_checkpoint(tmp_path / "base", {"w": torch.tensor([256.0, 1.0], dtype=torch.bfloat16)})
    ft = save_checkpoint(tmp_path / "ft", {"w": torch.tensor([1.0078125, 1.0078125], dtype=torch.bfloat16)})
    tau = FullTaskVectors(ft, base).tau("w")
    assert tau.dtype == torch.float32
    assert tau.tolist() == [-254.9921875, 0.0078125]
    in_bf16 = torch.tensor([1.0078125], dtype=torch.bfloat16) - torch.tensor([256.0], dtype=torch.bfloat16)
    assert in_bf16.item() == -255


def test_bf16_stats_accumulate_in_float32(tmp_path: Path) -> None:
    # τ = (1 + 2^-7) − 1 = 2^-7 per entry (both exact in bf16/fp16). A sequential bf16 sum of 4096 such
    # entries stalls at 2 (bf16's spacing there is 2^-6, so adding 2^-7 rounds back to even), float32 gets
    # 32 exactly; mixed stored dtypes (bf16 fine-tune, fp16 base) meet in float32.
    n = 4096
    base = save_checkpoint(tmp_path / "base", {"w": torch.ones(n, dtype=torch.float16)})
    ft = save_checkpoint(tmp_path / "ft", {"w": torch.full((n,), 1 + 2**-7, dtype=torch.bfloat16)})
    tau = FullTaskVectors(ft, base).tau("w")
    assert tau.dtype == torch.float32
    stats = task_vector_stats(FullTaskVectors(ft, base), density=0.2).iloc[0]
    assert stats["mean"] == 2**-7 and stats["l2"] == pytest.approx(math.sqrt(n) * 2**-7, rel=1e-6)
    assert stats["std"] == 0.0 and stats["frac_positive"] == 1.0
    running = torch.tensor(0.0, dtype=torch.bfloat16)
    for value in tau[:512].to(torch.bfloat16):
        running = running + value
    assert running.item() == 2.0  # what accumulating in the stored dtype would give (512 · 2^-7 = 4)


@pytest.mark.parametrize(
    ("mutate", "field", "tensor"),
    [
        (lambda t: t.update({"model.extra.weight": torch.zeros(2)}), "tensor", "model.extra.weight"),
        (lambda t: t.pop("model.norm.weight"), "tensor", "model.norm.weight"),
        (lambda t: t.update({"model.norm.weight": torch.zeros(3)}), "shape", "model.norm.weight"),
    ],
)
def test_mismatched_tensors_name_file_and_tensor(tmp_path: Path, mutate, field: str, tensor: str) -> None:
    base = save_checkpoint(tmp_path / "base", BASE)
    ft_tensors = dict(FT)
    mutate(ft_tensors)
    ft = save_checkpoint(tmp_path / "ft", ft_tensors)
    with pytest.raises(DataError) as err:
        FullTaskVectors(ft, base)
    assert err.value.field == field and err.value.row == tensor
    assert str(ft) in err.value.file and tensor in str(err.value)


def test_different_base_config_is_an_error(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", BASE)
    ft = save_checkpoint(tmp_path / "ft", FT, config={**CONFIG, "hidden_size": 8})
    with pytest.raises(DataError, match="hidden_size") as err:
        FullTaskVectors(ft, base)
    assert err.value.file == str(ft / "config.json")


def test_missing_shard_is_named(tmp_path: Path) -> None:
    ft = save_checkpoint(tmp_path / "ft", FT, shards=2)
    (ft / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(DataError, match="missing") as err:
        WeightFiles(ft)
    assert err.value.file.endswith("model-00002-of-00002.safetensors")


# ---- LoRA -----------------------------------------------------------------------------------------------


def _randomize_lora(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make ΔW nonzero
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.mark.parametrize(
    "lora_kwargs",
    [
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 8, "use_rslora": True},
        {"r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3}},
    ],
)
def test_lora_task_vector_equals_merge_and_unload_minus_base(tmp_path: Path, lora_kwargs: dict) -> None:
    tiny_llama().save_pretrained(tmp_path / "base")
    base_state = {k: v.clone() for k, v in tiny_llama().state_dict().items()}
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(tiny_llama(), LoraConfig(target_modules=targets, **lora_kwargs))
    _randomize_lora(peft_model, seed=1)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()

    tv = LoraTaskVectors(tmp_path / "adapter", tmp_path / "base")
    assert len(tv.names) == 2 * len(targets)
    for name, theta in merged.items():
        expected = theta - base_state[name]
        if name in tv.names:
            assert tv.shape(name) == tuple(theta.shape)
            torch.testing.assert_close(tv.tau(name), expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(expected, torch.zeros_like(expected))


@pytest.mark.parametrize(
    ("other", "field", "bad"),
    [
        ({"model.layers.0.self_attn.q_proj.weight": (16, 16)}, "tensor", "layers.1.self_attn.q_proj.lora_A"),
        ({f"model.layers.{i}.self_attn.q_proj.weight": (16, 8) for i in (0, 1)}, "shape", "layers.0"),
    ],
)
def test_lora_against_a_different_base_is_an_error(tmp_path: Path, other: dict, field: str, bad: str) -> None:
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    save_checkpoint(tmp_path / "other", {name: torch.zeros(shape) for name, shape in other.items()})
    with pytest.raises(DataError) as err:
        open_task_vectors(tmp_path / "adapter", tmp_path / "other")
    assert err.value.file == str(tmp_path / "adapter" / "adapter_model.safetensors")
    assert err.value.field == field and bad in str(err.value.row)


def test_policy_task_vector_at_w_equals_merged_delta(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "base")
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj", "v_proj", "down_proj"))
    policy = PreferencePolicy.create(tiny_llama(), k=2, lora=lora, shared=True, seed=0)
    _randomize_lora(policy.model, seed=2)
    policy.save(tmp_path / "adapters")
    for w in ([0.3, 0.7], [1.0, 0.0], [0.0, 0.0]):
        tv = policy_task_vectors(tmp_path / "adapters", w, tmp_path / "base")
        expected = merged_delta(policy, w)
        assert set(tv.names) == set(expected)
        for name, delta in expected.items():
            torch.testing.assert_close(tv.tau(name), delta, rtol=0, atol=1e-6)


def test_adapter_set_gives_each_adapter_alone(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "base")
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj",))
    policy = PreferencePolicy.create(tiny_llama(), k=2, lora=lora, shared=False, seed=0)
    _randomize_lora(policy.model, seed=3)
    policy.save(tmp_path / "adapters")
    adapters = adapter_set(tmp_path / "adapters", tmp_path / "base")
    assert list(adapters) == ["dim0", "dim1"]
    for i, (label, tv) in enumerate(adapters.items()):
        expected = merged_delta(policy, [1.0 if j == i else 0.0 for j in range(2)])
        assert tv.label == label and set(tv.names) == set(expected)
        for name, delta in expected.items():
            torch.testing.assert_close(tv.tau(name), delta, rtol=0, atol=1e-6)


def test_adapter_with_unsupported_tensors_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(config))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    save_file({key: torch.ones(4)}, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(DataError, match="not a LoRA A/B matrix") as err:
        LoraTaskVectors(tmp_path / "a")
    assert err.value.row == key


# ---- statistics ------------------------------------------------------------------------------------------


def test_stats_hand_example() -> None:
    tau = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    # numel 4, ‖τ‖ = √26, mean 0, std √(26/4), max 4, 2 positive of 4, 1 zero of 4.
    # density 0.5 -> k = 2 entries kept: {-4, 3}, threshold 3, both nonzero -> 2/4, ‖trim‖ = 5.
    stats = tensor_stats(tau, density=0.5)
    assert stats["numel"] == 4
    assert stats["l2"] == pytest.approx(math.sqrt(26))
    assert stats["mean"] == 0.0 and stats["std"] == pytest.approx(math.sqrt(26 / 4))
    assert stats["max_abs"] == 4.0 and stats["frac_positive"] == 0.5 and stats["frac_zero"] == 0.25
    assert stats["trim_threshold"] == 3.0 and stats["frac_above_trim"] == 0.5
    assert stats["trim_l2_share"] == pytest.approx(5 / math.sqrt(26))
    # density 1: everything kept, threshold = smallest |τ| = 0, the zero is not counted as above the trim.
    full = tensor_stats(tau, density=1.0)
    assert full["trim_threshold"] == 0.0 and full["frac_above_trim"] == 0.75 and full["trim_l2_share"] == 1.0
    assert tau.tolist() == [[3.0, -4.0], [0.0, 1.0]]  # not modified


def test_stats_match_torch_references() -> None:
    gen = torch.Generator().manual_seed(0)
    tau = torch.randn(301, 7, generator=gen) * 0.01 + 5.0  # |mean| ≫ std: a one-pass variance would cancel
    stats = tensor_stats(tau, density=0.2)
    flat = tau.reshape(-1).double()
    assert stats["mean"] == pytest.approx(float(flat.mean()), rel=1e-6)
    assert stats["std"] == pytest.approx(float(flat.std(correction=0)), rel=1e-3)
    k = int(0.2 * flat.numel())
    top = flat.abs().sort(descending=True).values[:k]
    assert stats["trim_threshold"] == pytest.approx(float(top[-1]), rel=1e-7)
    assert stats["trim_l2_share"] == pytest.approx(float(top.norm() / flat.norm()), rel=1e-5)
    assert stats["max_abs"] == pytest.approx(float(flat.abs().max()), rel=1e-7)


@pytest.mark.parametrize("quantised", [False, True])
def test_stats_of_a_large_task_vector_match_plain_definitions(quantised: bool) -> None:
    # Large enough for the chunked pass and the streamed trim selection; bf16-quantised τ has exact zeros
    # and long runs of equal magnitudes at the trim threshold.
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1031, 1029, generator=gen) * 0.02
    ft = base + torch.randn(1031, 1029, generator=gen) * 1e-3
    tau = ft.bfloat16().float() - base.bfloat16().float() if quantised else ft - base
    stats = tensor_stats(tau, density=0.2)
    flat = tau.reshape(-1).double()
    n, k = flat.numel(), int(0.2 * flat.numel())
    top = flat.abs().sort(descending=True).values[:k]
    assert stats["numel"] == n and stats["max_abs"] == float(top[0])
    assert stats["trim_threshold"] == float(top[-1])  # exact: an entry of τ
    assert (
        stats["frac_positive"] == int((flat > 0).sum()) / n
        and stats["frac_zero"] == int((flat == 0).sum()) / n
    )
    assert (stats["frac_zero"] > 0.01) == quantised
    assert stats["frac_above_trim"] == min(k, int((flat != 0).sum())) / n
    assert stats["l2"] == pytest.approx(float(flat.norm()), rel=1e-6)
    assert stats["mean"] == pytest.approx(float(flat.mean()), rel=1e-5, abs=1e-12)
    assert stats["std"] == pytest.approx(float(flat.std(correction=0)), rel=1e-6)
    assert stats["trim_l2_share"] == pytest.approx(float(top.norm() / flat.norm()), rel=1e-6)


# Largest error of each statistic against a float64 reference, relative (mean: relative to the RMS of τ,
# as the mean of a task vector is ~0). Measured on this test's inputs: fused kernel ≤ 1e-8 (l2 4e-9, std
# 4e-9, trim_l2_share 2e-9, mean 9e-9); numpy path l2 4.3e-7, std 8.6e-8, trim_l2_share 2.1e-7. Counts,
# fractions, max_abs and trim_threshold are exact (error 0): they are counts and entries of τ.
STAT_ERROR = {
    "fused": {"l2": 1e-7, "mean": 1e-7, "std": 1e-7, "trim_l2_share": 1e-7},
    "numpy": {"l2": 1e-6, "mean": 1e-7, "std": 1e-6, "trim_l2_share": 1e-6},
}
EXACT_STATS = ("numel", "max_abs", "frac_positive", "frac_zero", "trim_threshold", "frac_above_trim")


@pytest.mark.parametrize("path", ["fused", "fused-avx2", "fused-plain", "numpy"])
@pytest.mark.parametrize(
    ("ft_dtype", "base_dtype"),
    [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_each_statistic_error_against_float64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, ft_dtype: torch.dtype, base_dtype: torch.dtype
) -> None:
    if path.startswith("fused") and native.load() is None:
        pytest.skip("no C compiler: the fused kernel is not built (the numpy path is tested)")
    if path == "numpy":
        monkeypatch.setattr(native, "load", lambda: None)
    if path.startswith("fused-"):  # the builds this CPU would not pick (AVX-512 is picked where present)
        monkeypatch.setenv("CONFLUX_KERNEL_ISA", path.removeprefix("fused-"))
    # Rows of different scales, a small mean (std needs its second pass), bf16 zeros; n = 1 103 300 is not a
    # multiple of the kernel's 8 lanes.
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(1100, 1003, generator=gen) * 0.02
    ft = base + torch.randn(1100, 1003, generator=gen) * 1e-3 * torch.rand(1100, 1, generator=gen) * 3 + 2e-5
    ft, base = ft.to(ft_dtype), base.to(base_dtype)
    tv = FullTaskVectors(
        save_checkpoint(tmp_path / "ft", {"w": ft}), save_checkpoint(tmp_path / "b", {"w": base})
    )
    got = task_vector_stats(tv, density=0.2).iloc[0]
    # τ is float32 by definition (exact for a bf16 pair); its statistics are referred to float64 sums
    tau = (ft.float() - base.float()).double().reshape(-1)
    n, k = tau.numel(), int(0.2 * tau.numel())
    top = tau.abs().sort(descending=True).values[:k]
    rms = float(tau.square().mean().sqrt())
    expected = {
        "numel": n,
        "l2": float(tau.norm()),
        "mean": float(tau.mean()),
        "std": float(tau.std(correction=0)),
        "max_abs": float(top[0]),
        "frac_positive": int((tau > 0).sum()) / n,
        "frac_zero": int((tau == 0).sum()) / n,
        "trim_threshold": float(top[-1]),
        "frac_above_trim": min(k, int((tau != 0).sum())) / n,
        "trim_l2_share": float(top.norm() / tau.norm()),
    }
    for name in EXACT_STATS:
        assert got[name] == expected[name], name
    for name, bound in STAT_ERROR[path.split("-")[0]].items():
        error = abs(got[name] - expected[name]) / (rms if name == "mean" else abs(expected[name]))
        assert error <= bound, (name, error)


@pytest.mark.parametrize("trap", ["sample_all_zero", "sample_all_large"])
def test_stats_exact_when_the_sample_misleads(monkeypatch: pytest.MonkeyPatch, trap: str) -> None:
    # The strided sample sees only every stride-th entry; make those unrepresentative so the bracket fails
    # (no entry kept, or k entries above it) and the exact selection over all of τ must run.
    gen = torch.Generator().manual_seed(4)
    tau = torch.randn(1 << 20, generator=gen)
    stride = -(-tau.numel() // 8192)
    tau[::stride] = 0.0 if trap == "sample_all_zero" else 100.0
    for path in ("fused", "numpy"):
        if path == "numpy":
            monkeypatch.setattr(native, "load", lambda: None)
        stats = tensor_stats(tau, density=0.2)
        top = tau.double().abs().sort(descending=True).values[: int(0.2 * tau.numel())]
        assert stats["trim_threshold"] == float(top[-1]) and stats["max_abs"] == float(top[0]), path
        assert stats["trim_l2_share"] == pytest.approx(float(top.norm() / tau.double().norm()), rel=1e-6)


def test_fused_pass_counts_a_band_larger_than_its_buffer() -> None:
    if native.load() is None:
        pytest.skip("no C compiler")
    tau = torch.arange(-50, 51, dtype=torch.float32)  # |τ| in [10, 20]: 22 entries, room for 4
    sums = native.tau_pass(tau, None, shift=0.0, lo=10.0, hi=20.0, band=torch.zeros(native.SPILL + 4))
    assert (sums.band, sums.above, sums.positive, sums.zero, sums.max_abs) == (22, 60, 50, 1, 50.0)
    assert sums.above_squares == 2 * sum(x * x for x in range(21, 51))


def test_kernels_fall_back_without_a_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A machine without cc (here: one that fails) gets a warning and the numpy/torch paths, same values.
    tau = torch.randn(70_001, generator=torch.Generator().manual_seed(5))
    expected = tensor_stats(tau, density=0.2)
    monkeypatch.setattr(native, "_loaded", [])
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("CONFLUX_CACHE", str(tmp_path / "cache"))
    assert native.load() is None and "fused kernels unavailable" in caplog.text
    got = tensor_stats(tau, density=0.2)
    assert {k: got[k] for k in EXACT_STATS} == {k: expected[k] for k in EXACT_STATS}
    assert got["l2"] == pytest.approx(expected["l2"], rel=1e-6)


def test_stats_of_a_truncated_shard_are_a_data_error(tmp_path: Path) -> None:
    # The fused pass maps the files: a shard cut short after its header was read must be an error naming it,
    # not a SIGBUS on the missing pages.
    base = save_checkpoint(tmp_path / "base", {"w": torch.zeros(100_000)})
    ft = save_checkpoint(tmp_path / "ft", {"w": torch.ones(100_000)})
    tv = FullTaskVectors(ft, base)
    shard = ft / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(DataError, match="end of file") as err:
        task_vector_stats(tv, density=0.2)
    assert err.value.row == "w"


def test_stats_of_a_non_finite_task_vector_are_nan_beyond_l2() -> None:
    tau = torch.zeros(100_000)
    tau[5] = float("inf")
    stats = tensor_stats(tau, density=0.2)
    assert stats["l2"] == math.inf and math.isnan(stats["trim_threshold"]) and math.isnan(stats["mean"])


def test_stats_parquet(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", BASE)
    tv = FullTaskVectors(save_checkpoint(tmp_path / "ft", FT, shards=2), base, label="sft")
    frame = write_task_vector_stats(tv, tmp_path / "stats.parquet", density=0.5)
    table = pq.read_table(tmp_path / "stats.parquet")
    assert table.schema.metadata[b"conflux.density"] == b"0.5"
    read = table.to_pandas().set_index("param")
    assert len(read) == len(frame) == 4 and set(read["model"]) == {"sft"}
    down = read.loc["model.layers.1.mlp.down_proj.weight"]  # τ = [3, -4, 0]
    assert (down["layer"], down["module"], down["numel"]) == (1, "down", 3)
    assert down["l2"] == 5.0 and down["frac_positive"] == pytest.approx(1 / 3)
    assert down["trim_threshold"] == 4.0  # k = max(1, int(0.5·3)) = 1
    assert pd.isna(read.loc["model.embed_tokens.weight", "layer"]) and str(read["layer"].dtype) == "Int32"


def test_stats_leave_no_output_on_error(tmp_path: Path) -> None:
    base = save_checkpoint(tmp_path / "base", BASE)
    ft = dict(FT)
    ft["model.norm.weight"] = torch.tensor([float("nan"), 1.0])
    tv = FullTaskVectors(save_checkpoint(tmp_path / "ft", ft), base)
    with pytest.raises(ConfluxError, match=r"model\.norm\.weight"):
        write_task_vector_stats(tv, tmp_path / "stats.parquet", density=0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft"]


# ---- peak memory -----------------------------------------------------------------------------------------

# Peak RSS of the stats pass alone: the child resets the kernel's high-water mark (VmHWM; writing 5 to
# /proc/self/clear_refs, Linux >= 4.0) after imports and a warm-up, so import-time peaks cannot hide growth.
_RSS_CHILD = textwrap.dedent(
    """
    import re, sys
    from conflux.analysis.task_vectors import FullTaskVectors
    from conflux.analysis.stats import task_vector_stats

    def status(key):
        return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    tv = FullTaskVectors(sys.argv[1], sys.argv[2])
    task_vector_stats(FullTaskVectors(sys.argv[3], sys.argv[4]), density=0.2)  # warm up allocator, imports
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    task_vector_stats(tv, density=0.2)
    print(status("VmHWM") - before)
    """
)


def _wide_model(path: Path, layers: int, tensor: torch.Tensor) -> Path:
    names = [f"model.layers.{i}.mlp.{m}.weight" for i in range(layers) for m in ("up_proj", "down_proj")]
    return save_checkpoint(path, {n: tensor.clone() for n in names})


def test_stats_peak_memory_does_not_grow_with_model_size(tmp_path: Path) -> None:
    largest = torch.randn(512, 512)  # 1 MiB
    base = largest.clone()
    ft = largest + 0.01
    small = (_wide_model(tmp_path / "s_ft", 2, ft), _wide_model(tmp_path / "s_base", 2, base))
    big = (_wide_model(tmp_path / "b_ft", 32, ft), _wide_model(tmp_path / "b_base", 32, base))  # 2 × 64 MiB
    growth = {}
    for label, (ft_dir, base_dir) in (("small", small), ("big", big)):
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(ft_dir), str(base_dir), *map(str, small)],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
        )
        growth[label] = int(out.stdout.strip().splitlines()[-1])
    largest_bytes = largest.numel() * 4
    assert growth["big"] - growth["small"] < 4 * largest_bytes, growth
    assert growth["big"] < 8 * largest_bytes, growth  # the big model's two checkpoints are 128 MiB
