"""Config dataset entries -> canonical files: dispatch, statistics, and nothing written on bad input."""

from __future__ import annotations

import json

import pytest

from conflux.data.jobs import bundled_corpus, load_pairs_job, load_persona_job, source_fingerprint
from conflux.data.pairs import read_pairs, read_sft
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


def test_bundled_persona_dataset_splits_by_prompt(tmp_path):
    spec = DatasetSpec(
        name="oj", kind="persona", persona="ojousama", path="bundled:ojousama", general="bundled:general"
    )
    outputs = {
        part: tmp_path / f"{part}.parquet" for part in ("sft_train", "sft_eval", "pairs_train", "pairs_eval")
    }
    load_persona_job(
        spec, PersonaSplitConfig(eval_fraction=0.2, seed=0), outputs, tmp_path / "stats.json", offline=True
    )
    stats = json.loads((tmp_path / "stats.json").read_text())
    train_prompts = set(read_sft(outputs["sft_train"]).column("prompt").to_pylist())
    eval_prompts = set(read_sft(outputs["sft_eval"]).column("prompt").to_pylist())
    assert train_prompts and eval_prompts and not train_prompts & eval_prompts
    assert stats["eval_prompts"] == len(eval_prompts) == round(0.2 * stats["prompts"])
    pairs = read_pairs(outputs["pairs_train"])
    assert pairs.dims == ("persona",)
    assert set(pairs.table.column("prompt").to_pylist()) <= train_prompts


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
