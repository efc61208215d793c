"""Config validation: the shipped configs parse (bad values: the table in tests/test_bad_inputs.py)."""

from __future__ import annotations

import re

import pytest
import yaml

from conflux.config import load_config, parse_config
from conflux.errors import ConfigError


def test_default_config_parses_with_schema_defaults(project_root):
    cfg = load_config(project_root / "config" / "config.yaml")
    assert cfg.split.eval_fraction == 0.4 and cfg.split.require_conflict and cfg.seeds == (0, 1, 2)
    assert cfg.models["tiny"].tiny.pretrain.steps > 0  # the embedded base is pretrained (tiny_model.pretrain)
    assert dict(cfg.datasets["synth_pku"].signal) == {"helpful": 0.5, "harmless": 0.9}
    assert cfg.models["tiny"].source == "embedded" and cfg.models["tiny"].tiny.hidden_size == 64
    assert cfg.study("curriculum").datasets == ("synth_pku", "synth_hs2")
    assert cfg.datasets["synth_hs2"].hub_split == "train"  # filled from the schema's default
    revert = cfg.analysis.revert  # 'all' means every layer / module type of the model: None
    assert revert.methods == ("dpo",) and revert.layers is None and revert.modules is None and revert.cells
    assert cfg.resources_for("training", "sft") == {"mem_mb": 4000, "runtime": 60}  # resources.default


def test_paper_config_lists_revert_modules_and_per_class_resources(project_root):
    cfg = load_config(project_root / "config" / "paper.yaml")
    assert cfg.analysis.revert.modules == ("q", "k", "v", "o", "gate", "up", "down")
    assert not cfg.analysis.revert.cells and cfg.analysis.revert.methods == ("sft", "dpo", "ties_lam1")
    # the class overrides the default, the rule overrides the class
    assert cfg.resources_for("training", "dpo") == {
        "gpu": 8,
        "gpu_mem_gb": 80,
        "cpus_per_task": 64,
        "mem_mb": 512000,
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


def test_slurm_extra_tokens_reach_sbatch_quoted_and_space_separated(tmp_path, project_root):
    raw = yaml.safe_load((project_root / "config" / "config.yaml").read_text())
    raw["resources"] = {"training": {"slurm_extra": ["--qos=high", "--exclusive", "--mail-type=END,FAIL"]}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_config(path).resources_for("training", "sft")
    assert spec["slurm_extra"] == "--qos=high --exclusive --mail-type=END,FAIL"


def test_a_persona_dataset_without_a_general_file_generates_its_general_replies(project_root, tmp_path):
    raw = yaml.safe_load((project_root / "config" / "config.yaml").read_text(encoding="utf-8"))
    raw["datasets"]["persona_ojousama"] = {"kind": "persona", "persona": "ojousama", "path": "oj.csv"}
    raw["datasets"]["persona_student"]["general"] = "generate"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(tmp_path / "c.yaml")
    assert all(cfg.datasets[name].generates_general for name in ("persona_ojousama", "persona_student"))
    assert not cfg.datasets["synth_pku"].generates_general  # pair datasets have no general replies


@pytest.mark.parametrize(
    ("kind", "signal", "key"),
    [
        ("synthetic_pku", {"honesty": 0.5}, "datasets.s.signal.honesty"),
        ("synthetic_helpsteer", {"helpful": 0.5}, "datasets.s.signal.helpful"),
        ("pku_saferlhf", {"helpful": 0.5}, "datasets.s.signal"),
    ],
)
def test_synthetic_signal_keys_are_checked_naming_the_key(project_root, kind, signal, key):
    raw = yaml.safe_load((project_root / "config" / "config.yaml").read_text())
    raw["datasets"]["s"] = {"kind": kind, "n_pairs": 50, "n_prompts": 50, "path": "x.jsonl", "signal": signal}
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_config(raw)


def test_analysis_seeds_must_be_run_seeds_and_default_to_all(project_root):
    raw = yaml.safe_load((project_root / "config" / "config.yaml").read_text())
    assert parse_config(raw).analysis_seeds() == (0,)  # the default analyses its first seed
    raw["analysis"].pop("seeds")
    assert parse_config(raw).analysis_seeds() == (0, 1, 2)
    raw["analysis"]["seeds"] = [0, 7]
    with pytest.raises(ConfigError, match=re.escape("analysis.seeds.1")):
        parse_config(raw)
