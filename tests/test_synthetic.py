"""Synthetic preference sets: determinism, exact structure, and markers that carry each dimension."""

from __future__ import annotations

from collections import Counter
from math import comb

import numpy as np
import pytest

from conflux.data.synthetic import PKU_MARKERS, corpus_texts, synthetic_helpsteer, synthetic_pku


def _conflict_share(pairs) -> float:
    sa, sb = pairs.scores()
    d = sa - sb
    return float(((d > 0).any(axis=1) & (d < 0).any(axis=1)).mean())


def _has(text: str, side: str) -> bool:
    return any(marker in text.lower() for marker in PKU_MARKERS[side])


@pytest.mark.parametrize(
    "make", [lambda s: synthetic_pku(200, seed=s), lambda s: synthetic_helpsteer(100, seed=s)]
)
def test_same_seed_same_table_other_seed_other_table(make):
    assert make(0).table.equals(make(0).table)
    assert not make(0).table.equals(make(1).table)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.55, 1.0])
def test_pku_has_exact_conflict_count_and_opposite_scores(rate):
    pairs = synthetic_pku(301, conflict_rate=rate, seed=4)
    sa, sb = pairs.scores()
    assert pairs.dims == ("helpful", "harmless") and len(pairs) == 301
    assert set(np.unique(sa)) <= {0.0, 1.0} and np.array_equal(sb, 1.0 - sa)
    assert round(_conflict_share(pairs) * 301) == round(rate * 301)


def test_pku_markers_follow_each_dimension_winner():
    pairs = synthetic_pku(500, conflict_rate=0.4, seed=1)
    sa, _ = pairs.scores()
    a_texts = pairs.table.column("response_a").to_pylist()
    b_texts = pairs.table.column("response_b").to_pylist()
    for a, b, (a_helpful, a_harmless) in zip(a_texts, b_texts, sa, strict=True):
        for a_wins, good, bad in ((a_helpful, "helpful", "unhelpful"), (a_harmless, "harmless", "harmful")):
            winner, loser = (a, b) if a_wins else (b, a)
            assert _has(winner, good) and not _has(winner, bad)
            assert _has(loser, bad) and not _has(loser, good)


def test_helpsteer_scores_and_pair_counts():
    pairs = synthetic_helpsteer(300, seed=2)
    sa, sb = pairs.scores()
    assert pairs.dims == ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    for scores in (sa, sb):
        assert np.array_equal(scores, np.round(scores)) and scores.min() >= 0 and scores.max() <= 4
    ids = pairs.table.column("pair_id").to_pylist()
    prompt_pairs = Counter(pair_id.rsplit("-", 2)[0] for pair_id in ids)
    # 2 or 3 responses per prompt: C(2, 2) = 1 or C(3, 2) = 3 pairs, both kinds present.
    assert len(prompt_pairs) == 300 and set(prompt_pairs.values()) == {comb(2, 2), comb(3, 2)}
    assert len(pairs) == sum(prompt_pairs.values())


@pytest.mark.parametrize("rate", [0.2, 0.3, 0.5])
def test_helpsteer_measured_conflict_rate_matches_target(rate):
    assert abs(_conflict_share(synthetic_helpsteer(2000, conflict_rate=rate, seed=0)) - rate) <= 0.08


def test_helpsteer_quality_dims_agree_and_verbosity_follows_length():
    pairs = synthetic_helpsteer(1000, conflict_rate=0.4, seed=3)
    sa, sb = pairs.scores()
    d = sa - sb
    for i, j in ((0, 1), (0, 2), (1, 2)):
        both = (d[:, i] != 0) & (d[:, j] != 0)
        assert (np.sign(d[both, i]) == np.sign(d[both, j])).mean() > 0.8
    words_a = np.array([len(t.split()) for t in pairs.table.column("response_a").to_pylist()])
    words_b = np.array([len(t.split()) for t in pairs.table.column("response_b").to_pylist()])
    lengths = np.concatenate([words_a, words_b])
    assert np.corrcoef(np.concatenate([sa[:, 4], sb[:, 4]]), lengths)[0, 1] > 0.7
    assert np.corrcoef(d[:, 4], words_a - words_b)[0, 1] > 0.7


def test_helpsteer_conflict_is_length_against_quality():
    pairs = synthetic_helpsteer(500, conflict_rate=0.5, seed=5)
    sa, sb = pairs.scores()
    d = sa - sb
    conflict = (d > 0).any(axis=1) & (d < 0).any(axis=1)
    quality, length = d[:, :3].sum(axis=1), d[:, 3:].sum(axis=1)
    assert (np.sign(quality[conflict]) * np.sign(length[conflict]) <= 0).mean() > 0.95
    assert (quality[~conflict] * length[~conflict] >= 0).all()


def test_corpus_covers_both_vocabularies():
    texts = corpus_texts(seed=0, n=500)
    joined = " ".join(texts)
    assert len(texts) == 500
    for word in ("steps", "safely", "dangerous", "correct", "clearly", "because", "algorithm"):
        assert word in joined
    assert corpus_texts(seed=0, n=500) == texts
