"""Config validation: the shipped configs parse; every bad value names its key and the rule it breaks."""

from __future__ import annotations

import copy

import pytest
import yaml

from conflux.config import load_config
from conflux.errors import ConfigError


@pytest.fixture
def default_raw(project_root):
    return yaml.safe_load((project_root / "config" / "config.yaml").read_text())


def write(tmp_path, raw):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_default_config_parses_with_schema_defaults(project_root):
    cfg = load_config(project_root / "config" / "config.yaml")
    assert cfg.split.eval_fraction == 0.2 and cfg.split.require_conflict
    assert cfg.models["tiny"].source == "embedded" and cfg.models["tiny"].tiny.hidden_size == 64
    assert cfg.study("curriculum").datasets == ("synth_pku", "synth_hs2")
    assert cfg.datasets["synth_hs2"].hub_split == "train"  # filled from the schema's default
    revert = cfg.analysis.revert  # 'all' means every layer / module type of the model: None
    assert revert.methods == ("dpo",) and revert.layers is None and revert.modules is None and revert.cells
    assert cfg.resources_for("training", "sft") == {"mem_mb": 4000, "runtime": 60}  # resources.default


def test_paper_config_lists_revert_modules_and_per_class_resources(project_root):
    cfg = load_config(project_root / "config" / "paper.yaml")
    assert cfg.analysis.revert.modules == ("q", "k", "v", "o", "gate", "up", "down")
    assert not cfg.analysis.revert.cells and cfg.analysis.revert.methods == ("sft", "dpo")
    # the class overrides the default, the rule overrides the class
    assert cfg.resources_for("training", "dpo") == {
        "gpu": 4,
        "cpus_per_task": 32,
        "mem_mb": 256000,
        "runtime": 1440,
    }
    assert cfg.resources_for("analysis", "conflict_dims") == {
        "cpus_per_task": 2,
        "mem_mb": 16000,
        "runtime": 120,
    }
    assert cfg.resources_for("report", "key_layers") == {"mem_mb": 8000, "runtime": 30}
    cfg = load_config(project_root / "config" / "config.yaml")  # no resources section: the default only
    assert cfg.resources_for("analysis", "conflict_dims") == {"mem_mb": 4000, "runtime": 60}


def test_paper_config_parses(project_root):
    cfg = load_config(project_root / "config" / "paper.yaml")
    assert set(cfg.study("curriculum").datasets) == {"pku_saferlhf", "helpsteer2"}
    assert all(cfg.models[m].source == "hub" for m in cfg.study("curriculum").models)
    assert cfg.seeds == (0, 1, 2)


@pytest.mark.parametrize(
    ("edit", "key", "rule"),
    [
        (
            lambda c: c["datasets"]["synth_pku"].update(conflict_rate=1.5),
            "datasets.synth_pku.conflict_rate",
            "maximum",
        ),
        (lambda c: c["datasets"]["synth_pku"].update(kind="imaginary"), "datasets.synth_pku.kind", "enum"),
        (lambda c: c["split"].update(eval_fraction=0), "split.eval_fraction", "exclusiveMinimum"),
        (
            lambda c: c["datasets"]["synth_pku"].update(colour="red"),
            "datasets.synth_pku",
            "additionalProperties",
        ),
        (lambda c: c["datasets"]["synth_pku"].pop("n_pairs"), "datasets.synth_pku", "required"),
        (lambda c: c.update(seeds=[]), "seeds", "minItems"),
        (lambda c: c["models"]["tiny"].update(source="cloud"), "models.tiny.source", "enum"),
        (
            lambda c: c["studies"]["curriculum"].update(datasets=["nope"]),
            "studies.curriculum.datasets.0",
            "refers to",
        ),
        (
            lambda c: c["studies"]["curriculum"].update(models=["gpt"]),
            "studies.curriculum.models.0",
            "refers to",
        ),
        (
            lambda c: c["studies"]["curriculum"].update(datasets=["persona_ojousama"]),
            "studies.curriculum.datasets.0",
            "kind fits study",
        ),
        (lambda c: c["models"]["tiny"]["tiny"].update(num_heads=5), "models.tiny.tiny", "divisible"),
        (
            lambda c: c["analysis"].update(revert={"modules": ["q", "mlp"]}),
            "analysis.revert.modules",
            "oneOf",
        ),
        (lambda c: c.update(resources={"default": {"mem_mb": 0}}), "resources.default.mem_mb", "minimum"),
    ],
)
def test_bad_config_value_names_key_and_rule(tmp_path, default_raw, edit, key, rule):
    raw = copy.deepcopy(default_raw)
    edit(raw)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw))
    assert err.value.key == key
    assert rule in err.value.rule
    assert f"'{key}'" in str(err.value)
