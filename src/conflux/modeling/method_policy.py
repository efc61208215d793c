"""A trained preference method as one policy π(·; w): its runs' adapters loaded onto the base model.

A curriculum stage or Panacea is one training output with adapters `shared` and `dim0..dim{k-1}`; DPO-Soup
is k outputs (``dpo_soup/dim<i>``) each holding only its own ``dim<i>`` adapter, which together make one
policy without `shared`. Interpolating the soup at w is then :meth:`PreferencePolicy.at`, exactly the
w-weighted sum of the k LoRA deltas. β, which scales the implicit reward, is read from the runs' configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from conflux.errors import ConfluxError
from conflux.modeling.policy import SHARED, PreferencePolicy

_ADAPTER_NAME = re.compile(rf"^({SHARED}|dim\d+)$")


def adapter_dirs(run_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """``adapters/<name>/`` of every run directory, ordered shared, dim0, dim1, ...

    A curriculum stage or Panacea is one run with `shared` and every dim adapter; DPO-Soup is k runs with one
    dim adapter each, which together make one policy without `shared`.
    """
    found: dict[str, Path] = {}
    for run in run_dirs:
        root = Path(run) / "adapters"
        if not root.is_dir():
            raise ConfluxError(f"{run}: no adapters/ directory; is this a preference training output?")
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if not _ADAPTER_NAME.match(sub.name):
                raise ConfluxError(f"{sub}: adapter directories are named '{SHARED}' or dim<i>")
            if sub.name in found:
                raise ConfluxError(f"adapter '{sub.name}' is in both {found[sub.name]} and {sub}")
            found[sub.name] = sub
    if not found:
        raise ConfluxError(f"no adapters in {[str(r) for r in run_dirs]}")
    dims = sorted((n for n in found if n != SHARED), key=lambda n: int(n[3:]))
    return {name: found[name] for name in ([SHARED] if SHARED in found else []) + dims}


def load_method_policy(base_model: torch.nn.Module, run_dirs: Sequence[str | Path]) -> PreferencePolicy:
    """The trained policy π(·; w) of a method: its runs' adapters on ``base_model`` (modified in place)."""
    return PreferencePolicy.load(base_model, adapter_dirs(run_dirs))


def run_beta(run_dirs: Sequence[str | Path]) -> float:
    """β of the runs (``train_config.json``), which scales the implicit reward; all runs must agree."""
    if not run_dirs:
        raise ConfluxError("no run directories given")
    betas = {}
    for run in run_dirs:
        path = Path(run) / "train_config.json"
        try:
            betas[str(run)] = float(json.loads(path.read_text(encoding="utf-8"))["beta"])
        except (OSError, ValueError, KeyError) as err:
            raise ConfluxError(f"{path}: cannot read beta ({err})") from None
    if len(set(betas.values())) != 1:
        raise ConfluxError(f"the runs of one method were trained with different beta: {betas}")
    return next(iter(betas.values()))
