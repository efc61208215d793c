"""The persona study on real-format data without general replies: OjousamaTalkScriptDataset-style files in
its three formats (CSV, legacy JSONL, chat JSONL) and `general: generate` (or no `general:` at all), run
through Snakemake from the persona files to the SFT, DPO, task-vector stats, CL-L2, merges and tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conflux.data.pairs import read_pairs, read_sft
from conflux.data.persona_text import persona_sets
from workflow_cli import snakemake

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("oj_csv", "oj_legacy", "oj_chat")


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
    raw["studies"] = {"persona": {"datasets": list(DATASETS), "models": ["tiny"], "methods": ["sft", "dpo"]}}
    raw["training"].update(max_length=64, batch_size=8, per_device_batch_size=8)
    raw["methods"]["sft"]["max_steps"] = raw["methods"]["dpo"]["max_steps"] = 2
    raw["evaluation"]["generation"] = {"max_new_tokens": 8, "greedy": True, "batch_size": 16}
    raw["analysis"].update(lambdas=[1.0], dumps={"mode": "none"})
    # the DPO model and the SFT+DPO merge at lambda 1, layer 0 only
    raw["analysis"]["revert"] = {"methods": ["dpo", "ties_lam1"], "layers": [0], "modules": "all",
                                 "cells": False, "generate": False}  # fmt: skip
    raw["tracking"] = {"backend": "none"}
    raw.pop("export")  # the default exports synth_pku's policies; this run trains no curriculum study
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    snakemake(ROOT, "--cores", "2", "--configfile", str(cfg), workdir=work)
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


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_persona_dag_runs_through_sft_dpo_stats_conflict_norms_merges_and_tables(persona_run, dataset):
    results = persona_run / "results"
    for method in ("sft", "dpo"):
        summary = json.loads((results / f"train/tiny/{dataset}/seed0/{method}/summary.json").read_text())
        assert summary["global_steps"] == 2
    analysis = results / f"analysis/tiny/{dataset}/seed0"
    assert len(pd.read_parquet(analysis / "taskvec_stats.parquet")) > 0
    assert len(pd.read_parquet(analysis / "conflict_sft_dpo.parquet")) > 0
    assert (results / f"merges/tiny/{dataset}/seed0/ties_lam1/config.json").is_file()
    table = (results / f"tables/tiny/{dataset}/persona.md").read_text(encoding="utf-8")
    assert all(variant in table for variant in ("base", "sft", "dpo", "ties_lam1"))
    for reverted in ("dpo", "ties_lam1"):  # a fine-tune and an SFT+DPO merge, each set back layer by layer
        assert (results / f"tables/tiny/{dataset}/key_layers_{reverted}.md").is_file()
        sweep = json.loads((analysis / f"revert_{reverted}.json").read_text(encoding="utf-8"))
        assert sweep["method"] == reverted and len(sweep["targets"]) > 0
    dpo = json.loads((results / f"eval/tiny/{dataset}/seed0/persona_dpo.json").read_text(encoding="utf-8"))
    assert dpo["prompt_format"] == "auto" and dpo["metrics"]["persona_margin"]["n"] > 0
