"""How a training job uses its devices: the precision it trains in and how its ranks share the model.

Both are decided here from the job's :class:`~conflux.training.config.TrainConfig` and the machine, and
carried out by the Hugging Face Trainer and accelerate (autocast, DDP, FSDP2): conflux only chooses.

Precision. A weight near 1e-2 in bf16 has a spacing of 2^-14 ≈ 6e-5, so a DPO update of lr 5e-7 rounds away
when the weights themselves are bf16 (``bf16_pure``). ``bf16_mixed`` keeps what trains in float32 (the whole
model for full fine-tuning, the adapters for LoRA, whose frozen base may stay bf16) and runs the matmuls under
bf16 autocast. ``fp32`` uses no bf16 at all (CPUs, and old GPUs without bf16).

Sharding. With several ranks, ``ddp`` keeps a full replica (weights, gradients, Adam state) on every GPU;
``fsdp`` (FSDP2, per-parameter sharding) splits all three over the ranks and gathers one decoder layer's
weights at a time, which is what makes full fine-tuning of an 8B model fit 80 GB GPUs. Checkpoints under FSDP
are sharded (each rank writes its part; resume reads them back), the finished model is gathered once.
"""

from __future__ import annotations

import os
from typing import Any

from conflux.training.config import TrainConfig

PRECISIONS = ("bf16_mixed", "bf16_pure", "fp32")
SAVE_DTYPES = ("float32", "bfloat16", "float16", "base")


def bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, *, bf16: bool | None = None) -> str:
    """``auto``: bf16_mixed where the GPU has bf16, else fp32 (``bf16``: whether it has, for planning)."""
    if precision != "auto":
        return precision
    return "bf16_mixed" if (bf16_available() if bf16 is None else bf16) else "fp32"


def load_dtype(cfg: TrainConfig, *, bf16: bool | None = None) -> str:
    """The dtype the base model is loaded in for training: that of its trainable weights, except that a LoRA
    job under bf16_mixed keeps its frozen base in bf16 (PEFT creates the adapters in float32 over it)."""
    precision = resolve_precision(cfg.precision, bf16=bf16)
    if precision == "fp32":
        return "float32"
    if precision == "bf16_pure":
        return "bfloat16"
    return "float32" if cfg.finetune == "full" else "bfloat16"


def resolve_distributed(cfg: TrainConfig) -> str:
    """``auto``: fsdp for full fine-tuning (a replica per GPU does not fit), ddp for LoRA (a replica does)."""
    if cfg.distributed != "auto":
        return cfg.distributed
    return "fsdp" if cfg.finetune == "full" else "ddp"


def sharded(cfg: TrainConfig, world_size: int) -> bool:
    """Whether the job runs under FSDP: on several ranks, or on one torchrun rank when the config says fsdp
    explicitly (the GPU check runs FSDP2's code path on a single GPU that way)."""
    if resolve_distributed(cfg) != "fsdp":
        return False
    return world_size > 1 or (cfg.distributed == "fsdp" and "LOCAL_RANK" in os.environ)


def distributed_mode(cfg: TrainConfig, world_size: int) -> str | None:
    """What a run's summary reports: fsdp, ddp, or None for one plain process."""
    if sharded(cfg, world_size):
        return "fsdp"
    return "ddp" if world_size > 1 else None


def peak_gpu_bytes() -> int | None:
    """torch's peak allocated GPU memory of this process (None on a CPU): what the memory plan estimates."""
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def device_args(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The TrainingArguments (TRL's configs take the same keys) for precision, sharding and checkpointing."""
    args: dict[str, Any] = {"bf16": resolve_precision(cfg.precision) != "fp32"}
    if sharded(cfg, world_size):
        args["fsdp"] = True
        args["fsdp_config"] = {
            "version": 2,
            "reshard_after_forward": True,
            # FSDP's own activation checkpointing: the Trainer's would gather each layer's weights twice.
            "activation_checkpointing": cfg.gradient_checkpointing,
            "state_dict_type": "SHARDED_STATE_DICT",
        }
        args["activation_checkpointing"] = False
    else:
        args["activation_checkpointing"] = cfg.gradient_checkpointing
    return args


def save_dtype(cfg: TrainConfig, base_dtype: str) -> str:
    """The dtype a full fine-tune is written in (``base``: the base model's, e.g. bfloat16)."""
    if cfg.save_dtype != "base":
        return cfg.save_dtype
    return "float32" if base_dtype in ("auto", "") else base_dtype


class CpuFsdpMixin:
    """Make a Trainer run FSDP2 when its ranks are CPU processes (gloo), as it does on GPUs.

    accelerate 1.15 turns an FSDP plugin on only for GPU-like distributed types and silently trains CPU ranks
    as DDP, while torch's FSDP2 itself runs on CPU with gloo. Written by hand because no library option does
    it; it lets the suite (and a laptop) run the exact sharded path, checkpoints included, that a GPU cluster
    runs. Put it before the Trainer class in the bases.
    """

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state  # type: ignore[attr-defined]
        plugin_args = self.args.fsdp_plugin_args  # type: ignore[attr-defined]
        if plugin_args and state.distributed_type == DistributedType.MULTI_CPU:
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
            # Both shared states: every later AcceleratorState() copies the process state's type again.
            state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True


def gathered_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The trained model's whole state dict on rank 0 when FSDP shards it (every rank must call this: the
    gather is a collective); None when each rank holds the whole model (save from the module itself)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return None
    return trainer.accelerator.get_state_dict(trainer.model)


def cast_state_dict(state: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Floating tensors in ``dtype``; tensors that share storage (tied weights) stay shared."""
    import torch

    target = getattr(torch, dtype)
    done: dict[int, Any] = {}
    out = {}
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            out[key] = tensor
            continue
        ptr = tensor.data_ptr()
        if ptr not in done:
            done[ptr] = tensor.to(target)
        out[key] = done[ptr]
    return out
