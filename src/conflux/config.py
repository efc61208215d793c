"""Typed configuration: one dataclass per section, built from the schema-validated dict.

The workflow validates ``config`` with :func:`snakemake.utils.validate` (which also fills the schema's
defaults) and then calls :func:`parse_config`, which checks what a JSON schema cannot (names that refer to
other sections, kinds that do not fit a study). Every failure is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from conflux.data.specs import DatasetSpec, PersonaSplitConfig
from conflux.data.split import SplitConfig
from conflux.data.synthetic import HELPSTEER_DIMS, PKU_DIMS
from conflux.errors import ConfigError
from conflux.export.weights import check_weights
from conflux.methods import METHODS, STAGES, method_of, methods_of, revertable_methods
from conflux.modeling.base_model import BaseModelSpec
from conflux.modeling.tiny_model import TinyModelConfig
from conflux.training.config import TrainConfig, resolve_train_config

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"

# The resource class of every rule (resources.<class> in the config).
RULE_CLASSES: dict[str, str] = {
    "load_pairs": "data",
    "split_pairs": "data",
    "load_persona": "data",
    "persona_pairs": "data",
    "generate_general": "evaluation",  # loads the base model and generates like persona_eval: a GPU job
    "build_tiny_model": "models",
    "base_model_manifest": "models",
    "reference_logps": "reference",
    "reference_logps_dpo": "reference",
    "reference_logps_sft_dpo": "reference",
    "evaluate_method": "evaluation",
    "persona_eval_base": "evaluation",
    "persona_eval": "evaluation",
    "persona_eval_merges": "evaluation",
    "table1": "report",
    "table2": "report",
    "ablation": "report",
    "figure3": "report",
    "length_bias": "report",
    "figure2": "report",
    "persona_table": "report",
    "taskvec_stats_persona": "analysis",
    "conflict_methods": "analysis",
    "conflict_datasets": "analysis",
    "conflict_summary_methods": "report",
    "conflict_summary_datasets": "report",
    "taskvec_stats_adapters": "analysis",
    "conflict_dims": "analysis",
    "merge_sft_dpo": "analysis",
    "revert_sweep": "evaluation",  # loads the model and scores/generates like persona_eval: a GPU job
    "key_layers": "report",
    "weight_figures_persona": "report",
    "weight_figures_adapters": "report",
    "dump_task_vectors_persona": "analysis",
    "dump_task_vectors_adapters": "analysis",
    "training_curves": "report",
    "export_policy": "analysis",  # the policy on the host, the merged model streamed shard by shard
    "plan": "report",
    **{rule: method_of(rule).resource_class for rule in STAGES},  # the training rules
}


@dataclass(frozen=True)
class Study:
    datasets: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationConfig:
    batch_size: int = 32
    bootstrap_resamples: int = 1000
    ci_level: float = 0.95
    bootstrap_seed: int = 0
    generation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RevertConfig:
    """Which reverts the persona study's sweep evaluates (see :mod:`conflux.analysis.revert`)."""

    methods: tuple[str, ...] = ("dpo",)
    layers: tuple[int, ...] | None = None  # None: every layer of the model
    modules: tuple[str, ...] | None = None  # None: every module type the model has
    cells: bool = False
    generate: bool = True

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RevertConfig:
        def listed(key: str) -> tuple | None:
            value = raw.get(key, "all")
            return None if value == "all" else tuple(value)

        return cls(
            methods=tuple(raw.get("methods", cls.methods)),
            layers=listed("layers"),
            modules=listed("modules"),
            cells=raw.get("cells", cls.cells),
            generate=raw.get("generate", cls.generate),
        )


@dataclass(frozen=True)
class DumpConfig:
    """Task-vector dumps (:mod:`conflux.analysis.dumps`); ``mode: none`` plans none."""

    mode: str = "trimmed"
    dtype: str = "float32"


@dataclass(frozen=True)
class AnalysisConfig:
    density: float  # the TIES trim density of every analysis; its default is the schema's
    merge_method: str = "ties"
    lambdas: tuple[float, ...] = (0.5, 1.0)
    revert: RevertConfig = field(default_factory=RevertConfig)
    dumps: DumpConfig = field(default_factory=DumpConfig)
    seeds: tuple[int, ...] | None = None  # seeds whose weights are analysed and exported; None: every seed

    def merge_variants(self) -> list[str]:
        """Names of the merged models, e.g. ``ties_lam0.5``: persona-evaluation variants like sft and dpo."""
        return [f"{self.merge_method}_lam{lam:g}" for lam in self.lambdas]


@dataclass(frozen=True)
class ExportConfig:
    """π(w) for serving (:mod:`conflux.export`): the methods exported and, per dataset, the weights."""

    methods: tuple[str, ...] = ()
    weights: dict[str, list[list[float]]] = field(default_factory=dict)

    def variants(self) -> list[str]:
        """The exported variants: each method's final stage."""
        return [METHODS[m].rules[-1] for m in self.methods]


@dataclass(frozen=True)
class WorkflowConfig:
    seeds: tuple[int, ...]
    offline: bool
    models: dict[str, BaseModelSpec]
    datasets: dict[str, DatasetSpec]
    split: SplitConfig
    persona_split: PersonaSplitConfig
    analysis: AnalysisConfig
    studies: dict[str, Study] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # the raw training/methods blocks, see train()
    reference_batch_size: int = 32
    keep_checkpoints: bool = False
    batch_seeds: bool = False  # one job trains every seed of a training rule (rules/common.smk: per_seed)
    evaluation: EvaluationConfig = field(default_factory=lambda: EvaluationConfig())
    resources: dict[str, Any] = field(default_factory=dict)
    model_arch: dict[str, dict[str, Any]] = field(default_factory=dict)  # models.<name>.arch, for the plan
    export: ExportConfig = field(default_factory=ExportConfig)

    def resources_for(self, rule_class: str, rule: str) -> dict[str, Any]:
        """Cluster resources of one rule: ``resources.default``, then ``.<class>``, then ``.rules.<rule>``.

        ``gpu: 0`` (or no gpu) asks for none, so CPU jobs never wait for a GPU node.
        """
        spec = {
            **self.resources.get("default", {}),
            **self.resources.get(rule_class, {}),
            **self.resources.get("rules", {}).get(rule, {}),
        }
        if not spec.get("gpu"):
            spec.pop("gpu", None)
        nodes = spec.get("nodes", 1)
        if nodes > 1:
            spec.update(multi_node(spec, nodes, rule_class, rule))
        if "slurm_extra" in spec:  # schema-checked tokens; quoted anyway, since the plugin uses a shell
            spec["slurm_extra"] = " ".join(shlex.quote(token) for token in spec["slurm_extra"])
        return spec

    def study(self, name: str) -> Study:
        return self.studies.get(name, Study())

    def analysis_seeds(self) -> tuple[int, ...]:
        """Seeds whose trained weights the default target analyses and exports (``analysis.seeds``, default
        every seed); the evaluation tables always cover every seed."""
        return self.seeds if self.analysis.seeds is None else self.analysis.seeds

    def revert_variants(self) -> list[str]:
        """The persona variants the revert sweep covers: those of ``analysis.revert.methods`` the persona
        study trains, and the SFT+DPO merges it names when both SFT and DPO are trained."""
        trained = self.study("persona").methods
        merges = self.analysis.merge_variants() if {"sft", "dpo"} <= set(trained) else []
        return [m for m in self.analysis.revert.methods if m in trained or m in merges]

    def train(self, method: str, dataset: str) -> TrainConfig:
        """The resolved settings of one training rule on one dataset."""
        return resolve_train_config(self.training, method, dataset)


def multi_node(spec: dict[str, Any], nodes: int, rule_class: str, rule: str) -> dict[str, Any]:
    """Resources of a training job over ``nodes`` nodes with ``gpu`` GPUs on each.

    sbatch's --gpus counts GPUs over the whole job, so the per-node count goes to --gres (gpu[:model]:n);
    ``gpus_per_node`` tells the job's script how many ranks its torchrun starts on each node. ``mpi`` and
    ``tasks`` make snakemake-executor-plugin-slurm run the script outside an srun step, one task per node,
    so that the script's own ``srun`` starts the per-node torchruns (conflux.training.launch.train_job).
    """
    if rule_class != "training":
        message = f"only training rules run on several nodes; {rule} is a {rule_class} rule"
        raise ConfigError(f"resources.rules.{rule}.nodes", "training rules only", message)
    per_node = spec.pop("gpu", 0)
    model = spec.pop("gpu_model", None)
    out: dict[str, Any] = {"gpus_per_node": per_node, "mpi": "srun", "tasks": nodes}
    if per_node:
        out["gres"] = f"gpu:{model}:{per_node}" if model else f"gpu:{per_node}"
    return out


def config_error_from(error: BaseException) -> ConfigError:
    """Turn a jsonschema error (possibly wrapped by Snakemake's WorkflowError) into a :class:`ConfigError`."""
    # Snakemake raises its WorkflowError inside the `except ValidationError` block and flattens the error into
    # text, so the structured error survives only as the implicit context of the exception chain.
    cause: BaseException | None = error
    seen: set[int] = set()
    while cause is not None and not isinstance(cause, jsonschema.ValidationError) and id(cause) not in seen:
        seen.add(id(cause))
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, jsonschema.ValidationError)]
        cause = nested[0] if nested else (cause.__cause__ or cause.__context__)
    if not isinstance(cause, jsonschema.ValidationError):
        return ConfigError("<config>", "schema", str(error))
    key = ".".join(str(p) for p in cause.absolute_path) or "<top level>"
    rule = f"{cause.validator}: {cause.validator_value!r}" if cause.validator != "$ref" else "schema"
    if cause.validator == "additionalProperties":
        rule = "additionalProperties: unknown key"
    return ConfigError(key, rule, cause.message)


def load_config(path: str | Path, schema: str | Path = SCHEMA_PATH) -> WorkflowConfig:
    """Read, validate (with defaults) and parse a config file, as the workflow does."""
    from snakemake.utils import validate  # imported here: snakemake is heavy and only needed for validation

    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    try:
        validate(raw, str(schema))
    except Exception as err:  # WorkflowError wraps the jsonschema error
        raise config_error_from(err) from None
    return parse_config(raw)


def parse_config(raw: dict[str, Any]) -> WorkflowConfig:
    """Build the typed config from a validated dict and check cross-references."""
    models = {name: _model_spec(name, spec) for name, spec in raw["models"].items()}
    datasets = {name: _dataset_spec(name, spec) for name, spec in raw["datasets"].items()}
    studies = {}
    for study_name, study in raw.get("studies", {}).items():
        allowed = methods_of(study_name)
        methods = tuple(study.get("methods", allowed))
        for i, method in enumerate(methods):
            if method not in allowed:
                raise ConfigError(
                    f"studies.{study_name}.methods.{i}",
                    "method fits study",
                    f"'{method}' is not a method of the {study_name} study ({list(allowed)})",
                )
        studies[study_name] = Study(tuple(study["datasets"]), tuple(study["models"]), methods)
        for i, ds in enumerate(study["datasets"]):
            key = f"studies.{study_name}.datasets.{i}"
            if ds not in datasets:
                raise ConfigError(
                    key, "refers to datasets", f"unknown dataset '{ds}'; known: {sorted(datasets)}"
                )
            if datasets[ds].is_persona != (study_name == "persona"):
                message = f"dataset '{ds}' of kind '{datasets[ds].kind}' cannot be used here"
                raise ConfigError(key, "kind fits study", message)
        for i, model in enumerate(study["models"]):
            if model not in models:
                raise ConfigError(
                    f"studies.{study_name}.models.{i}",
                    "refers to models",
                    f"unknown model '{model}'; known: {sorted(models)}",
                )
    split = raw.get("split", {})
    persona_split = raw.get("persona_split", {})
    training = {"training": raw.get("training", {}), "methods": raw.get("methods", {})}
    # Resolve every job's settings now, so a bad combination fails at start and not in the middle of a run.
    for study in studies.values():
        for method in study.methods:
            for rule in METHODS[method].rules:
                for ds in study.datasets:
                    resolve_train_config(training, rule, ds)
    return WorkflowConfig(
        seeds=tuple(raw.get("seeds", [0])),
        offline=bool(raw.get("offline", True)),
        models=models,
        datasets=datasets,
        split=SplitConfig(**split),
        persona_split=PersonaSplitConfig(**persona_split),
        studies=studies,
        training=training,
        reference_batch_size=int(raw.get("reference", {}).get("batch_size", 32)),
        keep_checkpoints=bool(raw.get("keep_checkpoints", False)),
        batch_seeds=bool(raw.get("batch_seeds", False)),
        evaluation=EvaluationConfig(**raw.get("evaluation", {})),
        resources=dict(raw.get("resources", {})),
        analysis=_analysis_config(raw.get("analysis", {}), list(raw.get("seeds", [0]))),
        model_arch={name: dict(spec["arch"]) for name, spec in raw["models"].items() if "arch" in spec},
        export=_export_config(raw.get("export", {}), datasets, studies.get("curriculum", Study())),
    )


def _export_config(raw: dict[str, Any], datasets: dict[str, DatasetSpec], study: Study) -> ExportConfig:
    """The export block, checked against the curriculum study: its datasets, its methods, each w's k."""
    methods = tuple(raw.get("methods", [m for m in study.methods if METHODS[m].compared]))
    for i, method in enumerate(methods):
        if method not in study.methods:
            found = f"'{method}' is not trained: studies.curriculum.methods is {list(study.methods)}"
            raise ConfigError(f"export.methods.{i}", "a method of the curriculum study", found)
    weights = {}
    for dataset, vectors in raw.get("weights", {}).items():
        if dataset not in study.datasets:
            known = f"studies.curriculum.datasets is {list(study.datasets)}; drop it or train the dataset"
            raise ConfigError(f"export.weights.{dataset}", "a dataset of the curriculum study", known)
        weights[dataset] = check_weights(vectors, datasets[dataset].k, f"export.weights.{dataset}")
    return ExportConfig(methods, weights)


def _analysis_config(raw: dict[str, Any], seeds: list[int]) -> AnalysisConfig:
    values = dict(raw)
    if "lambdas" in values:
        values["lambdas"] = tuple(values["lambdas"])
    if "revert" in values:
        values["revert"] = RevertConfig.from_dict(values["revert"])
    if "dumps" in values:
        values["dumps"] = DumpConfig(**values["dumps"])
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
        for i, s in enumerate(values["seeds"]):
            if s not in seeds:
                raise ConfigError(
                    f"analysis.seeds.{i}", "one of the run's seeds", f"{s} is not in seeds {seeds}"
                )
    analysis = AnalysisConfig(**values)
    allowed = [*revertable_methods(), *analysis.merge_variants()]
    for i, method in enumerate(analysis.revert.methods):
        if method not in allowed:
            raise ConfigError(f"analysis.revert.methods.{i}", "a trained variant or a configured merge",
                              f"'{method}' is not one of {allowed}")  # fmt: skip
    return analysis


def _model_spec(name: str, spec: dict[str, Any]) -> BaseModelSpec:
    tiny = None
    if spec["source"] == "embedded":
        tiny = TinyModelConfig(**spec.get("tiny", {}))
        if tiny.hidden_size % tiny.num_heads or tiny.num_heads % tiny.num_kv_heads:
            raise ConfigError(f"models.{name}.tiny", "divisible sizes",
                              "hidden_size must divide by num_heads, num_heads by num_kv_heads")  # fmt: skip
    elif "tiny" in spec:
        raise ConfigError(f"models.{name}.tiny", "embedded only", "'tiny' applies to source: embedded only")
    return BaseModelSpec(
        name=name,
        source=spec["source"],
        path=spec.get("path"),
        revision=spec.get("revision"),
        trust_remote_code=bool(spec.get("trust_remote_code", False)),
        dtype=spec.get("dtype", "auto"),
        tiny=tiny,
        prompt_format=spec.get("prompt_format", "auto"),
    )


SYNTHETIC_DIMS = {"synthetic_pku": PKU_DIMS, "synthetic_helpsteer": HELPSTEER_DIMS}


def _dataset_spec(name: str, spec: dict[str, Any]) -> DatasetSpec:
    values = dict(spec)
    if "dims" in values:
        values["dims"] = tuple(values["dims"])
    if "signal" in values:
        dims = SYNTHETIC_DIMS.get(values["kind"])
        if dims is None:
            raise ConfigError(
                f"datasets.{name}.signal", "synthetic only", "'signal' applies to synthetic kinds"
            )
        for dim in values["signal"]:
            if dim not in dims:
                raise ConfigError(f"datasets.{name}.signal.{dim}", "a dimension of the generator",
                                  f"'{dim}' is not one of {list(dims)}")  # fmt: skip
        values["signal"] = tuple(values["signal"].items())
    return DatasetSpec(name=name, **values)
