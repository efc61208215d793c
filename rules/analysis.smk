rule taskvec_stats_persona:
    input:
        sft="results/train/{model}/{persona_dataset}/seed{seed}/sft",
        dpo="results/train/{model}/{persona_dataset}/seed{seed}/dpo",
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
        runs=lambda wildcards, input: {"sft": input.sft, "dpo": input.dpo},
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/taskvec_stats.py"


rule conflict_sft_dpo:
    input:
        sft="results/train/{model}/{persona_dataset}/seed{seed}/sft",
        dpo="results/train/{model}/{persona_dataset}/seed{seed}/dpo",
        manifest="results/models/{model}/manifest.json",
    output:
        "results/analysis/{model}/{persona_dataset}/seed{seed}/conflict_sft_dpo.parquet",
    log:
        "logs/conflict_sft_dpo/{model}/{persona_dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/conflict_sft_dpo/{model}/{persona_dataset}/seed{seed}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("conflict_sft_dpo")
    resources:
        **job_resources("conflict_sft_dpo"),
    params:
        runs=lambda wildcards, input: {"sft": input.sft, "dpo": input.dpo},
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
        sft="results/train/{model}/{persona_dataset}/seed{seed}/sft",
        dpo="results/train/{model}/{persona_dataset}/seed{seed}/dpo",
        manifest="results/models/{model}/manifest.json",
    output:
        directory("results/merges/{model}/{persona_dataset}/seed{seed}/{merge_method}_lam{lam}"),
    log:
        "logs/merge_sft_dpo/{model}/{persona_dataset}/seed{seed}/{merge_method}_lam{lam}.log",
    benchmark:
        "benchmarks/merge_sft_dpo/{model}/{persona_dataset}/seed{seed}/{merge_method}_lam{lam}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("merge_sft_dpo")
    resources:
        **job_resources("merge_sft_dpo"),
    params:
        density=CFG.analysis.density,
    script:
        "../workflow/scripts/merge_sft_dpo.py"
