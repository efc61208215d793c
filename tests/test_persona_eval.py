"""Persona-study metrics: markers and perplexity by hand, generation, model variants, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from conflux.data.pairs import make_pair_table, write_pairs, write_sft
from conflux.data.persona_text import PERSONA_MARKERS, persona_sets
from conflux.evaluation.persona_eval import perplexity, persona_eval_job, response_logps
from conflux.evaluation.persona_markers import count_markers, style_summary
from conflux.evaluation.persona_table import persona_table_job
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
from conflux.modeling.generation import GenerationSettings, generate
from conflux.modeling.lora import LoraSpec
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
from conflux.modeling.tokenize import TokenizeSettings, prompt_ids
from conflux.modeling.variants import load_variant, resolve_model_dir

SETTINGS = TokenizeSettings(max_length=192)
GEN = GenerationSettings(max_new_tokens=8, batch_size=4)
OJOU = PERSONA_MARKERS["ojousama"]
STUDENT = PERSONA_MARKERS["student"]


# ---- markers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ojousama", "student"),
    [
        ("ごきげんよう。わたくし、お茶が大好きですわ。", 3, 0),  # ごきげんよう, わたくし, ですわ
        ("ございますわ", 1, 0),  # the longest marker wins: not also ますわ
        ("よろしくてよ、わたくしもそう思いますわ。", 3, 0),
        ("俺、マジでバイト帰りっす。", 0, 4),  # 俺, マジで, バイト, っす
        ("講義のあとサークルに行くじゃん", 0, 3),
        ("はい、ラーメンは好きです。", 0, 0),
        ("雨ですので、傘をお持ちください。", 0, 0),  # ですので: an ordinary "so", not the marker ですの
        ("そんなこと、わたくしは存じませんわ。", 2, 0),  # わたくし, ませんわ
        ("あら、ご存じありませんの？", 1, 0),  # ませんの
        ("まだ決まっていませんので、後ほど。", 0, 0),
        ("素敵なお庭ですの。ですので、毎朝歩きますわ。", 2, 0),  # ですの (then ですので not), ますわ
        ("", 0, 0),
    ],
)
def test_marker_counts_of_hand_written_replies(text, ojousama, student):
    assert count_markers(text, OJOU) == ojousama
    assert count_markers(text, STUDENT) == student


def test_style_score_is_the_share_with_a_marker_and_the_mean_count():
    assert style_summary(np.array([0, 2, 1, 0])) == {"share": 0.5, "mean_markers": 0.75, "n": 4}
    assert np.isnan(style_summary(np.array([]))["share"])


# ---- a tiny model and a held-out persona set ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("persona_ws")
    sets = persona_sets(seed=0)
    texts = [t for rows in sets.values() for pair in rows[:120] for t in pair]
    cfg = TinyModelConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_layers=2)
    build_tiny_model(texts, cfg, root / "hf")
    base_model_manifest_job(
        BaseModelSpec(name="tiny", source="embedded"), root / "manifest.json", built_dir=root / "hf"
    )
    held = list(range(200, 205))
    ojou, general = sets["ojousama"], sets["general"]
    prompts = [ojou[i][0] for i in held]
    write_sft(
        root / "sft_eval.parquet",
        pa.table(
            {"prompt": prompts, "response": [ojou[i][1] for i in held], "persona": ["ojousama"] * len(held)}
        ),
    )
    # Pair 2 lists the general reply first, to check that the persona side is found from the scores.
    flip = [i == 2 for i in range(len(held))]
    a = [general[h][1] if f else ojou[h][1] for h, f in zip(held, flip, strict=True)]
    b = [ojou[h][1] if f else general[h][1] for h, f in zip(held, flip, strict=True)]
    s_a = np.array([[0.0] if f else [1.0] for f in flip])
    write_pairs(
        root / "pairs_eval.parquet",
        make_pair_table(
            pair_id=[f"p{i}" for i in held],
            prompt=prompts,
            response_a=a,
            response_b=b,
            scores_a=s_a,
            scores_b=1.0 - s_a,
            dims=("persona",),
            source="test",
        ),
    )
    # Variants: a LoRA adapter with a nonzero delta, and a full model directory (its merge).
    from peft import get_peft_model

    model, _ = load_base_model(root / "manifest.json", dtype="float32")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraSpec(r=4, alpha=8).to_peft())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape) * 0.3)
    peft_model.save_pretrained(str(root / "dpo" / "model"))  # a TRL LoRA output: <run>/model/
    peft_model.merge_and_unload().save_pretrained(str(root / "merged"))
    return root


def test_perplexity_is_exp_of_the_mean_token_nll_computed_by_hand(ws):
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    prompts, replies = ["ラーメンは好き？", "雨の日って好き？"], ["はい、好きです。", "ええ、好きですわ。"]
    lp = response_logps(model, tokenizer, prompts, replies, replies, SETTINGS)
    nll, count = 0.0, 0
    for prompt, reply in zip(prompts, replies, strict=True):
        p = prompt_ids(tokenizer, prompt)  # the tiny model's chat template (prompt_format auto)
        r = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        for t in range(len(r)):  # the token at position len(p) + t is predicted from the position before
            nll -= float(logprobs[len(p) + t - 1, r[t]])
            count += 1
    assert lp["tokens_a"].sum() == count
    assert perplexity(lp["logp_a"], lp["tokens_a"]) == pytest.approx(np.exp(nll / count), rel=1e-5)


def test_greedy_generation_is_the_argmax_continuation_and_batching_does_not_change_it(ws):
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    prompts = ["ラーメンは好き？", "おすすめの京都の楽しみ方はある？", "英語の勉強って好き？"]
    batched = generate(model, tokenizer, prompts, GEN, max_length=192)
    ids = prompt_ids(tokenizer, prompts[1])
    new = []
    with torch.no_grad():
        for _ in range(GEN.max_new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
    assert batched[1] == (tokenizer.decode(new, skip_special_tokens=True), len(new))
    for i, prompt in enumerate(prompts):
        assert generate(model, tokenizer, [prompt], GEN, max_length=192)[0] == batched[i]


def test_variants_load_from_an_adapter_a_training_output_and_a_full_model(ws):
    assert resolve_model_dir(ws / "dpo") == ws / "dpo" / "model"
    ids = torch.tensor([[5, 6, 7, 8]])
    logits = {}
    for name, path in (("adapter", ws / "dpo"), ("full", ws / "merged"), ("base", None)):
        model, _ = load_variant(ws / "manifest.json", path, dtype="float32")
        with torch.no_grad():
            logits[name] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["adapter"], logits["full"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits["adapter"], logits["base"])


def test_persona_eval_job_and_the_table_of_its_variants(ws, tmp_path):
    files = []
    for variant, seed, path in (("base", None, None), ("dpo", 0, ws / "dpo")):
        out = tmp_path / f"{variant}{seed}.json"
        persona_eval_job(
            variant=variant,
            seed=seed,
            manifest=ws / "manifest.json",
            model_dir=path,
            sft_eval=ws / "sft_eval.parquet",
            pairs_eval=ws / "pairs_eval.parquet",
            out=out,
            settings=SETTINGS,
            generation=GEN,
        )
        files.append(out)
    # A second seed whose generations carry one more ojousama marker each: the mean must average the seeds.
    second = json.loads(files[1].read_text(encoding="utf-8"))
    second["seed"] = 1
    for g in second["generations"]:
        g["markers"]["ojousama"] += 1
    files.append(tmp_path / "dpo1.json")
    files[2].write_text(json.dumps(second, ensure_ascii=False), encoding="utf-8")
    rec = json.loads(files[1].read_text(encoding="utf-8"))
    assert rec["persona"] == "ojousama" and len(rec["generations"]) == 5 and len(rec["pairs"]) == 5
    margins = np.array([p["logp_persona"] - p["logp_general"] for p in rec["pairs"]])
    assert rec["metrics"]["persona_margin"]["accuracy"] == pytest.approx(float((margins > 0).mean()))
    # The persona side of the flipped pair p202 is response_b: its token count is the ojousama reply's.
    p202 = next(p for p in rec["pairs"] if p["pair_id"] == "p202")
    assert p202["tokens_persona"] > p202["tokens_general"]
    for g in rec["generations"]:
        assert g["markers"]["ojousama"] == count_markers(g["text"], OJOU)
    table = persona_table_job(
        files,
        csv=tmp_path / "p.csv",
        md=tmp_path / "p.md",
        pairs_eval=ws / "pairs_eval.parquet",
        resamples=100,
    )
    rows = table.set_index(["variant", "seed"])
    assert rows.loc[("dpo", "0"), "margin_accuracy"] == pytest.approx(float((margins > 0).mean()))
    per_token = [p["logp_persona"] / p["tokens_persona"] - p["logp_general"] / p["tokens_general"]
                 for p in rec["pairs"]]  # fmt: skip
    assert rows.loc[("dpo", "0"), "margin_per_token"] == pytest.approx(float(np.mean(per_token)))
    m0 = np.mean([g["markers"]["ojousama"] for g in rec["generations"]])
    assert rows.loc[("dpo", "0"), "ojousama_markers"] == pytest.approx(m0)
    assert rows.loc[("dpo", "1"), "ojousama_markers"] == pytest.approx(m0 + 1)
    assert rows.loc[("dpo", "mean"), "ojousama_markers"] == pytest.approx(m0 + 0.5)
    assert rows.loc[("dpo", "1"), "ojousama_share"] == 1.0
    assert rows.loc[("dpo", "mean"), "ppl_general"] == pytest.approx(rows.loc[("dpo", "0"), "ppl_general"])
    assert rows.loc[("dpo", "mean"), "seeds"] == 2
    lo, hi = rows.loc[("dpo", "0"), ["ppl_general_ci_low", "ppl_general_ci_high"]]
    assert lo <= rows.loc[("dpo", "0"), "ppl_general"] <= hi
    assert rows.loc[("data: persona replies", "-"), "ojousama_share"] == 1.0
    assert rows.loc[("data: general replies", "-"), "ojousama_share"] == 0.0
    md = (tmp_path / "p.md").read_text(encoding="utf-8")
    assert "n = 5 held-out prompts" in md and "dpo 0, 1" in md and "base -" in md


# ---- one prompt format for training and evaluation ---------------------------------------------------------


@pytest.mark.parametrize("prompt_format", ["auto", "plain", "safe_rlhf"])
def test_sft_and_dpo_rows_and_the_evaluation_see_the_same_prompt_tokens(
    ws, tmp_path, monkeypatch, prompt_format
):
    """Whatever the model's prompt_format, the SFT and DPO rows TRL trains on, the pair log-probs and the
    generation of the persona evaluation start from the same prompt token ids: prompt_ids in that format."""
    import conflux.evaluation.persona_eval as persona_eval
    from conflux.training.config import TrainConfig
    from conflux.training.trl_jobs import dpo_dataset, make_trainer, sft_dataset

    manifest = tmp_path / "manifest.json"
    spec = BaseModelSpec(name="tiny", source="embedded", prompt_format=prompt_format)
    base_model_manifest_job(spec, manifest, built_dir=ws / "hf")
    model, tokenizer = load_base_model(manifest, dtype="float32")
    prompt = read_sft_prompts(ws)[0]
    want = prompt_ids(tokenizer, prompt)
    plain = tokenizer(prompt)["input_ids"]
    assert (want == plain) == (prompt_format == "plain")  # the tiny model's chat template, or safe-rlhf's

    cfg = TrainConfig(max_length=192, batch_size=4, per_device_batch_size=4, finetune="lora")
    sft = make_trainer("sft", model, tokenizer, sft_dataset(ws / "sft_eval.parquet", tokenizer), cfg,
                       tmp_path / "sft", seed=0).train_dataset[0]  # fmt: skip
    assert [t for t, label in zip(sft["input_ids"], sft["labels"], strict=True) if label == -100] == want
    model, tokenizer = load_base_model(manifest, dtype="float32")
    dpo = make_trainer("dpo", model, tokenizer, dpo_dataset(ws / "pairs_eval.parquet", tokenizer), cfg,
                       tmp_path / "dpo", seed=0).train_dataset[0]  # fmt: skip
    assert dpo["prompt_ids"] == want

    # The evaluation: the rows it scores and the prompts it generates from.
    scored, generated = [], []
    score_rows = persona_eval.score_rows

    def spy_score(model, rows_a, rows_b, *args, **kwargs):
        scored.extend(p for p, _ in [*rows_a, *rows_b])
        return score_rows(model, rows_a, rows_b, *args, **kwargs)

    monkeypatch.setattr(persona_eval, "score_rows", spy_score)
    model, tokenizer = load_base_model(manifest, dtype="float32")
    generate_ids = model.generate

    def spy_generate(*, input_ids, attention_mask, **kwargs):
        rows = zip(input_ids, attention_mask, strict=True)
        generated.extend(ids[mask.bool()].tolist() for ids, mask in rows)
        return generate_ids(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(model, "generate", spy_generate)
    persona, prompts, pairs = persona_eval.held_out_inputs(ws / "sft_eval.parquet", ws / "pairs_eval.parquet")
    first = {key: values[:1] for key, values in pairs.items()}
    persona_eval.evaluate_variant(model, tokenizer, prompts[:1], first, persona, SETTINGS, GEN)
    assert scored == [want, want] and generated == [want]


def read_sft_prompts(ws: Path) -> list[str]:
    from conflux.data.pairs import read_sft

    return read_sft(ws / "sft_eval.parquet").column("prompt").to_pylist()


# ---- general replies generated by the base model -----------------------------------------------------------


def test_generated_general_replies_are_the_base_models_greedy_answers(ws, tmp_path):
    from conflux.data.pairs import read_sft
    from conflux.modeling.general_replies import generate_general_job

    out = tmp_path / "general_generated.parquet"
    parts = [ws / "sft_eval.parquet"]
    summary = generate_general_job(dataset="oj", manifest=ws / "manifest.json", parts=parts, out=out,
                                   generation=GEN, max_length=SETTINGS.max_length)  # fmt: skip
    rows = read_sft(out).to_pydict()
    assert rows["prompt"] == read_sft_prompts(ws) and set(rows["persona"]) == {"general"}
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    answers = generate(model, tokenizer, rows["prompt"], GEN, max_length=SETTINGS.max_length)
    assert rows["response"] == [text.strip() for text, _ in answers] and summary["prompts"] == 5


def test_general_generate_with_a_model_that_cannot_generate_names_the_config_key(ws, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    from conflux.errors import ConfigError
    from conflux.modeling.general_replies import generate_general_job

    monkeypatch.setattr(LlamaForCausalLM, "can_generate", classmethod(lambda cls: False))
    out = tmp_path / "general_generated.parquet"
    with pytest.raises(ConfigError, match=r"datasets\.oj\.general.*model 'tiny' cannot generate"):
        generate_general_job(dataset="oj", manifest=ws / "manifest.json", parts=[ws / "sft_eval.parquet"],
                             out=out, generation=GEN, max_length=SETTINGS.max_length)  # fmt: skip
    assert not out.exists()
