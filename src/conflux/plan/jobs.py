"""The memory plan of a config: every training, scoring and analysis job, its peak per device, and whether it
fits; written as ``results/plan/plan.csv|md`` (rule ``plan``), and checked when the workflow starts, so a job
that cannot fit fails before anything is submitted.

One row per (rule, model, dataset): seeds and preference dimensions do not change a job's memory. GPU jobs are
held to the GPU's memory (``gpu_mem_gb``, else the ``gpu_model``'s, else 80 GiB); CPU jobs to their
``mem_mb`` when the config sets one. A model whose architecture nothing here states (a hub model not yet
downloaded, without ``models.<name>.arch``) gets a row that says so and is not checked.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conflux.atomic import atomic_path
from conflux.config import RULE_CLASSES, WorkflowConfig
from conflux.errors import ConfigError
from conflux.methods import METHODS, STAGES
from conflux.plan.arch import Arch, model_arch
from conflux.plan.memory import (
    GIB,
    Estimate,
    analysis_estimate,
    export_estimate,
    scoring_estimate,
    training_estimate,
)
from conflux.training.parallel import resolve_distributed

DEFAULT_GPU_GB = 80
# GiB of one GPU by the gpu_model names clusters use in their gres (the larger variant where there are two:
# set gpu_mem_gb for an A100 40GB or a V100 16GB).
GPU_MEMORY_GB = {
    "h200": 141,
    "h100": 80,
    "gh200": 96,
    "a100": 80,
    "a100_80g": 80,
    "a100_40g": 40,
    "l40s": 48,
    "l40": 48,
    "a40": 48,
    "a6000": 48,
    "rtx_a6000": 48,
    "a10": 24,
    "l4": 24,
    "v100": 32,
    "t4": 16,
    "mi250": 64,
    "mi300x": 192,
}
SCORING = (
    "reference_logps",
    "reference_logps_dpo",
    "reference_logps_sft_dpo",
    "evaluate_method",
    "persona_eval_base",
    "persona_eval",
    "persona_eval_merges",
    "revert_sweep",
    "generate_general",
)
COLUMNS = [
    "rule",
    "model",
    "dataset",
    "device",
    "devices",
    "estimate_gib",
    "limit_gib",
    "fits",
    "detail",
    "arch_from",
    "limit_from",
]


@dataclass(frozen=True)
class PlanRow:
    rule: str
    model: str
    dataset: str
    device: str  # gpu | cpu
    devices: int  # GPUs of the job (ranks), 1 for a CPU job
    limit: int | None  # bytes per device, None: unchecked
    limit_from: str
    arch_from: str
    estimate: Estimate | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool | None:
        if self.estimate is None or self.limit is None:
            return None
        return self.estimate.total <= self.limit

    def as_record(self) -> dict[str, Any]:
        gib = lambda b: None if b is None else round(b / GIB, 2)  # noqa: E731
        parts = self.estimate.components.items() if self.estimate else ()
        return {
            "rule": self.rule,
            "model": self.model,
            "dataset": self.dataset,
            "device": self.device,
            "devices": self.devices,
            "estimate_gib": gib(self.estimate.total) if self.estimate else None,
            "limit_gib": gib(self.limit),
            "fits": self.fits,
            "detail": "; ".join(f"{k} {v / GIB:.2f}" for k, v in parts if v),
            "arch_from": self.arch_from,
            "limit_from": self.limit_from,
        }


def device_limit(resources: dict[str, Any]) -> tuple[str, int, int | None, str]:
    """(device, devices, bytes per device or None, where the limit comes from) of a job's resources."""
    gpus = int(resources.get("gpus_per_node", resources.get("gpu", 0)) or 0)
    if gpus:
        devices = gpus * int(resources.get("tasks", 1) if "gpus_per_node" in resources else 1)
        if "gpu_mem_gb" in resources:
            return "gpu", devices, int(resources["gpu_mem_gb"] * GIB), "gpu_mem_gb"
        model = str(resources.get("gpu_model", "")).lower()
        if model in GPU_MEMORY_GB:
            return "gpu", devices, GPU_MEMORY_GB[model] * GIB, f"gpu_model {model}"
        why = f"gpu_model {model} unknown: set gpu_mem_gb" if model else "assumed (no gpu_model, gpu_mem_gb)"
        return "gpu", devices, DEFAULT_GPU_GB * GIB, f"{DEFAULT_GPU_GB} GiB {why}"
    if "mem_mb" in resources:
        return "cpu", 1, int(resources["mem_mb"]) * 2**20, "mem_mb"
    return "cpu", 1, None, "unchecked (no mem_mb)"


def study_rules(cfg: WorkflowConfig, study: str) -> list[str]:
    """The planned rules of one study, in the order they run."""
    methods = cfg.study(study).methods
    dumps = cfg.analysis.dumps.mode != "none"
    if study == "curriculum":
        rules = ["reference_logps", *(r for m in methods for r in METHODS[m].rules), "evaluate_method"]
        if any(METHODS[m].analysed for m in methods):
            rules += [
                "taskvec_stats_adapters",
                "conflict_dims",
                *(["dump_task_vectors_adapters"] if dumps else []),
            ]
        if cfg.export.weights and cfg.export.methods:
            rules.append("export_policy")
        return rules
    rules = ["persona_eval_base"]
    for m in methods:  # a DPO's cached reference: the base model's, or (SFT→DPO) its SFT model's
        reference = {"dpo": "reference_logps_dpo", "sft_dpo": "reference_logps_sft_dpo"}.get(m)
        rules += [*([reference] if reference else []), *METHODS[m].rules]
    rules.append("persona_eval")
    if len(methods) >= 2:
        rules += ["taskvec_stats_persona", "conflict_methods"]
    if {"sft", "dpo"} <= set(methods) and cfg.analysis.merge_variants():
        rules += ["merge_sft_dpo", "persona_eval_merges"]
    if cfg.revert_variants():
        rules.append("revert_sweep")
    return rules + (["dump_task_vectors_persona"] if dumps else [])


def across_datasets(cfg: WorkflowConfig, study: str, dataset: str) -> list[str]:
    """Rules over all datasets of a study (CL-L2 between the persona datasets, per method), planned once:
    listed with the study's first dataset."""
    datasets = cfg.study(study).datasets
    if study != "persona" or len(datasets) < 2 or dataset != datasets[0]:
        return []
    return ["conflict_datasets"]


def _estimate(
    cfg: WorkflowConfig, arch: Arch, rule: str, dataset: str, devices: int, gpu: bool, dtype: str
) -> Estimate:
    spec = cfg.datasets[dataset]
    if rule == "export_policy":
        return export_estimate(arch, dtype, adapters=spec.k + 1, lora_r=_largest_rank(cfg, dataset))
    if rule in ("taskvec_stats_adapters", "conflict_dims", "dump_task_vectors_adapters"):
        return analysis_estimate(arch, rule, adapters=True)
    if RULE_CLASSES.get(rule) == "analysis":
        sources = len(
            cfg.study("persona").datasets if rule == "conflict_datasets" else cfg.study("persona").methods
        )
        return analysis_estimate(
            arch, rule, adapters=False, lambdas=len(cfg.analysis.lambdas), sources=sources
        )
    if rule not in SCORING:
        method = next(m for m in METHODS.values() if rule in m.rules)
        return training_estimate(arch, cfg.train(rule, dataset), rule, spec.k, method.shared, devices, gpu)
    # scoring: the tokenization of the training it serves (the persona DPO's, the preference methods')
    settings = cfg.train("dpo" if spec.is_persona else "curriculum_stage1", dataset)
    if rule in ("reference_logps", "reference_logps_dpo", "reference_logps_sft_dpo"):
        return scoring_estimate(
            arch, dtype, pairs=cfg.reference_batch_size, max_length=settings.max_length, gpu=gpu
        )
    if rule == "evaluate_method":
        return scoring_estimate(
            arch,
            dtype,
            pairs=cfg.evaluation.batch_size,
            max_length=settings.max_length,
            adapters=spec.k + 1,
            lora_r=settings.lora.spec().init_r,  # AdaLoRA: its ranks before pruning, an upper bound
            gpu=gpu,
        )
    gen = cfg.evaluation.generation
    generates = cfg.analysis.revert.generate or rule == "generate_general"
    generate = (gen.get("batch_size", 16), gen.get("max_new_tokens", 64)) if generates else None
    return scoring_estimate(
        arch,
        dtype,
        pairs=cfg.evaluation.batch_size,
        max_length=settings.max_length,
        generate=generate,
        gpu=gpu,
    )


def _largest_rank(cfg: WorkflowConfig, dataset: str) -> int:
    """The largest adapter rank an exported method trains (its initial rank for AdaLoRA)."""
    return max(cfg.train(v, dataset).lora.spec().init_r for v in cfg.export.variants())


def plan_rows(cfg: WorkflowConfig, results: str | Path = "results") -> list[PlanRow]:
    """Every planned job of the config's studies (see the module's docstring)."""
    rows = []
    arches = {
        name: model_arch(spec, cfg.model_arch.get(name), Path(results)) for name, spec in cfg.models.items()
    }
    for study in ("curriculum", "persona"):
        for model in cfg.study(study).models:
            arch, arch_from = arches[model]
            for dataset in cfg.study(study).datasets:
                generates = cfg.datasets[dataset].generates_general  # its general replies: a GPU job
                across = across_datasets(cfg, study, dataset)
                for rule in (["generate_general"] if generates else []) + study_rules(cfg, study) + across:
                    if rule == "export_policy" and dataset not in cfg.export.weights:
                        continue
                    device, devices, limit, limit_from = device_limit(
                        cfg.resources_for(RULE_CLASSES[rule], rule)
                    )
                    gpu = device == "gpu"
                    # conflux scores in float32 on a CPU; the export holds the base in its own dtype
                    dtype = cfg.models[model].dtype if gpu or rule == "export_policy" else "float32"
                    if dtype == "auto":  # the checkpoint's own dtype
                        dtype = (arch.dtype if arch else None) or "float32"
                    estimate = _estimate(cfg, arch, rule, dataset, devices, gpu, dtype) if arch else None
                    settings = {}
                    if rule in STAGES:
                        train = cfg.train(rule, dataset)
                        settings = {
                            "finetune": train.finetune,
                            "distributed": resolve_distributed(train),
                            "per_device_batch_size": train.per_device_batch_size,
                            "gradient_checkpointing": train.gradient_checkpointing,
                        }
                    rows.append(
                        PlanRow(
                            rule,
                            model,
                            dataset,
                            device,
                            devices,
                            limit,
                            limit_from,
                            arch_from,
                            estimate,
                            settings,
                        )
                    )
    return rows


def ways_out(row: PlanRow) -> list[str]:
    """What would make a job fit, for its error message."""
    key = f"resources.rules.{row.rule}"
    if row.device == "cpu":
        return [f"more host memory ({key}.mem_mb)"]
    if row.rule in SCORING:
        return [
            f"a smaller batch ({'reference' if 'reference' in row.rule else 'evaluation'}.batch_size)",
            f"a GPU with more memory ({key}.gpu_model or gpu_mem_gb)",
        ]
    s = row.settings
    if s.get("distributed") == "fsdp":  # only sharding spreads the model: DDP keeps a replica on every GPU
        out = [f"more GPUs ({key}.gpu, or nodes)"]
    else:
        out = [f"sharding over more GPUs (methods.{row.rule}.distributed: fsdp, {key}.gpu)"]
    if s.get("finetune") == "full":
        out.append(f"LoRA (methods.{row.rule}.finetune: lora)")
    if not s.get("gradient_checkpointing"):
        out.append(f"activation checkpointing (methods.{row.rule}.gradient_checkpointing: true)")
    if s.get("per_device_batch_size", 1) > 1:
        out.append(f"a smaller micro-batch (methods.{row.rule}.per_device_batch_size)")
    return out


def refuse_unfit(rows: list[PlanRow]) -> None:
    """A ConfigError for the first job that cannot fit, naming the rule, the estimate and the ways out."""
    for row in rows:
        if row.fits is False:
            record = row.as_record()
            size, limit = record["estimate_gib"], record["limit_gib"]
            raise ConfigError(
                f"resources.rules.{row.rule}",
                "fits device memory",
                f"rule {row.rule} (model {row.model}, dataset {row.dataset}) needs about {size} GiB per "
                f"{row.device.upper()} on {row.devices} device(s) [{record['detail']}], more than its "
                f"{limit} GiB ({row.limit_from}). Ways out: {'; '.join(ways_out(row))}. "
                "The whole plan: snakemake results/plan/plan.md",
            )


def plan_job(records: list[dict[str, Any]], csv_path: str | Path, md_path: str | Path) -> None:
    """The ``plan`` rule: the rows (:meth:`PlanRow.as_record`) as CSV, one per job, and as Markdown."""
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(records)
    show = lambda v: "?" if v is None else ("yes" if v is True else "NO" if v is False else str(v))  # noqa: E731
    lines = [
        "# Memory plan",
        "",
        "Peak memory per device in GiB (a GPU, or the host for a CPU job), estimated from each model's "
        "architecture and each job's settings by conflux.plan; `detail` lists the components.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(show(r[c]) for c in COLUMNS) + " |" for r in records]
    unknown = sorted({f"{r['model']} ({r['arch_from']})" for r in records if r["estimate_gib"] is None})
    if unknown:
        lines += [
            "",
            f"Not planned, architecture unknown: {', '.join(unknown)}. Add `models.<name>.arch` (the keys of "
            "its config.json) or run `snakemake download` first.",
        ]
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
