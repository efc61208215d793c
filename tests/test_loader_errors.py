"""Loader errors beyond the bad-input table (tests/test_bad_inputs.py): the hints their messages give."""

from __future__ import annotations

import pytest

from conflux.data.jobs import load_persona_job
from conflux.data.loaders import load_canonical, load_helpsteer2
from conflux.data.specs import DatasetSpec, PersonaSplitConfig
from conflux.errors import DataError
from input_rows import PAIR, jsonl


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
    spec = DatasetSpec(name="oj", kind="persona", persona="ojousama", path=str(persona), general=str(general))
    outputs = {part: tmp_path / f"{part}.parquet" for part in ("sft_train", "sft_eval")}
    with pytest.raises(
        DataError, match=r"no persona prompt .*\(1 persona prompts, 1 general rows, 0 in common\)"
    ):
        load_persona_job(spec, PersonaSplitConfig(), outputs, tmp_path / "stats.json", offline=True)
    assert not any(
        path.exists() for path in [*outputs.values(), tmp_path / "stats.json"]
    )  # no partial output


def test_canonical_without_dims_is_an_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(jsonl(PAIR))
    with pytest.raises(DataError) as err:
        load_canonical(str(path), dims=[])
    assert err.value.field == "dims"
