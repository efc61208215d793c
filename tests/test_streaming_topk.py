"""The streamed trim selection (conflux.analysis.topk) against the plain definition: sort |τ|, take k."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from conflux.analysis.ties import trim_k
from conflux.analysis.topk import SAMPLE, StreamingTopK, TopK, exact_top_k, kth_largest, sum_squares
from conflux.threads import ordered_map


def reference(values: np.ndarray, k: int) -> TopK:
    top = np.sort(values.astype(np.float64))[::-1][:k]
    return TopK(float(top[-1]), float(top[0]), float(np.sum(top * top)))


def streamed(values: np.ndarray, k: int, chunk: int) -> tuple[TopK, bool]:
    """The selection as the statistics pass runs it; also whether the streamed path was taken."""
    n = values.size
    top = StreamingTopK(values[:: -(-n // SAMPLE)].copy(), n, k)
    mask = np.empty(min(n, chunk), dtype=bool)
    for start in range(0, n, chunk):
        part = values[start : start + chunk]
        top.add(part, mask[: part.size])
    fallback = []
    result = top.result(lambda: fallback.append(True) or values)
    return result, not fallback


def magnitudes(kind: str, n: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":  # distinct values
        values = torch.randn(n, generator=gen)
    elif kind == "bf16":  # a τ of two bf16 checkpoints: few distinct magnitudes, long runs of equal ones
        base = torch.randn(n, generator=gen) * 0.02
        ft = base + torch.randn(n, generator=gen) * 1e-3
        values = ft.bfloat16().float() - base.bfloat16().float()
    elif kind == "integers":  # ties everywhere, a fifth zeros
        values = torch.randint(0, 5, (n,), generator=gen).float()
    elif kind == "sparse":  # 95% zeros, like a τ where few entries changed
        values = torch.randn(n, generator=gen) * (torch.rand(n, generator=gen) < 0.05)
    else:  # every magnitude equal
        values = torch.full((n,), -0.5)
    return values.abs().numpy()


def check(got: TopK, expected: TopK) -> None:
    assert got.threshold == expected.threshold and got.largest == expected.largest
    assert got.sum_squares == pytest.approx(expected.sum_squares, rel=1e-6, abs=1e-30)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 300_001])
@pytest.mark.parametrize("density", [1e-4, 0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("kind", ["normal", "bf16", "integers", "sparse", "constant"])
def test_streamed_top_k_matches_the_definition(n: int, density: float, kind: str) -> None:
    values = magnitudes(kind, n, seed=n)
    k = trim_k(n, density)
    expected = reference(values, k)
    for chunk in (999, 1 << 18):
        check(streamed(values, k, chunk)[0], expected)
    check(exact_top_k(values, k), expected)


@pytest.mark.parametrize("kind", ["normal", "bf16"])
def test_typical_task_vectors_take_the_streamed_path(kind: str) -> None:
    values = magnitudes(kind, 1 << 20, seed=1)
    k = trim_k(values.size, 0.2)
    got, was_streamed = streamed(values, k, 1 << 16)
    assert was_streamed
    check(got, reference(values, k))


@pytest.mark.parametrize("misleading", ["lo_too_high", "hi_too_low"])
def test_a_misleading_sample_falls_back_to_the_exact_selection(misleading: str) -> None:
    # The sample is the entries at a stride of n / SAMPLE; make exactly those unlike all the others.
    n = SAMPLE * 16
    at_sample = np.zeros(n, dtype=bool)
    at_sample[::16] = True
    values = np.arange(n, dtype=np.float32) / n
    if misleading == "lo_too_high":  # the sample sees only large values: fewer than k entries >= lo
        values[at_sample] += 10.0
    else:  # the sample sees only small values: k or more entries above hi
        values[~at_sample] += 10.0
    k = trim_k(n, 0.2)
    got, was_streamed = streamed(values, k, 1 << 14)
    assert not was_streamed
    check(got, reference(values, k))


@pytest.mark.parametrize("guess", [None, -1.0, 0.0, 2.0, 3.5, 1e9])
def test_kth_largest_with_any_guess(guess: float | None) -> None:
    values = magnitudes("integers", 50_000, seed=3)  # 0..4, many of each
    values[:100] += np.linspace(0.01, 0.99, 100, dtype=np.float32)  # and a few distinct ones
    expected = np.sort(values)[::-1]
    for k in (1, 50, 99, 100, 101, 10_000, 49_999, 50_000):
        assert kth_largest(values, k, guess) == expected[k - 1]


def test_sum_squares_is_accurate_on_long_arrays() -> None:
    values = torch.randn(3_000_000, generator=torch.Generator().manual_seed(0)).numpy() * 1e-3 + 1e-4
    exact = float(np.sum(values.astype(np.float64) ** 2))
    assert sum_squares(values) == pytest.approx(exact, rel=1e-6)
    assert sum_squares(np.zeros(0, dtype=np.float32)) == 0.0


def test_ordered_map_keeps_order_and_cancels_after_an_error() -> None:
    def slow_square(i: int) -> int:
        time.sleep(0.002 * (i % 3))  # uneven work: results complete out of order
        return i * i

    assert list(ordered_map(slow_square, range(20))) == [i * i for i in range(20)]

    started = []
    lock = threading.Lock()

    def fail_at_three(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.01)
        if i == 3:
            raise ValueError("three")
        return i

    with pytest.raises(ValueError, match="three"):
        list(ordered_map(fail_at_three, range(200)))
    assert len(started) < 20  # the items after the failure were cancelled, not run


def test_ordered_map_works_in_a_forked_child() -> None:
    # The worker threads persist between calls; a forked child has none of them and must start its own.
    assert list(ordered_map(abs, [-1, -2])) == [1, 2]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, bytes(ordered_map(abs, [-3, -4])))
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and os.read(read, 2) == bytes([3, 4])
