"""TIES and task arithmetic on hand-made task vectors, and agreement with PEFT's ``ties`` at equal weights."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils as peft_merge

from conflux.analysis.ties import elect_sign, trim_top_k
from conflux.errors import ConfluxError
from reference_impl import disjoint_merge, task_arithmetic, ties

# Three task vectors of 6 entries. At density 0.5 each keeps k = 3 entries of largest |τ|:
#   τ1: |4|,|-1|,|2|,|-6|,|0.5|,|7|   -> keep 7, 6, 4   (indices 5, 3, 0)
#   τ2: |2.5|,|5|,|1|,|3|,|-0.5|,|0.1| -> keep 5, 3, 2.5 (indices 1, 3, 0)
#   τ3: |1|,|-6|,|-3|,|2|,|-0.2|,|-5| -> keep 6, 5, 3   (indices 1, 5, 2)
TAUS = torch.tensor(
    [
        [4.0, -1.0, 2.0, -6.0, 0.5, 7.0],
        [2.5, 5.0, 1.0, 3.0, -0.5, 0.1],
        [1.0, -6.0, -3.0, 2.0, -0.2, -5.0],
    ]
)
TRIMMED = torch.tensor(
    [
        [4.0, 0.0, 0.0, -6.0, 0.0, 7.0],
        [2.5, 5.0, 0.0, 3.0, 0.0, 0.0],
        [0.0, -6.0, -3.0, 0.0, 0.0, -5.0],
    ]
)
WEIGHTS = torch.tensor([1.0, 2.0, 1.0])
# Weighted trimmed rows: [4,0,0,-6,0,7], [5,10,0,6,0,0], [0,-6,-3,0,0,-5]
# Column sums:           [9, 4, -3, 0, 0, 2]   (column 3 cancels exactly, column 4 is all zero -> +1)
ELECTED = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0])
# Unweighted column sums: [6.5, -1, -3, -3, 0, 2]
ELECTED_UNWEIGHTED = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])
# Disjoint merge, Σ_agree w τ / Σ_agree w per column:
#   0: (1·4 + 2·2.5) / (1 + 2) = 3       1: 2·5 / 2 = 5 (τ3's -6 disagrees)   2: 1·(-3) / 1 = -3
#   3: 2·3 / 2 = 3 (τ1's -6 disagrees)   4: nothing agrees -> 0               5: 7 / 1 = 7 (τ3's -5 disagrees)
MERGED = torch.tensor([3.0, 5.0, -3.0, 3.0, 0.0, 7.0])


def test_trim_keeps_top_k_by_magnitude() -> None:
    trimmed = torch.stack([trim_top_k(tau, 0.5) for tau in TAUS])
    torch.testing.assert_close(trimmed, TRIMMED, rtol=0, atol=0)


def test_trim_density_one_keeps_everything() -> None:
    torch.testing.assert_close(trim_top_k(TAUS[0], 1.0), TAUS[0], rtol=0, atol=0)


def test_trim_keeps_at_least_one_entry() -> None:
    # int(0.01 · 6) = 0, so k = max(1, 0) = 1: only the largest magnitude survives.
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 7.0])
    torch.testing.assert_close(trim_top_k(TAUS[0], 0.01), expected, rtol=0, atol=0)


def test_trim_breaks_magnitude_ties_by_lower_index() -> None:
    # |-3| == |3| at the cut (k = 1): the stable sort keeps the lower flat index.
    torch.testing.assert_close(
        trim_top_k(torch.tensor([1.0, -3.0, 3.0, 2.0]), 0.25), torch.tensor([0.0, -3.0, 0.0, 0.0])
    )


def test_trim_keeps_shape_and_dtype() -> None:
    tensor = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    trimmed = trim_top_k(tensor, 0.25)
    assert trimmed.shape == (4, 5) and trimmed.dtype == torch.bfloat16
    assert int((trimmed != 0).sum()) == 5


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_trim_rejects_bad_density(density: float) -> None:
    with pytest.raises(ConfluxError, match="density"):
        trim_top_k(TAUS[0], density)


def test_elect_sign_weighted_and_zero_sum_is_plus_one() -> None:
    torch.testing.assert_close(elect_sign(TRIMMED, WEIGHTS), ELECTED, rtol=0, atol=0)


def test_elect_sign_unweighted() -> None:
    torch.testing.assert_close(elect_sign(TRIMMED), ELECTED_UNWEIGHTED, rtol=0, atol=0)


def test_disjoint_merge_divides_by_agreeing_weights() -> None:
    torch.testing.assert_close(disjoint_merge(TRIMMED, WEIGHTS, ELECTED), MERGED)


def test_ties_end_to_end_with_lambda() -> None:
    torch.testing.assert_close(ties(TAUS, WEIGHTS, density=0.5, lam=0.5), 0.5 * MERGED)
    torch.testing.assert_close(ties(list(TAUS), [1.0, 2.0, 1.0], density=0.5), MERGED)


def test_task_arithmetic_weighted_sum_times_lambda() -> None:
    # τ1 + 2·τ2 + τ3 = [10, 3, 1, 2, -0.7, 2.2]; times λ = 0.5:
    expected = torch.tensor([5.0, 1.5, 0.5, 1.0, -0.35, 1.1])
    torch.testing.assert_close(task_arithmetic(TAUS, WEIGHTS, lam=0.5), expected)


def test_weights_must_match_task_count() -> None:
    with pytest.raises(ConfluxError, match="weights"):
        ties(TAUS, torch.tensor([1.0, 1.0]), density=0.5)


def test_ties_returns_input_dtype() -> None:
    merged = ties(TAUS.to(torch.bfloat16), WEIGHTS, density=0.5, lam=0.5)
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged.float(), 0.5 * MERGED)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_matches_peft_at_equal_weights(seed: int) -> None:
    """PEFT's ties = w · conflux's ties (λ = 1) when every weight is w > 0.

    With equal weights w, both elect sgn(Σ_i τ̂_i) (a positive common factor does not change a sign), both
    keep the same entries (continuous values: no magnitude ties), and for the set A of agreeing entries
        PEFT    = Σ_A w τ̂_i / |A|             (divides by the count)
        conflux = Σ_A w τ̂_i / Σ_A w = Σ_A τ̂_i / |A|  (divides by the agreeing weights),
    so PEFT = w · conflux, i.e. conflux with λ = w reproduces PEFT; both are 0 where nothing agrees.
    """
    gen = torch.Generator().manual_seed(seed)
    taus = torch.randn(3, 16, 8, generator=gen)
    w, density = 0.7, 0.3
    weights = torch.full((3,), w)
    expected = peft_merge.ties(list(taus), weights, density, majority_sign_method="total")
    torch.testing.assert_close(w * ties(taus, weights, density), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ties(taus, weights, density, lam=w), expected, rtol=0, atol=1e-6)


def test_ties_unit_weights_full_density_is_mean_of_agreeing_entries() -> None:
    gen = torch.Generator().manual_seed(3)
    taus = torch.randn(4, 30, generator=gen)
    taus[torch.rand(4, 30, generator=gen) < 0.3] = 0.0  # zeros must neither vote nor count
    merged = ties(taus, torch.ones(4), density=1.0)
    for j in range(taus.shape[1]):
        column = taus[:, j].tolist()
        sign = 1.0 if sum(column) >= 0 else -1.0
        agreeing = [x for x in column if x * sign > 0]
        expected = sum(agreeing) / len(agreeing) if agreeing else 0.0
        assert merged[j].item() == pytest.approx(expected, abs=1e-6)
