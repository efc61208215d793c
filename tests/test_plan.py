"""The memory plan: exact bytes against real tensors, the paper's jobs fit, the old setting is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conflux.config import RULE_CLASSES, load_config
from conflux.errors import ConfigError
from conflux.methods import STAGES, method_of
from conflux.plan.arch import Arch, adamw_bytes, model_arch, parameter_bytes
from conflux.plan.jobs import plan_job, plan_rows, refuse_unfit
from conflux.plan.memory import training_estimate
from conflux.training.config import LoraSettings, TrainConfig
from workflow_cli import planned_jobs, snakemake

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip
# ~125M parameters: GPT-2-small widths in a Llama with grouped-query attention
LLAMA_100M = {"model_type": "llama", "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
              "num_attention_heads": 12, "num_key_value_heads": 4, "vocab_size": 32000}  # fmt: skip


def real_model(facts: dict, dtype=torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**facts)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def one_adamw_step(model) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return optimizer


def optimizer_state_bytes(optimizer) -> int:
    return tensor_bytes(t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))


@pytest.mark.parametrize("facts", [TINY, LLAMA_100M], ids=["tiny", "llama_125m"])
def test_weights_gradients_and_adamw_state_are_the_real_tensors_bytes(facts):
    """A full fine-tune in float32: the plan's weights, gradients and optimizer components equal the bytes of
    the model's parameters, their .grad after a backward pass, and AdamW's state after one step."""
    arch = Arch.from_dict(facts, "test")
    model = real_model(facts)
    optimizer = one_adamw_step(model)
    params = list(model.parameters())
    assert arch.numel() == sum(p.numel() for p in params) and arch.tensors() == len(params)
    cfg = TrainConfig(finetune="full", precision="fp32", per_device_batch_size=1, max_length=8)
    plan = training_estimate(arch, cfg, "sft", k=1, shared=False, world=1, gpu=True).components
    assert plan["weights"] == tensor_bytes(params) == parameter_bytes(arch.numel(), "float32")
    assert plan["gradients"] == tensor_bytes(p.grad for p in params)
    assert plan["optimizer"] == optimizer_state_bytes(optimizer)
    if facts is LLAMA_100M:
        assert 100e6 < arch.numel() < 150e6


def test_bf16_weights_keep_bf16_adam_moments():
    model = real_model(TINY, torch.bfloat16)
    optimizer = one_adamw_step(model)
    arch = Arch.from_dict(TINY, "test")
    assert adamw_bytes(arch.numel(), arch.tensors(), "bfloat16") == optimizer_state_bytes(optimizer)


@pytest.mark.parametrize(
    "facts",
    [
        {**TINY, "model_type": "mistral"},
        {**TINY, "model_type": "qwen2", "tie_word_embeddings": True},  # q, k, v biases; one embedding
        {**TINY, "head_dim": 32},  # heads wider than hidden / heads
    ],
    ids=["mistral", "qwen2_tied", "head_dim"],
)
def test_other_layouts_count_their_real_parameters(facts):
    arch = Arch.from_dict(facts, "test")
    params = list(real_model(facts).parameters())
    assert (arch.numel(), arch.tensors()) == (sum(p.numel() for p in params), len(params))


def test_lora_adapters_gradients_and_state_are_peft_s_tensors():
    """Curriculum stage 2 of a k=2 policy: shared + dim0 + dim1 adapters held (float32 over a bf16 base),
    dim0 and dim1 trained: the plan's adapter, gradient and optimizer bytes are PEFT's tensors."""
    from conflux.modeling.lora import LoraSpec
    from conflux.modeling.policy import PreferencePolicy

    arch = Arch.from_dict(TINY, "test")
    model = real_model(TINY, torch.bfloat16)
    policy = PreferencePolicy.create(model, 2, LoraSpec(r=4, alpha=8), seed=0)
    lora = {n: p for n, p in policy.model.named_parameters() if ".lora_" in n}
    trained = [p for n, p in lora.items() if ".dim0." in n or ".dim1." in n]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    for p in trained:
        p.grad = torch.ones_like(p)
    optimizer.step()
    cfg = TrainConfig(finetune="lora", precision="bf16_mixed", lora=LoraSettings(r=4, alpha=8))
    plan = training_estimate(arch, cfg, "curriculum_stage2", k=2, shared=True, world=1, gpu=True).components
    assert {p.dtype for p in lora.values()} == {torch.float32}
    assert plan["weights"] == tensor_bytes(p for n, p in policy.model.named_parameters() if ".lora_" not in n)
    assert plan["adapters"] == tensor_bytes(lora.values())
    assert plan["gradients"] == tensor_bytes(p.grad for p in trained)
    assert plan["optimizer"] == optimizer_state_bytes(optimizer)


# ---- the paper's plan ------------------------------------------------------------------------------------


def paper_raw() -> dict:
    return yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def old_paper_setting(raw: dict) -> dict:
    """The paper config before the plan: persona SFT and DPO fully fine-tuned on 4 GPUs under DDP."""
    for rule in ("sft", "dpo"):
        raw["resources"]["rules"][rule]["gpu"] = 4
        raw["methods"][rule]["distributed"] = "ddp"
    return raw


def test_every_job_of_the_paper_config_fits_an_80_gb_gpu():
    rows = plan_rows(load_config(ROOT / "config/paper.yaml"), "results")
    assert rows and all(row.fits for row in rows), [r.as_record() for r in rows if not r.fits]
    full = {r.rule: r for r in rows if r.rule in ("sft", "dpo")}
    assert {(r.devices, r.settings["distributed"]) for r in full.values()} == {(8, "fsdp")}
    assert {r.limit for r in rows if r.device == "gpu"} == {80 * 2**30}


def test_the_old_paper_setting_is_refused_before_anything_runs(tmp_path):
    """8B full fine-tuning on 4 x 80 GB under DDP: a whole fp32 replica with gradients and Adam state per
    GPU. The workflow stops while it parses the config (nothing is submitted), naming the rule, the
    estimate and the ways out."""
    config = tmp_path / "old.yaml"
    config.write_text(yaml.safe_dump(old_paper_setting(paper_raw())))
    with pytest.raises(ConfigError) as err:
        refuse_unfit(plan_rows(load_config(config), "results"))
    assert err.value.key == "resources.rules.sft" and "more than its 80.0 GiB" in str(err.value)
    assert "distributed: fsdp" in str(err.value) and "finetune: lora" in str(err.value)
    proc = snakemake(ROOT, "-n", "--configfile", str(config), workdir=tmp_path, check=False)
    assert proc.returncode != 0 and "rule sft (model" in proc.stdout + proc.stderr
    assert "fits device memory" in proc.stdout + proc.stderr


def test_the_plan_covers_every_gpu_and_analysis_job_of_the_paper_dag(tmp_path):
    proc = snakemake(ROOT, "-n", "--configfile", str(ROOT / "config/paper.yaml"), workdir=tmp_path)
    planned = {rule for rule in planned_jobs(proc.stdout + proc.stderr)
               if RULE_CLASSES.get(rule) in ("training", "reference", "evaluation", "analysis")}  # fmt: skip
    rows = plan_rows(load_config(ROOT / "config/paper.yaml"), "results")
    assert planned and planned == {r.rule for r in rows}
    assert {r for r in STAGES if method_of(r).compared} <= planned  # the paper's methods


def test_snakemake_plan_writes_the_paper_plan_on_a_laptop(tmp_path):
    snakemake(ROOT, "results/plan/plan.csv", "--cores", "1", "--configfile", str(ROOT / "config/paper.yaml"),
              workdir=tmp_path)  # fmt: skip
    import pandas as pd

    table = pd.read_csv(tmp_path / "results/plan/plan.csv")
    assert len(table) == len(plan_rows(load_config(ROOT / "config/paper.yaml"), "results"))
    assert table["fits"].all() and (table["estimate_gib"] > 0).all()
    dpo = table[(table["rule"] == "dpo") & (table["model"] == "swallow_8b")].iloc[0]
    assert dpo["devices"] == 8 and "optimizer" in dpo["detail"] and dpo["estimate_gib"] < 80
    assert "| dpo | swallow_8b |" in (tmp_path / "results/plan/plan.md").read_text()


# ---- where the architecture comes from -------------------------------------------------------------------


def test_arch_comes_from_the_hub_cache_and_an_unknown_one_is_not_planned(tmp_path, monkeypatch):
    """A hub model without ``arch``: its config.json in the hub cache (what `snakemake download` leaves), else
    a row that says the architecture is unknown and is not checked."""
    from conflux.modeling.base_model import BaseModelSpec

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = BaseModelSpec(name="m", source="hub", path="org/model")
    arch, why = model_arch(spec, None, tmp_path)
    assert arch is None and "hub cache of org/model" in why and "models.m.arch" in why
    snapshot = tmp_path / "hub" / "models--org--model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({**LLAMA_100M, "torch_dtype": "bfloat16"}))
    (tmp_path / "hub" / "models--org--model" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--model" / "refs" / "main").write_text("a" * 40)
    arch, why = model_arch(spec, None, tmp_path)
    assert (
        arch == Arch.from_dict({**LLAMA_100M, "dtype": "bfloat16"}, "x") and why == "hub cache of org/model"
    )

    raw = paper_raw()
    del raw["models"]["youko_8b"]["arch"]
    config = tmp_path / "no_arch.yaml"
    config.write_text(yaml.safe_dump(raw))
    rows = plan_rows(load_config(config), tmp_path / "results")
    unknown = [r for r in rows if r.model == "youko_8b"]
    assert unknown and all(r.estimate is None and r.fits is None for r in unknown)
    refuse_unfit(rows)  # unknown is not refused
    plan_job([r.as_record() for r in rows], tmp_path / "plan.csv", tmp_path / "plan.md")
    assert "Not planned, architecture unknown: youko_8b" in (tmp_path / "plan.md").read_text()


def test_an_arch_of_another_model_type_is_a_config_error(tmp_path):
    raw = paper_raw()
    raw["models"]["youko_8b"]["arch"] = {**TINY, "model_type": "gpt2"}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"models\.youko_8b\.arch\.model_type"):
        load_config(config)
