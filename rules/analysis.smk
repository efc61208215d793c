rule taskvec_stats_persona:
    input:
        runs=lambda wildcards: list(get_persona_method_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{persona_dataset}/seed{seed}/taskvec_stats.parquet",
    log:
        "logs/taskvec_stats_persona/{model}/{persona_dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/taskvec_stats_persona/{model}/{persona_dataset}/seed{seed}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("taskvec_stats_persona")
    resources:
        **job_resources("taskvec_stats_persona"),
    params:
        runs=get_persona_method_runs,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/taskvec_stats.py"


rule conflict_methods:
    input:
        runs=lambda wildcards: list(get_persona_method_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{persona_dataset}/seed{seed}/conflict_methods.parquet",
    log:
        "logs/conflict_methods/{model}/{persona_dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/conflict_methods/{model}/{persona_dataset}/seed{seed}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_methods")
    resources:
        **job_resources("conflict_methods"),
    params:
        runs=get_persona_method_runs,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/conflict_table.py"


# CL-L2 between the datasets of the persona study (general vs ojousama vs student), per trained method.
rule conflict_datasets:
    input:
        runs=lambda wildcards: list(get_dataset_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/persona_datasets/seed{seed}/conflict_{persona_method}.parquet",
    log:
        "logs/conflict_datasets/{model}/seed{seed}/{persona_method}.log",
    benchmark:
        "benchmarks/conflict_datasets/{model}/seed{seed}/{persona_method}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_datasets")
    resources:
        **job_resources("conflict_datasets"),
    params:
        runs=get_dataset_runs,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/conflict_table.py"


rule taskvec_stats_adapters:
    input:
        runs=lambda wildcards: list(get_analysis_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{pair_dataset}/seed{seed}/taskvec_stats_{analysis_variant}.parquet",
    log:
        "logs/taskvec_stats_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.log",
    benchmark:
        "benchmarks/taskvec_stats_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("taskvec_stats_adapters")
    resources:
        **job_resources("taskvec_stats_adapters"),
    params:
        runs=get_analysis_runs,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/taskvec_stats.py"


rule conflict_dims:
    input:
        runs=lambda wildcards: list(get_analysis_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{pair_dataset}/seed{seed}/conflict_dims_{analysis_variant}.parquet",
    log:
        "logs/conflict_dims/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.log",
    benchmark:
        "benchmarks/conflict_dims/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_dims")
    resources:
        **job_resources("conflict_dims"),
    params:
        runs=get_analysis_runs,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/conflict_table.py"


rule merge_sft_dpo:
    input:
        sft=train_output("sft", "persona_dataset"),
        dpo=train_output("dpo", "persona_dataset"),
        manifest="results/models/{model}/manifest.json",
    output:
        merge_grid_outputs(),
    log:
        "logs/merge_sft_dpo/{model}/{persona_dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/merge_sft_dpo/{model}/{persona_dataset}/seed{seed}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("merge_sft_dpo")
    resources:
        **job_resources("merge_sft_dpo"),
    params:
        lambdas=CFG.analysis.lambdas,
        method=CFG.analysis.merge_method,
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/merge_sft_dpo.py"


rule revert_sweep:
    input:
        model=get_persona_run,
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
        pairs_eval=pairs_part("eval"),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{persona_dataset}/seed{seed}/revert_{revert_method}.json",
    log:
        "logs/revert_sweep/{model}/{persona_dataset}/seed{seed}/{revert_method}.log",
    benchmark:
        "benchmarks/revert_sweep/{model}/{persona_dataset}/seed{seed}/{revert_method}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("revert_sweep")
    resources:
        **job_resources("revert_sweep"),
    params:
        seed=lambda wildcards: int(wildcards.seed),
        tokenize=get_persona_tokenize,
        generation=CFG.evaluation.generation,
        revert=asdict(CFG.analysis.revert),
    script:
        "../workflow/scripts/revert_sweep.py"


rule key_layers:
    input:
        sweeps=get_revert_sweeps,
        base="results/eval/{model}/{persona_dataset}/base/persona.json",
    output:
        csv="results/tables/{model}/{persona_dataset}/key_layers_{revert_method}.csv",
        md="results/tables/{model}/{persona_dataset}/key_layers_{revert_method}.md",
        html=report(
            "results/tables/{model}/{persona_dataset}/key_layers_{revert_method}.html",
            caption="../report/key_layers.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"table": "Key layers and parameters ({revert_method})"},
        ),
        png=report(
            "results/tables/{model}/{persona_dataset}/key_layers_{revert_method}.png",
            caption="../report/key_layers.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"figure": "Revert effect ({revert_method})"},
        ),
        svg="results/tables/{model}/{persona_dataset}/key_layers_{revert_method}.svg",
    log:
        "logs/key_layers/{model}/{persona_dataset}/{revert_method}.log",
    benchmark:
        "benchmarks/key_layers/{model}/{persona_dataset}/{revert_method}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("key_layers")
    resources:
        **job_resources("key_layers"),
    params:
        label=lambda wildcards: f"{wildcards.persona_dataset} / {wildcards.model}",
    script:
        "../workflow/scripts/key_layers.py"


rule weight_figures_persona:
    input:
        stats="results/analysis/{model}/{persona_dataset}/seed{seed}/taskvec_stats.parquet",
        conflict="results/analysis/{model}/{persona_dataset}/seed{seed}/conflict_methods.parquet",
    output:
        heatmap_png=report(
            "results/tables/{model}/{persona_dataset}/seed{seed}/weight_heatmaps.png",
            caption="../report/weight_heatmaps.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"figure": "Task-vector heatmaps, seed {seed}"},
        ),
        heatmap_svg="results/tables/{model}/{persona_dataset}/seed{seed}/weight_heatmaps.svg",
        norms_png=report(
            "results/tables/{model}/{persona_dataset}/seed{seed}/layer_norms.png",
            caption="../report/layer_norms.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"figure": "Per-layer norms SFT vs DPO, seed {seed}"},
        ),
        norms_svg="results/tables/{model}/{persona_dataset}/seed{seed}/layer_norms.svg",
    log:
        "logs/weight_figures_persona/{model}/{persona_dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/weight_figures_persona/{model}/{persona_dataset}/seed{seed}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("weight_figures_persona")
    resources:
        **job_resources("weight_figures_persona"),
    params:
        label=lambda wildcards: f"{wildcards.persona_dataset} / {wildcards.model}, seed {wildcards.seed}",
    script:
        "../workflow/scripts/weight_figures.py"


rule weight_figures_adapters:
    input:
        stats="results/analysis/{model}/{pair_dataset}/seed{seed}/taskvec_stats_{analysis_variant}.parquet",
        conflict="results/analysis/{model}/{pair_dataset}/seed{seed}/conflict_dims_{analysis_variant}.parquet",
    output:
        heatmap_png=report(
            "results/tables/{model}/{pair_dataset}/seed{seed}/weight_heatmaps_{analysis_variant}.png",
            caption="../report/weight_heatmaps.rst",
            category="Weight analysis",
            subcategory="{pair_dataset} / {model}",
            labels={"figure": "Adapter heatmaps, {analysis_variant}, seed {seed}"},
        ),
        heatmap_svg="results/tables/{model}/{pair_dataset}/seed{seed}/weight_heatmaps_{analysis_variant}.svg",
        norms_png=report(
            "results/tables/{model}/{pair_dataset}/seed{seed}/layer_norms_{analysis_variant}.png",
            caption="../report/layer_norms.rst",
            category="Weight analysis",
            subcategory="{pair_dataset} / {model}",
            labels={"figure": "Per-layer adapter norms, {analysis_variant}, seed {seed}"},
        ),
        norms_svg="results/tables/{model}/{pair_dataset}/seed{seed}/layer_norms_{analysis_variant}.svg",
    log:
        "logs/weight_figures_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.log",
    benchmark:
        "benchmarks/weight_figures_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("weight_figures_adapters")
    resources:
        **job_resources("weight_figures_adapters"),
    params:
        label=lambda wildcards: (
            f"{wildcards.analysis_variant}, {wildcards.pair_dataset} / {wildcards.model}, seed {wildcards.seed}"
        ),
    script:
        "../workflow/scripts/weight_figures.py"


rule dump_task_vectors_persona:
    input:
        model=get_persona_run,
        manifest="results/models/{model}/manifest.json",
    output:
        directory("results/dumps/{model}/{persona_dataset}/seed{seed}/{persona_method}"),
    log:
        "logs/dump_task_vectors_persona/{model}/{persona_dataset}/seed{seed}/{persona_method}.log",
    benchmark:
        "benchmarks/dump_task_vectors_persona/{model}/{persona_dataset}/seed{seed}/{persona_method}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("dump_task_vectors_persona")
    resources:
        **job_resources("dump_task_vectors_persona"),
    params:
        runs=lambda wildcards, input: {wildcards.persona_method: input.model},
        dumps=asdict(CFG.analysis.dumps),
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/dump_task_vectors.py"


rule dump_task_vectors_adapters:
    input:
        runs=lambda wildcards: list(get_analysis_runs(wildcards).values()),
        manifest="results/models/{model}/manifest.json",
    output:
        directory("results/dumps/{model}/{pair_dataset}/seed{seed}/{analysis_variant}"),
    log:
        "logs/dump_task_vectors_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.log",
    benchmark:
        "benchmarks/dump_task_vectors_adapters/{model}/{pair_dataset}/seed{seed}/{analysis_variant}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("dump_task_vectors_adapters")
    resources:
        **job_resources("dump_task_vectors_adapters"),
    params:
        runs=get_analysis_runs,
        dumps=asdict(CFG.analysis.dumps),
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/dump_task_vectors.py"


rule conflict_summary_methods:
    input:
        unpack(get_method_conflicts),
    output:
        csv="results/tables/{model}/{persona_dataset}/conflict_methods.csv",
        md="results/tables/{model}/{persona_dataset}/conflict_methods.md",
        html=report(
            "results/tables/{model}/{persona_dataset}/conflict_methods.html",
            caption="../report/conflict_summary.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"table": "CL-L2 between methods"},
        ),
        png=report(
            "results/tables/{model}/{persona_dataset}/conflict_methods.png",
            caption="../report/conflict_summary.rst",
            category="Weight analysis",
            subcategory="{persona_dataset} / {model}",
            labels={"figure": "CL-L2 share between methods"},
        ),
        svg="results/tables/{model}/{persona_dataset}/conflict_methods.svg",
    log:
        "logs/conflict_summary_methods/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/conflict_summary_methods/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_summary_methods")
    resources:
        **job_resources("conflict_summary_methods"),
    params:
        title="CL-L2 between training methods",
        label=lambda wildcards: f"{wildcards.persona_dataset} / {wildcards.model}",
    script:
        "../workflow/scripts/conflict_summary.py"


rule conflict_summary_datasets:
    input:
        unpack(get_dataset_conflicts),
    output:
        csv="results/tables/{model}/persona_datasets/conflict_{persona_method}.csv",
        md="results/tables/{model}/persona_datasets/conflict_{persona_method}.md",
        html=report(
            "results/tables/{model}/persona_datasets/conflict_{persona_method}.html",
            caption="../report/conflict_summary.rst",
            category="Weight analysis",
            subcategory="datasets / {model}",
            labels={"table": "CL-L2 between datasets ({persona_method})"},
        ),
        png=report(
            "results/tables/{model}/persona_datasets/conflict_{persona_method}.png",
            caption="../report/conflict_summary.rst",
            category="Weight analysis",
            subcategory="datasets / {model}",
            labels={"figure": "CL-L2 share between datasets ({persona_method})"},
        ),
        svg="results/tables/{model}/persona_datasets/conflict_{persona_method}.svg",
    log:
        "logs/conflict_summary_datasets/{model}/{persona_method}.log",
    benchmark:
        "benchmarks/conflict_summary_datasets/{model}/{persona_method}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_summary_datasets")
    resources:
        **job_resources("conflict_summary_datasets"),
    params:
        title=lambda wildcards: f"CL-L2 between datasets: {wildcards.persona_method}",
        label=lambda wildcards: f"{', '.join(PERSONA_DATASETS_TRAINED)} / {wildcards.model}",
    script:
        "../workflow/scripts/conflict_summary.py"
