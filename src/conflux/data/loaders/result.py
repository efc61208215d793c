"""What a pair loader hands back: the canonical pairs plus an account of every row it did not use."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from conflux.data.pairs import PairTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """Pairs from one source; ``drops`` counts skipped rows or pairs by reason, so none vanish silently."""

    pairs: PairTable
    drops: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0


def log_drops(name: str, drops: Mapping[str, int]) -> None:
    """Log each drop reason with its count (the stats file records them too)."""
    for reason, count in drops.items():
        log.info("%s: dropped %d (%s)", name, count, reason)
