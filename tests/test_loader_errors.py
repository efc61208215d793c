"""Loader errors beyond the bad-input table (tests/test_bad_inputs.py): the hints their messages give."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conflux.data.loaders import (
    load_canonical,
    load_helpsteer2,
    load_persona,
)
from conflux.errors import DataError

PKU_HEADER = "prompt,response_0,response_1,better_response_id,safer_response_id\n"
PKU_ROW = {"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 0,
           "safer_response_id": 1}  # fmt: skip
HS_HEADER = "prompt,response,helpfulness,correctness,coherence,complexity,verbosity\n"
HS_ROW = {"prompt": "q", "response": "r", "helpfulness": 3, "correctness": 2, "coherence": 4,
          "complexity": 1, "verbosity": 0}  # fmt: skip
PAIR = {"pair_id": "x1", "prompt": "p", "response_a": "a", "response_b": "b", "scores_a": [1.0, 0.0],
        "scores_b": [0.0, 1.0]}  # fmt: skip
PAIR_2 = {**PAIR, "pair_id": "x2"}
LEGACY = {"prompt": "q ->", "completion": " a\n"}
USER, ASSISTANT = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def parquet(*rows: dict) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(list(rows)), sink)
    return sink.getvalue().to_pybytes()


def test_unknown_helpsteer_dimension_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as err:
        load_helpsteer2(str(tmp_path / "hs.jsonl"), dims=["helpfulness", "helpfullness"])
    assert (err.value.row, err.value.field) == ("header", "helpfullness")
    assert "hs.jsonl" in str(err.value) and "correctness" in str(err.value)


def test_persona_without_any_general_match_is_an_error(tmp_path):
    persona = tmp_path / "oj.csv"
    persona.write_text("prompt,completion\nこんにちは,ごきげんよう\n", encoding="utf-8")
    general = tmp_path / "general.csv"
    general.write_text("prompt,completion\nさようなら,またね\n", encoding="utf-8")
    with pytest.raises(DataError, match="no persona prompt"):
        load_persona(str(persona), str(general), persona="ojousama")


def test_canonical_without_dims_is_an_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(jsonl(PAIR))
    with pytest.raises(DataError) as err:
        load_canonical(str(path), dims=[])
    assert err.value.field == "dims"
