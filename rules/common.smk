import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package lives in src/; the set-up command installs it into .venv, and this keeps a plain `snakemake`
# (conda envs, SLURM jobs) importing the checkout's code rather than some other installed copy.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from conflux.config import config_error_from, offline_requested, parse_config  # noqa: E402
from conflux.sources import source_fingerprint  # noqa: E402

try:
    validate(config, "../config/config.schema.yaml")
except WorkflowError as err:
    raise config_error_from(err) from None

CFG = parse_config(config)
OFFLINE = offline_requested(CFG.offline)
PAIR_DATASETS = sorted(n for n, d in CFG.datasets.items() if not d.is_persona)
PERSONA_DATASETS = sorted(n for n, d in CFG.datasets.items() if d.is_persona)
EMBEDDED_MODELS = sorted(n for n, m in CFG.models.items() if m.source == "embedded")
SPLIT_PARTS = ["agree", "conflict", "agree_sub", "eval_conflict", "eval_agree"]
PERSONA_PARTS = ["sft_train", "sft_eval", "pairs_train", "pairs_eval"]


def _alternatives(names):
    """A wildcard regex matching exactly the given names (or nothing when there are none)."""
    return "|".join(names) if names else "(?!x)x"


wildcard_constraints:
    pair_dataset=_alternatives(PAIR_DATASETS),
    persona_dataset=_alternatives(PERSONA_DATASETS),
    model=_alternatives(sorted(CFG.models)),
    tiny_model=_alternatives(EMBEDDED_MODELS),


# ---- params -------------------------------------------------------------------------------------------------


def get_dataset_spec(wildcards):
    name = wildcards.get("pair_dataset") or wildcards.get("persona_dataset")
    return asdict(CFG.datasets[name])


def get_source_fingerprint(wildcards):
    name = wildcards.get("pair_dataset") or wildcards.get("persona_dataset")
    return source_fingerprint(CFG.datasets[name])


def get_split_config(wildcards):
    return asdict(CFG.split)


def get_persona_split_config(wildcards):
    return asdict(CFG.persona_split)


def get_tiny_config(wildcards):
    return asdict(CFG.models[wildcards.tiny_model].tiny)


def get_model_spec(wildcards):
    spec = asdict(CFG.models[wildcards.model])
    spec.pop("tiny")  # the built directory is the input; its settings are get_tiny_config's business
    return spec


# ---- inputs -------------------------------------------------------------------------------------------------


def get_model_build(wildcards):
    """An embedded model's manifest depends on its built directory; local and hub models have no input."""
    if CFG.models[wildcards.model].source == "embedded":
        return f"results/models/{wildcards.model}/hf"
    return []


def split_outputs(dataset):
    return expand("results/data/{dataset}/split/{part}.parquet", dataset=dataset, part=SPLIT_PARTS) + [
        f"results/data/{dataset}/split/stats.json"
    ]


def persona_outputs(dataset):
    return expand("results/data/{dataset}/persona/{part}.parquet", dataset=dataset, part=PERSONA_PARTS) + [
        f"results/data/{dataset}/persona/stats.json"
    ]


def get_final_output():
    """Everything the default target builds: the data of every study and the base model of every study."""
    targets = []
    for study_name, builder in (("curriculum", split_outputs), ("persona", persona_outputs)):
        study = CFG.study(study_name)
        for dataset in study.datasets:
            targets += builder(dataset)
        targets += [f"results/models/{model}/manifest.json" for model in study.models]
    return sorted(set(targets))
