"""Whether the Hugging Face hub may be reached: the one offline check of conflux.

Compute nodes of most clusters have no network, so a hub id must fail at once with a message that says how
to use local files, never hang in a download. The check runs where the workflow plans (rules/common.smk) and
again in the jobs that would touch the hub, since a job's environment may differ from the planner's.
"""

from __future__ import annotations

import os

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def hub_offline(config_offline: bool) -> bool:
    """Offline when the config says so or when one of :data:`OFFLINE_ENV` is set truthy."""
    return config_offline or any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)
