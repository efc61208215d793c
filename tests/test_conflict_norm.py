"""Conflict mask and Conflict-Limited L2 norm on hand-made task vectors."""

from __future__ import annotations

import math

import pytest
import torch

from conflux.analysis.conflict_norm import (
    conflict_limited_l2,
    conflict_mask,
    conflict_mask_vs_sign,
    conflict_share,
    pairwise_conflict,
)
from conflux.errors import ConfluxError

# Signs per entry: (+,-) conflict, (-,+) conflict, (0,+) no, (+,+) no, (+,0) no.
TAU_A = torch.tensor([3.0, -4.0, 0.0, 1.0, 2.0])
TAU_B = torch.tensor([-1.0, 2.0, 5.0, 1.0, 0.0])
MASK = torch.tensor([True, True, False, False, False])


def test_conflict_when_signs_disagree() -> None:
    assert torch.equal(conflict_mask(torch.stack([TAU_A, TAU_B])), MASK)


def test_conflict_needs_one_positive_and_one_negative_among_many() -> None:
    trimmed = torch.tensor(
        [
            [1.0, 1.0, -1.0, 0.0, 2.0],
            [2.0, 0.0, -2.0, 0.0, 0.0],
            [3.0, -1.0, 0.0, 0.0, -0.5],
        ]
    )
    assert torch.equal(conflict_mask(trimmed), torch.tensor([False, True, False, False, True]))


def test_zeros_never_conflict() -> None:
    trimmed = torch.tensor([[0.0, 0.0, 1.0, -2.0], [-1.0, 1.0, 0.0, 0.0]])
    assert not conflict_mask(trimmed).any()


def test_conflict_limited_l2_hand_example() -> None:
    # a: ‖(3, -4)‖ = 5, ‖a‖ = √(9 + 16 + 1 + 4) = √30;  b: ‖(-1, 2)‖ = √5, ‖b‖ = √(1 + 4 + 25 + 1) = √31.
    assert conflict_limited_l2(TAU_A, MASK).item() == pytest.approx(5.0)
    assert conflict_share(TAU_A, MASK).item() == pytest.approx(5.0 / math.sqrt(30.0))
    assert conflict_limited_l2(TAU_B, MASK).item() == pytest.approx(math.sqrt(5.0))
    assert conflict_share(TAU_B, MASK).item() == pytest.approx(math.sqrt(5.0 / 31.0))
    assert conflict_limited_l2(TAU_A, MASK).dim() == 0


def test_identical_vectors_have_no_conflict() -> None:
    tau = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    mask = conflict_mask(torch.stack([tau, tau.clone()]))
    assert conflict_limited_l2(tau, mask).item() == 0.0
    assert conflict_share(tau, mask).item() == 0.0


def test_opposite_vectors_have_share_one() -> None:
    tau = torch.tensor([1.0, -2.0, 0.0, 3.5])
    mask = conflict_mask(torch.stack([tau, -tau]))
    assert torch.equal(mask, torch.tensor([True, True, False, True]))
    assert conflict_share(tau, mask).item() == pytest.approx(1.0)
    assert conflict_share(-tau, mask).item() == pytest.approx(1.0)


def test_share_of_zero_vector_is_zero() -> None:
    zero = torch.zeros(4)
    assert conflict_share(zero, torch.ones(4, dtype=torch.bool)).item() == 0.0


def test_conflict_against_elected_sign() -> None:
    trimmed = torch.tensor([4.0, 0.0, -3.0, -6.0, 0.0, 7.0])
    elected = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    expected = torch.tensor([False, False, False, True, False, True])
    assert torch.equal(conflict_mask_vs_sign(trimmed, elected), expected)


def test_pairwise_conflict_full_density() -> None:
    stats = pairwise_conflict(TAU_A, TAU_B, density=1.0)
    assert stats == pytest.approx(
        {
            "l2_a": math.sqrt(30.0),
            "l2_b": math.sqrt(31.0),
            "cl_l2_a": 5.0,
            "cl_l2_b": math.sqrt(5.0),
            "share_a": 5.0 / math.sqrt(30.0),
            "share_b": math.sqrt(5.0 / 31.0),
            "conflict_fraction": 2 / 5,
        }
    )


def test_pairwise_conflict_trims_both_with_same_density() -> None:
    # density 0.4 of 5 entries keeps k = 2: a -> (3, -4, 0, 0, 0), b -> (0, 2, 5, 0, 0); entry 1 conflicts.
    stats = pairwise_conflict(TAU_A, TAU_B, density=0.4)
    assert stats == pytest.approx(
        {
            "l2_a": 5.0,
            "l2_b": math.sqrt(29.0),
            "cl_l2_a": 4.0,
            "cl_l2_b": 2.0,
            "share_a": 0.8,
            "share_b": 2.0 / math.sqrt(29.0),
            "conflict_fraction": 1 / 5,
        }
    )


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ConfluxError, match="shapes differ"):
        pairwise_conflict(TAU_A, torch.zeros(4), density=1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gives_fp32_result(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(64, 32, generator=gen), torch.randn(64, 32, generator=gen)
    mask = conflict_mask(torch.stack([a, b]))
    low = a.to(dtype)
    cl_low, share_low = conflict_limited_l2(low, mask), conflict_share(low, mask)
    assert cl_low.dtype == torch.float32 and share_low.dtype == torch.float32
    # Exactly the fp32 norm of the cast values, and the fp32 norm of the originals up to the cast error.
    torch.testing.assert_close(cl_low, conflict_limited_l2(low.float(), mask), rtol=1e-6, atol=0)
    torch.testing.assert_close(cl_low, conflict_limited_l2(a, mask), rtol=1e-2, atol=0)
    torch.testing.assert_close(share_low, conflict_share(a, mask), rtol=1e-2, atol=0)


def test_half_precision_accumulates_without_overflow() -> None:
    # Σ x² = 10_000 · 300² = 9e8 is far above fp16's max (65504); the norm itself (30_000) fits.
    tau = torch.full((10_000,), 300.0, dtype=torch.float16)
    mask = torch.ones(10_000, dtype=torch.bool)
    assert conflict_limited_l2(tau, mask).item() == pytest.approx(30_000.0)
    assert conflict_share(tau, mask).item() == pytest.approx(1.0)
