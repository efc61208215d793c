"""The persona DPO's reference log-probs, computed once per (model, dataset) by TRL's own reference pass.

TRL's DPOTrainer can take log π_ref(chosen|x) and log π_ref(rejected|x) from its dataset
(``precompute_ref_log_probs``); it then keeps no reference model while it trains: for full fine-tuning of an
8B model that is a 16 GB bf16 copy less on every GPU (or per rank under FSDP), and one forward pass less per
step. The numbers must be exactly those TRL would compute (its tokenization, truncation and sums), so the
cache is made by TRL itself: the ``reference_logps_dpo`` rule builds a DPOTrainer over the base model with
the DPO job's settings and lets it run its precompute pass once; every seed's DPO job reads the file back
by ``pair_id``, and its trainer takes the columns instead of computing them again
(:class:`CachedReferenceMixin`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conflux.atomic import atomic_path
from conflux.errors import DataError
from conflux.training.config import TrainConfig

log = logging.getLogger(__name__)

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
_META_KEY = b"conflux_trl_reference"
SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field(REF_COLUMNS[0], pa.float64(), nullable=False),
        pa.field(REF_COLUMNS[1], pa.float64(), nullable=False),
    ]
)


def reference_settings(cfg: TrainConfig, model_name: str, init: str | Path | None = None) -> dict[str, Any]:
    """What the cached numbers depend on besides the data: a DPO job with other values must not use them
    (``init``: the trained run that is the reference of SFT→DPO; None: the base model)."""
    from conflux.training.parallel import load_dtype, resolve_precision

    return {
        "model": model_name,
        "init": str(init) if init is not None else None,
        "max_length": cfg.max_length,
        "dtype": load_dtype(cfg),
        "precision": resolve_precision(cfg.precision),
    }


class CachedReferenceMixin:
    """A DPOTrainer whose ``precompute_ref_log_probs`` pass reads the columns already in the dataset (put
    there from the cache) instead of running the reference model. Overrides TRL's private
    ``_precompute_ref_logps`` (trl 1.16, pinned): the one place its precompute fills those columns."""

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        missing = [c for c in REF_COLUMNS if c not in dataset.column_names]
        if missing:
            message = f"the {name} dataset has no cached reference column {missing}"
            raise DataError(message, file="-", row="all", field=missing[0])
        return dataset


def with_cached_reference(dataset: Any, path: str | Path, settings: dict[str, Any]) -> Any:
    """``dataset`` (with a ``pair_id`` column) plus the cached reference columns, matched by pair_id."""
    path = Path(path)
    table = pq.read_table(path)
    stored = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    for key, value in settings.items():
        if stored.get(key) != value:
            raise DataError(
                f"the cache was computed with {key}={stored.get(key)!r}, this DPO job uses {value!r}; "
                "rerun the reference_logps_dpo rule",
                file=path,
                row="header",
                field=key,
            )
    index = {pid: i for i, pid in enumerate(table.column("pair_id").to_pylist())}
    ids = dataset["pair_id"]
    missing = [pid for pid in ids if pid not in index]
    if missing:
        raise DataError(
            f"{len(missing)} DPO rows have no cached reference log-probs (first: {missing[:3]})",
            file=path,
            row="all",
            field="pair_id",
        )
    rows = np.fromiter((index[pid] for pid in ids), dtype=np.int64, count=len(ids))
    for column in REF_COLUMNS:
        dataset = dataset.add_column(column, table.column(column).to_numpy()[rows].tolist())
    return dataset


def trl_reference_job(
    data: str | Path,
    manifest_path: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    *,
    batch_size: int,
    init: str | Path | None = None,
) -> None:
    """Rules ``reference_logps_dpo`` (the base model) and ``reference_logps_sft_dpo`` (``init``, the SFT run
    that SFT→DPO starts from): TRL's reference pass over the reference model, for every DPO row."""
    from conflux.modeling.base_model import read_manifest
    from conflux.training.trl_jobs import dpo_dataset, load_start, make_trainer

    manifest = read_manifest(manifest_path)
    model, tokenizer = load_start(manifest, Path(init) if init is not None else None, cfg)
    dataset = dpo_dataset(Path(data), tokenizer)
    with tempfile.TemporaryDirectory(prefix="conflux-trl-reference-") as work:
        trainer = make_trainer("dpo", model, tokenizer, dataset, cfg, Path(work), seed=0, precompute=True,
                               precompute_batch_size=batch_size)  # fmt: skip
        prepared = trainer.train_dataset
    if len(prepared) < len(dataset):
        log.warning("TRL drops %d of %d rows (fully truncated)", len(dataset) - len(prepared), len(dataset))
    table = pa.table(
        {
            "pair_id": prepared["pair_id"],
            REF_COLUMNS[0]: np.asarray(prepared[REF_COLUMNS[0]], dtype=np.float64),
            REF_COLUMNS[1]: np.asarray(prepared[REF_COLUMNS[1]], dtype=np.float64),
        },
        schema=SCHEMA,
    )
    meta = json.dumps(reference_settings(cfg, manifest["name"], init)).encode()
    table = table.replace_schema_metadata({_META_KEY: meta})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    log.info("TRL reference log-probs of %d DPO rows -> %s", len(table), out)
