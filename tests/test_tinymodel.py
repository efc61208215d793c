"""The embedded tiny Llama (built offline, reproducible, atomic) and base-model manifests."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from conflux.errors import ConfluxError
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model, read_manifest
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model, train_tokenizer

TEXTS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast, then let the dough rise.",
    "Please explain how a bicycle gear works in simple words.",
    "I cannot help with that request, but here is a safer alternative.",
    "The weather today is sunny with a light breeze from the west.",
    "Write a short poem about the sea and the morning light.",
    "Thank you for asking! Here are three steps to get started.",
    "ごきげんよう。わたくし、今日はお茶会に参りますの。",
    "こんにちは！今日の授業、ちょっと難しかったです。",
    "お嬢様はいつも優雅に紅茶を召し上がりますわ。",
    "先生、宿題の締め切りはいつですか？",
    "東京の天気は晴れで、少し風があります。",
    "パンの焼き方を教えてください。",
] * 3


def _build(out: Path, seed: int = 0) -> Path:
    return build_tiny_model(TEXTS, TinyModelConfig(seed=seed), out)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def loaded(tiny_dir: Path) -> tuple[LlamaForCausalLM, object]:
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def test_saved_as_safetensors_only_and_loads_with_auto_classes(tiny_dir, loaded):
    names = {p.name for p in tiny_dir.iterdir()}
    assert "model.safetensors" in names and "tokenizer.json" in names and "conflux_tiny.json" in names
    assert not list(tiny_dir.glob("*.bin"))
    # Plain transformers classes, no remote code: nothing in the configs points at custom code.
    assert "auto_map" not in json.loads((tiny_dir / "config.json").read_text())
    assert "auto_map" not in json.loads((tiny_dir / "tokenizer_config.json").read_text())
    model, tok = loaded
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tok)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert tok.padding_side == "right" and tok.model_max_length == 512


def test_parameter_count_is_a_few_hundred_thousand(tiny_dir, loaded):
    model, _ = loaded
    n = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n <= 1_000_000
    assert json.loads((tiny_dir / "conflux_tiny.json").read_text())["n_parameters"] == n


def test_forward_gives_finite_logits(loaded):
    model, tok = loaded
    batch = tok(["Hello there, how are you?", "ごきげんよう"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_same_seed_same_bits_and_different_seed_different_weights(tiny_dir, tmp_path):
    again, other = _build(tmp_path / "again", seed=0), _build(tmp_path / "other", seed=1)
    ref = load_file(tiny_dir / "model.safetensors")
    same, diff = load_file(again / "model.safetensors"), load_file(other / "model.safetensors")
    assert ref.keys() == same.keys() == diff.keys()
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not torch.equal(ref["model.embed_tokens.weight"], diff["model.embed_tokens.weight"])
    # The tokenizer does not depend on the seed, only on the texts.
    tok_bytes = (tiny_dir / "tokenizer.json").read_bytes()
    assert (again / "tokenizer.json").read_bytes() == tok_bytes == (other / "tokenizer.json").read_bytes()


def test_tokenizer_training_does_not_depend_on_text_order():
    a = train_tokenizer(TEXTS, 512).backend_tokenizer.to_str()
    assert train_tokenizer(list(reversed(TEXTS)), 512).backend_tokenizer.to_str() == a


@pytest.mark.parametrize(
    "text",
    [
        "Please explain how a bicycle gear works.",
        "ごきげんよう、わたくしの名前は麗華ですわ。",
        "Unseen: 龘 🤖 ümlaut\ttab\n  two spaces",
    ],
)
def test_text_round_trips_exactly(loaded, text):
    _, tok = loaded
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_chat_template_uses_role_tokens(loaded):
    _, tok = loaded
    chat = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "こんにちは"},
        {"role": "assistant", "content": "Hello!"},
    ]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == "<|system|>\nBe kind.<|eos|>\n<|user|>\nこんにちは<|eos|>\n<|assistant|>\nHello!<|eos|>\n"
    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nこんにちは<|eos|>\n<|assistant|>\n")
    # Role tags are single special tokens, not spelled out in bytes.
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<|assistant|>") in ids


def test_failed_save_leaves_no_output_and_no_temp_dir(tmp_path, monkeypatch):
    def broken_save(self, save_directory, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", broken_save)
    parent = tmp_path / "models"
    with pytest.raises(OSError, match="disk full"):
        _build(parent / "hf")
    assert not (parent / "hf").exists()
    assert list(parent.iterdir()) == []


def _spec(source: str, path: str | None = None, name: str = "m") -> BaseModelSpec:
    return BaseModelSpec(name=name, source=source, path=path)


@pytest.mark.parametrize("source", ["embedded", "local"])
def test_manifest_round_trip_and_load(tiny_dir, tmp_path, source):
    spec = _spec("local", str(tiny_dir)) if source == "local" else _spec("embedded")
    out = tmp_path / "manifest.json"
    written = base_model_manifest_job(spec, out, built_dir=tiny_dir if source == "embedded" else None)
    assert read_manifest(out) == written
    assert written["source"] == source and written["load_path"] == str(tiny_dir)
    assert written["weight_files"] == ["model.safetensors"]
    assert written["weight_bytes"] == (tiny_dir / "model.safetensors").stat().st_size
    assert (written["trust_remote_code"], written["dtype"]) == (False, "auto")
    model, tok = load_base_model(out)
    with torch.no_grad():
        logits = model(**tok(["hi"], return_tensors="pt")).logits
    assert torch.isfinite(logits).all() and not model.training


def test_load_base_model_dtype_override(tiny_dir, tmp_path):
    manifest = base_model_manifest_job(_spec("local", str(tiny_dir)), tmp_path / "m.json")
    model, _ = load_base_model(manifest, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_load_base_model_sets_missing_pad_to_eos(tiny_dir, tmp_path):
    copy = tmp_path / "nopad"
    shutil.copytree(tiny_dir, copy)
    cfg_path = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["pad_token"]
    cfg_path.write_text(json.dumps(cfg))
    assert AutoTokenizer.from_pretrained(copy).pad_token is None
    _, tok = load_base_model(base_model_manifest_job(_spec("local", str(copy)), tmp_path / "m.json"))
    assert tok.pad_token == tok.eos_token == "<|eos|>"


def test_local_dir_with_only_bin_weights_is_refused(tmp_path):
    model_dir = tmp_path / "old_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfluxError, match=r"old_model.*safetensors") as err:
        base_model_manifest_job(_spec("local", str(model_dir)), tmp_path / "m.json")
    assert "pytorch_model.bin" in str(err.value)
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("make", ["missing", "no_config"])
def test_local_dir_missing_or_without_config_is_refused(tmp_path, make):
    model_dir = tmp_path / "model"
    if make == "no_config":
        model_dir.mkdir()
        (model_dir / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfluxError, match=str(model_dir)):
        base_model_manifest_job(_spec("local", str(model_dir)), tmp_path / "m.json")


@pytest.mark.parametrize("how", ["config", "env"])
def test_hub_id_offline_fails_fast_with_local_path_hint(tmp_path, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConfluxError, match="cannot be fetched offline") as err:
        base_model_manifest_job(
            _spec("hub", "meta-llama/Meta-Llama-3-8B", name="llama3"),
            tmp_path / "m.json",
            offline=how == "config",
        )
    assert time.monotonic() - start < 2
    message = str(err.value)
    assert "huggingface-cli download meta-llama/Meta-Llama-3-8B --local-dir" in message
    assert "path:" in message and "source: local" in message


def test_embedded_without_built_dir_is_refused(tmp_path):
    with pytest.raises(ConfluxError, match="built directory"):
        base_model_manifest_job(_spec("embedded"), tmp_path / "m.json")


# The bound of the pretrained model's held-out reply perplexity: uniform guessing scores the vocabulary size
# (~1,000 here, ~2,000 in the default) and the random initialisation about that; 40 means the model puts on
# average 1/40 of its mass on the next token of a reply it never saw. The default build (200 steps, vocab
# 2,048) reaches ~2 (conflux_tiny.json of a run); this smaller build stays under 40 with margin.
PRETRAINED_PPL_BOUND = 40.0


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conflux.data.jobs import bundled_corpus, pretrain_documents
    from conflux.modeling.pretrain import PretrainConfig

    cfg = TinyModelConfig(vocab_size=1024, pretrain=PretrainConfig(steps=80, batch_size=16, warmup_steps=8))
    out = tmp_path_factory.mktemp("pretrained") / "hf"
    return build_tiny_model(bundled_corpus(seed=0), cfg, out, documents=pretrain_documents(seed=0))


def test_pretraining_brings_held_out_perplexity_far_below_uniform(pretrained):
    record = json.loads((pretrained / "conflux_tiny.json").read_text())["pretrain"]
    vocab = json.loads((pretrained / "conflux_tiny.json").read_text())["vocab_size"]
    assert record["initial_held_out_reply_perplexity"] > vocab / 3  # random init: about uniform
    assert record["held_out_reply_perplexity"] < PRETRAINED_PPL_BOUND
    assert record["documents"]["held_out"] > 50 and record["steps"] == 80


def test_pretraining_is_deterministic_and_reaches_the_manifest(tmp_path):
    from conflux.data.jobs import pretrain_documents
    from conflux.modeling.pretrain import PretrainConfig

    cfg = TinyModelConfig(vocab_size=512, pretrain=PretrainConfig(steps=3, batch_size=4, warmup_steps=1))
    docs = pretrain_documents(seed=0)[:200]
    first, second = (build_tiny_model(TEXTS, cfg, tmp_path / n, documents=docs) for n in ("a", "b"))
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(build_tiny_model(TEXTS, cfg, tmp_path / "init") / "model.safetensors")  # no documents
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], init["model.layers.0.mlp.up_proj.weight"])
    manifest = base_model_manifest_job(
        BaseModelSpec(name="tiny", source="embedded"), tmp_path / "manifest.json", built_dir=first
    )
    assert manifest["pretrain"]["steps"] == 3 and manifest["pretrain"]["held_out_reply_perplexity"] > 1


# Persona SFT on the pretrained base must make the persona speak on prompts it never trained on. 0.5: half of
# the held-out prompts answered with at least one お嬢様言葉 marker. A random-init base reached ~0.3 for the
# student persona by chance (single-character markers in byte soup), and the pretrained base, which never read
# a persona reply, must stay near 0; the held-out persona replies themselves score 1.
PERSONA_SHARE_BOUND = 0.5


def test_persona_sft_on_the_pretrained_base_speaks_the_persona_on_held_out_prompts(pretrained, tmp_path):
    from conflux.data.loaders.persona import read_persona
    from conflux.data.pairs import write_sft
    from conflux.data.persona_split import split_persona
    from conflux.data.persona_text import PERSONA_MARKERS, bundled_persona_path
    from conflux.data.specs import PersonaSplitConfig
    from conflux.evaluation.persona_markers import count_markers
    from conflux.modeling.generation import GenerationSettings, generate
    from conflux.training.config import TrainConfig
    from conflux.training.trl_jobs import make_trainer, sft_dataset

    rows, _ = read_persona(str(bundled_persona_path("ojousama")), persona="ojousama")
    parts, _ = split_persona(rows, PersonaSplitConfig())
    write_sft(tmp_path / "train.parquet", parts["sft_train"])
    held_out = parts["sft_eval"].column("prompt").to_pylist()
    gen = GenerationSettings(max_new_tokens=32, batch_size=32)

    def share(model, tokenizer) -> float:
        answers = generate(model.eval(), tokenizer, held_out, gen, max_length=128)
        return float(np.mean([count_markers(a, PERSONA_MARKERS["ojousama"]) > 0 for a, _ in answers]))

    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(pretrained),
        AutoTokenizer.from_pretrained(pretrained),
    )
    assert share(model, tokenizer) < 0.1  # the base speaks the general replies' plain polite Japanese
    # the default config's SFT settings (config/config.yaml methods.sft), one seed
    cfg = TrainConfig(finetune="full", learning_rate=0.002, epochs=3, max_length=128, batch_size=16,
                      per_device_batch_size=16, warmup_ratio=0.03)  # fmt: skip
    trainer = make_trainer("sft", model, tokenizer, sft_dataset(tmp_path / "train.parquet", tokenizer), cfg,
                           tmp_path / "sft", seed=0)  # fmt: skip
    trainer.train()
    assert len(held_out) > 50 and share(trainer.model, tokenizer) >= PERSONA_SHARE_BOUND
