"""π(w) exported for serving: one plain PEFT LoRA adapter and one merged model per w, each equal to
``policy.at(w)``, for trained curriculum, DPO-Soup and Panacea (AdaLoRA) runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conflux.errors import ConfigError
from conflux.export.policy_export import export_policy_job
from conflux.export.weights import weight_tag
from conflux.modeling.base_model import load_base_model
from conflux.modeling.policy import load_method_policy
from conflux.training.preference_trainer import run_preference_job
from tiny_workspace import CFG, make_job, tiny_workspace

WEIGHTS = ([0.25, 0.75], [1.0, 0.0])
PROMPTS = ["hello there, how are you today?", "Tell me about the weather and the sea."]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, list[Path]]]:
    """Short trained runs: the curriculum's stage 3 (LoRA), the two DPO-Soup members, Panacea on AdaLoRA."""
    ws = tiny_workspace(tmp_path_factory.mktemp("export_ws"), n_pairs=400)
    cfg = replace(CFG, max_steps=3)
    parts = ["agree", "conflict"]
    adalora = replace(cfg, lora=replace(cfg.lora, adapter="adalora", alpha=512))
    jobs = {
        "curriculum_stage3": [make_job(ws, "curriculum_stage3", "stage3", parts=parts, cfg=cfg)],
        "dpo_soup": [make_job(ws, "dpo_soup", f"soup{i}", parts=parts, cfg=cfg, dim=i) for i in range(2)],
        "panacea": [make_job(ws, "panacea", "panacea", parts=parts, cfg=adalora)],
    }
    for group in jobs.values():
        for job in group:
            run_preference_job(job)
    return ws, {variant: [j.out_dir for j in group] for variant, group in jobs.items()}


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("variant", ["curriculum_stage3", "dpo_soup", "panacea"])
def test_exported_adapter_and_merged_model_equal_the_policy_at_w(runs, variant, tmp_path):
    ws, dirs = runs
    out = tmp_path / variant
    record = export_policy_job(ws / "manifest.json", dirs[variant], WEIGHTS, out, variant=variant)
    assert [r["w"] for r in record["weights"]] == [list(w) for w in WEIGHTS]
    assert json.loads((out / "export.json").read_text()) == record
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    policy = load_method_policy(model, dirs[variant])
    for w in WEIGHTS:
        with policy.at(w) as m:
            want = logits(m, tokenizer)
        base, _ = load_base_model(ws / "manifest.json", dtype="float32")
        adapter = PeftModel.from_pretrained(base, str(out / weight_tag(w) / "adapter")).eval()
        torch.testing.assert_close(logits(adapter, tokenizer), want, atol=1e-5, rtol=0)
        merged = AutoModelForCausalLM.from_pretrained(out / weight_tag(w) / "merged").eval()
        torch.testing.assert_close(logits(merged, tokenizer), want, atol=1e-5, rtol=0)
        assert merged.config.use_cache is True
        assert not any(p.suffix in {".bin", ".pt", ".pkl"} for p in (out / weight_tag(w)).rglob("*"))


def test_lora_factors_are_peft_cat_combination(runs):
    """For LoRA adapters the exported factors are PEFT's own add_weighted_adapter(combination_type="cat")."""
    ws, dirs = runs
    model, _ = load_base_model(ws / "manifest.json", dtype="float32")
    policy = load_method_policy(model, dirs["curriculum_stage3"])
    w = [0.25, 0.75]
    ours = policy.lora_factors(w)
    policy.model.add_weighted_adapter(["shared", "dim0", "dim1"], [1.0, *w], "pi_w", combination_type="cat")
    checked = 0
    for name, module in policy.model.base_model.model.named_modules():
        if name in ours:
            a, b = ours[name]
            assert torch.equal(a, module.lora_A["pi_w"].weight)
            assert torch.equal(b, module.lora_B["pi_w"].weight)
            checked += 1
    assert checked == 2 * 7


def test_a_weight_vector_of_the_wrong_length_names_the_key(runs, tmp_path):
    ws, dirs = runs
    with pytest.raises(ConfigError, match=r"export\.weights\[1\].*2 non-negative"):
        export_policy_job(ws / "manifest.json", dirs["dpo_soup"], [[0.5, 0.5], [1.0]], tmp_path / "x",
                          variant="dpo_soup")  # fmt: skip
    assert not (tmp_path / "x").exists()
