"""The persona study on real-format data without general replies: OjousamaTalkScriptDataset-style files in
its three formats (CSV, legacy JSONL, chat JSONL) and `general: generate` (or no `general:` at all), plus a
general set (kind general), run through Snakemake from the files to SFT, DPO, SFT→DPO, task-vector stats,
CL-L2 between methods and between datasets, merges and tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conflux.data.pairs import read_pairs, read_sft
from conflux.data.persona_text import persona_sets
from workflow_cli import RUN_TIMEOUT, snakemake

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("oj_csv", "oj_legacy", "oj_chat")
METHODS = ("sft", "dpo", "sft_dpo")


def real_format_files(root: Path) -> dict[str, Path]:
    """Ojousama dialogue as the real dataset ships it: `ojousamatalkscript200.csv` (prompt,completion), the
    legacy fine-tuning JSONL (`<prompt> ->`, ` <reply>\\n`) and chat JSONL with a system message; no general
    replies anywhere."""
    rows = persona_sets(seed=0)["ojousama"]
    csv_rows, legacy_rows, chat_rows = rows[:30], rows[30:60], rows[60:90]
    csv = root / "ojousamatalkscript200.csv"
    pd.DataFrame(csv_rows, columns=["prompt", "completion"]).to_csv(csv, index=False)
    legacy = root / "ojousamatalkscript200.jsonl"
    legacy.write_text(
        "".join(json.dumps({"prompt": f"{p} ->", "completion": f" {c}\n"}, ensure_ascii=False) + "\n"
                for p, c in legacy_rows),
        encoding="utf-8",
    )  # fmt: skip
    chat = root / "ojousamatalkscript200_chat.jsonl"
    system = {"role": "system", "content": "あなたはお嬢様です。お嬢様言葉で話します。"}
    chat.write_text(
        "".join(
            json.dumps({"messages": [system, {"role": "user", "content": p},
                                     {"role": "assistant", "content": c}]}, ensure_ascii=False) + "\n"
            for p, c in chat_rows
        ),
        encoding="utf-8",
    )  # fmt: skip
    return {"oj_csv": csv, "oj_legacy": legacy, "oj_chat": chat}


def general_file(root: Path) -> Path:
    """A general set in the real CSV format (prompt, completion): plain replies, no persona."""
    path = root / "general.csv"
    pd.DataFrame(persona_sets(seed=0)["general"][:30], columns=["prompt", "completion"]).to_csv(
        path, index=False
    )
    return path


@pytest.fixture(scope="module")
def persona_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("persona_run")
    files = real_format_files(work)
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text(encoding="utf-8"))
    raw["models"]["tiny"]["tiny"].update(vocab_size=600, hidden_size=32, intermediate_size=64)
    raw["models"]["tiny"]["tiny"]["pretrain"]["steps"] = 10  # the formats' plumbing, not the learning
    raw["seeds"] = [0]
    # The path and the persona only; general: generate on two, left out (its default) on the third.
    raw["datasets"] = {
        name: {"kind": "persona", "persona": "ojousama", "path": str(path)} for name, path in files.items()
    }
    raw["datasets"]["oj_csv"]["general"] = raw["datasets"]["oj_legacy"]["general"] = "generate"
    raw["datasets"]["general"] = {"kind": "general", "path": str(general_file(work))}
    datasets = [*DATASETS, "general"]
    raw["studies"] = {"persona": {"datasets": datasets, "models": ["tiny"], "methods": list(METHODS)}}
    raw["training"].update(max_length=64, batch_size=8, per_device_batch_size=8)
    raw["methods"]["sft"]["max_steps"] = raw["methods"]["dpo"]["max_steps"] = 2  # sft_dpo: dpo's settings
    raw["evaluation"]["generation"] = {"max_new_tokens": 8, "greedy": True, "batch_size": 16}
    raw["analysis"].update(lambdas=[1.0], dumps={"mode": "none"})
    # the SFT+DPO merge at lambda 1, layer 0 only (the default run's test reverts a fine-tune, DPO)
    raw["analysis"]["revert"] = {"methods": ["ties_lam1"], "layers": [0], "modules": "all",
                                 "cells": False, "generate": False}  # fmt: skip
    raw["tracking"] = {"backend": "none"}
    raw.pop("export")  # the default exports synth_pku's policies; this run trains no curriculum study
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    snakemake(ROOT, "--cores", "2", "--configfile", str(cfg), workdir=work, timeout=RUN_TIMEOUT)
    return work


@pytest.mark.parametrize("dataset", DATASETS)
def test_generated_general_replies_make_the_dpo_pairs_of_every_real_format(persona_run, dataset):
    data = persona_run / "results/data" / dataset / "persona"
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    assert stats["files"]["general"] == {"generate": True}
    assert stats["files"]["persona"]["rows_read"] == 30 and stats["prompts"] == 30
    generated = read_sft(data / "tiny/general_generated.parquet").to_pydict()
    prompts = [p for part in ("sft_train", "sft_eval") for p in read_sft(data / f"{part}.parquet")["prompt"]]
    assert sorted(generated["prompt"]) == sorted(map(str, prompts))  # one reply per persona prompt
    pairs_stats = json.loads((data / "tiny/pairs_stats.json").read_text(encoding="utf-8"))
    assert pairs_stats["general"]["matched"] == 30
    reply = dict(zip(generated["prompt"], generated["response"], strict=True))
    for part in ("train", "eval"):
        pairs = read_pairs(data / f"tiny/pairs_{part}.parquet").table.to_pydict()
        assert pairs_stats["pairs"][part] == len(pairs["pair_id"]) > 0
        # chosen: the persona reply; rejected: the base model's own reply to the same prompt
        assert [reply[p] for p in pairs["prompt"]] == pairs["response_b"]
    assert (
        pairs_stats["pairs"]["train"]
        + pairs_stats["pairs"]["eval"]
        + sum(n for part in pairs_stats["dropped"].values() for n in part.values())
        == 30
    )


@pytest.mark.parametrize("dataset", [*DATASETS, "general"])
def test_the_persona_dag_runs_through_sft_dpo_stats_conflict_norms_merges_and_tables(persona_run, dataset):
    results = persona_run / "results"
    for method in METHODS:
        summary = json.loads((results / f"train/tiny/{dataset}/seed0/{method}/summary.json").read_text())
        assert summary["global_steps"] == 2
    sft_dpo = json.loads((results / f"train/tiny/{dataset}/seed0/sft_dpo/summary.json").read_text())
    assert sft_dpo["init"] == f"results/train/tiny/{dataset}/seed0/sft"
    analysis = results / f"analysis/tiny/{dataset}/seed0"
    assert set(pd.read_parquet(analysis / "taskvec_stats.parquet")["model"]) == set(METHODS)
    conflict = pd.read_parquet(analysis / "conflict_methods.parquet")
    assert set(zip(conflict["a"], conflict["b"], strict=True)) == {
        ("sft", "dpo"),
        ("sft", "sft_dpo"),
        ("dpo", "sft_dpo"),
    }
    summary = pd.read_csv(results / f"tables/tiny/{dataset}/conflict_methods.csv")
    assert set(summary["seed"].astype(str)) == {"0", "mean"} and (summary["module"] == "all").sum() == 6
    assert (results / f"merges/tiny/{dataset}/seed0/ties_lam1/config.json").is_file()
    table = (results / f"tables/tiny/{dataset}/persona.md").read_text(encoding="utf-8")
    assert all(f"| {variant} |" in table for variant in ("base", "sft", "dpo", "sft_dpo", "ties_lam1"))
    for reverted in ("ties_lam1",):  # an SFT+DPO merge, set back layer by layer
        assert (results / f"tables/tiny/{dataset}/key_layers_{reverted}.md").is_file()
        sweep = json.loads((analysis / f"revert_{reverted}.json").read_text(encoding="utf-8"))
        assert sweep["method"] == reverted and len(sweep["targets"]) > 0
    dpo = json.loads((results / f"eval/tiny/{dataset}/seed0/persona_dpo.json").read_text(encoding="utf-8"))
    assert dpo["prompt_format"] == "auto" and dpo["metrics"]["persona_margin"]["n"] > 0


def test_the_general_set_prefers_its_replies_over_the_base_models_own(persona_run):
    data = persona_run / "results/data/general/persona"
    stats = json.loads((data / "stats.json").read_text(encoding="utf-8"))
    assert stats["persona"] == "general" and stats["files"]["general"] == {"generate": True}
    generated = read_sft(data / "tiny/general_generated.parquet").to_pydict()
    reply = dict(zip(generated["prompt"], generated["response"], strict=True))
    written = dict(persona_sets(seed=0)["general"][:30])
    for part in ("train", "eval"):
        pairs = read_pairs(data / f"tiny/pairs_{part}.parquet")
        cols = pairs.table.to_pydict()
        s_a, s_b = pairs.scores()
        assert (s_a[:, 0] > s_b[:, 0]).all()  # a: the file's reply (chosen); b: the base model's (rejected)
        assert cols["response_a"] == [written[p] for p in cols["prompt"]]
        assert cols["response_b"] == [reply[p] for p in cols["prompt"]]


def trl_row(tokenizer, prompt: str, reply: str, max_length: int = 64) -> tuple[list[int], list[int]]:
    """A DPO row as TRL's collator cuts it (keep_start: prompt + reply cut to max_length from the end)."""
    from conflux.modeling.tokenize import prompt_ids, response_ids

    p = prompt_ids(tokenizer, prompt)
    return p, response_ids(tokenizer, reply)[: max(max_length - len(p), 0)]


def test_sft_dpo_starts_from_sft_and_takes_its_log_probs_as_reference(persona_run, monkeypatch):
    """The cached reference of SFT→DPO is the SFT model's log-probs of each pair, scored here by conflux's own
    scorer on the rows TRL trains on (prompt + reply cut to max_length from the end, TRL's keep_start), and
    not the base model's."""
    from conflux.evaluation.persona_eval import held_out_pairs
    from conflux.modeling.logprobs import score_rows
    from conflux.modeling.tokenize import pad_id_of
    from conflux.modeling.variants import load_variant

    monkeypatch.chdir(persona_run)  # the manifest names the built model relative to the run's directory
    results = persona_run / "results"
    manifest = results / "models/tiny/manifest.json"
    pairs = held_out_pairs(results / "data/oj_csv/persona/tiny/pairs_train.parquet")
    cached = pd.read_parquet(results / "reference/tiny/oj_csv/seed0/sft_dpo_train.parquet").set_index(
        "pair_id"
    )
    base_cached = pd.read_parquet(results / "reference/tiny/oj_csv/dpo_train.parquet").set_index("pair_id")
    for run, table in (("train/tiny/oj_csv/seed0/sft", cached), (None, base_cached)):
        model, tokenizer = load_variant(manifest, results / run if run else None, dtype="float32")

        rows = [
            (trl_row(tokenizer, p, a), trl_row(tokenizer, p, b))
            for p, a, b in zip(pairs["prompt"], pairs["persona"], pairs["general"], strict=True)
        ]
        chosen, rejected = score_rows(
            model, [a for a, _ in rows], [b for _, b in rows], pad_id_of(tokenizer), batch_size=16
        )
        ids = pairs["pair_id"]
        np.testing.assert_allclose(table.loc[ids, "ref_chosen_logps"], chosen, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(table.loc[ids, "ref_rejected_logps"], rejected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(
        cached["ref_chosen_logps"], base_cached.loc[cached.index, "ref_chosen_logps"], atol=1e-2
    )


def test_conflict_norms_between_datasets_per_method(persona_run):
    datasets = [*DATASETS, "general"]
    expected = {(a, b) for i, a in enumerate(datasets) for b in datasets[i + 1 :]}
    for method in METHODS:
        frame = pd.read_parquet(
            persona_run / f"results/analysis/tiny/persona_datasets/seed0/conflict_{method}.parquet"
        )
        assert set(zip(frame["a"], frame["b"], strict=True)) == expected
        assert (frame["cl_l2_a"] <= frame["l2_a"] + 1e-9).all() and (frame["l2_a"] > 0).any()
        tables = persona_run / f"results/tables/tiny/persona_datasets/conflict_{method}"
        assert all(
            tables.with_suffix(ext).stat().st_size > 0 for ext in (".csv", ".md", ".html", ".png", ".svg")
        )
