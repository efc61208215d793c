"""Config dataset entries -> canonical files: dispatch, statistics, and nothing written on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from conflux.data.jobs import (
    bundled_corpus,
    load_pairs_job,
    load_persona_job,
    persona_pairs_job,
    source_fingerprint,
)
from conflux.data.pairs import read_pairs, read_sft, write_sft
from conflux.data.specs import DatasetSpec, PersonaSplitConfig
from conflux.errors import DataError

PKU_HEADER = "prompt,response_0,response_1,better_response_id,safer_response_id\n"


def test_synthetic_dataset_writes_pairs_and_stats(tmp_path):
    spec = DatasetSpec(name="s", kind="synthetic_pku", n_pairs=50, conflict_rate=0.4, seed=3)
    load_pairs_job(spec, tmp_path / "pairs.parquet", tmp_path / "load_stats.json", offline=True)
    pairs = read_pairs(tmp_path / "pairs.parquet")
    stats = json.loads((tmp_path / "load_stats.json").read_text())
    assert pairs.dims == ("helpful", "harmless") and len(pairs) == 50 == stats["pairs"]


def test_pku_file_dispatches_to_its_loader(tmp_path):
    src = tmp_path / "pku.csv"
    src.write_text(PKU_HEADER + "how?,do A,do B,0,1\nwhy?,yes,no,1,1\n")
    spec = DatasetSpec(name="pku", kind="pku_saferlhf", path=str(src))
    load_pairs_job(spec, tmp_path / "pairs.parquet", tmp_path / "stats.json", offline=True)
    sa, sb = read_pairs(tmp_path / "pairs.parquet").scores()
    assert sa.tolist() == [[1, 0], [0, 0]] and sb.tolist() == [[0, 1], [1, 1]]


@pytest.mark.parametrize(
    ("content", "row", "field"),
    [
        (PKU_HEADER + "q,a,b,0,1\nq2,a,b,2,1\n", 2, "better_response_id"),
        ("prompt,response_0,response_1,safer_response_id\nq,a,b,1\n", "header", "better_response_id"),
        (PKU_HEADER + "q,a,b,0,1\nq2,,b,0,1\n", 2, "response_0"),
    ],
)
def test_bad_input_leaves_no_output(tmp_path, content, row, field):
    src = tmp_path / "in.csv"
    src.write_text(content)
    out = tmp_path / "out"
    spec = DatasetSpec(name="pku", kind="pku_saferlhf", path=str(src))
    with pytest.raises(DataError) as err:
        load_pairs_job(spec, out / "pairs.parquet", out / "stats.json", offline=True)
    assert err.value.row == row and err.value.field == field and "in.csv" in str(err.value)
    assert not out.exists() or not list(out.iterdir())


def test_hub_id_offline_fails_at_once(tmp_path):
    spec = DatasetSpec(name="pku", kind="pku_saferlhf", path="PKU-Alignment/PKU-SafeRLHF")
    with pytest.raises(DataError, match="offline"):
        load_pairs_job(spec, tmp_path / "p.parquet", tmp_path / "s.json", offline=True)
    assert not list(tmp_path.iterdir())


def persona_job(tmp_path, spec: DatasetSpec, *, generated=None) -> tuple[dict, dict, dict[str, Path]]:
    """load_persona then persona_pairs, as the workflow runs them: (stats.json, pairs_stats.json, paths)."""
    paths = {
        part: tmp_path / f"{part}.parquet" for part in ("sft_train", "sft_eval", "pairs_train", "pairs_eval")
    }
    load_persona_job(spec, PersonaSplitConfig(eval_fraction=0.2, seed=0), paths, tmp_path / "stats.json",
                     offline=True)  # fmt: skip
    persona_pairs_job(
        spec,
        {"train": paths["sft_train"], "eval": paths["sft_eval"]},
        {"train": paths["pairs_train"], "eval": paths["pairs_eval"]},
        tmp_path / "pairs_stats.json",
        generated=generated,
        offline=True,
    )
    stats, pairs_stats = (json.loads((tmp_path / f).read_text()) for f in ("stats.json", "pairs_stats.json"))
    return stats, pairs_stats, paths


def test_bundled_persona_dataset_splits_by_prompt(tmp_path):
    spec = DatasetSpec(
        name="oj", kind="persona", persona="ojousama", path="bundled:ojousama", general="bundled:general"
    )
    stats, pairs_stats, outputs = persona_job(tmp_path, spec)
    train_prompts = set(read_sft(outputs["sft_train"]).column("prompt").to_pylist())
    eval_prompts = set(read_sft(outputs["sft_eval"]).column("prompt").to_pylist())
    assert train_prompts and eval_prompts and not train_prompts & eval_prompts
    assert stats["eval_prompts"] == len(eval_prompts) == round(0.2 * stats["prompts"])
    pairs = read_pairs(outputs["pairs_train"])
    assert pairs.dims == ("persona",)
    assert set(pairs.table.column("prompt").to_pylist()) <= train_prompts
    assert set(read_pairs(outputs["pairs_eval"]).table.column("prompt").to_pylist()) <= eval_prompts
    # the bundled sets share every prompt: the general file matches all of them
    assert stats["files"]["general"]["matched"] == stats["prompts"] == pairs_stats["general"]["matched"]


def dialogue_file(path: Path, turns: list[tuple[str, str]]) -> str:
    lines = ["prompt,completion", *(f"{p},{c}" for p, c in turns)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_general_file_reports_the_persona_prompts_it_matched_per_file(tmp_path):
    persona = dialogue_file(tmp_path / "oj.csv", [(f"q{i}", f"わたくし{i}ですわ") for i in range(10)]
                            + [("q0", "二度目ですわ")])  # fmt: skip
    # 6 of the 10 persona prompts; q1 twice (the first kept); one identical reply; two prompts not in persona
    general_turns = [("q1", "a1"), ("q1", "again"), ("q2", "a2"), ("q3", "a3"), ("q4", "a4"), ("q5", "a5"),
                     ("q6", "わたくし6ですわ"), ("x1", "b"), ("x2", "c")]  # fmt: skip
    general = dialogue_file(tmp_path / "general.csv", general_turns)
    spec = DatasetSpec(name="oj", kind="persona", persona="ojousama", path=persona, general=general)
    stats, pairs_stats, paths = persona_job(tmp_path, spec)
    assert stats["files"]["persona"] == {"file": persona, "rows_read": 11, "dropped": {"duplicate_prompt": 1}}
    assert stats["files"]["general"] == {
        "file": general, "rows_read": 9, "dropped": {"duplicate_prompt": 1}, "matched": 6
    }  # fmt: skip
    assert pairs_stats["general"]["matched"] == 6
    written = [len(read_pairs(paths[f"pairs_{part}"], allow_empty=True)) for part in ("train", "eval")]
    assert sum(pairs_stats["pairs"].values()) == sum(written) == 5
    dropped = list(pairs_stats["dropped"].values())
    assert sum(d.get("identical_responses", 0) for d in dropped) == 1
    assert sum(d.get("no_general_response", 0) for d in dropped) == 4


def test_a_general_file_that_matches_no_persona_prompt_fails_with_the_counts(tmp_path):
    persona = dialogue_file(tmp_path / "oj.csv", [("q1", "ですわ"), ("q2", "ですの")])
    general = dialogue_file(tmp_path / "general.csv", [("x", "y")])
    spec = DatasetSpec(name="oj", kind="persona", persona="ojousama", path=persona, general=general)
    with pytest.raises(DataError, match=r"2 persona prompts, 1 general rows, 0 in common.*generate"):
        outputs = {"sft_train": tmp_path / "a", "sft_eval": tmp_path / "b"}
        load_persona_job(spec, PersonaSplitConfig(), outputs, tmp_path / "stats.json", offline=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["general.csv", "oj.csv"]


@pytest.mark.parametrize("general", [None, "generate"])
def test_generated_general_replies_pair_with_every_persona_prompt(tmp_path, general):
    persona = dialogue_file(tmp_path / "oj.csv", [(f"q{i}", f"わたくし{i}ですわ") for i in range(10)])
    spec = DatasetSpec(name="oj", kind="persona", persona="ojousama", path=persona, general=general)
    assert spec.generates_general
    replies = tmp_path / "general_generated.parquet"
    write_sft(replies, pa.table({"prompt": [f"q{i}" for i in range(10)], "response": ["はい"] * 10,
                                 "persona": ["general"] * 10}))  # fmt: skip
    stats, pairs_stats, _ = persona_job(tmp_path, spec, generated=replies)
    assert stats["files"]["general"] == {"generate": True}
    assert pairs_stats["general"] == {"generated": str(replies), "matched": 10}
    assert sum(pairs_stats["pairs"].values()) == 10


def test_fingerprint_changes_with_the_file(tmp_path):
    src = tmp_path / "pku.csv"
    src.write_text(PKU_HEADER + "q,a,b,0,1\n")
    spec = DatasetSpec(name="pku", kind="pku_saferlhf", path=str(src))
    before = source_fingerprint(spec)
    src.write_text(PKU_HEADER + "q,a,b,0,1\nq2,c,d,1,0\n")
    assert source_fingerprint(spec) != before
    assert source_fingerprint(DatasetSpec(name="s", kind="synthetic_pku", n_pairs=10)) == "generated"


def test_tokenizer_corpus_covers_english_and_japanese():
    texts = bundled_corpus(seed=0)
    joined = "".join(texts)
    assert len(texts) > 1000
    assert "ですわ" in joined and any(ch.isascii() and ch.isalpha() for ch in joined)
