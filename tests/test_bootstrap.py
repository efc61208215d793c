"""Percentile bootstrap over eval items: seeded, paired through one counts draw, honest about its width."""

from __future__ import annotations

import numpy as np
import pytest

from conflux.errors import ConfluxError
from conflux.evaluation.bootstrap import PairResampler, bootstrap_mean, bootstrap_ratio, resample_counts


def test_counts_are_a_function_of_the_seed_and_each_resample_has_n_items():
    a, b, c = resample_counts(50, 200, seed=3), resample_counts(50, 200, seed=3), resample_counts(50, 200, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (200, 50) and (a.sum(axis=1) == 50).all()


def test_interval_contains_the_point_estimate_and_shrinks_with_n():
    widths = []
    for n in (50, 200, 800):
        values = (np.arange(n) % 10 < 7).astype(float)  # accuracy exactly 0.7 at every n
        est = bootstrap_mean(values, resample_counts(n, 2000, seed=0), level=0.95)
        assert est.point == pytest.approx(0.7) and est.n == n
        assert est.low <= est.point <= est.high
        widths.append(est.high - est.low)
    assert widths[0] > widths[1] > widths[2]
    # The normal approximation: width ≈ 2·1.96·sqrt(p(1-p)/n) (n = 800: 0.0635).
    assert widths[2] == pytest.approx(2 * 1.96 * np.sqrt(0.21 / 800), rel=0.1)


def test_higher_level_gives_a_wider_interval():
    values = (np.arange(300) % 3 == 0).astype(float)
    counts = resample_counts(300, 1000, seed=1)
    narrow, wide = bootstrap_mean(values, counts, 0.5), bootstrap_mean(values, counts, 0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_mean_over_seeds_is_the_mean_of_the_seed_means():
    values = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=float)  # 4 items × 2 seeds: 0.75 and 0.25
    est = bootstrap_mean(values, resample_counts(4, 100, seed=0), 0.9)
    assert est.point == 0.5 and est.n == 4


def test_zero_resamples_give_no_interval():
    est = bootstrap_mean(np.ones(5), resample_counts(5, 0, seed=0), 0.95)
    assert est.point == 1.0 and np.isnan(est.low) and np.isnan(est.high)


def test_ratio_is_a_ratio_of_sums_and_takes_a_transform():
    nll, tokens = np.array([2.0, 6.0]), np.array([1.0, 3.0])
    est = bootstrap_ratio(nll, tokens, resample_counts(2, 50, seed=0), 0.95, transform=np.exp)
    assert est.point == pytest.approx(np.exp(8.0 / 4.0))
    assert est.low == pytest.approx(np.exp(2.0)) and est.high == pytest.approx(np.exp(2.0))  # both items: 2.0


def test_resampler_slices_one_draw_by_id_whatever_the_order():
    r = PairResampler(["c", "a", "b"], resamples=20, level=0.95, seed=0)
    full = r.counts_for(["a", "b", "c"])
    assert np.array_equal(r.counts_for(["c", "a"]), full[:, [2, 0]])
    assert np.array_equal(PairResampler(["b", "c", "a"], 20, 0.95, 0).counts, r.counts)
    with pytest.raises(ConfluxError, match="not in the bootstrap universe"):
        r.counts_for(["z"])


@pytest.mark.parametrize(("resamples", "level"), [(-1, 0.95), (10, 1.0), (10, 0.0)])
def test_bad_bootstrap_arguments_are_refused(resamples, level):
    with pytest.raises(ConfluxError):
        PairResampler(["a"], resamples, level, 0)
