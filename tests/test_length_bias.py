"""The length-bias analysis (the curriculum paper's Appendix C) finds a length confound where there is one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conflux.data.split import dim_pair_conflict
from conflux.data.synthetic import HELPSTEER_DIMS, synthetic_helpsteer
from conflux.evaluation.length_bias import length_bias, spearman
from conflux.evaluation.records import records_frame, unit_weight
from conflux.evaluation.report_files import MEAN


def test_spearman_is_scipys_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    y[:50] = x[:50]  # some dependence
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(10), y[:10])) and np.isnan(spearman(x[:2], y[:2]))


@pytest.fixture(scope="module")
def pairs():
    return synthetic_helpsteer(400, conflict_rate=0.5, seed=1)


def records_of(pairs, margin_of, method: str) -> pd.DataFrame:
    """Records at every unit weight, with margins from ``margin_of(len_a, len_b, s_a, s_b)``."""
    cols = pairs.table.to_pydict()
    len_a = np.array([len(t.split()) for t in cols["response_a"]], dtype=float)
    len_b = np.array([len(t.split()) for t in cols["response_b"]], dtype=float)
    s_a, s_b = pairs.scores()
    margins = margin_of(len_a, len_b, s_a, s_b)
    frames = [
        records_frame(
            method=method,
            seed=seed,
            pair_ids=cols["pair_id"],
            w=unit_weight(5, i),
            scores_a=s_a,
            scores_b=s_b,
            margins=margins,
            extra={"len_a": len_a, "len_b": len_b},
        )
        for seed in (0, 1)
        for i in range(5)
    ]
    return pd.concat(frames, ignore_index=True)


def test_a_length_following_reward_shows_the_synthetic_sets_length_confound(pairs):
    """Complexity and verbosity are built from length (technical terms, filler sentences), and on conflict
    pairs length often opposes quality (each dimension picks its side independently there). A reward that
    only counts length: margin ≡ length difference (ρ = 1), right wherever the longer response is preferred,
    wrong wherever the shorter one is."""
    length = records_of(pairs, lambda la, lb, sa, sb: 0.1 * (la - lb), "length_reward")
    table = length_bias(length, HELPSTEER_DIMS).set_index(["method", "seed", "w"])
    for dim in HELPSTEER_DIMS:
        row = table.loc[("length_reward", MEAN, dim)]
        assert row["spearman"] == pytest.approx(1.0) and row["accuracy_longer"] == 1.0
        assert row["n_shorter"] == 0 or row["accuracy_shorter"] == 0.0
    verbosity = table.loc[("length_reward", MEAN, "verbosity")]
    assert verbosity["n_longer"] > 0.9 * verbosity["n"]  # the preferred verbosity is the longer response
    helpful = table.loc[("length_reward", MEAN, "helpfulness")]
    assert helpful["n_shorter"] > 0.2 * helpful["n"]  # conflict pairs: the better answer is often the shorter
    assert table.loc[("length_reward", "0", "verbosity"), "n"] * 2 == verbosity["n"]  # counts over 2 seeds


def test_a_quality_reward_is_not_length_biased_on_quality_dimensions(pairs):
    """A reward that follows helpfulness: its accuracy on helpfulness does not depend on which response is
    longer, and its margin does not rise with length on the conflict pairs (where length opposes quality)."""
    quality = records_of(pairs, lambda la, lb, sa, sb: sa[:, 0] - sb[:, 0], "quality_reward")
    table = length_bias(quality, HELPSTEER_DIMS).set_index(["method", "seed", "w"])
    helpful = table.loc[("quality_reward", MEAN, "helpfulness")]
    assert helpful["accuracy_longer"] == helpful["accuracy_shorter"] == 1.0
    s_a, s_b = pairs.scores()
    conflict = dim_pair_conflict(s_a - s_b, 0, 4)  # helpfulness and verbosity disagree
    subset = quality[quality["pair_id"].isin(np.asarray(pairs.table.column("pair_id"))[conflict])]
    on_conflict = length_bias(subset, HELPSTEER_DIMS).set_index(["method", "seed", "w"])
    assert on_conflict.loc[("quality_reward", MEAN, "helpfulness"), "spearman"] < -0.5
