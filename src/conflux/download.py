"""``snakemake download``: every hub model and dataset of a config into the hub cache, for offline nodes.

Run it where there is network (a cluster's login node) with the same config as the run; then the compute
nodes run offline (``offline: true``, or ``HF_HUB_OFFLINE=1``) and find every hub id of the config in the
hub cache (:func:`conflux.hub.hub_snapshot`), so the config keeps its hub ids and no path is edited. Models
come as config, tokenizer and safetensors only (never pickled ``*.bin`` weights), each checked; datasets as
their repository files. ``results/download/sources.json`` records what was fetched: per hub id the
revision asked for, the commit it resolved to and the local directory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conflux.atomic import write_json
from conflux.data.sources import is_hub_id
from conflux.errors import ConfluxError
from conflux.hub import hub_offline, hub_snapshot
from conflux.modeling.base_model import HUB_PATTERNS, weight_files

log = logging.getLogger(__name__)


def _entry(repo_id: str, revision: str | None, path: Path) -> dict[str, Any]:
    # snapshots are stored as .../snapshots/<commit>/: the directory's name is the resolved commit
    return {"hub_id": repo_id, "revision": revision, "commit": path.name, "local_path": str(path)}


def download_job(
    models: Mapping[str, Mapping[str, Any]], datasets: Mapping[str, Mapping[str, Any]], out: str | Path
) -> dict[str, Any]:
    """The ``download`` rule: fetch every hub model and hub dataset of the config; write the record."""
    if hub_offline(False):
        raise ConfluxError(
            "snakemake download needs the network: unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE for it (the "
            "config's offline: true is fine, the download step ignores it)"
        )
    from huggingface_hub import constants

    record: dict[str, Any] = {"hub_cache": str(constants.HF_HUB_CACHE), "models": {}, "datasets": {}}
    for name, spec in models.items():
        if spec.get("source") != "hub":
            continue
        path = hub_snapshot(
            spec["path"], revision=spec.get("revision"), allow_patterns=HUB_PATTERNS, offline=False
        )
        weight_files(path)  # safetensors present and complete, as the manifest will check them offline
        record["models"][name] = _entry(spec["path"], spec.get("revision"), path)
        log.info("model %s: %s -> %s", name, spec["path"], path)
    for name, spec in datasets.items():
        for field in ("path", "general"):
            source = spec.get(field)
            if not source or not is_hub_id(source):
                continue
            path = hub_snapshot(source, repo_type="dataset", revision=spec.get("revision"), offline=False)
            record["datasets"][name if field == "path" else f"{name}.general"] = _entry(
                source, spec.get("revision"), path
            )
            log.info("dataset %s: %s -> %s", name, source, path)
    write_json(out, record)
    log.info(
        "%d models and %d datasets in %s", len(record["models"]), len(record["datasets"]), record["hub_cache"]
    )
    return record
