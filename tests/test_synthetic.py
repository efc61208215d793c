"""Synthetic preference sets: determinism, exact structure, and markers that carry each dimension."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from conflux.config import load_config
from conflux.data.jobs import load_pair_dataset
from conflux.data.split import split_pairs
from conflux.data.synthetic import PKU_MARKERS, corpus_texts, synthetic_helpsteer, synthetic_pku
from conflux.data.synthetic_helpsteer import HELPSTEER_DIMS, HELPSTEER_SIGNAL, rendered_levels
from conflux.evaluation.records import table2_setting_counts


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


def _pku_visible(pairs) -> np.ndarray:
    """(n, 2) whether each dimension's markers show in the pair, checked on both responses."""
    cols = pairs.table.to_pydict()
    rows = []
    for a, b in zip(cols["response_a"], cols["response_b"], strict=True):
        rows.append([_has(a, good) or _has(a, bad) or _has(b, good) or _has(b, bad)
                     for good, bad in (("helpful", "unhelpful"), ("harmless", "harmful"))])  # fmt: skip
    return np.array(rows)


def test_pku_visible_markers_follow_each_dimension_winner():
    pairs = synthetic_pku(500, conflict_rate=0.4, seed=1)
    sa, _ = pairs.scores()
    visible = _pku_visible(pairs)
    a_texts = pairs.table.column("response_a").to_pylist()
    b_texts = pairs.table.column("response_b").to_pylist()
    for n, (a, b, (a_helpful, a_harmless)) in enumerate(zip(a_texts, b_texts, sa, strict=True)):
        for dim, a_wins, good, bad in (
            (0, a_helpful, "helpful", "unhelpful"),
            (1, a_harmless, "harmless", "harmful"),
        ):
            winner, loser = (a, b) if a_wins else (b, a)
            if visible[n, dim]:
                assert _has(winner, good) and not _has(winner, bad)
                assert _has(loser, bad) and not _has(loser, good)
            else:  # hidden: no marker of either side in either response
                assert not any(_has(t, side) for t in (a, b) for side in (good, bad))


def test_pku_signal_and_shortcut_statistics_match_the_settings():
    """The measured share of pairs showing each dimension is its signal (binomial 4-sigma band); on agree
    pairs the shortcut's (harmless) markers point at the helpful winner whenever they show, on conflict pairs
    never."""
    n, rate, signal = 4000, 0.15, {"helpful": 0.4, "harmless": 0.85}
    pairs = synthetic_pku(n, conflict_rate=rate, signal=signal, seed=7)
    sa, _ = pairs.scores()
    visible = _pku_visible(pairs)
    conflict = sa[:, 0] != sa[:, 1]
    assert conflict.sum() == round(rate * n)
    for dim, p in enumerate(signal.values()):
        assert abs(visible[:, dim].mean() - p) <= 4 * np.sqrt(p * (1 - p) / n)
    a_texts = pairs.table.column("response_a").to_pylist()
    safe_points_to_a = np.array([_has(a, "harmless") for a in a_texts])
    shown = visible[:, 1]
    helpful_winner_is_a = sa[:, 0] == 1
    agree_hits = (safe_points_to_a == helpful_winner_is_a)[shown & ~conflict]
    conflict_hits = (safe_points_to_a == helpful_winner_is_a)[shown & conflict]
    assert agree_hits.all() and not conflict_hits.any()
    # Overall the shortcut predicts the helpful label on (1 - rate) of the pairs where it shows.
    assert abs((safe_points_to_a == helpful_winner_is_a)[shown].mean() - (1 - rate)) < 0.02


def test_pku_signal_key_errors_name_the_key():
    with pytest.raises(ValueError, match=r"signal\.honest"):
        synthetic_pku(10, signal={"honest": 0.5})
    with pytest.raises(ValueError, match=r"signal\.helpful"):
        synthetic_pku(10, signal={"helpful": 1.5})


def test_helpsteer_scores_one_pair_per_prompt():
    pairs = synthetic_helpsteer(300, seed=2)
    sa, sb = pairs.scores()
    assert pairs.dims == ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    for scores in (sa, sb):
        assert np.array_equal(scores, np.round(scores)) and scores.min() >= 0 and scores.max() <= 4
    assert len(pairs) == 300 == len(set(pairs.table.column("pair_id").to_pylist()))
    assert not ((sa - sb) == 0).all(axis=1).any()  # every pair carries a preference


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.3, 1.0])
def test_helpsteer_has_exact_conflict_count(rate):
    assert round(_conflict_share(synthetic_helpsteer(500, conflict_rate=rate, seed=0)) * 500) == round(
        rate * 500
    )


def test_helpsteer_every_dimension_pair_conflicts_in_about_half_the_conflict_pairs():
    pairs = synthetic_helpsteer(2000, conflict_rate=0.5, seed=3)
    sa, sb = pairs.scores()
    d = sa - sb
    conflict = (d > 0).any(axis=1) & (d < 0).any(axis=1)
    for i, j in combinations(range(5), 2):
        share = (d[conflict, i] * d[conflict, j] < 0).mean()
        assert 0.35 <= share <= 0.6, (i, j, share)


def test_helpsteer_text_shows_visible_dimensions_and_hides_the_rest():
    """A dimension's rendered levels differ exactly as its scores do when it shows, and not at all when
    hidden; the measured visible share is its signal (verbosity, the shortcut, always)."""
    n, signal = 3000, {"helpfulness": 0.5, "coherence": 0.8}
    pairs = synthetic_helpsteer(n, conflict_rate=0.3, signal=signal, seed=4)
    sa, sb = pairs.scores()
    cols = pairs.table.to_pydict()
    la = np.stack([rendered_levels(t) for t in cols["response_a"]])
    lb = np.stack([rendered_levels(t) for t in cols["response_b"]])
    shown_d, d = la - lb, sa - sb
    hidden = (shown_d == 0) & (d != 0)
    assert ((shown_d == d) | hidden).all()
    expected = {**HELPSTEER_SIGNAL, **signal}
    for i, dim in enumerate(HELPSTEER_DIMS):
        nonzero = d[:, i] != 0
        p = expected[dim]
        measured = 1 - hidden[nonzero, i].mean()
        assert abs(measured - p) <= 4 * np.sqrt(max(p * (1 - p), 1e-4) / nonzero.sum()), dim
    assert not hidden[:, 4].any()


def test_corpus_covers_both_vocabularies():
    texts = corpus_texts(seed=0, n=500)
    joined = " ".join(texts)
    assert len(texts) == 500
    for word in ("steps", "safely", "dangerous", "correct", "clearly", "because", "algorithm"):
        assert word in joined
    assert corpus_texts(seed=0, n=500) == texts


# Stated in config/config.yaml and the README: the default run judges every Table 2 setting on at least this
# many held-out pairs (a 95% interval of an accuracy on 20 pairs is about +-0.2: coarse, but never empty).
MIN_TABLE2_PAIRS = 20
MIN_TABLE1_PAIRS = 50


def _default_eval_conflict(project_root, name):
    cfg = load_config(project_root / "config" / "config.yaml")
    pairs = load_pair_dataset(cfg.datasets[name], offline=True).pairs
    return split_pairs(pairs, cfg.split).parts["eval_conflict"]


def test_default_run_judges_every_table2_setting_on_enough_held_out_pairs(project_root):
    sa, sb = _default_eval_conflict(project_root, "synth_hs2").scores()
    counts = table2_setting_counts(sa, sb)
    assert len(counts) == 50
    assert min(counts.values()) >= MIN_TABLE2_PAIRS, sorted(counts.items(), key=lambda kv: kv[1])[:3]


def test_default_table1_has_enough_held_out_conflict_pairs(project_root):
    eval_conflict = _default_eval_conflict(project_root, "synth_pku")
    assert len(eval_conflict) >= MIN_TABLE1_PAIRS
