"""Progress of the loops that can take minutes: a tqdm bar on a terminal, a log line every 30 s elsewhere.

A SLURM job's stderr is a file, where a tqdm bar becomes one long line of carriage returns that says
little and grows with every update. When stderr is not a terminal, :func:`with_progress` logs
``<what>: <done>/<total> (<share>), <elapsed> elapsed, about <eta> left`` through :mod:`logging` instead, at
most every ``every`` seconds, which the rule scripts send to the job's log (``logs/<rule>/...``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")
LOG_EVERY = 30.0  # seconds between progress lines in a log


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def with_progress(
    items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it", every: float = LOG_EVERY
) -> Iterator[T]:
    """Yield ``items``, showing how far the loop is: a bar on a terminal, periodic log lines otherwise."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        yield from tqdm(items, desc=desc, total=total, unit=unit)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every and (total is None or done < total):
            last = now
            elapsed = now - start
            if total:
                eta = elapsed / done * (total - done)
                log.info("%s: %d/%d %s (%.0f%%), %s elapsed, about %s left", desc, done, total, unit,
                         100 * done / total, _clock(elapsed), _clock(eta))  # fmt: skip
            else:
                log.info("%s: %d %s, %s elapsed", desc, done, unit, _clock(elapsed))
    log.info("%s: %d %s done in %s", desc, done, unit, _clock(time.monotonic() - start))
