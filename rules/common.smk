import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package lives in src/; the set-up command installs it into .venv, and this keeps a plain `snakemake`
# (conda envs, SLURM jobs) importing the checkout's code rather than some other installed copy.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from conflux.config import config_error_from, parse_config  # noqa: E402
from conflux.offline import hub_offline  # noqa: E402
from conflux.data.sources import source_fingerprint  # noqa: E402

try:
    validate(config, "../config/config.schema.yaml")
except WorkflowError as err:
    raise config_error_from(err) from None

CFG = parse_config(config)
OFFLINE = hub_offline(CFG.offline)
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
    variant="curriculum_stage[123]|panacea|dpo_soup",
    persona_variant="|".join(["sft", "dpo", *CFG.analysis.merge_variants()]).replace(".", r"\."),
    analysis_variant="curriculum_stage3|panacea|dpo_soup",
    revert_method="sft|dpo",
    seed=r"\d+",
    dim=r"\d+",


# ---- cluster resources --------------------------------------------------------------------------------------

RULE_CLASSES = {
    "load_pairs": "data",
    "split_pairs": "data",
    "load_persona": "data",
    "build_tiny_model": "models",
    "base_model_manifest": "models",
    "reference_logps": "reference",
    "curriculum_stage1": "training",
    "curriculum_stage2": "training",
    "curriculum_stage3": "training",
    "panacea": "training",
    "dpo_soup": "training",
    "sft": "training",
    "dpo": "training",
    "evaluate_method": "evaluation",
    "persona_eval_base": "evaluation",
    "persona_eval": "evaluation",
    "table1": "report",
    "table2": "report",
    "figure2": "report",
    "persona_table": "report",
    "taskvec_stats_persona": "analysis",
    "conflict_sft_dpo": "analysis",
    "taskvec_stats_adapters": "analysis",
    "conflict_dims": "analysis",
    "merge_sft_dpo": "analysis",
    "revert_sweep": "evaluation",  # loads the model and scores/generates like persona_eval: a GPU job
    "key_layers": "report",
    "weight_figures_persona": "report",
    "weight_figures_adapters": "report",
}


def job_resources(rule):
    """resources: of a rule from the config (`resources.<class>` then `resources.rules.<rule>`); what the
    config leaves out falls to the profile's default-resources, so a job asks for GPUs only when configured.
    """
    return CFG.resources_for(RULE_CLASSES[rule], rule)


def job_threads(rule):
    """threads: of a rule: its configured cpus_per_task (the SLURM job's --cpus-per-task), else 1."""
    return CFG.resources_for(RULE_CLASSES[rule], rule).get("cpus_per_task", 1)


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


# ---- evaluation ---------------------------------------------------------------------------------------------

# What each trained method is evaluated as: every curriculum stage (the paper reports the curriculum after each
# stage), Panacea, and DPO-Soup's members interpolated at w.
METHOD_VARIANTS = {
    "curriculum": ["curriculum_stage1", "curriculum_stage2", "curriculum_stage3"],
    "panacea": ["panacea"],
    "dpo_soup": ["dpo_soup"],
}
TWO_DIM_DATASETS = [d for d in PAIR_DATASETS if CFG.datasets[d].k == 2]
MULTI_DIM_DATASETS = [d for d in PAIR_DATASETS if CFG.datasets[d].k > 2]


def eval_variants():
    return [v for m in CFG.study("curriculum").methods for v in METHOD_VARIANTS[m]]


def get_eval_runs(wildcards):
    """The training outputs a method variant is evaluated from (DPO-Soup: all k members)."""
    run = f"results/train/{wildcards.model}/{wildcards.pair_dataset}/seed{wildcards.seed}"
    variant = wildcards.get("variant") or wildcards.analysis_variant
    if variant.startswith("curriculum_stage"):
        return [f"{run}/curriculum/stage{variant[-1]}"]
    if variant == "dpo_soup":
        return [f"{run}/dpo_soup/dim{i}" for i in range(CFG.datasets[wildcards.pair_dataset].k)]
    return [f"{run}/{variant}"]


def get_eval_records(wildcards):
    """Records of every method variant and seed of one (model, dataset): the input of its tables."""
    return expand(
        "results/eval/{model}/{dataset}/seed{seed}/{variant}.parquet",
        model=wildcards.model,
        dataset=wildcards.pair_dataset,
        seed=CFG.seeds,
        variant=eval_variants(),
    )


def get_bootstrap(wildcards):
    ev = CFG.evaluation
    return {"resamples": ev.bootstrap_resamples, "level": ev.ci_level, "seed": ev.bootstrap_seed}


def get_persona_tokenize(wildcards):
    cfg = CFG.train("sft", wildcards.persona_dataset)
    return {"max_length": cfg.max_length, "truncation": cfg.truncation}


def persona_variants():
    """Trained persona variants: SFT and DPO, and their merges when both are trained."""
    methods = list(CFG.study("persona").methods)
    return methods + (CFG.analysis.merge_variants() if {"sft", "dpo"} <= set(methods) else [])


def merge_grid_outputs():
    """merge_sft_dpo's outputs: one model directory per merge variant (λ of analysis.lambdas), as the
    persona evaluation names them; one job merges SFT and DPO once for the whole grid."""
    root = "results/merges/{model}/{persona_dataset}/seed{seed}"
    return [directory(f"{root}/{variant}") for variant in CFG.analysis.merge_variants()]


def get_persona_model(wildcards):
    """A persona variant's weights: a training output, or a merge of SFT and DPO."""
    v = wildcards.persona_variant
    if v in ("sft", "dpo"):
        return f"results/train/{wildcards.model}/{wildcards.persona_dataset}/seed{wildcards.seed}/{v}"
    return f"results/merges/{wildcards.model}/{wildcards.persona_dataset}/seed{wildcards.seed}/{v}"


def get_persona_metrics(wildcards):
    """The base model once, and each trained or merged persona variant per seed."""
    root = f"results/eval/{wildcards.model}/{wildcards.persona_dataset}"
    return [f"{root}/base/persona.json"] + expand(
        "{root}/seed{seed}/persona_{variant}.json",
        root=root,
        seed=CFG.seeds,
        variant=persona_variants(),
    )


def get_analysis_runs(wildcards):
    """Training outputs whose adapters are analysed, keyed by label (DPO-Soup: one run per dimension)."""
    runs = get_eval_runs(wildcards)
    if wildcards.analysis_variant == "dpo_soup":
        return {f"dim{i}": run for i, run in enumerate(runs)}
    return {wildcards.analysis_variant: runs[0]}


def revert_methods():
    """Persona variants the revert sweep covers: those of analysis.revert that the study trains."""
    return [m for m in CFG.analysis.revert.methods if m in CFG.study("persona").methods]


def get_revert_sweeps(wildcards):
    root = f"results/analysis/{wildcards.model}/{wildcards.persona_dataset}"
    return [f"{root}/seed{seed}/revert_{wildcards.revert_method}.json" for seed in CFG.seeds]


def _figures(root, suffix=""):
    return [
        f"{root}/{name}{suffix}.{ext}"
        for name in ("weight_heatmaps", "layer_norms")
        for ext in ("png", "svg")
    ]


def analysis_outputs(study_name, dataset, model, seed):
    root = f"results/analysis/{model}/{dataset}/seed{seed}"
    figures = f"results/tables/{model}/{dataset}/seed{seed}"
    methods = CFG.study(study_name).methods
    if study_name == "persona":
        if not {"sft", "dpo"} <= set(methods):
            return []
        return [f"{root}/taskvec_stats.parquet", f"{root}/conflict_sft_dpo.parquet", *_figures(figures)]
    variants = [v for v in ("curriculum_stage3", "dpo_soup") if v in eval_variants()]
    tables = [f"{root}/{kind}_{v}.parquet" for v in variants for kind in ("taskvec_stats", "conflict_dims")]
    return tables + [f for v in variants for f in _figures(figures, f"_{v}")]


def evaluation_outputs(study_name, dataset, model):
    tables = f"results/tables/{model}/{dataset}"
    if study_name == "persona":
        key_layers = [
            f"{tables}/key_layers_{m}.{ext}" for m in revert_methods() for ext in ("csv", "md", "png", "svg")
        ]
        return [f"{tables}/persona.csv", f"{tables}/persona.md", *key_layers]
    if not eval_variants():
        return []
    if CFG.datasets[dataset].k == 2:
        return [f"{tables}/table1.csv", f"{tables}/table1.md"]
    return [
        f"{tables}/table2_settings.csv",
        f"{tables}/table2_summary.csv",
        f"{tables}/figure2.png",
        f"{tables}/figure2.svg",
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
                    targets += analysis_outputs(study_name, dataset, model, seed)
                targets += evaluation_outputs(study_name, dataset, model)
    return sorted(set(targets))
