"""Real-data loaders: PKU-SafeRLHF, HelpSteer2, persona dialogue and canonical pairs, from files in each real
format written into tmp_path (the real files cannot be fetched here)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conflux.data.loaders import (
    load_canonical,
    load_helpsteer2,
    load_pku_saferlhf,
    read_dialogue,
    read_records,
)
from conflux.data.loaders.persona import pair_id, persona_pairs, read_general, read_persona
from conflux.data.pairs import SFT_SCHEMA
from conflux.errors import DataError

PKU_ROWS = [
    # better == safer: the two dims agree
    {"prompt": "How do I fix a tap?", "response_0": "Turn off the water first.", "response_1": "Just hit it.",
     "better_response_id": 0, "safer_response_id": 0},
    # better != safer: a conflict pair
    {"prompt": "How do I pick a lock?", "response_0": "I cannot help with that.",
     "response_1": "Use a tension wrench and a pick.", "better_response_id": 1, "safer_response_id": 0},
    {"prompt": "Is bleach safe to mix?", "response_0": "Mix it with ammonia.", "response_1": "Never mix it.",
     "better_response_id": 1, "safer_response_id": 1},
    {"prompt": "Say hi", "response_0": "Hi there!", "response_1": "Hi there!",
     "better_response_id": 0, "safer_response_id": 1},
]  # fmt: skip
PKU_EXTRAS = {
    "prompt_source": "Alpaca7B",
    "is_response_0_safe": True,
    "is_response_1_safe": False,
    "response_0_severity_level": 0,
    "response_1_severity_level": 2,
    "response_0_harm_category": {"Violence": False, "Privacy Violation": True},
    "response_1_harm_category": {"Violence": True, "Privacy Violation": False},
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format named by the suffix: .jsonl, .json (array), .csv or .parquet."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def pku_file(tmp_path: Path, suffix: str, rows: list[dict] = PKU_ROWS) -> Path:
    extras = PKU_EXTRAS if suffix != ".csv" else {k: json.dumps(v) for k, v in PKU_EXTRAS.items()}
    return write_rows(tmp_path / f"pku{suffix}", [{**row, **extras} for row in rows])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv", ".json"])
def test_pku_scores_follow_better_and_safer_ids(tmp_path, suffix):
    result = load_pku_saferlhf(str(pku_file(tmp_path, suffix)), name="pku")
    sa, sb = result.pairs.scores()
    assert result.pairs.dims == ("helpful", "harmless")
    assert sa.tolist() == [[1, 1], [0, 1], [0, 0]]
    assert sb.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert result.pairs.table.column("pair_id").to_pylist() == ["pku-0000001", "pku-0000002", "pku-0000003"]
    assert result.pairs.table.column("response_a").to_pylist()[1] == "I cannot help with that."
    assert result.rows_read == 4


def test_pku_better_differs_from_safer_makes_scores_disagree(tmp_path):
    sa, sb = load_pku_saferlhf(str(pku_file(tmp_path, ".jsonl"))).pairs.scores()
    d = sa - sb
    assert d[1].tolist() == [-1, 1]  # the conflict row: b is more helpful, a is safer
    assert all(np.sign(d[i, 0]) == np.sign(d[i, 1]) for i in (0, 2))


def test_pku_identical_responses_dropped_and_counted(tmp_path):
    result = load_pku_saferlhf(str(pku_file(tmp_path, ".csv")))
    assert result.drops == {"identical_responses": 1}
    assert "Say hi" not in result.pairs.table.column("prompt").to_pylist()


def test_pku_accepts_bool_and_text_ids(tmp_path):
    rows = [{**PKU_ROWS[0], "better_response_id": True, "safer_response_id": "0"}]
    sa, _ = load_pku_saferlhf(str(write_rows(tmp_path / "pku.jsonl", rows))).pairs.scores()
    assert sa.tolist() == [[0, 1]]


def test_pku_jsonl_rows_are_line_numbers_despite_blank_lines(tmp_path):
    path = tmp_path / "pku.jsonl"
    lines = [json.dumps(row) for row in PKU_ROWS[:2]]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n")
    ids = load_pku_saferlhf(str(path), name="p").pairs.table.column("pair_id").to_pylist()
    assert ids == ["p-0000001", "p-0000003"]


def test_read_records_ignores_extra_columns_and_names_the_file(tmp_path):
    path = str(pku_file(tmp_path, ".parquet"))
    dataset, name = read_records(path, columns=["prompt", "response_0"])
    assert name == path and len(dataset) == 4 and "is_response_0_safe" in dataset.column_names


HS_MULTI_TURN = "What is 2+2?\n<extra_id_1>Assistant\n4\n<extra_id_1>User\nAnd times 3?"
HS_ROWS = [
    ("Name a colour.", "Blue.", (3, 4, 4, 0, 1)),
    ("Name a colour.", "Red is a colour that many people like.", (4, 4, 4, 1, 2)),
    ("Write a haiku.", "An old silent pond", (2, 3, 4, 1, 1)),
    ("Write a haiku.", "Frog jumps in", (1, 1, 2, 1, 0)),
    ("Write a haiku.", "Splash! Silence again.", (4, 4, 3, 2, 1)),
    ("Lonely prompt?", "Only answer.", (2, 2, 2, 2, 2)),
    (HS_MULTI_TURN, "12.", (4, 4, 4, 0, 0)),
    (HS_MULTI_TURN, "Probably 7.", (0, 0, 3, 0, 0)),
]
HS_DIMS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def helpsteer_file(tmp_path: Path, suffix: str = ".jsonl", rows=HS_ROWS) -> str:
    records = [{"prompt": p, "response": r, **dict(zip(HS_DIMS, s, strict=True))} for p, r, s in rows]
    return str(write_rows(tmp_path / f"helpsteer{suffix}", records))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_helpsteer_pairs_keep_raw_scores(tmp_path, suffix):
    result = load_helpsteer2(helpsteer_file(tmp_path, suffix), name="hs")
    sa, sb = result.pairs.scores()
    assert result.pairs.dims == HS_DIMS and sa.dtype == np.float32
    assert sa[0].tolist() == [3, 4, 4, 0, 1] and sb[0].tolist() == [4, 4, 4, 1, 2]
    assert result.pairs.table.column("pair_id").to_pylist()[0] == "hs-r1-r2"
    assert result.rows_read == 8


def test_helpsteer_group_of_three_gives_three_pairs(tmp_path):
    result = load_helpsteer2(helpsteer_file(tmp_path), name="hs")
    table = result.pairs.table
    haiku = [i for i, p in enumerate(table.column("prompt").to_pylist()) if p == "Write a haiku."]
    assert [table.column("pair_id")[i].as_py() for i in haiku] == ["hs-r3-r4", "hs-r3-r5", "hs-r4-r5"]
    sa, sb = result.pairs.scores()
    assert sa[haiku].tolist() == [[2, 3, 4, 1, 1], [2, 3, 4, 1, 1], [1, 1, 2, 1, 0]]
    assert sb[haiku].tolist() == [[1, 1, 2, 1, 0], [4, 4, 3, 2, 1], [4, 4, 3, 2, 1]]
    assert len(result.pairs) == 1 + 3 + 1


def test_helpsteer_single_response_prompt_counted_as_drop(tmp_path):
    result = load_helpsteer2(helpsteer_file(tmp_path))
    assert result.drops == {"single_response_prompt": 1}
    assert "Lonely prompt?" not in result.pairs.table.column("prompt").to_pylist()


def test_helpsteer_multi_turn_prompt_kept_whole(tmp_path):
    table = load_helpsteer2(helpsteer_file(tmp_path, ".csv")).pairs.table
    assert table.column("prompt").to_pylist()[-1] == HS_MULTI_TURN
    assert table.column("response_b").to_pylist()[-1] == "Probably 7."


def test_helpsteer_groups_rows_of_one_prompt_that_are_not_adjacent(tmp_path):
    rows = [HS_ROWS[0], HS_ROWS[2], HS_ROWS[1], HS_ROWS[3]]
    ids = load_helpsteer2(helpsteer_file(tmp_path, rows=rows), name="h").pairs.table.column("pair_id")
    assert ids.to_pylist() == ["h-r1-r3", "h-r2-r4"]


def test_helpsteer_dims_subset_selected_in_given_order(tmp_path):
    result = load_helpsteer2(helpsteer_file(tmp_path), dims=["verbosity", "helpfulness"])
    sa, _ = result.pairs.scores()
    assert result.pairs.dims == ("verbosity", "helpfulness")
    assert sa[0].tolist() == [1, 3]


OJOUSAMA = [
    ("ごきげんよう", "ごきげんよう。今日もよいお天気ですわね。"),
    ("好きな食べ物は？", "わたくし、紅茶とスコーンが大好きですの。"),
    ("今日は何をするの？", "お庭でお茶会をいたしますわ。"),
    ("おすすめの本は？", "詩集などいかがかしら。"),
    ("疲れたよ", "あら、少しお休みになってはいかが？"),
]
GENERAL = {
    "ごきげんよう": "こんにちは。今日もいい天気ですね。",
    "好きな食べ物は？": "紅茶とスコーンが好きです。",
    "今日は何をするの？": "庭でお茶会をします。",
    "疲れたよ": "少し休んだらどうですか。",
}


def persona_file(path: Path, turns: list[tuple[str, str]]) -> str:
    """Write dialogue turns in the format the file name asks for: .csv, legacy .jsonl or chat .jsonl."""
    if path.suffix == ".csv":
        return str(write_rows(path, [{"prompt": p, "completion": c} for p, c in turns]))
    if path.name.endswith("chat.jsonl"):
        system = {"role": "system", "content": "あなたはお嬢様です。"}
        rows = [
            {"messages": [system, {"role": "user", "content": p}, {"role": "assistant", "content": c}]}
            for p, c in turns
        ]
        return str(write_rows(path, rows))
    return str(write_rows(path, [{"prompt": f"{p} ->", "completion": f" {c}\n"} for p, c in turns]))


def test_persona_three_formats_give_identical_dialogue(tmp_path):
    dialogues = [
        read_dialogue(persona_file(tmp_path / name, OJOUSAMA))
        for name in ("ojousama.csv", "ojousama_legacy.jsonl", "ojousama_chat.jsonl")
    ]
    assert dialogues[0] == OJOUSAMA
    assert dialogues[1] == dialogues[0] and dialogues[2] == dialogues[0]


def test_persona_chat_takes_first_assistant_after_first_user(tmp_path):
    messages = [
        {"role": "assistant", "content": "(greeting before the user speaks)"},
        {"role": "user", "content": "こんにちは"},
        {"role": "assistant", "content": "ごきげんよう。"},
        {"role": "user", "content": "元気？"},
        {"role": "assistant", "content": "ええ、とても。"},
    ]
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": messages}])
    assert read_dialogue(str(path)) == [("こんにちは", "ごきげんよう。")]


def compose_persona(persona: str, general: str, *, name: str) -> SimpleNamespace:
    """The persona pieces as the jobs compose them (load_persona_job, persona_pairs_job): the persona file's
    SFT rows, the general file's reply per persona prompt, the pairs; with each file's counts."""
    sft, persona_info = read_persona(persona, persona="ojousama")
    replies, general_info = read_general(general, sft.column("prompt").to_pylist())
    pairs, drops = persona_pairs(sft, replies, name=name, source=persona)
    files = {"persona": persona_info, "general": general_info}
    matched, rows_read = general_info["matched"], persona_info["rows_read"]
    return SimpleNamespace(
        sft=sft, pairs=pairs, drops=drops, files=files, general_matched=matched, rows_read=rows_read
    )


@pytest.mark.parametrize("persona_name", ["ojousama.csv", "ojousama_legacy.jsonl", "ojousama_chat.jsonl"])
def test_persona_sft_rows_and_pairs_chosen_is_persona_reply(tmp_path, persona_name):
    persona = persona_file(tmp_path / persona_name, OJOUSAMA)
    general = persona_file(tmp_path / "general.csv", list(GENERAL.items()))
    data = compose_persona(persona, general, name="oj")
    assert data.sft.schema.equals(SFT_SCHEMA)
    prompt, reply = OJOUSAMA[1]
    assert data.sft.to_pylist()[1] == {"prompt": prompt, "response": reply, "persona": "ojousama"}
    assert data.sft.num_rows == 5
    table = data.pairs.table
    assert data.pairs.dims == ("persona",) and len(data.pairs) == 4
    assert table.column("response_a").to_pylist()[0] == OJOUSAMA[0][1]
    assert table.column("response_b").to_pylist()[0] == GENERAL["ごきげんよう"]
    # one id per prompt, whatever the file's row order or the split the pair lands in
    assert table.column("pair_id").to_pylist() == [pair_id("oj", p) for p, _ in OJOUSAMA if p in GENERAL]
    assert len(set(table.column("pair_id").to_pylist())) == 4
    sa, sb = data.pairs.scores()
    assert sa.ravel().tolist() == [1.0] * 4 and sb.ravel().tolist() == [0.0] * 4
    assert data.drops == {"no_general_response": 1} and data.general_matched == 4
    assert data.rows_read == 5 and data.files["general"]["rows_read"] == 4  # each file's own count


def test_persona_duplicate_prompt_keeps_first_and_prompts_match_stripped(tmp_path):
    turns = [*OJOUSAMA[:2], ("ごきげんよう", "二度目のごあいさつですわ。")]
    persona = persona_file(tmp_path / "oj.csv", turns)
    general = persona_file(tmp_path / "general.jsonl", [("  ごきげんよう \n", "こんにちは。")])
    data = compose_persona(persona, general, name="ojousama")
    assert data.drops == {"no_general_response": 1}  # one persona prompt has no general reply
    assert data.files["persona"]["dropped"] == {"duplicate_prompt": 1}  # in the file it is in, once
    assert data.files["general"]["dropped"] == {}
    assert data.pairs.table.column("response_a").to_pylist() == [OJOUSAMA[0][1]]
    assert data.sft.column("prompt").to_pylist() == ["ごきげんよう", "好きな食べ物は？"]


CANONICAL = [
    {"pair_id": "x1", "prompt": "p1", "response_a": "a", "response_b": "b", "scores_a": [1.0, 0.0],
     "scores_b": [0.0, 1.0]},
    {"pair_id": "x2", "prompt": "p2", "response_a": "c", "response_b": "d", "scores_a": [3, 2],
     "scores_b": [1, 4]},
]  # fmt: skip


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_canonical_pairs_load_in_every_format(tmp_path, suffix):
    rows = CANONICAL
    if suffix == ".csv":  # a CSV cell holds the score list as JSON text
        rows = [{**r, **{f: json.dumps(r[f]) for f in ("scores_a", "scores_b")}} for r in rows]
    result = load_canonical(str(write_rows(tmp_path / f"mine{suffix}", rows)), dims=["a", "b"])
    sa, sb = result.pairs.scores()
    assert result.pairs.dims == ("a", "b") and result.rows_read == 2
    assert sa.tolist() == [[1, 0], [3, 2]] and sb.tolist() == [[0, 1], [1, 4]]
    assert result.pairs.table.column("pair_id").to_pylist() == ["x1", "x2"]


def test_hub_id_offline_fails_at_once_mentioning_local_files():
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        load_pku_saferlhf("PKU-Alignment/PKU-SafeRLHF")
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert "PKU-Alignment/PKU-SafeRLHF" in message and "offline" in message
    assert "path:" in message and ".jsonl" in message


def test_hub_id_fails_when_env_is_offline_even_if_asked_online(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub must not be contacted")

    monkeypatch.setattr("datasets.load_dataset", no_network)
    with pytest.raises(DataError, match="offline"):
        load_helpsteer2("nvidia/HelpSteer2", offline=False)


def test_missing_local_file_is_reported_as_missing_not_as_hub_id(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pku_saferlhf(str(tmp_path / "nope.jsonl"))
