"""Rows of every input format and small writers of them, shared by the bad-input tests."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

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
