"""Experiment tracking: TensorBoard event files or a Weights & Biases run beside each training run.

Every training job logs TRL's metric names (``loss``, ``rewards/accuracies/dim0``, ...) to its
``metrics.jsonl``; ``tracking:`` in the config sends the same records to TensorBoard or W&B as well:

- ``tensorboard``: event files in the job's checkpoint directory while it runs (``tensorboard --logdir
  results/checkpoints`` watches every running job) and in ``<run>/tensorboard/`` once it is done.
- ``wandb``: a W&B run named after the job, written to ``<run>/wandb/``; offline (``wandb sync`` uploads it
  later) unless a project is configured (``tracking.wandb_project`` or ``WANDB_PROJECT``). W&B is an
  optional extra (``pip install 'conflux[wandb]'``): it is large, and most runs use TensorBoard.

Tracking is not a training setting: it is read by the jobs from the config, not passed as a rule parameter
and not part of the resume fingerprint, so turning it on or off reruns and refuses nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.errors import ConfluxError

BACKENDS = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


@dataclass(frozen=True)
class Tracking:
    """Where one training job reports its metrics besides ``metrics.jsonl``."""

    backend: str = "none"
    wandb_project: str | None = None


def tracking_for(section: Mapping[str, Any] | None, rule: str) -> Tracking:
    """The tracking of one training rule from the config's ``tracking:`` section (``methods`` overrides)."""
    section = section or {}
    backend = section.get("methods", {}).get(rule, section.get("backend", "none"))
    if backend not in BACKENDS:
        raise ConfluxError(f"tracking backend must be one of {BACKENDS}, got {backend!r}")
    return Tracking(backend=backend, wandb_project=section.get("wandb_project"))


def tracking_callbacks(tracking: Tracking, work_dir: Path, run_name: str) -> list[Any]:
    """The Trainer callbacks that report to the chosen backend (none for ``none``)."""
    if tracking.backend == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        callback.logging_dir = str(work_dir / TENSORBOARD_DIR)  # else a dated folder under output_dir/runs
        return [callback]
    if tracking.backend == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise ConfluxError(
                "tracking: wandb needs the wandb package, an optional extra of conflux: "
                "`.venv/bin/pip install 'conflux[wandb]'` (or choose tensorboard)"
            )
        from transformers.integrations import WandbCallback

        project = tracking.wandb_project or os.environ.get("WANDB_PROJECT")
        os.environ["WANDB_DIR"] = str(work_dir)
        os.environ["WANDB_NAME"] = run_name
        if project:
            os.environ["WANDB_PROJECT"] = project
        else:
            os.environ["WANDB_MODE"] = "offline"  # nothing leaves the machine until the user syncs it
        return [WandbCallback()]
    return []


def keep_tracking_files(work_dir: Path, out_dir: Path) -> None:
    """Copy the run's event files (or offline W&B run) from its checkpoint directory into its output."""
    for name in (TENSORBOARD_DIR, WANDB_DIR):
        if (work_dir / name).is_dir():
            shutil.copytree(work_dir / name, out_dir / name)
