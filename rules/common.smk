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
    ref_part="agree|conflict|eval_conflict|eval_agree",
    seed=r"\d+",
    dim=r"\d+",


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


def get_tokenize(wildcards):
    """Tokenization of the cached reference log-probs: the dataset's resolved training settings."""
    cfg = CFG.train("curriculum_stage1", wildcards.pair_dataset)
    return {"max_length": cfg.max_length, "truncation": cfg.truncation}


def train_params(method):
    """params function: the resolved TrainConfig of ``method`` on the job's dataset, as a dict."""

    def params(wildcards):
        dataset = wildcards.get("pair_dataset") or wildcards.get("persona_dataset")
        return CFG.train(method, dataset).as_dict()

    return params


def checkpoint_dir(wildcards, output):
    """Trainer checkpoints sit beside, not inside, the output, so a failed job's rerun can resume."""
    return str(output[0]).replace("results/train/", "results/checkpoints/", 1)


# ---- inputs -------------------------------------------------------------------------------------------------


def reference(part):
    """Cached reference log-probs of a split part; agree_sub is a subset of agree and reads agree's cache."""
    part = "agree" if part == "agree_sub" else part
    return f"results/reference/{{model}}/{{pair_dataset}}/{part}.parquet"


def split_part(part):
    return f"results/data/{{pair_dataset}}/split/{part}.parquet"


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


def training_outputs(dataset, model, seed, method):
    run = f"results/train/{model}/{dataset}/seed{seed}"
    if method == "curriculum":
        return [f"{run}/curriculum/stage{i}" for i in (1, 2, 3)]
    if method == "dpo_soup":
        return [f"{run}/dpo_soup/dim{i}" for i in range(CFG.datasets[dataset].k)]
    return [f"{run}/{method}"]


def get_final_output():
    """Everything the default target builds: data, base models and every trained method of each study."""
    targets = []
    for study_name, builder in (("curriculum", split_outputs), ("persona", persona_outputs)):
        study = CFG.study(study_name)
        for dataset in study.datasets:
            targets += builder(dataset)
        targets += [f"results/models/{model}/manifest.json" for model in study.models]
        for dataset in study.datasets:
            for model in study.models:
                for seed in CFG.seeds:
                    for method in study.methods:
                        targets += training_outputs(dataset, model, seed, method)
    return sorted(set(targets))
