"""The preference weights π(w) is exported at, checked while the workflow plans (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence

from conflux.errors import ConfigError


def weight_tag(w: Sequence[float]) -> str:
    """The directory name of one w: ``w0.25_0.75``."""
    return "w" + "_".join(f"{float(x):g}" for x in w)


def check_weights(weights: Sequence[Sequence[float]], k: int, key: str) -> list[list[float]]:
    """Each w has k non-negative entries, not all zero, and the vectors are distinct; else a ConfigError
    naming ``key[i]``."""
    out = []
    for i, w in enumerate(weights):
        values = [float(x) for x in w]
        if len(values) != k or min(values) < 0 or sum(values) == 0:
            raise ConfigError(f"{key}[{i}]", f"{k} non-negative weights, not all 0", f"got {list(w)}")
        out.append(values)
    if len({weight_tag(w) for w in out}) != len(out):
        raise ConfigError(key, "distinct weight vectors", f"got {[list(w) for w in weights]}")
    return out
