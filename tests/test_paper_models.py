"""The curriculum study's models as the paper ran them: checkpoints, prompt formats, pinned data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conflux.config import load_config
from conflux.errors import ConfluxError, DataError
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
from conflux.modeling.tokenize import prompt_ids

ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_config_starts_from_the_papers_sft_models_in_their_prompt_formats():
    cfg = load_config(ROOT / "config/paper.yaml")
    models = {cfg.models[m].path: cfg.models[m] for m in cfg.study("curriculum").models}
    assert set(models) == {
        "PKU-Alignment/alpaca-8b-reproduced-llama-3",
        "alignment-handbook/zephyr-7b-sft-full",
    }
    assert models["PKU-Alignment/alpaca-8b-reproduced-llama-3"].prompt_format == "safe_rlhf"
    assert models["alignment-handbook/zephyr-7b-sft-full"].prompt_format == "chat"


def test_the_paper_config_runs_panacea_on_adalora_with_the_papers_settings():
    """Appendix B: AdaLoRA modules, r = 8, alpha = 512, lr 2e-4, orthogonal penalty 0.5."""
    cfg = load_config(ROOT / "config/paper.yaml")
    assert "panacea" in cfg.study("curriculum").methods
    for dataset in cfg.study("curriculum").datasets:
        panacea = cfg.train("panacea", dataset)
        assert panacea.learning_rate == 2e-4
        assert (panacea.lora.adapter, panacea.lora.r, panacea.lora.alpha) == ("adalora", 8, 512)
        assert panacea.lora.orth_reg_weight == 0.5 and panacea.lora.spec().init_r == 12  # PEFT's default
        assert cfg.train("panacea_lora", dataset).lora.adapter == "lora"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from conflux.data.jobs import bundled_corpus
    from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("fmt")
    build_tiny_model(bundled_corpus(seed=0), TinyModelConfig(vocab_size=400), root / "hf")
    return root


def tokenizer_for(tiny: Path, prompt_format: str):
    spec = BaseModelSpec(name="m", source="local", path=str(tiny / "hf"), prompt_format=prompt_format)
    manifest = base_model_manifest_job(spec, tiny / f"{prompt_format}.json", offline=True)
    assert json.loads((tiny / f"{prompt_format}.json").read_text())["prompt_format"] == prompt_format
    return load_base_model(manifest)[1]


def test_the_prompt_format_becomes_the_tokenizer_template_every_job_uses(tiny):
    safe = tokenizer_for(tiny, "safe_rlhf")
    text = safe.decode(prompt_ids(safe, "How do I bake bread?"))
    assert text == f"{safe.bos_token}BEGINNING OF CONVERSATION: USER: How do I bake bread? ASSISTANT:"
    plain = tokenizer_for(tiny, "plain")
    assert prompt_ids(plain, "How do I bake bread?") == plain("How do I bake bread?")["input_ids"]
    chat, auto = tokenizer_for(tiny, "chat"), tokenizer_for(tiny, "auto")  # the tiny model has a template
    assert prompt_ids(chat, "hi") == prompt_ids(auto, "hi") != prompt_ids(plain, "hi")
    # the saved tokenizer carries the format, so a model trained here loads prompting the same way
    safe.save_pretrained(tiny / "saved")
    from transformers import AutoTokenizer

    assert prompt_ids(AutoTokenizer.from_pretrained(tiny / "saved"), "x") == prompt_ids(safe, "x")


def test_chat_without_a_template_is_an_error_naming_the_model(tiny):
    from conflux.modeling.base_model import apply_prompt_format

    tokenizer = tokenizer_for(tiny, "plain")  # template removed
    with pytest.raises(ConfluxError, match=r"model 'm'.*no chat template.*models\.m"):
        apply_prompt_format(tokenizer, "chat", model="m")


def test_a_hub_dataset_is_read_in_the_configuration_asked_for(tmp_path):
    """datasets' configurations (PKU-SafeRLHF's alpaca3-8b, ...) from the repository snapshot's card."""
    from conflux.data.loaders.records import _read_hub

    card = {"configs": [{"config_name": "default", "data_files": "all.jsonl"},
                        {"config_name": "alpaca3-8b", "data_files": "a3.jsonl"}]}  # fmt: skip
    (tmp_path / "README.md").write_text(f"---\n{yaml.safe_dump(card)}---\n")
    (tmp_path / "all.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    (tmp_path / "a3.jsonl").write_text(json.dumps({"prompt": "only"}) + "\n")
    assert len(_read_hub(tmp_path, "org/x", "train", ["prompt"], None).dataset) == 5
    assert _read_hub(tmp_path, "org/x", "train", ["prompt"], "alpaca3-8b").dataset["prompt"] == ["only"]
    with pytest.raises(DataError, match="config 'nope'") as err:
        _read_hub(tmp_path, "org/x", "train", ["prompt"], "nope")
    assert err.value.field == "hub_config"
