"""SFT and DPO of the persona study through TRL's own trainers (full fine-tuning or LoRA by config).

These are the methods TRL already implements well, so conflux only maps its data and settings onto
``SFTTrainer``/``DPOTrainer`` and writes the outputs the way every other training rule does (atomic output
directory, metrics.jsonl, resume from the job's checkpoint directory).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from conflux.atomic import atomic_path
from conflux.data.pairs import read_pairs, read_sft
from conflux.errors import ConfluxError
from conflux.methods import STAGES, stage
from conflux.modeling.base_model import load_base_model, read_manifest, working_dtype
from conflux.training.config import TrainConfig
from conflux.training.preference_trainer import run_name, trainer_kwargs, world_size
from conflux.training.tracking import Tracking, keep_tracking_files, tracking_callbacks
from conflux.training.workdir import LossLedger, MetricsFile, resume_point, write_run_outputs

log = logging.getLogger(__name__)


@dataclass
class TrlJob:
    method: str  # a TRL stage of the method registry (sft, dpo)
    data: Path  # sft_train.parquet (sft) or pairs_train.parquet (dpo)
    manifest: Path
    out_dir: Path
    work_dir: Path
    cfg: TrainConfig
    seed: int
    keep_checkpoints: bool = False
    tracking: Tracking = field(default_factory=Tracking)


def sft_dataset(path: Path) -> Dataset:
    """Persona SFT rows as TRL's prompt-completion format (the loss is on the completion only)."""
    table = read_sft(path)
    return Dataset.from_dict(
        {"prompt": table.column("prompt").to_pylist(), "completion": table.column("response").to_pylist()}
    )


def dpo_dataset(path: Path) -> Dataset:
    """Persona pairs as TRL's prompt/chosen/rejected (chosen = the persona response by its score)."""
    pairs = read_pairs(path)
    if pairs.k != 1:
        raise ConfluxError(
            f"{path}: DPO of the persona study expects one preference dimension, got {pairs.dims}"
        )
    s_a, s_b = pairs.scores()
    a_wins = (s_a[:, 0] > s_b[:, 0]).tolist()
    if bool(np.any(s_a[:, 0] == s_b[:, 0])):
        raise ConfluxError(f"{path}: a persona pair has equal scores; it carries no preference")
    cols = pairs.table.to_pydict()
    return Dataset.from_dict(
        {
            "prompt": cols["prompt"],
            "chosen": [
                a if w else b for a, b, w in zip(cols["response_a"], cols["response_b"], a_wins, strict=True)
            ],
            "rejected": [
                b if w else a for a, b, w in zip(cols["response_a"], cols["response_b"], a_wins, strict=True)
            ],
        }
    )


def _peft_config(cfg: TrainConfig) -> Any:
    return cfg.lora.spec().to_peft() if cfg.finetune == "lora" else None


def run_trl_job(job: TrlJob) -> dict[str, Any]:
    """Train with TRL and write ``out_dir``: ``model/`` (full weights as safetensors, or a PEFT adapter),
    metrics.jsonl, train_config.json, summary.json."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    started = time.time()
    model, tokenizer = load_base_model(read_manifest(job.manifest), dtype=working_dtype())
    job.work_dir.mkdir(parents=True, exist_ok=True)
    common = trainer_kwargs(job.cfg, job.work_dir, job.seed, world_size())
    kind = stage(job.method).objective if job.method in STAGES else None
    if kind == "sft":
        data, trainer_cls = sft_dataset(job.data), SFTTrainer
        args = SFTConfig(**common, max_length=job.cfg.max_length)
    elif kind == "dpo":
        data, trainer_cls = dpo_dataset(job.data), DPOTrainer
        args = DPOConfig(**common, max_length=job.cfg.max_length, beta=job.cfg.beta)
    else:
        raise ConfluxError(f"unknown TRL method '{job.method}'")
    resume = resume_point(job.work_dir)
    ledger = LossLedger(resume)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=_peft_config(job.cfg),
        callbacks=[
            MetricsFile(job.work_dir / "metrics.jsonl"),
            ledger,
            *tracking_callbacks(job.tracking, job.work_dir, run_name(job.out_dir)),
        ],
    )
    ledger.trainer = trainer
    # TRL drops rows that lose their whole completion to truncation: count them instead of losing them.
    n_used = len(trainer.train_dataset)
    if n_used < len(data):
        log.warning(
            "TRL dropped %d of %d rows (fully truncated at max_length=%d)",
            len(data) - n_used,
            len(data),
            job.cfg.max_length,
        )
    result = trainer.train(resume_from_checkpoint=resume)
    if not trainer.is_world_process_zero():
        return {}
    summary = {
        "method": job.method,
        "seed": job.seed,
        "finetune": job.cfg.finetune,
        "n_rows": len(data),
        "n_rows_dropped_by_truncation": len(data) - n_used,
        "global_steps": trainer.state.global_step,
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": ledger.train_loss(result.training_loss, trainer.state.global_step),
        "seconds": round(time.time() - started, 2),
    }
    with atomic_path(job.out_dir, directory=True) as tmp:
        trainer.save_model(str(tmp / "model"))  # save_pretrained: safetensors weights or the PEFT adapter
        write_run_outputs(tmp, job.work_dir, job.cfg.as_dict(), summary)
        keep_tracking_files(job.work_dir, tmp)
    if not job.keep_checkpoints:
        shutil.rmtree(job.work_dir, ignore_errors=True)
    log.info("%s done: %s", job.method, summary)
    return summary
