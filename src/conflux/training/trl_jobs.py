"""SFT and DPO of the persona study through TRL's own trainers (full fine-tuning or LoRA by config).

These are the methods TRL already implements well, so conflux only maps its data and settings onto
``SFTTrainer``/``DPOTrainer`` and writes the outputs the way every other training rule does (atomic output
directory, metrics.jsonl, resume from the job's checkpoint directory).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from conflux.atomic import atomic_path, write_json
from conflux.data.pairs import read_pairs, read_sft
from conflux.errors import ConfluxError
from conflux.methods import STAGES, stage
from conflux.modeling.base_model import load_base_model, read_manifest
from conflux.modeling.tokenize import prompt_ids, response_ids
from conflux.training.config import TrainConfig
from conflux.training.parallel import (
    CpuFsdpMixin,
    cast_state_dict,
    distributed_mode,
    gathered_state_dict,
    load_dtype,
    peak_gpu_bytes,
    resolve_precision,
    save_dtype,
)
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
    reference: Path | None = None  # dpo: TRL's cached reference log-probs (reference_logps_dpo)
    init: Path | None = None  # sft_dpo: the SFT run it starts from (the registry stage's init)


# Prompt tokens. TRL tokenizes text rows itself: plain prompts as ``tokenizer(prompt + completion)``, cut
# where that stops agreeing with ``tokenizer(prompt)`` (byte-level BPE merges tokens across the boundary),
# conversational ones through the chat template. Either can differ from the tokens the persona evaluation and
# the generated general replies put to the model. So the rows reach TRL tokenized by the one function every
# job uses, conflux.modeling.tokenize.prompt_ids (the base model's prompt format), and response_ids (+ eos).


def sft_dataset(path: Path, tokenizer: Any) -> Dataset:
    """Persona SFT rows, tokenized: ``input_ids`` = prompt + reply + eos, ``labels`` -100 on the prompt (the
    loss is on the reply only); TRL takes such a dataset as it is and only cuts it to ``max_length``."""
    table = read_sft(path)
    input_ids, labels = [], []
    rows = zip(table.column("prompt").to_pylist(), table.column("response").to_pylist(), strict=True)
    for prompt, reply in rows:
        p, r = prompt_ids(tokenizer, prompt), response_ids(tokenizer, reply)
        input_ids.append(p + r)
        labels.append([-100] * len(p) + r)
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def dpo_dataset(path: Path, tokenizer: Any) -> Dataset:
    """Persona pairs as TRL's tokenized ``prompt_ids/chosen_ids/rejected_ids`` (chosen = the persona response
    by its score; responses end in eos), with ``pair_id`` to match the cached reference."""
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
    sides = zip(cols["response_a"], cols["response_b"], a_wins, strict=True)
    chosen, rejected = zip(*((a, b) if wins else (b, a) for a, b, wins in sides), strict=True)
    return Dataset.from_dict(
        {
            "pair_id": cols["pair_id"],  # matches the cached reference; the Trainer drops it from batches
            "prompt_ids": [prompt_ids(tokenizer, prompt) for prompt in cols["prompt"]],
            "chosen_ids": [response_ids(tokenizer, reply) for reply in chosen],
            "rejected_ids": [response_ids(tokenizer, reply) for reply in rejected],
        }
    )


class TokenizedDPOMixin:
    """A DPOTrainer that takes rows already tokenized (:func:`dpo_dataset`): TRL 1.16 (pinned) has no such
    path for DPO (its SFTTrainer has one), so its private ``_prepare_dataset`` is overridden to keep only what
    it does after tokenizing: drop rows whose prompt alone fills ``max_length`` under keep_start."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset


def load_start(manifest: dict[str, Any], init: Path | None, cfg: TrainConfig) -> tuple[Any, Any]:
    """(model, tokenizer) a TRL job starts from: the base model, or the trained model of ``init`` (SFT→DPO).

    A LoRA run continues the init's adapter (loaded trainable): the saved adapter is then still a task vector
    against the base, as every analysis reads it, and TRL's DPOTrainer, given a PeftModel, keeps a frozen
    copy of it as the reference (the SFT model). A full run starts from the init's full weights (a LoRA init
    merged into the base first).
    """
    if init is None:
        return load_base_model(manifest, dtype=load_dtype(cfg))
    from peft import PeftModel

    from conflux.modeling.variants import load_variant, resolve_model_dir

    model_dir = resolve_model_dir(init)
    if cfg.finetune == "lora":
        if not (model_dir / "adapter_config.json").is_file():
            raise ConfluxError(
                f"{init}: a LoRA run continues its init's adapter, but the init is a full model"
            )
        base, tokenizer = load_base_model(manifest, dtype=load_dtype(cfg))
        return PeftModel.from_pretrained(base, str(model_dir), is_trainable=True), tokenizer
    model, tokenizer = load_variant(manifest, model_dir, dtype=load_dtype(cfg))
    return model.train(), tokenizer


def save_trained(trainer: Any, state: dict[str, Any] | None, out: Path, dtype: str | None) -> None:
    """The trained model as a Hugging Face directory: full weights in ``dtype`` (safetensors) or, for LoRA,
    the PEFT adapter; ``state`` is the gathered state dict of an FSDP run (None: the model holds it).

    No pickles: the Trainer's ``training_args.bin`` is not written (run_trl_job writes its settings as
    ``training_args.json`` beside the model), and ``config.json`` says ``use_cache: true``, which training
    (gradient checkpointing) had switched off but generation with the saved model wants."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):  # TRL's frozen reference copy of a continued adapter
        model.delete_adapter("ref")
        state = None if state is None else {k: v for k, v in state.items() if ".ref." not in k}
    if dtype is not None:  # a full fine-tune: written in save_dtype
        state = cast_state_dict(state if state is not None else model.state_dict(), dtype)
    model.save_pretrained(str(out), state_dict=state)
    trainer.processing_class.save_pretrained(str(out))
    if (out / "config.json").exists():  # the saved dtype (save_pretrained writes the in-memory one)
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        write_json(out / "config.json", {**config, "use_cache": True, **({"dtype": dtype} if dtype else {})})


def _peft_config(cfg: TrainConfig, model: Any) -> Any:
    """A new LoRA adapter for a LoRA run from the base; none for a full run or a continued adapter."""
    if cfg.finetune != "lora" or hasattr(model, "peft_config"):
        return None
    return cfg.lora.spec().to_peft()


def make_trainer(
    kind: str,
    model: Any,
    tokenizer: Any,
    data: Dataset,
    cfg: TrainConfig,
    work_dir: Path,
    *,
    seed: int,
    precompute: bool | str = False,
    precompute_batch_size: int | None = None,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's SFTTrainer or DPOTrainer with conflux's settings (FSDP also on CPU ranks).

    ``precompute`` (DPO): False, the reference model runs beside the policy (for LoRA: the adapters
    switched off); True, TRL's own precompute pass fills the reference columns before training; "cached",
    the columns are already in ``data`` (:func:`conflux.training.trl_reference.with_cached_reference`).
    """
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from conflux.training.trl_reference import CachedReferenceMixin

    common = trainer_kwargs(cfg, work_dir, seed, world_size())
    if kind == "sft":

        class ShardedSFTTrainer(CpuFsdpMixin, SFTTrainer): ...

        trainer_cls, args = ShardedSFTTrainer, SFTConfig(**common, max_length=cfg.max_length)
    elif kind == "dpo":

        class ShardedDPOTrainer(TokenizedDPOMixin, CpuFsdpMixin, DPOTrainer): ...

        class CachedDPOTrainer(CachedReferenceMixin, ShardedDPOTrainer): ...

        trainer_cls = CachedDPOTrainer if precompute == "cached" else ShardedDPOTrainer
        args = DPOConfig(**common, max_length=cfg.max_length, beta=cfg.beta,
                         precompute_ref_log_probs=bool(precompute),
                         precompute_ref_batch_size=precompute_batch_size)  # fmt: skip
    else:
        raise ConfluxError(f"unknown TRL method '{kind}'")
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=_peft_config(cfg, model),
        callbacks=callbacks or [],
    )


def rows_cut(dataset: Any, kind: str, max_length: int) -> int:
    """Rows of TRL's prepared dataset that ``max_length`` cuts. DPO keeps whole token lists (its collator
    cuts): a pair is cut when prompt + longer completion exceeds the limit. SFT is cut while preparing: a row
    that reached the limit was cut (or was exactly that long, which this counts too)."""
    if kind == "dpo":
        columns = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
        return sum(len(p) + max(len(c), len(r)) > max_length for p, c, r in zip(*columns, strict=True))
    return sum(len(ids) >= max_length for ids in dataset["input_ids"])


def run_trl_job(job: TrlJob) -> dict[str, Any]:
    """Train with TRL and write ``out_dir``: ``model/`` (full weights as safetensors, or a PEFT adapter),
    metrics.jsonl, train_config.json, summary.json."""
    from conflux.training.trl_reference import reference_settings, with_cached_reference

    started = time.time()
    manifest = read_manifest(job.manifest)
    model, tokenizer = load_start(manifest, job.init, job.cfg)
    job.work_dir.mkdir(parents=True, exist_ok=True)
    kind = stage(job.method).objective if job.method in STAGES else None
    if kind not in ("sft", "dpo"):
        raise ConfluxError(f"unknown TRL method '{job.method}'")
    data = sft_dataset(job.data, tokenizer) if kind == "sft" else dpo_dataset(job.data, tokenizer)
    if job.reference is not None:
        settings = reference_settings(job.cfg, manifest["name"], job.init)
        data = with_cached_reference(data, job.reference, settings)
    resume = resume_point(job.work_dir)
    ledger = LossLedger(resume)
    callbacks = [
        MetricsFile(job.work_dir / "metrics.jsonl"),
        ledger,
        *tracking_callbacks(job.tracking, job.work_dir, run_name(job.out_dir)),
    ]
    trainer = make_trainer(kind, model, tokenizer, data, job.cfg, job.work_dir, seed=job.seed,
                           precompute="cached" if job.reference is not None else False,
                           callbacks=callbacks)  # fmt: skip
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
    n_cut = rows_cut(trainer.train_dataset, kind, job.cfg.max_length)
    if n_cut:
        log.warning("%d of %d rows cut at max_length=%d", n_cut, n_used, job.cfg.max_length)
    result = trainer.train(resume_from_checkpoint=resume)
    state = gathered_state_dict(trainer)  # every rank: under FSDP the gather is collective
    if not trainer.is_world_process_zero():
        return {}
    dtype = save_dtype(job.cfg, manifest.get("dtype", "auto")) if job.cfg.finetune == "full" else None
    summary = {
        "method": job.method,
        "seed": job.seed,
        "init": str(job.init) if job.init else None,
        "finetune": job.cfg.finetune,
        "precision": resolve_precision(job.cfg.precision),
        "distributed": distributed_mode(job.cfg, world_size()),
        "world_size": world_size(),
        "peak_gpu_bytes": peak_gpu_bytes(),
        "save_dtype": dtype,
        "n_rows": len(data),
        "n_rows_dropped_by_truncation": len(data) - n_used,
        "n_rows_truncated": n_cut,
        "global_steps": trainer.state.global_step,
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": ledger.train_loss(result.training_loss, trainer.state.global_step),
        "seconds": round(time.time() - started, 2),
    }
    with atomic_path(job.out_dir, directory=True) as tmp:
        save_trained(trainer, state, tmp / "model", dtype)
        write_json(tmp / "training_args.json", json.loads(trainer.args.to_json_string()))
        write_run_outputs(tmp, job.work_dir, job.cfg.as_dict(), summary)
        keep_tracking_files(job.work_dir, tmp)
    if not job.keep_checkpoints:
        shutil.rmtree(job.work_dir, ignore_errors=True)
    log.info("%s done: %s", job.method, summary)
    return summary
