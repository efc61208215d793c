"""Bad input, one table: every bad data file, config value, model directory, adapter and weight file gets
an error that names the file and the row and field (or the config key and the rule it breaks), and the job
that met it leaves no output behind."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from conflux.analysis.jobs import dump_task_vectors_job
from conflux.config import load_config
from conflux.data.jobs import load_pairs_job, load_persona_job
from conflux.data.specs import DatasetSpec, PersonaSplitConfig
from conflux.data.split import SPLIT_NAMES, SplitConfig, split_pairs_job
from conflux.errors import ConfigError, ConfluxError, DataError
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy, load_method_policy
from input_rows import (
    ASSISTANT,
    HS_HEADER,
    HS_ROW,
    LEGACY,
    PAIR,
    PAIR_2,
    PKU_HEADER,
    PKU_ROW,
    USER,
    jsonl,
    parquet,
    without,
)
from weight_checkpoints import perturbed, save_checkpoint, tiny_llama

ROOT = Path(__file__).resolve().parents[1]


# Each loader of a data file runs as its rule's job, so the case can also check that nothing was written.


def _pair_job(kind: str, dims: tuple[str, ...] | None = None) -> Callable[[str, Path], None]:
    def run(path: str, out: Path) -> None:
        spec = DatasetSpec(name="bad", kind=kind, path=path, dims=dims)
        load_pairs_job(spec, out / "pairs.parquet", out / "load_stats.json", offline=True)

    return run


pku = _pair_job("pku_saferlhf")
helpsteer = _pair_job("helpsteer2")
helpsteer_typo = _pair_job("helpsteer2", ("correctness", "helpfullness"))
canonical = _pair_job("canonical", ("helpful", "harmless"))


def dialogue(path: str, out: Path) -> None:
    general = out.parent / "general.csv"
    general.write_text("prompt,completion\nq,general reply\n", encoding="utf-8")
    spec = DatasetSpec(name="bad", kind="persona", path=path, general=str(general), persona="p")
    parts = {part: out / f"{part}.parquet" for part in ("sft_train", "sft_eval", "pairs_train", "pairs_eval")}
    load_persona_job(spec, PersonaSplitConfig(), parts, out / "stats.json", offline=True)


DATA_FILES = [
    # missing columns
    pytest.param("in.csv", PKU_HEADER.replace(",safer_response_id", "") + "q,a,b,0\n", pku, "header",
                 "safer_response_id", id="csv-missing-column"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, without(PKU_ROW, "response_1")), pku, 2, "response_1",
                 id="jsonl-missing-field"),
    pytest.param("in.parquet", parquet(without(HS_ROW, "coherence")), helpsteer, "header", "coherence",
                 id="parquet-missing-column"),
    # wrong types and values
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,abc,2,4,1,0\n", helpsteer, 2, "helpfulness",
                 id="csv-score-abc"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "correctness": "abc"}), helpsteer, 2, "correctness",
                 id="jsonl-score-abc"),
    pytest.param("in.jsonl", jsonl(PAIR, {**PAIR_2, "scores_a": [1, "abc"]}), canonical, 2, "scores_a",
                 id="canonical-score-abc"),
    pytest.param("in.csv", 'pair_id,prompt,response_a,response_b,scores_a,scores_b\nx,p,a,b,"[1, 0]",abc\n',
                 canonical, 1, "scores_b", id="canonical-csv-score-list-abc"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "coherence": math.nan}), helpsteer, 2, "coherence",
                 id="jsonl-nan"),
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,3,2,nan,1,0\n", helpsteer, 2, "coherence",
                 id="csv-nan"),
    pytest.param("in.parquet", parquet(PAIR, {**PAIR_2, "scores_b": [0.0, math.nan]}), canonical, 2,
                 "scores_b", id="canonical-parquet-nan"),
    pytest.param("in.csv", HS_HEADER + "q,r,3,2,4,1,0\nq,s,3,2,4,inf,0\n", helpsteer, 2, "complexity",
                 id="csv-inf"),
    pytest.param("in.jsonl", jsonl({**PAIR, "scores_a": [math.inf, 0.0]}), canonical, 1, "scores_a",
                 id="canonical-inf"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, {**PKU_ROW, "better_response_id": 2}), pku, 2,
                 "better_response_id", id="better-id-2"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW, {**PKU_ROW, "safer_response_id": None}), pku, 3,
                 "safer_response_id", id="safer-id-null"),
    pytest.param("in.parquet", parquet(HS_ROW, {**HS_ROW, "helpfulness": 7}), helpsteer, 2, "helpfulness",
                 id="helpsteer-score-7"),
    pytest.param("in.jsonl", jsonl(PAIR, {**PAIR_2, "scores_a": [1.0, 0.0, 1.0]}), canonical, 2, "scores_a",
                 id="canonical-wrong-length"),
    pytest.param("in.jsonl", jsonl(PAIR, PAIR_2, PAIR), canonical, 3, "pair_id",
                 id="canonical-duplicate-pair-id"),
    pytest.param("in.jsonl", "\n" + jsonl(PAIR, PAIR_2, PAIR), canonical, 4, "pair_id",
                 id="canonical-duplicate-after-blank-line"),
    pytest.param("in.jsonl", jsonl(HS_ROW, HS_ROW), helpsteer_typo, "header", "helpfullness",
                 id="unknown-dimension"),
    # empty and broken files
    pytest.param("in.csv", "", pku, "all", "-", id="empty-csv"),
    pytest.param("in.jsonl", "", helpsteer, "all", "-", id="empty-jsonl"),
    pytest.param("in.parquet", b"", canonical, "all", "-", id="empty-parquet"),
    pytest.param("in.jsonl", "  \n\n", pku, "all", "-", id="whitespace-only"),
    pytest.param("in.csv", PKU_HEADER, pku, "all", "-", id="header-only-csv"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW) + '{"prompt": "q",\n' + jsonl(PKU_ROW), pku, 3, "-",
                 id="broken-jsonl-line-3-of-4"),
    pytest.param("in.csv", PKU_HEADER.encode() + b"q,a,b,0,1\nq,a,b\xff\xfe,0,1\n", pku, 2, "response_1",
                 id="csv-non-utf8"),
    pytest.param("in.jsonl", jsonl(PKU_ROW, PKU_ROW).encode() + b'{"prompt": "q", "response_0": "a\xff"}\n',
                 pku, 3, "response_0", id="jsonl-non-utf8"),
    pytest.param("in.csv", PKU_HEADER + 'q,a,b,0,1\n"multi\nline",a,b,0,1\nq,a,b,0,1,extra\n', pku, 3, "-",
                 id="csv-extra-field-after-quoted-newline"),
    # empty text, chat without an assistant, unknown persona format
    pytest.param("in.csv", PKU_HEADER + "q,a,b,0,1\nq2,a,,0,1\n", pku, 2, "response_1", id="empty-response"),
    pytest.param("in.jsonl", jsonl(HS_ROW, {**HS_ROW, "response": "   "}), helpsteer, 2, "response",
                 id="blank-response"),
    pytest.param("in.jsonl", jsonl(LEGACY, {"prompt": "r ->", "completion": ""}), dialogue, 2, "completion",
                 id="legacy-empty-completion"),
    pytest.param("in.jsonl", jsonl({"messages": [USER, ASSISTANT]}, {"messages": [USER]}), dialogue, 2,
                 "messages", id="chat-without-assistant"),
    pytest.param("in.jsonl", jsonl({"text": "q"}), dialogue, "header", "prompt", id="persona-unknown-format"),
    # found by a user's bad-input sweep (issue 17)
    pytest.param("in.csv", PKU_HEADER + 'q,a,b,0,1\n"q2,a,b,0,1\nq3,a,b,0,1\n', pku, 2, "-",
                 id="csv-unclosed-quote"),
    pytest.param("in.jsonl", jsonl(HS_ROW) + jsonl(HS_ROW).replace('"complexity": 1', '"complexity": 1e400'),
                 helpsteer, 2, "complexity", id="jsonl-number-beyond-float64"),
    pytest.param("in.jsonl", jsonl(HS_ROW) + '{"prompt": "q, "response": "r"}\n', helpsteer, 2, "-",
                 id="jsonl-unterminated-string"),
]  # fmt: skip
# ---- the table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Named:
    """What the error must name: a data file's (file, row, field), or a config (key, rule)."""

    file: Path | None = None
    row: int | str | None = None
    field: str | None = None
    key: str | None = None
    rule: str | None = None


Setup = Callable[[Path], tuple[Callable[[], object], Named]]


@dataclass(frozen=True)
class Case:
    id: str
    setup: Setup  # writes the bad input under a scratch directory; returns the job to run and what it names


def _data_case(param) -> Case:
    name, content, load, row, field = param.values

    def setup(tmp: Path):
        path = tmp / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(
            content, encoding="utf-8"
        )
        (tmp / "general.csv").write_text("prompt,completion\nq,general reply\n", encoding="utf-8")
        return (lambda: load(str(path), tmp / "out")), Named(file=path, row=row, field=field)

    return Case(param.id, setup)


def _split_all_ties(tmp: Path):
    path = tmp / "pairs.parquet"
    import numpy as np

    from conflux.data.pairs import make_pair_table, write_pairs

    scores = np.ones((4, 2), dtype=np.float32)
    write_pairs(
        path,
        make_pair_table(
            pair_id=[f"t{i}" for i in range(4)],
            prompt=["p"] * 4,
            response_a=["a"] * 4,
            response_b=["b"] * 4,
            scores_a=scores,
            scores_b=scores,
            dims=("helpful", "harmless"),
            source="test",
        ),
    )
    outputs = {part: tmp / "out" / f"{part}.parquet" for part in SPLIT_NAMES}
    return (lambda: split_pairs_job(path, outputs, tmp / "out" / "stats.json", SplitConfig())), Named(
        file=path, row="all", field="scores_a/scores_b"
    )


DEFAULT_CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))


def _config_case(id: str, edit: Callable[[dict], object], key: str, rule: str) -> Case:
    def setup(tmp: Path):
        raw = copy.deepcopy(DEFAULT_CONFIG)
        edit(raw)
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return (lambda: load_config(path)), Named(key=key, rule=rule)

    return Case(f"config-{id}", setup)


def _resources(where: str, **values):
    def edit(raw: dict) -> None:
        section = raw.setdefault("resources", {})
        for part in where.split(".")[:-1] if "." in where else []:
            section = section.setdefault(part, {})
        section.setdefault(where.split(".")[-1], {}).update(values)

    return edit


INJECTION = "--qos=normal; touch /tmp/x #"
CONFIGS = [
    _config_case(
        "conflict-rate",
        lambda c: c["datasets"]["synth_pku"].update(conflict_rate=1.5),
        "datasets.synth_pku.conflict_rate",
        "maximum",
    ),
    _config_case(
        "dataset-kind",
        lambda c: c["datasets"]["synth_pku"].update(kind="imaginary"),
        "datasets.synth_pku.kind",
        "enum",
    ),
    _config_case(
        "eval-fraction",
        lambda c: c["split"].update(eval_fraction=0),
        "split.eval_fraction",
        "exclusiveMinimum",
    ),
    _config_case(
        "unknown-dataset-key",
        lambda c: c["datasets"]["synth_pku"].update(colour="red"),
        "datasets.synth_pku",
        "additionalProperties",
    ),
    _config_case(
        "missing-n-pairs",
        lambda c: c["datasets"]["synth_pku"].pop("n_pairs"),
        "datasets.synth_pku",
        "required",
    ),
    _config_case("no-seeds", lambda c: c.update(seeds=[]), "seeds", "minItems"),
    _config_case(
        "model-source", lambda c: c["models"]["tiny"].update(source="cloud"), "models.tiny.source", "enum"
    ),
    _config_case(
        "study-unknown-dataset",
        lambda c: c["studies"]["curriculum"].update(datasets=["nope"]),
        "studies.curriculum.datasets.0",
        "refers to",
    ),
    _config_case(
        "study-unknown-model",
        lambda c: c["studies"]["curriculum"].update(models=["gpt"]),
        "studies.curriculum.models.0",
        "refers to",
    ),
    _config_case(
        "study-wrong-kind",
        lambda c: c["studies"]["curriculum"].update(datasets=["persona_ojousama"]),
        "studies.curriculum.datasets.0",
        "kind fits study",
    ),
    _config_case(
        "study-wrong-method",
        lambda c: c["studies"]["persona"].update(methods=["panacea"]),
        "studies.persona.methods.0",
        "method fits study",
    ),
    _config_case(
        "export-wrong-k",
        lambda c: c["export"].update(weights={"synth_pku": [[0.5, 0.5], [0.2, 0.3, 0.5]]}),
        "export.weights.synth_pku[1]",
        "2 non-negative weights",
    ),
    _config_case(
        "export-untrained-method",
        lambda c: (
            c["studies"]["curriculum"].update(methods=["curriculum"])
            or c["export"].update(methods=["panacea"])
        ),
        "export.methods.0",
        "a method of the curriculum study",
    ),
    _config_case(
        "revert-unmerged-lambda",
        lambda c: c["analysis"].update(revert={"methods": ["ties_lam0.3"]}),
        "analysis.revert.methods.0",
        "a trained variant or a configured merge",
    ),
    _config_case(
        "tiny-heads",
        lambda c: c["models"]["tiny"]["tiny"].update(num_heads=5),
        "models.tiny.tiny",
        "divisible",
    ),
    _config_case(
        "revert-module",
        lambda c: c["analysis"].update(revert={"modules": ["q", "mlp"]}),
        "analysis.revert.modules",
        "oneOf",
    ),
    _config_case(
        "mem-zero",
        lambda c: c.update(resources={"default": {"mem_mb": 0}}),
        "resources.default.mem_mb",
        "minimum",
    ),
    _config_case(
        "duplicate-lambdas",
        lambda c: c["analysis"].update(lambdas=[0.5, 0.5]),
        "analysis.lambdas",
        "uniqueItems",
    ),
    _config_case("no-lambdas", lambda c: c["analysis"].update(lambdas=[]), "analysis.lambdas", "minItems"),
    _config_case(
        "density-zero", lambda c: c["analysis"].update(density=0), "analysis.density", "exclusiveMinimum"
    ),
    _config_case(
        "dump-mode", lambda c: c["analysis"].update(dumps={"mode": "all"}), "analysis.dumps.mode", "enum"
    ),
    _config_case(
        "dump-dtype",
        lambda c: c["analysis"].update(dumps={"dtype": "bfloat16"}),
        "analysis.dumps.dtype",
        "enum",
    ),
    _config_case("resume-policy", lambda c: c.update(resume="maybe"), "resume", "enum"),
    _config_case(
        "negative-learning-rate",
        lambda c: c["training"].update(learning_rate=-1),
        "training.learning_rate",
        "exclusiveMinimum",
    ),
    _config_case(
        "preference-max-length",
        lambda c: c["methods"].update(panacea={"max_length": 64}),
        "methods.panacea",
        "not",
    ),
    _config_case(
        "unknown-method",
        lambda c: c["methods"].update(orpo={"beta": 0.1}),
        "methods",
        "additionalProperties",
    ),
    _config_case(
        "ci-level", lambda c: c["evaluation"].update(ci_level=1.5), "evaluation.ci_level", "exclusiveMaximum"
    ),
    # strings that reach sbatch, which the SLURM plugin runs through a shell
    _config_case(
        "slurm-extra-string",
        _resources("rules.sft", slurm_extra=INJECTION),
        "resources.rules.sft.slurm_extra",
        "type",
    ),
    _config_case(
        "slurm-extra-injection",
        _resources("rules.sft", slurm_extra=[INJECTION]),
        "resources.rules.sft.slurm_extra.0",
        "pattern",
    ),
    _config_case(
        "slurm-extra-substitution",
        _resources("training", slurm_extra=["--comment=$(id)"]),
        "resources.training.slurm_extra.0",
        "pattern",
    ),
    _config_case(
        "slurm-extra-backtick",
        _resources("default", slurm_extra=["--comment=`id`"]),
        "resources.default.slurm_extra.0",
        "pattern",
    ),
    _config_case(
        "slurm-extra-newline",
        _resources("analysis", slurm_extra=["--qos=high\nid"]),
        "resources.analysis.slurm_extra.0",
        "pattern",
    ),
    _config_case(
        "gpu-model",
        _resources("training", gpu=1, gpu_model="a100;id"),
        "resources.training.gpu_model",
        "pattern",
    ),
    _config_case("gres", _resources("training", gres="gpu:a100:2|id"), "resources.training.gres", "pattern"),
    _config_case(
        "partition",
        _resources("default", slurm_partition="gpu && id"),
        "resources.default.slurm_partition",
        "pattern",
    ),
    _config_case(
        "account",
        _resources("rules.dpo", slurm_account="lab$(id)"),
        "resources.rules.dpo.slurm_account",
        "pattern",
    ),
    _config_case(
        "constraint", _resources("training", constraint="a100 ib"), "resources.training.constraint", "pattern"
    ),
    _config_case("unknown-rule", _resources("rules.train_everything", mem_mb=10), "resources.rules", "enum"),
]


# ---- model directories, adapters, weight files -------------------------------------------------------------


def _base(tmp: Path) -> Path:
    """A tiny Llama base model directory and a manifest that points at it."""
    tiny_llama().save_pretrained(tmp / "base")
    (tmp / "manifest.json").write_text(json.dumps({"name": "tiny", "load_path": str(tmp / "base")}))
    return tmp / "base"


def _truncate(path: Path, keep: int = -64) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _model_case(id: str, make: Callable[[Path], tuple[Path, int | str, str]]) -> Case:
    """A local base model whose directory ``make`` spoils; it returns the (file, row, field) to be named."""

    def setup(tmp: Path):
        directory = tmp / "model"
        file, row, field = make(directory)
        spec = BaseModelSpec(name="m", source="local", path=str(directory))
        job = lambda: base_model_manifest_job(spec, tmp / "out" / "manifest.json", offline=True)  # noqa: E731
        return job, Named(file=file, row=row, field=field)

    return Case(f"model-{id}", setup)


def _saved(d: Path) -> Path:
    tiny_llama().save_pretrained(d)
    return d


def _sharded(d: Path) -> Path:
    save_checkpoint(d, tiny_llama().state_dict(), shards=2, config=tiny_llama().config.to_dict())
    return d


def _bin_only(d: Path):
    _saved(d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    return d, "all", "weights"


def _garbage_header(d: Path):
    _saved(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    return d / "model.safetensors", "header", "safetensors"


def _bad_index(d: Path):
    _sharded(d)
    (d / "model.safetensors.index.json").write_text("{")
    return d / "model.safetensors.index.json", "all", "weight_map"


def _missing_shard(d: Path):
    _sharded(d)
    (d / "model-00002-of-00002.safetensors").unlink()
    return d / "model.safetensors.index.json", "model-00002-of-00002.safetensors", "weight_map"


def _truncated_shard(d: Path):
    _sharded(d)
    _truncate(d / "model-00001-of-00002.safetensors")
    return d / "model-00001-of-00002.safetensors", "header", "safetensors"


def _truncated(d: Path):
    _saved(d)
    _truncate(d / "model.safetensors", keep=1000)
    return d / "model.safetensors", "header", "safetensors"


def _no_config(d: Path):
    _saved(d)
    (d / "config.json").unlink()
    return d / "config.json", "all", "config.json"


MODELS = [
    _model_case("missing-directory", lambda d: (d, "all", "path")),
    _model_case("a-file-not-a-directory", lambda d: (d, "all", "path") if d.write_text("x") else None),
    _model_case("no-config-json", _no_config),
    _model_case("pickle-weights-only", _bin_only),
    _model_case("truncated-safetensors", _truncated),
    _model_case("garbage-safetensors-header", _garbage_header),
    _model_case("unreadable-index", _bad_index),
    _model_case("index-names-a-missing-shard", _missing_shard),
    _model_case("truncated-shard", _truncated_shard),
]


def _adapter_run(tmp: Path, shared: bool = True) -> Path:
    """A preference run's output directory: adapters/shared, dim0, dim1 saved by the policy."""
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj", "down_proj"))
    policy = PreferencePolicy.create(tiny_llama(), k=2, lora=lora, shared=shared, seed=0)
    policy.save(tmp / "run" / "adapters")
    return tmp / "run"


def _adapter_case(id: str, spoil: Callable[[Path], tuple[Path, int | str, str]], *, evaluation: bool = False):
    """An adapter of a preference run that ``spoil`` damages, met by the dump job (its output must not
    appear) or, with ``evaluation``, by the evaluation's policy loader."""

    def setup(tmp: Path):
        _base(tmp)
        run = _adapter_run(tmp)
        file, row, field = spoil(run / "adapters" / "dim1")

        def job() -> object:
            if evaluation:
                return load_method_policy(tiny_llama(), [run])
            manifest, out = tmp / "manifest.json", tmp / "out" / "dump"
            runs = {"curriculum_stage3": run}
            return dump_task_vectors_job(runs, manifest, out, mode="full", dtype="float32", density=0.2)

        return job, Named(file=file, row=row, field=field)

    return Case(f"adapter-{id}{'-in-evaluation' if evaluation else ''}", setup)


def _corrupt_config(d: Path):
    (d / "adapter_config.json").write_text('{"r": 2,')
    return d / "adapter_config.json", "all", "json"


def _adapter_bin(d: Path):
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    return d / "adapter_model.bin", "all", "weights"


def _adapter_no_weights(d: Path):
    (d / "adapter_model.safetensors").unlink()
    return d / "adapter_model.safetensors", "all", "weights"


def _adapter_truncated(d: Path):
    _truncate(d / "adapter_model.safetensors")
    return d / "adapter_model.safetensors", "header", "safetensors"


def _adapter_not_lora(d: Path):
    config = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    return d / "adapter_config.json", "all", "peft_type"


ADAPTERS = [
    _adapter_case("corrupt-config", _corrupt_config),
    _adapter_case("corrupt-config", _corrupt_config, evaluation=True),
    _adapter_case("pickle-weights", _adapter_bin),
    _adapter_case("pickle-weights", _adapter_bin, evaluation=True),
    _adapter_case("no-weights", _adapter_no_weights),
    _adapter_case("truncated-weights", _adapter_truncated),
    _adapter_case("truncated-weights", _adapter_truncated, evaluation=True),
    _adapter_case("not-lora", _adapter_not_lora),
]


def _weights_case(id: str, spoil: Callable[[dict, Path], tuple[str, int | str, str]]) -> Case:
    """A full fine-tune (``ft``) against the base whose tensors or config ``spoil`` makes disagree, met by
    the dump job; ``spoil`` returns the (file name under ft/, row, field) to be named."""

    def setup(tmp: Path):
        base = _base(tmp)
        tensors = perturbed(tiny_llama(), 1)
        config = json.loads((base / "config.json").read_text())
        name, row, field = spoil(tensors, config)
        save_checkpoint(tmp / "ft", tensors, config=config)

        def job() -> object:
            runs, manifest, out = {"sft": tmp / "ft"}, tmp / "manifest.json", tmp / "out" / "dump"
            return dump_task_vectors_job(runs, manifest, out, mode="trimmed", dtype="float32", density=0.2)

        return job, Named(file=tmp / "ft" / name, row=row, field=field)

    return Case(f"weights-{id}", setup)


def _extra_tensor(tensors: dict, config: dict):
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    return "model.safetensors", "model.layers.0.mlp.extra_proj.weight", "tensor"


def _wrong_shape(tensors: dict, config: dict):
    name = "model.layers.1.self_attn.q_proj.weight"
    tensors[name] = torch.zeros(16, 8)
    return "model.safetensors", name, "shape"


def _other_architecture(tensors: dict, config: dict):
    config["num_hidden_layers"] = 3
    return "config.json", "all", "num_hidden_layers"


def _missing_tensor(tensors: dict, config: dict):
    del tensors["model.norm.weight"]
    return "", "model.norm.weight", "tensor"  # in no file: the directory is named


WEIGHTS = [
    _weights_case("extra-tensor", _extra_tensor),
    _weights_case("wrong-shape", _wrong_shape),
    _weights_case("other-architecture", _other_architecture),
    _weights_case("missing-tensor", _missing_tensor),
]

CASES = [
    *(_data_case(p) for p in DATA_FILES),
    Case("split-every-pair-a-tie", _split_all_ties),
    *CONFIGS,
    *MODELS,
    *ADAPTERS,
    *WEIGHTS,
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_table_covers_every_kind_of_input():
    kinds = {case.id.split("-")[0] for case in CASES}
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert {"config", "model", "adapter", "weights"} <= kinds


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_names_file_and_row_and_field_and_leaves_no_output(tmp_path: Path, case: Case):
    job, named = case.setup(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(ConfluxError) as err:
        job()
    message = str(err.value)
    if named.key is not None:
        assert isinstance(err.value, ConfigError), message
        assert err.value.key == named.key and named.rule in err.value.rule, message
        assert f"'{named.key}'" in message
    else:
        assert isinstance(err.value, DataError), message
        assert Path(err.value.file) == named.file, message
        assert (err.value.row, err.value.field) == (named.row, named.field), message
        assert str(named.file) in message and f"field '{named.field}'" in message
        assert " at at " not in message
    assert _tree(tmp_path) == before, "the failed job left files behind"
