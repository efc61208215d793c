"""Run a function over many items in a few threads, results in order: for streams of per-tensor work.

Reading a tensor waits on ``pread`` and the arithmetic on it runs in torch/numpy kernels, both with the GIL
released, so two threads working on different tensors keep two cores busy (and one thread's reads overlap
with the other's computation) where a single thread alternates between them.

The worker threads live as long as the process (one pool per worker count): a thread's first allocations
create a malloc arena, and a pool per call would pay that (time and resident memory) every call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _forget_pools() -> None:
    """In a forked child: the parent's worker threads do not exist there (and the lock may be held)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int = 2) -> Iterator[R]:
    """``fn(item)`` for each item, computed in ``workers`` threads and yielded in the items' order.

    An exception in ``fn`` is raised when its result is reached; then, or when the caller stops early,
    work not yet started is cancelled (at most ``workers`` items still run to completion). ``fn`` must not
    call :func:`ordered_map` itself (it would wait on the pool it runs in).
    """
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="conflux")
    futures = [pool.submit(fn, item) for item in items]
    try:
        for future in futures:
            yield future.result()
    finally:
        for future in futures:
            future.cancel()
