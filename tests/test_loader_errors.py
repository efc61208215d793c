"""Bad input: every problem is a DataError whose message names the file, the row and the field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conflux.data.loaders import (
    load_canonical,
    load_helpsteer2,
    load_persona,
    load_pku_saferlhf,
    read_dialogue,
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


def pku(path: str) -> object:
    return load_pku_saferlhf(path)


def helpsteer(path: str) -> object:
    return load_helpsteer2(path)


def helpsteer_typo(path: str) -> object:
    return load_helpsteer2(path, dims=["correctness", "helpfullness"])


def canonical(path: str) -> object:
    return load_canonical(path, dims=["helpful", "harmless"])


def dialogue(path: str) -> object:
    return read_dialogue(path)


CASES = [
    # missing columns
    pytest.param("in.csv", PKU_HEADER.replace(",safer_response_id", "") + "q,a,b,0\n", pku, "header",
                 "safer_response_id", id="csv-missing-column"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, without(PKU_ROW, "response_1")), pku, 2, "response_1",
                 id="jsonl-missing-field"),
    pytest.param("in.parquet", parquet(without(HS_ROW, "coherence")), helpsteer, "header", "coherence",
                 id="parquet-missing-column"),
    # wrong types and values
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,abc,2,4,1,0\n", helpsteer, 2, "helpfulness",
                 id="csv-score-abc"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "correctness": "abc"}), helpsteer, 2, "correctness",
                 id="jsonl-score-abc"),
    pytest.param("in.jsonl", jsonl(PAIR, {**PAIR_2, "scores_a": [1, "abc"]}), canonical, 2, "scores_a",
                 id="canonical-score-abc"),
    pytest.param("in.csv", 'pair_id,prompt,response_a,response_b,scores_a,scores_b\nx,p,a,b,"[1, 0]",abc\n',
                 canonical, 1, "scores_b", id="canonical-csv-score-list-abc"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "coherence": math.nan}), helpsteer, 2, "coherence",
                 id="jsonl-nan"),
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,3,2,nan,1,0\n", helpsteer, 2, "coherence",
                 id="csv-nan"),
    pytest.param("in.parquet", parquet(PAIR, {**PAIR_2, "scores_b": [0.0, math.nan]}), canonical, 2,
                 "scores_b", id="canonical-parquet-nan"),
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,3,2,4,inf,0\n", helpsteer, 2, "complexity",
                 id="csv-inf"),
    pytest.param("in.jsonl", jsonl({**PAIR, "scores_a": [math.inf, 0.0]}), canonical, 1, "scores_a",
                 id="canonical-inf"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, {**PKU_ROW, "better_response_id": 2}), pku, 2,
                 "better_response_id", id="better-id-2"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW, {**PKU_ROW, "safer_response_id": None}), pku, 3,
                 "safer_response_id", id="safer-id-null"),
    pytest.param("in.parquet", parquet(HS_ROW, {**HS_ROW, "helpfulness": 7}), helpsteer, 2, "helpfulness",
                 id="helpsteer-score-7"),
    pytest.param("in.jsonl", jsonl(PAIR, {**PAIR_2, "scores_a": [1.0, 0.0, 1.0]}), canonical, 2, "scores_a",
                 id="canonical-wrong-length"),
    pytest.param("in.jsonl", jsonl(PAIR, PAIR_2, PAIR), canonical, 3, "pair_id",
                 id="canonical-duplicate-pair-id"),
    pytest.param("in.jsonl", "\n" + jsonl(PAIR, PAIR_2, PAIR), canonical, 4, "pair_id",
                 id="canonical-duplicate-after-blank-line"),
    pytest.param("in.jsonl", jsonl(HS_ROW, HS_ROW), helpsteer_typo, "header", "helpfullness",
                 id="unknown-dimension"),
    # empty and broken files
    pytest.param("in.csv", "", pku, "all", "-", id="empty-csv"),
    pytest.param("in.jsonl", "", helpsteer, "all", "-", id="empty-jsonl"),
    pytest.param("in.parquet", b"", canonical, "all", "-", id="empty-parquet"),
    pytest.param("in.jsonl", "  \n\n", pku, "all", "-", id="whitespace-only"),
    pytest.param("in.csv", PKU_HEADER, pku, "all", "-", id="header-only-csv"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW) + '{"prompt": "q",\n' + jsonl(PKU_ROW), pku, 3, "-",
                 id="broken-jsonl-line-3-of-4"),
    pytest.param("in.csv", PKU_HEADER.encode() + b"q,a,b,0,1\nq,a,b\xff\xfe,0,1\n", pku, 2, "response_1",
                 id="csv-non-utf8"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW).encode() + b'{"prompt": "q", "response_0": "a\xff"}\n',
                 pku, 3, "response_0", id="jsonl-non-utf8"),
    pytest.param("in.csv", PKU_HEADER + 'q,a,b,0,1\n"multi\nline",a,b,0,1\nq,a,b,0,1,extra\n', pku, 3, "-",
                 id="csv-extra-field-after-quoted-newline"),
    # empty text, chat without an assistant, unknown persona format
    pytest.param("in.csv", PKU_HEADER + "q,a,b,0,1\nq2,a,,0,1\n", pku, 2, "response_1", id="empty-response"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "response": "   "}), helpsteer, 2, "response",
                 id="blank-response"),
    pytest.param("in.jsonl", jsonl(LEGACY, {"prompt": "r ->", "completion": ""}), dialogue, 2, "completion",
                 id="legacy-empty-completion"),
    pytest.param("in.jsonl", jsonl({"messages": [USER, ASSISTANT]}, {"messages": [USER]}), dialogue, 2,
                 "messages", id="chat-without-assistant"),
    pytest.param("in.jsonl", jsonl({"text": "q"}), dialogue, "header", "prompt", id="persona-unknown-format"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "load", "row", "field"), CASES)
def test_bad_input_raises_data_error_naming_file_row_and_field(
    tmp_path: Path, name: str, content: str | bytes, load: Callable[[str], object], row: int | str, field: str
):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load(str(path))
    message = str(err.value)
    assert str(path) in message and f"row {row}," in message and f"field '{field}'" in message
    assert (err.value.row, err.value.field) == (row, field)


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
