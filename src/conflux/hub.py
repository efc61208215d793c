"""Hugging Face hub access: whether the hub may be reached, and a repository's snapshot from it or its cache.

Compute nodes of most clusters have no network, so a hub id must fail at once with a message that says what
to do, never hang in a download. ``snakemake download`` (:mod:`conflux.download`), run where there is
network, puts every hub model and dataset of a config into the hub cache (``HF_HOME`` or ``HF_HUB_CACHE``,
which the nodes must share); offline, :func:`hub_snapshot` then finds the same snapshot there, so a config
keeps its hub ids and no path is edited. The offline check runs where the workflow plans
(rules/common.smk) and again in the jobs, since a job's environment may differ from the planner's.
"""

from __future__ import annotations

import os
from pathlib import Path

from conflux.errors import ConfluxError

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")


def hub_offline(config_offline: bool) -> bool:
    """Offline when the config says so or when one of :data:`OFFLINE_ENV` is set truthy."""
    return config_offline or any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)


class HubUnavailable(ConfluxError):
    """A hub repository that is neither reachable (offline) nor in the local hub cache."""


def hub_snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    offline: bool,
) -> Path:
    """The local directory of a hub repository at ``revision``: downloaded, or found in the hub cache.

    Offline only the cache is looked at (``local_files_only``), and a snapshot that is missing or incomplete
    (a file of ``allow_patterns`` absent) raises :class:`HubUnavailable`.
    """
    from huggingface_hub import snapshot_download

    local = hub_offline(offline)
    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=allow_patterns,
            local_files_only=local,
        )
    except Exception as exc:  # the hub's errors (not found, no network, incomplete cache) differ by version
        what = f"{repo_type} '{repo_id}' (revision {revision or 'main'})"
        if not local:
            raise HubUnavailable(f"{what} could not be downloaded: {exc}") from None
        raise HubUnavailable(
            f"{what} cannot be fetched offline (offline: true in the config, or {'/'.join(OFFLINE_ENV)} "
            "set) and is not in the local hub cache. Run `snakemake download` with this config where there "
            "is network (a login node): it fills the hub cache, which must be the same directory here "
            "(HF_HOME or HF_HUB_CACHE)."
        ) from None
    return Path(path)
