"""Training jobs of the preference methods (curriculum stages, Panacea, DPO-Soup) on the Hugging Face Trainer.

The Trainer supplies everything that is not specific to these methods: AdamW, warm-up and decay, gradient
accumulation, bf16 autocast, gradient checkpointing, checkpoints with optimizer/scheduler/RNG state and
resume (including the data order), multi-GPU through ``accelerate launch``/``torchrun``, logging and the
progress bar. conflux overrides only ``training_step`` (a step is several passes at different w, see
:mod:`conflux.training.objectives`) and the adapter part of checkpoint loading (the Trainer restores only the
first of several PEFT adapters).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict
from transformers import Trainer, TrainingArguments

from conflux.atomic import atomic_path
from conflux.data.pairs import PairTable, read_pairs
from conflux.data.split import dimension_labels
from conflux.errors import ConfluxError, DataError
from conflux.methods import method_of, stage
from conflux.modeling.base_model import load_base_model, read_manifest
from conflux.modeling.policy import PreferencePolicy, load_method_policy
from conflux.modeling.tokenize import PairBatch, Row, TokenizeSettings, collate_rows, encode_pairs, pad_id_of
from conflux.training.adalora import RankSchedule, quiet_pruned_ranks, rank_schedule
from conflux.training.config import TrainConfig
from conflux.training.objectives import Objective, StepContext, StepInputs, make_objective
from conflux.training.parallel import (
    CpuFsdpMixin,
    device_args,
    distributed_mode,
    gathered_state_dict,
    load_dtype,
    peak_gpu_bytes,
    resolve_precision,
)
from conflux.training.reference import read_reference
from conflux.training.tracking import Tracking, keep_tracking_files, tracking_callbacks
from conflux.training.workdir import LossLedger, MetricsFile, resume_point, write_run_outputs

log = logging.getLogger(__name__)


# ---- data --------------------------------------------------------------------------------------------------


def concat_pairs(parts: Sequence[PairTable]) -> PairTable:
    """One table from several split parts (e.g. agree_sub ∪ conflict); their dimensions must agree."""
    if not parts:
        raise ConfluxError("no pair files given")
    dims = parts[0].dims
    for part in parts[1:]:
        if part.dims != dims:
            raise DataError(
                f"dimensions {list(part.dims)} differ from {list(dims)}",
                file=part.source,
                row="header",
                field="dims",
            )
    return PairTable(pa.concat_tables([p.table for p in parts]), dims, parts[0].source)


class PairDataset(torch.utils.data.Dataset):
    """Pre-tokenized pairs with per-dimension labels and cached reference log-probs.

    Tokenized once up front (not per epoch in the collator), as TRL does, so the step time is model time.
    """

    def __init__(
        self,
        pairs: PairTable,
        ref_a: np.ndarray,
        ref_b: np.ndarray,
        tokenizer: Any,
        settings: TokenizeSettings,
    ) -> None:
        rows_a, rows_b, cut = encode_pairs(tokenizer, pairs, settings)
        self.rows: list[tuple[Row, Row]] = list(zip(rows_a, rows_b, strict=True))
        self.n_truncated = sum(cut)
        s_a, s_b = pairs.scores()
        self.labels = torch.from_numpy(dimension_labels(s_a - s_b).astype(np.int64))
        self.ref_a = torch.from_numpy(np.asarray(ref_a, dtype=np.float64))
        self.ref_b = torch.from_numpy(np.asarray(ref_b, dtype=np.float64))
        self.pad_id = pad_id_of(tokenizer)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return i  # the collator gathers by index: no per-item dict building

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate_rows(
            [self.rows[i][0] for i in indices], [self.rows[i][1] for i in indices], self.pad_id
        )
        idx = torch.tensor(indices)
        return {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "loss_mask": batch.loss_mask,
            "pref_labels": self.labels[idx],
            "ref_logp_a": self.ref_a[idx],
            "ref_logp_b": self.ref_b[idx],
        }


def step_inputs(inputs: dict[str, torch.Tensor]) -> StepInputs:
    n = inputs["pref_labels"].shape[0]
    batch = PairBatch(inputs["input_ids"], inputs["attention_mask"], inputs["loss_mask"], n_pairs=n)
    # Reference log-probs are stored in float64; the policy's sums are float32 (see logprobs.token_logps).
    return StepInputs(
        batch, inputs["pref_labels"], inputs["ref_logp_a"].float(), inputs["ref_logp_b"].float()
    )


# ---- trainer -----------------------------------------------------------------------------------------------


class PreferenceTrainer(CpuFsdpMixin, Trainer):
    """A Trainer whose step is an objective's passes, each backpropagated inside its own ``policy.at(w)``."""

    def __init__(
        self,
        *,
        policy: PreferencePolicy,
        objective: Objective,
        seed: int,
        rank_schedule: RankSchedule | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=policy.model, **kwargs)
        self.policy = policy
        self.objective = objective
        self.seed = seed
        self.rank_schedule = rank_schedule  # AdaLoRA's allocators, checkpointed with the optimizer
        if rank_schedule is not None:
            self.add_callback(rank_schedule)  # stepped after each optimizer step
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        ctx = StepContext(
            model=model,
            forward_context=self.compute_loss_context_manager,
            seed=self.seed,
            global_step=self.state.global_step,
        )
        total = torch.zeros((), device=self.args.device)
        for loss, metrics in self.objective.passes(self.policy, ctx, step_inputs(inputs)):
            scaled = loss / self.current_gradient_accumulation_steps
            self.accelerator.backward(scaled)  # still inside the pass's policy.at(w)
            total += scaled.detach()
            for key, value in metrics.items():
                self._metrics[key].append(value)
        return total

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        raise ConfluxError("preference training runs through training_step; evaluation is its own rule")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the per-pass metrics (TRL names: rewards/chosen, rewards/accuracies/dim0, ...) averaged since
        the last log, as TRL's DPOTrainer does."""
        if "loss" in logs:
            logs = {**logs, **{k: float(np.mean(v)) for k, v in self._metrics.items() if v}}
            self._metrics.clear()
        super().log(logs, start_time)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """Under FSDP, also write every adapter's shards (torch.distributed.checkpoint, one file per rank):
        accelerate's FSDP checkpoint of a PEFT model holds only the active adapter (accelerate 1.15)."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.rank_schedule is not None and self.args.should_save:
            self.rank_schedule.save(output_dir)
        if self.is_fsdp_enabled:
            import torch.distributed.checkpoint as dcp

            dcp.save(_adapter_state(self.model), checkpoint_id=str(Path(output_dir) / FSDP_ADAPTERS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Restore every adapter from ``<checkpoint>/<adapter>/`` (PEFT's multi-adapter layout), or under FSDP
        from the shards :meth:`_save_optimizer_and_scheduler` wrote; AdaLoRA's allocators too."""
        if self.rank_schedule is not None:
            self.rank_schedule.load(resume_from_checkpoint)
        if self.is_fsdp_enabled:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            state = _adapter_state(self.model)
            dcp.load(state, checkpoint_id=str(Path(resume_from_checkpoint) / FSDP_ADAPTERS))
            set_model_state_dict(self.model, state, options=StateDictOptions(strict=False))
            return
        for name in self.policy.adapter_names:
            sub = Path(resume_from_checkpoint) / name
            if not sub.is_dir():
                raise ConfluxError(f"checkpoint {resume_from_checkpoint} has no adapter '{name}'")
            set_peft_model_state_dict(self.policy.model, load_peft_weights(str(sub)), adapter_name=name)
        self.policy.train_only(sorted(self.policy._trainable))


FSDP_ADAPTERS = "conflux_adapters_fsdp"  # a checkpoint's sharded adapters (FSDP runs)


def _adapter_state(model: torch.nn.Module) -> dict[str, Any]:
    """The LoRA weights of every adapter, as (sharded) tensors of ``model``'s state dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {k: v for k, v in get_model_state_dict(model).items() if ".lora_" in k}


# ---- the job -----------------------------------------------------------------------------------------------


@dataclass
class PreferenceJob:
    """One training rule's inputs and outputs."""

    method: str
    pairs: list[Path]
    references: list[Path]
    manifest: Path
    out_dir: Path
    work_dir: Path
    cfg: TrainConfig
    seed: int
    init_adapters: Path | None = None
    dim: int | None = None
    keep_checkpoints: bool = False
    tracking: Tracking = field(default_factory=Tracking)


def trainer_kwargs(cfg: TrainConfig, work_dir: Path, seed: int, world_size: int) -> dict[str, Any]:
    """The Trainer settings every conflux job shares (TRL's configs take the same keys)."""
    return {
        "output_dir": str(work_dir),
        "per_device_train_batch_size": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation(world_size),
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        "weight_decay": cfg.weight_decay,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,
        "seed": seed,
        "data_seed": seed,
        **device_args(cfg, world_size),  # precision, DDP or FSDP2, activation checkpointing
        "dataloader_pin_memory": torch.cuda.is_available(),
        # On a CPU-only node accelerate runs several processes (torchrun) as gloo DDP only when told "cpu".
        "use_cpu": not torch.cuda.is_available(),
        "report_to": [],
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
    }


def run_name(out_dir: Path) -> str:
    """A training output's name for trackers: its path below ``results/train/`` (model/dataset/seed/...)."""
    parts = out_dir.parts
    return "/".join(parts[parts.index("train") + 1 :]) if "train" in parts else out_dir.name


def world_size() -> int:
    """Processes of this job (``accelerate launch``/``torchrun`` set WORLD_SIZE; a plain run is 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_policy(job: PreferenceJob, base_model: Any, k: int) -> PreferencePolicy:
    """The previous stage's adapters when there is one, else fresh adapters seeded by the job's seed."""
    if job.init_adapters is not None:
        return load_method_policy(base_model, [job.init_adapters])
    shared = method_of(job.method).shared
    return PreferencePolicy.create(base_model, k, job.cfg.lora.spec(), shared=shared, seed=job.seed)


def run_preference_job(job: PreferenceJob) -> dict[str, Any]:
    """Train, then write ``out_dir`` (adapters/, metrics.jsonl, train_config.json, summary.json) atomically.

    Checkpoints live in ``work_dir``, outside the rule's output, so a killed or cancelled job resumes from
    its last checkpoint when rerun (Snakemake deletes a failed job's outputs, not this directory).
    """
    started = time.time()
    settings = TokenizeSettings(job.cfg.max_length, job.cfg.truncation)
    pairs = concat_pairs([read_pairs(p) for p in job.pairs])
    ids = pairs.table.column("pair_id").to_pylist()
    ref_a, ref_b = read_reference(job.references, settings, ids)
    manifest = read_manifest(job.manifest)
    model, tokenizer = load_base_model(manifest, dtype=load_dtype(job.cfg))
    policy = load_policy(job, model, pairs.k)
    objective = make_objective(job.method, pairs.k, job.cfg.beta, job.dim, job.cfg.length_control,
                               job.cfg.length_alpha)  # fmt: skip
    policy.train_only(objective.trained(policy))
    schedule = rank_schedule(policy, objective.trained(policy))
    dataset = PairDataset(pairs, ref_a, ref_b, tokenizer, settings)
    if dataset.n_truncated:
        log.warning(
            "%d of %d pairs truncated to max_length=%d",
            dataset.n_truncated,
            len(dataset),
            settings.max_length,
        )

    job.work_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        **trainer_kwargs(job.cfg, job.work_dir, job.seed, world_size()),
        remove_unused_columns=False,  # the collator's keys are ours, not the model's forward arguments
        ddp_find_unused_parameters=True,  # adapters with w_i = 0 are skipped in a pass and get no gradient
    )
    resume = resume_point(job.work_dir)
    ledger = LossLedger(resume)
    trainer = PreferenceTrainer(
        policy=policy,
        objective=objective,
        seed=job.seed,
        args=args,
        train_dataset=dataset,
        data_collator=dataset.collate,
        rank_schedule=schedule,
        callbacks=[
            MetricsFile(job.work_dir / "metrics.jsonl"),
            ledger,
            *tracking_callbacks(job.tracking, job.work_dir, run_name(job.out_dir)),
        ],
    )
    ledger.trainer = trainer
    result = trainer.train(resume_from_checkpoint=resume)
    state = gathered_state_dict(trainer)  # every rank: under FSDP the gather is collective
    if not trainer.is_world_process_zero():
        return {}

    summary = {
        "method": job.method,
        "dim": job.dim,
        "seed": job.seed,
        "k": pairs.k,
        "dims": list(pairs.dims),
        "n_pairs": len(dataset),
        "n_truncated": dataset.n_truncated,
        "global_steps": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "distributed": distributed_mode(job.cfg, trainer.args.world_size),
        "peak_gpu_bytes": peak_gpu_bytes(),
        "precision": resolve_precision(job.cfg.precision),
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": ledger.train_loss(result.training_loss, trainer.state.global_step),
        "trained_adapters": objective.trained(policy),
        "adalora_ranks": schedule.summary() if schedule is not None else None,
        "seconds": round(time.time() - started, 2),
    }
    # A per-dimension job (a DPO-Soup member) owns only its own adapter; the others stayed at their init.
    saved = objective.trained(policy) if stage(job.method).per_dimension else policy.adapter_names
    if schedule is not None:
        schedule.finalize()  # the adapters are saved at their pruned ranks, as AdaLoraModel's are
    with atomic_path(job.out_dir, directory=True) as tmp, quiet_pruned_ranks():
        policy.model.save_pretrained(str(tmp / "adapters"), selected_adapters=list(saved), state_dict=state)
        write_run_outputs(tmp, job.work_dir, job.cfg.as_dict(), summary)
        keep_tracking_files(job.work_dir, tmp)
    if not job.keep_checkpoints:
        shutil.rmtree(job.work_dir, ignore_errors=True)
    log.info("%s done: %s", job.method, summary)
    return summary
