import re
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The package lives in src/; the set-up command installs it into .venv, and this keeps a plain `snakemake`
# (conda envs, SLURM jobs) importing the checkout's code rather than some other installed copy.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from conflux.config import RULE_CLASSES, config_error_from, parse_config  # noqa: E402
from conflux.methods import (  # noqa: E402
    METHODS,
    ablation_variants,
    compared_variants,
    final_variants,
    STAGES,
    analysed_variants,
    revertable_methods,
    stage,
    variants,
)
from conflux.hub import hub_offline  # noqa: E402
from conflux.plan.jobs import plan_rows, refuse_unfit  # noqa: E402
from conflux.data.sources import source_fingerprint  # noqa: E402

try:
    validate(config, "../config/config.schema.yaml")
except WorkflowError as err:
    raise config_error_from(err) from None

CFG = parse_config(config)
# The memory plan of every job; one that cannot fit its device stops the workflow here, before any job runs.
PLAN_ROWS = plan_rows(CFG, "results")
refuse_unfit(PLAN_ROWS)
PLAN = [row.as_record() for row in PLAN_ROWS]
OFFLINE = hub_offline(CFG.offline)
PAIR_DATASETS = sorted(n for n, d in CFG.datasets.items() if not d.is_persona)
PERSONA_DATASETS = sorted(n for n, d in CFG.datasets.items() if d.is_persona)
EMBEDDED_MODELS = sorted(n for n, m in CFG.models.items() if m.source == "embedded")
SPLIT_PARTS = ["agree", "conflict", "agree_sub", "eval_conflict", "eval_agree"]
# The two persona models that merge_sft_dpo combines.
SFT_DPO = ("sft", "dpo")
PERSONA_PARTS = ["sft_train", "sft_eval"]


def _alternatives(names):
    """A wildcard regex matching exactly the given names (or nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


wildcard_constraints:
    pair_dataset=_alternatives(PAIR_DATASETS),
    persona_dataset=_alternatives(PERSONA_DATASETS),
    model=_alternatives(sorted(CFG.models)),
    tiny_model=_alternatives(EMBEDDED_MODELS),
    ref_part="agree|conflict|eval_conflict|eval_agree",
    variant=_alternatives(variants("curriculum")),
    analysis_variant=_alternatives(analysed_variants()),
    revert_method=_alternatives([*revertable_methods(), *CFG.analysis.merge_variants()]),
    persona_method=_alternatives(variants("persona")),
    dataset=_alternatives(sorted(CFG.datasets)),
    seed=r"\d+",
    dim=r"\d+",


# ---- cluster resources --------------------------------------------------------------------------------------


def job_resources(rule):
    """resources: of a rule from the config (`resources.<class>` then `resources.rules.<rule>`); what the
    config leaves out falls to the profile's default-resources, so a job asks for GPUs only when configured.
    ``gpu_mem_gb`` is the memory plan's and not a resource the cluster knows.
    """
    spec = CFG.resources_for(RULE_CLASSES[rule], rule)
    spec.pop("gpu_mem_gb", None)
    batched = CFG.batch_seeds and rule in SEED_BATCHED_RULES
    if batched and "runtime" in spec:
        spec["runtime"] *= len(CFG.seeds)  # the configured time is a seed's; the job trains them all
    return spec


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


def get_model_spec_of(name):
    spec = asdict(CFG.models[name])
    spec.pop("tiny")  # the built directory is the input; its settings are get_tiny_config's business
    return spec


def get_model_spec(wildcards):
    return get_model_spec_of(wildcards.model)


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


def train_output(rule, dataset="pair_dataset"):
    """A training rule's output directory pattern, from the method registry."""
    return f"results/train/{{model}}/{{{dataset}}}/seed{{seed}}/{stage(rule).output}"


def checkpoint_dir(wildcards, output):
    """Trainer checkpoints (one directory per output, in seed order) sit beside, not inside, the outputs, so
    a failed job's rerun can resume."""
    return [str(out).replace("results/train/", "results/checkpoints/", 1) for out in output]


# ---- seeds per job (config: batch_seeds) --------------------------------------------------------------------
# A per-seed rule has one job per seed, or with batch_seeds one job for every seed (one process start instead
# of one per seed: on a laptop a tiny job is mostly its imports). Its seed-dependent inputs, outputs and logs
# are lists in seed order either way, and params.seeds names the seeds, so one script serves both.


# The rules whose params.seeds is job_seeds: every training rule, SFT→DPO's per-seed reference pass, and the
# evaluations of each seed's trained methods.
SEED_BATCHED_RULES = {*STAGES, "reference_logps_sft_dpo", "evaluate_method", "persona_eval"}


def per_seed(pattern):
    """The paths of a per-seed pattern that one job reads or writes: the pattern itself, or with batch_seeds
    the pattern of every configured seed (its other wildcards kept)."""
    if CFG.batch_seeds:
        return expand(pattern, seed=CFG.seeds, allow_missing=True)
    return [pattern]


def per_seed_dirs(pattern):
    return [directory(path) for path in per_seed(pattern)]


def per_seed_benchmark(pattern):
    """A job's one benchmark file: ``seed{seed}`` becomes ``seeds`` when the job covers every seed."""
    return pattern.replace("seed{seed}", "seeds") if CFG.batch_seeds else pattern


def job_seeds(wildcards):
    """params.seeds: the seeds a per-seed rule's job covers, in the order of its per_seed lists."""
    return list(CFG.seeds) if CFG.batch_seeds else [int(wildcards.seed)]


def one_seed(wildcards):
    """params.seeds where batch_seeds does not apply (persona_eval_merges: analysed seeds): the job's own."""
    return [int(wildcards.seed)]


def seed_major(patterns):
    """A per-seed rule's several outputs, for each seed of the job: seed by seed, each in the given order."""
    return [path for paths in zip(*(per_seed(p) for p in patterns)) for path in paths]


# ---- inputs -------------------------------------------------------------------------------------------------


def soup_pairs(wildcards):
    """dpo_soup's pairs; a dim<i> beyond the dataset's k dimensions is refused while the DAG is planned."""
    k = CFG.datasets[wildcards.pair_dataset].k
    if int(wildcards.dim) >= k:
        raise ValueError(
            f"dpo_soup: dim{wildcards.dim} does not exist: dataset '{wildcards.pair_dataset}' has k={k} "
            f"dimensions (dim0..dim{k - 1})"
        )
    return [split_part("agree"), split_part("conflict")]


def reference(part):
    """Cached reference log-probs of a split part; agree_sub is a subset of agree and reads agree's cache."""
    part = "agree" if part == "agree_sub" else part
    return f"results/reference/{{model}}/{{pair_dataset}}/{part}.parquet"


def pairs_part(part):
    """The DPO pairs of a persona dataset's part (train, eval) for one base model: the rejected replies may be
    the model's own (general: generate)."""
    return f"results/data/{{persona_dataset}}/persona/{{model}}/pairs_{part}.parquet"


def get_general_replies(wildcards):
    """persona_pairs' generated general replies (generate_general's), or none when a general file is given."""
    if CFG.datasets[wildcards.persona_dataset].generates_general:
        root = f"results/data/{wildcards.persona_dataset}/persona/{wildcards.model}"
        return {"general": f"{root}/general_generated.parquet"}
    return {}


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

TWO_DIM_DATASETS = [d for d in PAIR_DATASETS if CFG.datasets[d].k == 2]
MULTI_DIM_DATASETS = [d for d in PAIR_DATASETS if CFG.datasets[d].k > 2]


def eval_variants():
    """Variants in the curriculum study's tables: every stage of every configured method."""
    return variants("curriculum", CFG.study("curriculum").methods)


def stage_dirs(dataset, model, seed, rule):
    """The output directories of one training rule; a per-dimension stage has one per dimension."""
    run = f"results/train/{model}/{dataset}/seed{seed}"
    out = stage(rule).output
    if stage(rule).per_dimension:
        return [f"{run}/{out.format(dim=i)}" for i in range(CFG.datasets[dataset].k)]
    return [f"{run}/{out}"]


def get_eval_runs(wildcards):
    """The training outputs a method variant is evaluated from (DPO-Soup: all k members)."""
    variant = wildcards.get("variant") or wildcards.analysis_variant
    return stage_dirs(wildcards.pair_dataset, wildcards.model, wildcards.seed, variant)


def get_eval_runs_by_method(wildcards):
    """Named inputs of evaluate_method: ``run_<method>``, the training outputs of each evaluated method, for
    each seed of the job in seed order (DPO-Soup: k per seed)."""
    ds, model = wildcards.pair_dataset, wildcards.model
    return {
        f"run_{v}": [d for seed in job_seeds(wildcards) for d in stage_dirs(ds, model, seed, v)]
        for v in eval_variants()
    }


def eval_records_outputs():
    """evaluate_method's outputs: one records file per evaluated method, in eval_variants() order."""
    root = "results/eval/{model}/{pair_dataset}/seed{seed}"
    return [f"{root}/{variant}.parquet" for variant in eval_variants()]


def get_export_weights(wildcards):
    """The weight vectors one dataset's policies are exported at (config: export.weights)."""
    return CFG.export.weights[wildcards.pair_dataset]


def export_outputs(dataset, model, seed):
    """results/export/... of every exported variant, for a dataset listed under export.weights."""
    if dataset not in CFG.export.weights:
        return []
    root = f"results/export/{model}/{dataset}/seed{seed}"
    return [f"{root}/{variant}" for variant in CFG.export.variants()]


def _records(wildcards, variants):
    return expand(
        "results/eval/{model}/{dataset}/seed{seed}/{variant}.parquet",
        model=wildcards.model,
        dataset=wildcards.pair_dataset,
        seed=CFG.seeds,
        variant=variants,
    )


def get_eval_records(wildcards):
    """Records of the compared methods (each by its final stage) and every seed of one (model, dataset): the
    input of Table 1, Table 2 and Figure 2."""
    return _records(wildcards, compared_variants("curriculum", CFG.study("curriculum").methods))


def get_final_records(wildcards):
    """Records of every method's final stage, variants included: the input of the length-bias analysis."""
    return _records(wildcards, final_variants("curriculum", CFG.study("curriculum").methods))


def get_ablation_records(wildcards):
    """Records of every stage of the multi-stage methods (the curriculum after stages 1, 2, 3)."""
    return _records(wildcards, ablation_variants("curriculum", CFG.study("curriculum").methods))


def get_bootstrap(wildcards):
    ev = CFG.evaluation
    return {"resamples": ev.bootstrap_resamples, "level": ev.ci_level, "seed": ev.bootstrap_seed}


def get_persona_tokenize(wildcards):
    cfg = CFG.train("sft", wildcards.persona_dataset)
    return {"max_length": cfg.max_length, "truncation": cfg.truncation}


def sft_and_dpo_trained():
    """Whether the persona study trains both models that the SFT-vs-DPO analyses and merges compare."""
    return set(SFT_DPO) <= set(CFG.study("persona").methods)


def persona_trained():
    """The persona study's trained variants (sft, dpo, sft_dpo as configured), in registry order."""
    return variants("persona", CFG.study("persona").methods)


def compares_methods():
    """Whether the persona study trains two or more methods, which its stats and CL-L2 tables compare."""
    return len(persona_trained()) >= 2


def compares_datasets():
    """Whether the persona study has two or more datasets, which the dataset-vs-dataset CL-L2 compares."""
    return len(CFG.study("persona").datasets) >= 2


PERSONA_DATASETS_TRAINED = list(CFG.study("persona").datasets)


def get_persona_method_runs(wildcards):
    """The trained persona runs of one (model, dataset, seed), by method: what the stats and CL-L2 compare."""
    ds, model, seed = wildcards.persona_dataset, wildcards.model, wildcards.seed
    return {v: stage_dirs(ds, model, seed, v)[0] for v in persona_trained()}


def get_dataset_runs(wildcards):
    """One persona method's runs on every dataset of the persona study, by dataset (dataset-vs-dataset CL-L2)."""
    return {
        ds: stage_dirs(ds, wildcards.model, wildcards.seed, wildcards.persona_method)[0]
        for ds in PERSONA_DATASETS_TRAINED
    }


def get_method_conflicts(wildcards):
    root = f"results/analysis/{wildcards.model}/{wildcards.persona_dataset}"
    return {f"seed{seed}": f"{root}/seed{seed}/conflict_methods.parquet" for seed in CFG.analysis_seeds()}


def get_dataset_conflicts(wildcards):
    root = f"results/analysis/{wildcards.model}/persona_datasets"
    method = wildcards.persona_method
    return {f"seed{s}": f"{root}/seed{s}/conflict_{method}.parquet" for s in CFG.analysis_seeds()}


def persona_variants():
    """Trained persona variants, and the SFT+DPO merges when both are trained."""
    return persona_trained() + (CFG.analysis.merge_variants() if sft_and_dpo_trained() else [])


def merge_grid_outputs():
    """merge_sft_dpo's outputs: one model directory per merge variant (λ of analysis.lambdas), as the
    persona evaluation names them; one job merges SFT and DPO once for the whole grid."""
    root = "results/merges/{model}/{persona_dataset}/seed{seed}"
    return [directory(f"{root}/{variant}") for variant in CFG.analysis.merge_variants()]


def persona_model_dir(wildcards, variant, seed=None):
    """A persona variant's weights (of the job's seed, or of ``seed``): a training output, or a merge of SFT
    and DPO."""
    seed = wildcards.seed if seed is None else seed
    if variant in STAGES:
        return stage_dirs(wildcards.persona_dataset, wildcards.model, seed, variant)[0]
    return f"results/merges/{wildcards.model}/{wildcards.persona_dataset}/seed{seed}/{variant}"


def persona_merged():
    """The persona variants made by merging (SFT+DPO at each λ), evaluated per analysed seed."""
    return [v for v in persona_variants() if v not in persona_trained()]


def persona_metrics_outputs(variants):
    """The metrics files of the given persona variants of one (model, dataset, seed)."""
    root = "results/eval/{model}/{persona_dataset}/seed{seed}"
    return [f"{root}/persona_{variant}.json" for variant in variants]


def persona_models(variants, seeds):
    """An input function of persona_eval(_merges): named inputs ``model_<variant>``, each variant's weights
    for each of the job's ``seeds(wildcards)``, in seed order."""
    return lambda wc: {f"model_{v}": [persona_model_dir(wc, v, seed) for seed in seeds(wc)] for v in variants}


def get_persona_metrics(wildcards):
    """The base model once, each trained persona variant per seed, and the SFT+DPO merges (weight analysis)
    per analysed seed (analysis.seeds)."""
    root = f"results/eval/{wildcards.model}/{wildcards.persona_dataset}"
    trained = expand("{root}/seed{seed}/persona_{variant}.json", root=root, seed=CFG.seeds,
                     variant=persona_trained())  # fmt: skip
    merged = expand("{root}/seed{seed}/persona_{variant}.json", root=root, seed=CFG.analysis_seeds(),
                    variant=persona_merged())  # fmt: skip
    return [f"{root}/base/persona.json", *trained, *merged]


def get_analysis_runs(wildcards):
    """Training outputs whose adapters are analysed, keyed by label (DPO-Soup: one run per dimension)."""
    runs = get_eval_runs(wildcards)
    if stage(wildcards.analysis_variant).per_dimension:
        return {f"dim{i}": run for i, run in enumerate(runs)}
    return {wildcards.analysis_variant: runs[0]}


def revert_methods():
    """Persona variants the revert sweep covers (trained ones and named SFT+DPO merges)."""
    return CFG.revert_variants()


def get_persona_run(wildcards):
    """The model directory a job names (its revert_method or persona_method): a training output, or an
    SFT+DPO merge."""
    return persona_model_dir(wildcards, wildcards.get("revert_method") or wildcards.persona_method)


def get_revert_sweeps(wildcards):
    root = f"results/analysis/{wildcards.model}/{wildcards.persona_dataset}"
    return [f"{root}/seed{seed}/revert_{wildcards.revert_method}.json" for seed in CFG.analysis_seeds()]


def _figures(root, suffix=""):
    return [
        f"{root}/{name}{suffix}.{ext}"
        for name in ("weight_heatmaps", "layer_norms")
        for ext in ("png", "svg")
    ]


def dump_outputs(dumped, dataset, model, seed):
    """Task-vector dump directories of the given methods or variants (none when analysis.dumps.mode is none)."""
    if CFG.analysis.dumps.mode == "none":
        return []
    return [f"results/dumps/{model}/{dataset}/seed{seed}/{name}" for name in dumped]


def analysis_outputs(study_name, dataset, model, seed):
    root = f"results/analysis/{model}/{dataset}/seed{seed}"
    figures = f"results/tables/{model}/{dataset}/seed{seed}"
    if study_name == "persona":
        dumps = dump_outputs(persona_trained(), dataset, model, seed)
        if not compares_methods():
            return dumps
        return [
            f"{root}/taskvec_stats.parquet",
            f"{root}/conflict_methods.parquet",
            *_figures(figures),
            *dumps,
        ]
    analysed = [v for v in analysed_variants() if v in eval_variants()]
    tables = [f"{root}/{kind}_{v}.parquet" for v in analysed for kind in ("taskvec_stats", "conflict_dims")]
    figures = [f for v in analysed for f in _figures(figures, f"_{v}")]
    return tables + figures + dump_outputs(analysed, dataset, model, seed)


def get_curve_runs(wildcards):
    """Every training run of one (model, dataset), by run name: [(seed, output directory)] each."""
    dataset = wildcards.dataset
    study = "persona" if CFG.datasets[dataset].is_persona else "curriculum"
    runs = {}
    for variant in variants(study, CFG.study(study).methods):
        for seed in CFG.seeds:
            dirs = stage_dirs(dataset, wildcards.model, seed, variant)
            for d in dirs:
                name = variant if len(dirs) == 1 else f"{variant}/{Path(d).name}"
                runs.setdefault(name, []).append((seed, d))
    return runs


def get_curve_inputs(wildcards):
    return [d for pairs in get_curve_runs(wildcards).values() for _, d in pairs]


def evaluation_outputs(study_name, dataset, model):
    tables = f"results/tables/{model}/{dataset}"
    curves = [f"{tables}/training_curves{kind}.{ext}" for kind in ("", "_methods") for ext in ("png", "svg")]
    kinds = ("csv", "md", "html", "png", "svg")  # every file a table rule writes is a target of the run
    if study_name == "persona":
        key_layers = [f"{tables}/key_layers_{m}.{ext}" for m in revert_methods() for ext in kinds]
        conflicts = [f"{tables}/conflict_methods.{ext}" for ext in kinds] if compares_methods() else []
        return [*(f"{tables}/persona.{ext}" for ext in kinds[:3]), *key_layers, *conflicts, *curves]
    if not eval_variants():
        return []
    methods = CFG.study("curriculum").methods
    ablation = (
        [f"{tables}/ablation.{ext}" for ext in kinds[:3]] if ablation_variants("curriculum", methods) else []
    )
    ablation += [f"{tables}/length_bias.{ext}" for ext in kinds]
    if CFG.datasets[dataset].k == 2:
        return [*(f"{tables}/table1.{ext}" for ext in kinds[:3]), *ablation, *curves]
    table2 = [f"{tables}/table2_{part}.{ext}" for part in ("settings", "summary") for ext in kinds[:3]]
    figures = [f"{tables}/figure{n}.{ext}" for n in (2, 3) for ext in ("png", "svg")]
    return [*table2, *figures, *ablation, *curves]


def training_outputs(dataset, model, seed, method):
    return [d for rule in METHODS[method].rules for d in stage_dirs(dataset, model, seed, rule)]


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
                    if seed not in CFG.analysis_seeds():
                        continue  # analysis.seeds: the weight analysis and exports of some seeds only
                    targets += analysis_outputs(study_name, dataset, model, seed)
                    if study_name == "curriculum":
                        targets += export_outputs(dataset, model, seed)
                targets += evaluation_outputs(study_name, dataset, model)
    targets += dataset_conflict_outputs()
    return sorted(set(targets))


def dataset_conflict_outputs():
    """CL-L2 between the persona study's datasets, per trained method: per seed, and the tables over seeds."""
    if not compares_datasets():
        return []
    targets = []
    for model in CFG.study("persona").models:
        for method in persona_trained():
            targets += [f"results/tables/{model}/persona_datasets/conflict_{method}.{ext}"
                        for ext in ("csv", "md", "html", "png", "svg")]  # fmt: skip
            targets += [f"results/analysis/{model}/persona_datasets/seed{seed}/conflict_{method}.parquet"
                        for seed in CFG.analysis_seeds()]  # fmt: skip
    return targets
