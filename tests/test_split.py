"""The agree/conflict split on hand-made pairs whose answers are worked out by hand."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conflux.data.pairs import make_pair_table, read_pairs, write_pairs
from conflux.data.split import (
    SPLIT_NAMES,
    SplitConfig,
    classify,
    dim_pair_conflict,
    dimension_labels,
    split_pairs,
    split_pairs_job,
)
from conflux.errors import DataError


def pairs_from(diffs, prompts=None, dims=None):
    """Pairs whose score difference is exactly ``diffs`` (scores_b = 0, scores_a = d + 2 to stay positive)."""
    d = np.asarray(diffs, dtype=np.float32)
    n, k = d.shape
    prompts = prompts or [f"prompt {i}" for i in range(n)]
    return make_pair_table(
        pair_id=[f"p{i}" for i in range(n)],
        prompt=prompts,
        response_a=[f"a{i}" for i in range(n)],
        response_b=[f"b{i}" for i in range(n)],
        scores_a=d + 2,
        scores_b=np.full((n, k), 2, dtype=np.float32),
        dims=dims or [f"dim{i}" for i in range(k)],
        source="hand-made",
    )


def test_classify_k2_agree_conflict_and_zero():
    d = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1], [0, 0], [1, 0], [0, -1]], dtype=float)
    agree, conflict, zero = classify(d)
    assert agree.tolist() == [True, True, False, False, False, True, True]
    assert conflict.tolist() == [False, False, True, True, False, False, False]
    assert zero.tolist() == [False, False, False, False, True, False, False]


def test_classify_k5_partial_conflict_and_ties():
    d = np.array(
        [
            [2, 1, 0, 0, 3],  # agree: all nonzero positive, three dims tied
            [-1, 0, -2, 0, 0],  # agree: all nonzero negative
            [1, 1, 1, 1, -1],  # conflict: one dimension disagrees
            [0, 0, 0, 0, 0],  # no preference
            [0, 0, 1, -3, 0],  # conflict between dims 2 and 3 only
        ],
        dtype=float,
    )
    agree, conflict, zero = classify(d)
    assert agree.tolist() == [True, True, False, False, False]
    assert conflict.tolist() == [False, False, True, False, True]
    assert zero.tolist() == [False, False, False, True, False]
    assert dim_pair_conflict(d, 2, 3).tolist() == [False, False, False, False, True]
    assert dim_pair_conflict(d, 0, 4).tolist() == [False, False, True, False, False]
    assert dimension_labels(d)[0].tolist() == [1, 1, 0, 0, 1]


def test_every_pair_lands_in_exactly_one_part_and_zero_is_counted():
    diffs = [[1, 1]] * 10 + [[1, -1]] * 6 + [[-1, 1]] * 4 + [[0, 0]] * 3
    result = split_pairs(pairs_from(diffs), SplitConfig(eval_fraction=0.2, seed=1))
    counts = result.stats["counts"]
    assert result.stats["dropped"] == {"zero_difference": 3}
    assert counts["conflict"] + counts["eval_conflict"] == 10
    assert counts["agree"] + counts["eval_agree"] == 10
    assert counts["eval_conflict"] == 2  # 20% of 10 conflict pairs, one pair per prompt here
    ids = [
        i for name in ("agree", "conflict", "eval_conflict", "eval_agree") for i in _ids(result.parts[name])
    ]
    assert len(ids) == len(set(ids)) == 20
    assert result.stats["conflict_rate"] == pytest.approx(10 / 20)


def test_agree_sub_matches_conflict_size_and_is_a_subset_of_agree():
    diffs = [[1, 1]] * 30 + [[1, -1]] * 10
    result = split_pairs(pairs_from(diffs), SplitConfig(eval_fraction=0.2, seed=0))
    n_conflict = len(result.parts["conflict"])
    assert len(result.parts["agree_sub"]) == n_conflict == 8
    assert set(_ids(result.parts["agree_sub"])) <= set(_ids(result.parts["agree"]))
    assert not result.stats["agree_sub_short"]


def test_agree_sub_keeps_all_agree_with_a_warning_when_agree_is_smaller(caplog):
    diffs = [[1, 1]] * 3 + [[1, -1]] * 20
    with caplog.at_level(logging.WARNING):
        result = split_pairs(pairs_from(diffs), SplitConfig(eval_fraction=0.1, seed=0))
    assert _ids(result.parts["agree_sub"]) == _ids(result.parts["agree"])
    assert result.stats["agree_sub_short"]
    assert "agree_sub keeps all agree pairs" in caplog.text


def test_held_out_prompts_never_appear_in_training():
    prompts = [f"q{i // 3}" for i in range(60)]  # three pairs per prompt, like HelpSteer2 with 3 responses
    rng = np.random.default_rng(0)
    diffs = rng.integers(-2, 3, size=(60, 5))
    result = split_pairs(pairs_from(diffs, prompts), SplitConfig(eval_fraction=0.3, seed=3))
    train = {
        p for name in ("agree", "conflict") for p in result.parts[name].table.column("prompt").to_pylist()
    }
    held = {
        p
        for name in ("eval_conflict", "eval_agree")
        for p in result.parts[name].table.column("prompt").to_pylist()
    }
    assert held and train and not train & held


def test_per_dimension_pair_stats_for_k5():
    diffs = [[1, -1, 0, 0, 0], [1, 0, -1, 0, 0], [0, 0, 0, 2, -1], [1, 1, 1, 1, 1], [0, 0, 0, 2, -1]]
    dims = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    result = split_pairs(pairs_from(diffs, dims=dims), SplitConfig(eval_fraction=0.3, seed=0))
    by_pair = {tuple(p["dims"]): p for p in result.stats["dim_pairs"]}
    assert len(by_pair) == 10
    assert by_pair[("helpfulness", "correctness")]["conflict"] == 1
    assert by_pair[("helpfulness", "coherence")]["conflict"] == 1
    assert by_pair[("complexity", "verbosity")]["conflict"] == 2
    assert by_pair[("complexity", "verbosity")]["conflict_rate"] == pytest.approx(2 / 5)
    assert by_pair[("correctness", "coherence")]["conflict"] == 0
    for stat in by_pair.values():
        assert stat["train_conflict"] + stat["eval_conflict"] == stat["conflict"]


def test_ties_per_dimension_are_counted_in_training_parts():
    diffs = [[1, 0], [0, 1], [1, -1], [1, -1], [-1, 1]]
    result = split_pairs(pairs_from(diffs), SplitConfig(eval_fraction=0.01, seed=0))
    train_ids = set(_ids(result.parts["agree"])) | set(_ids(result.parts["conflict"]))
    expected = [sum(1 for i, d in enumerate(diffs) if f"p{i}" in train_ids and d[j] == 0) for j in range(2)]
    assert list(result.stats["train_ties_per_dim"].values()) == expected


def test_same_seed_same_split_other_seed_other_split():
    rng = np.random.default_rng(5)
    diffs = rng.choice([-1, 1], size=(400, 2))
    pairs = pairs_from(diffs)
    first = split_pairs(pairs, SplitConfig(seed=7))
    again = split_pairs(pairs, SplitConfig(seed=7))
    other = split_pairs(pairs, SplitConfig(seed=8))
    for name in SPLIT_NAMES:
        assert _ids(first.parts[name]) == _ids(again.parts[name])
    assert _ids(first.parts["eval_conflict"]) != _ids(other.parts["eval_conflict"])


def test_no_conflict_pairs_is_an_error_naming_the_file(tmp_path):
    src = tmp_path / "pairs.parquet"
    write_pairs(src, pairs_from([[1, 1], [0, 1], [-1, -1]]))
    outputs = {name: tmp_path / f"{name}.parquet" for name in SPLIT_NAMES}
    with pytest.raises(DataError) as err:
        split_pairs_job(src, outputs, tmp_path / "stats.json", SplitConfig())
    assert "pairs.parquet" in str(err.value) and "row all" in str(err.value) and "scores_a" in str(err.value)
    assert "no conflict pairs" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet"]


def test_no_conflict_is_allowed_when_not_required():
    result = split_pairs(pairs_from([[1, 1], [1, 0]]), SplitConfig(require_conflict=False))
    assert len(result.parts["conflict"]) == 0 and len(result.parts["agree_sub"]) == 0


def test_a_single_conflict_pair_cannot_feed_training_and_evaluation():
    with pytest.raises(DataError, match="none is left for training"):
        split_pairs(pairs_from([[1, 1], [1, -1]]), SplitConfig())


def test_split_file_writes_every_part_with_metadata(tmp_path):
    src = tmp_path / "pairs.parquet"
    write_pairs(src, pairs_from([[1, 1]] * 8 + [[1, -1]] * 8, dims=["helpful", "harmless"]))
    outputs = {name: tmp_path / "split" / f"{name}.parquet" for name in SPLIT_NAMES}
    split_pairs_job(src, outputs, tmp_path / "split" / "stats.json", SplitConfig(seed=2))
    stats = json.loads((tmp_path / "split" / "stats.json").read_text())
    for name in SPLIT_NAMES:
        part = read_pairs(outputs[name], allow_empty=True)
        assert part.dims == ("helpful", "harmless") and len(part) == stats["counts"][name]
    assert not [p for p in (tmp_path / "split").iterdir() if p.name.startswith(".")]  # no temp files left


def _ids(part):
    return part.table.column("pair_id").to_pylist()
