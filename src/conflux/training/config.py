"""Training hyper-parameters: one resolved :class:`TrainConfig` per (method, dataset) job.

The config file has a ``training`` block of defaults, ``methods.<name>`` overrides per method and
``training.per_dataset.<dataset>`` overrides per dataset (the paper trains PKU with batch 128 and HelpSteer2
with 32). :func:`resolve_train_config` merges them in that order, so a job's settings are one flat dataclass
that is written next to its outputs and passed to the rule as params (a change reruns exactly that job).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from conflux.errors import ConfigError
from conflux.methods import PREFERENCE, STAGES, method_of
from conflux.modeling.lora import ADAPTERS, LoraSpec

LENGTH_CONTROLS = ("none", "rdpo", "normalized")  # see conflux.training.losses.length_controlled


@dataclass(frozen=True)
class LoraSettings:
    """The ``lora`` block: plain LoRA, or AdaLoRA (``adapter: adalora``, see :class:`LoraSpec`)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    adapter: str = "lora"
    orth_reg_weight: float = 0.5

    def spec(self) -> LoraSpec:
        return LoraSpec(r=self.r, alpha=self.alpha, dropout=self.dropout, adapter=self.adapter,
                        orth_reg_weight=self.orth_reg_weight)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training job needs besides its data and base model.

    ``batch_size`` is the global batch (pairs per optimizer step, the number papers report); the per-device
    micro-batch and the number of devices fix the gradient accumulation at run time, so the paper's batch
    holds on one GPU or eight.
    """

    beta: float = 0.1
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 16
    per_device_batch_size: int = 16
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 256
    truncation: str = "keep_end_of_prompt"
    lr_scheduler: str = "linear"
    precision: str = "auto"
    save_dtype: str = "float32"
    distributed: str = "auto"
    gradient_checkpointing: bool = False
    save_steps: int = 50
    logging_steps: int = 10
    finetune: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    # Length control of the preference methods (conflux.training.losses.length_controlled); alpha: R-DPO's α.
    length_control: str = "none"
    length_alpha: float = 0.01

    def gradient_accumulation(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that micro-batch × devices × steps = ``batch_size``."""
        per_step = self.per_device_batch_size * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                "training.batch_size",
                "multiple of per_device_batch_size x devices",
                f"batch_size {self.batch_size} is not a multiple of {self.per_device_batch_size} x "
                f"{world_size} device(s)",
            )
        return self.batch_size // per_step

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from :meth:`TrainConfig.as_dict` output (e.g. Snakemake params)."""
    values = dict(values)
    lora = LoraSettings(**values.pop("lora", {}))
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError("training", "known keys", f"unknown training settings {sorted(unknown)}")
    return TrainConfig(lora=lora, **values)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def resolve_train_config(raw: dict[str, Any], method: str, dataset: str) -> TrainConfig:
    """defaults ← ``training`` ← the registry's settings of the method (e.g. the length-controlled variant's)
    ← ``methods.<settings_from>`` (SFT→DPO: dpo's) ← ``methods.<method>`` ←
    ``training.per_dataset.<dataset>``."""
    if method not in STAGES:
        known = list(STAGES)
        raise ConfigError("methods", "known method", f"unknown method '{method}'; known: {known}")
    training = dict(raw.get("training", {}))
    per_dataset = training.pop("per_dataset", {})
    registry = method_of(method)
    merged = _merge(training, dict(registry.settings))
    if registry.settings_from is not None:
        merged = _merge(merged, raw.get("methods", {}).get(registry.settings_from, {}))
    merged = _merge(merged, raw.get("methods", {}).get(method, {}))
    merged = _merge(merged, per_dataset.get(dataset, {}))
    cfg = train_config_from_dict(merged)
    if cfg.finetune not in ("lora", "full"):
        raise ConfigError(f"methods.{method}.finetune", "enum", "finetune must be 'lora' or 'full'")
    if cfg.finetune == "full" and STAGES[method].trainer == PREFERENCE:
        raise ConfigError(
            f"methods.{method}.finetune",
            "lora for preference methods",
            "curriculum, Panacea and DPO-Soup are defined on LoRA adapters; full fine-tuning is for sft/dpo",
        )
    if cfg.length_control not in LENGTH_CONTROLS:
        raise ConfigError(f"methods.{method}.length_control", "enum", f"one of {list(LENGTH_CONTROLS)}")
    if cfg.length_control != "none" and STAGES[method].trainer != PREFERENCE:
        raise ConfigError(f"methods.{method}.length_control", "preference methods only",
                          "length control applies to the curriculum, Panacea and DPO-Soup")  # fmt: skip
    if cfg.lora.adapter not in ADAPTERS:
        raise ConfigError(f"methods.{method}.lora.adapter", "enum", f"one of {list(ADAPTERS)}")
    if cfg.lora.adapter == "adalora" and STAGES[method].trainer != PREFERENCE:
        raise ConfigError(f"methods.{method}.lora.adapter", "preference methods only",
                          "TRL's trainers do not run AdaLoRA's rank allocation; use lora")  # fmt: skip
    if cfg.lora.adapter == "adalora" and cfg.distributed == "fsdp":
        reason = "AdaLoRA's rank allocator scores whole P, Λ, Q matrices, which FSDP shards"
        raise ConfigError(f"methods.{method}.distributed", "ddp or auto with AdaLoRA", reason)
    cfg.gradient_accumulation(1)  # the batch must at least split on one device
    _check_init(raw, method, dataset, cfg)
    return cfg


def _check_init(raw: dict[str, Any], rule: str, dataset: str, cfg: TrainConfig) -> None:
    """A stage that starts from another method's model (SFT→DPO from SFT) with LoRA continues that model's
    adapter: the init must be a LoRA run of the same shape (a full init has no adapter to continue)."""
    init = STAGES[rule].init
    if init is None or cfg.finetune != "lora":
        return
    start = resolve_train_config(raw, init, dataset)
    if start.finetune != "lora" or start.lora != cfg.lora:
        raise ConfigError(
            f"methods.{rule}.finetune",
            f"lora only after a lora {init} of the same shape",
            f"{rule} with LoRA continues the {init} adapter, but {init} is finetune={start.finetune} "
            f"with lora={start.lora}; set methods.{rule}.finetune: full, or give both the same lora",
        )
