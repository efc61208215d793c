"""Bundled Japanese persona sets: committed files are reproducible, share prompts and carry their style."""

from __future__ import annotations

import csv
import json

import pytest

from conflux.data.persona_text import (
    PERSONA_FILES,
    PERSONA_MARKERS,
    bundled_persona_path,
    write_persona_files,
)
from conflux.errors import DataError


def _read_csv(path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["prompt", "completion"]
        rows = [tuple(row) for row in reader]
    assert all(len(row) == 2 and row[0] and row[1] for row in rows)
    return rows


def _read_chat(path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"] for m in messages)
        rows.append((messages[1]["content"], messages[2]["content"]))
    return rows


@pytest.fixture(scope="module")
def persona_rows() -> dict[str, list[tuple[str, str]]]:
    return {
        "general": _read_csv(bundled_persona_path("general")),
        "ojousama": _read_csv(bundled_persona_path("ojousama")),
        "student": _read_chat(bundled_persona_path("student")),
    }


def _markers(text: str, persona: str) -> list[str]:
    return [marker for marker in PERSONA_MARKERS[persona] if marker in text]


def test_committed_files_equal_a_fresh_regeneration(tmp_path):
    written = write_persona_files(tmp_path, seed=0)
    for name in PERSONA_FILES:
        fresh = written[name].read_bytes()
        assert fresh == bundled_persona_path(name).read_bytes(), (
            f"rerun python -m conflux.data.persona_text ({name})"
        )
        assert b"\r" not in fresh and fresh.endswith(b"\n")
        fresh.decode("utf-8")


def test_sets_share_at_least_300_distinct_prompts(persona_rows):
    prompts = {name: [p for p, _ in rows] for name, rows in persona_rows.items()}
    assert len(set(prompts["general"])) == len(prompts["general"]) >= 300
    assert set(prompts["general"]) == set(prompts["ojousama"]) == set(prompts["student"])


def test_each_style_carries_only_its_markers(persona_rows):
    for _, reply in persona_rows["ojousama"]:
        assert _markers(reply, "ojousama") and not _markers(reply, "student"), reply
    for _, reply in persona_rows["student"]:
        assert _markers(reply, "student") and not _markers(reply, "ojousama"), reply
    for _, reply in persona_rows["general"]:
        assert not _markers(reply, "ojousama") and not _markers(reply, "student"), reply


def test_persona_replies_differ_from_general(persona_rows):
    general = dict(persona_rows["general"])
    for name in ("ojousama", "student"):
        assert all(reply != general[prompt] for prompt, reply in persona_rows[name])


def test_other_seed_gives_other_replies(tmp_path):
    a = write_persona_files(tmp_path / "a", seed=0)["ojousama"].read_bytes()
    b = write_persona_files(tmp_path / "b", seed=1)["ojousama"].read_bytes()
    assert a != b


def test_unknown_bundled_name_is_a_clear_error():
    with pytest.raises(DataError, match="general, ojousama, student"):
        bundled_persona_path("butler")
