"""Training settings: defaults <- training <- methods.<m> <- training.per_dataset.<d>, checked at start."""

from __future__ import annotations

import pytest
import yaml

from conflux.config import load_config
from conflux.errors import ConfigError
from conflux.training.config import TrainConfig, resolve_train_config

RAW = {
    "training": {
        "beta": 0.05,
        "batch_size": 32,
        "per_device_batch_size": 8,
        "lora": {"r": 4, "alpha": 8},
        "per_dataset": {"hs2": {"batch_size": 16, "lora": {"alpha": 64}}},
    },
    "methods": {"dpo_soup": {"lora": {"r": 16, "alpha": 32}, "beta": 0.2}},
}


def test_overrides_apply_in_order_and_merge_nested_lora():
    base = resolve_train_config(RAW, "panacea", "pku")
    assert (base.beta, base.batch_size, base.lora.r, base.lora.alpha) == (0.05, 32, 4, 8)
    assert base.learning_rate == TrainConfig().learning_rate  # untouched keys keep the dataclass default
    soup = resolve_train_config(RAW, "dpo_soup", "pku")
    assert (soup.beta, soup.lora.r, soup.lora.alpha) == (0.2, 16, 32)
    soup_hs2 = resolve_train_config(RAW, "dpo_soup", "hs2")  # the dataset's word is last
    assert (soup_hs2.batch_size, soup_hs2.lora.r, soup_hs2.lora.alpha) == (16, 16, 64)


def test_panacea_is_adalora_and_its_lora_variant_is_not():
    """The registry's Panacea runs AdaLoRA as the paper did; panacea_lora keeps the proposed method's LoRA;
    AdaLoRA is refused where its rank allocation cannot run (TRL's trainers, FSDP), naming the key."""
    assert resolve_train_config(RAW, "panacea", "pku").lora.adapter == "adalora"
    assert resolve_train_config(RAW, "panacea_lora", "pku").lora.adapter == "lora"
    assert resolve_train_config(RAW, "curriculum_stage1", "pku").lora.adapter == "lora"
    spec = resolve_train_config(RAW, "panacea", "pku").lora.spec()
    assert (spec.r, spec.init_r) == (4, 6)  # AdaLoRA's final average rank r, starting from 1.5 r
    with pytest.raises(ConfigError, match=r"methods\.sft\.lora\.adapter.*TRL"):
        resolve_train_config({"methods": {"sft": {"lora": {"adapter": "adalora"}}}}, "sft", "x")
    with pytest.raises(ConfigError, match=r"methods\.panacea\.distributed.*FSDP"):
        resolve_train_config({"methods": {"panacea": {"distributed": "fsdp"}}}, "panacea", "x")


def test_sft_dpo_trains_with_dpos_settings_unless_told_otherwise():
    raw = {
        "training": {"beta": 0.1},
        "methods": {"dpo": {"finetune": "full", "learning_rate": 1e-3, "beta": 0.2}},
    }
    sft_dpo = resolve_train_config(raw, "sft_dpo", "x")
    assert (sft_dpo.finetune, sft_dpo.learning_rate, sft_dpo.beta) == ("full", 1e-3, 0.2)
    raw["methods"]["sft_dpo"] = {"learning_rate": 5e-4}
    assert resolve_train_config(raw, "sft_dpo", "x").learning_rate == 5e-4  # its own word is last
    assert resolve_train_config(raw, "dpo", "x").learning_rate == 1e-3


@pytest.mark.parametrize(
    ("sft", "sft_dpo", "ok"),
    [
        ({"finetune": "lora"}, {"finetune": "lora"}, True),
        ({"finetune": "full"}, {"finetune": "full"}, True),
        ({"finetune": "lora"}, {"finetune": "full"}, True),  # the SFT adapter merged, then full DPO
        ({"finetune": "full"}, {"finetune": "lora"}, False),  # no adapter to continue
        ({"finetune": "lora", "lora": {"r": 4}}, {"finetune": "lora", "lora": {"r": 8}}, False),
    ],
)
def test_sft_dpo_with_lora_continues_an_sft_adapter_of_the_same_shape(
    project_root, tmp_path, sft, sft_dpo, ok
):
    raw = yaml.safe_load((project_root / "config/config.yaml").read_text())
    raw["methods"].update(sft=sft, sft_dpo=sft_dpo)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    if ok:
        load_config(path)
        return
    with pytest.raises(ConfigError, match=r"methods\.sft_dpo\.finetune.*continues the sft adapter"):
        load_config(path)


def test_global_batch_becomes_gradient_accumulation():
    cfg = resolve_train_config(RAW, "panacea", "pku")
    assert cfg.gradient_accumulation(1) == 4 and cfg.gradient_accumulation(4) == 1
    with pytest.raises(ConfigError, match="multiple of per_device_batch_size"):
        cfg.gradient_accumulation(3)


def test_batch_that_does_not_split_fails_at_start():
    raw = {"training": {"batch_size": 10, "per_device_batch_size": 4}}
    with pytest.raises(ConfigError, match=r"training\.batch_size"):
        resolve_train_config(raw, "panacea", "pku")


def test_full_fine_tuning_is_refused_for_the_adapter_methods():
    with pytest.raises(ConfigError, match=r"methods\.panacea\.finetune"):
        resolve_train_config({"methods": {"panacea": {"finetune": "full"}}}, "panacea", "pku")
    assert resolve_train_config({"methods": {"sft": {"finetune": "full"}}}, "sft", "x").finetune == "full"


@pytest.mark.parametrize(
    ("edit", "key", "rule"),
    [
        (lambda c: c["methods"].update(panacea={"max_length": 64}), "methods.panacea", "not"),
        (lambda c: c["training"].update(learning_rate=0), "training", "exclusiveMinimum"),
        (lambda c: c["methods"].update(dpo_soup={"lora": {"r": 0}}), "methods.dpo_soup", "minimum"),
        (lambda c: c["methods"].update(grpo={}), "methods", "additionalProperties"),
        (lambda c: c["datasets"]["general"].update(general="g.csv"), "datasets.general.general", "const"),
        (
            lambda c: c["datasets"].update(persona_datasets=c["datasets"]["general"]),
            "datasets",
            "persona_datasets",
        ),
        (
            lambda c: c["studies"]["curriculum"].update(methods=["sft"]),
            "studies.curriculum.methods.0",
            "fits",
        ),
        (
            lambda c: c["training"].update(per_dataset={"synth_pku": {"batch_size": 7}}),
            "training.batch_size",
            "multiple",
        ),
    ],
)
def test_bad_training_config_names_key_and_rule(project_root, tmp_path, edit, key, rule):
    raw = yaml.safe_load((project_root / "config/config.yaml").read_text())
    edit(raw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and rule in str(err.value)


def test_paper_config_has_the_papers_hyper_parameters(project_root):
    cfg = load_config(project_root / "config/paper.yaml")
    pku, hs2 = cfg.train("curriculum_stage1", "pku_saferlhf"), cfg.train("curriculum_stage2", "helpsteer2")
    assert (pku.beta, pku.learning_rate, pku.warmup_ratio, pku.weight_decay) == (0.01, 5e-6, 0.03, 0.0)
    assert (pku.max_length, pku.batch_size, hs2.batch_size) == (1024, 128, 32)
    assert (pku.lora.r, pku.lora.alpha) == (8, 16)
    soup = cfg.train("dpo_soup", "pku_saferlhf")
    assert (soup.lora.r, soup.lora.alpha) == (16, 32)
