# One job per (model, dataset, seed) scores every method of the curriculum study: a job's start-up outweighs
# one method's scoring (records.evaluate_methods_job); each method still has its own records file.
rule evaluate_method:
    input:
        unpack(get_eval_runs_by_method),
        pairs=split_part("eval_conflict"),
        references=[reference("eval_conflict")],
        manifest="results/models/{model}/manifest.json",
    output:
        seed_major(eval_records_outputs()),
    log:
        per_seed("logs/evaluate_method/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/evaluate_method/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("evaluate_method")
    resources:
        **job_resources("evaluate_method"),
    params:
        seeds=job_seeds,
        methods=eval_variants(),
        tokenize=get_tokenize,
        batch_size=CFG.evaluation.batch_size,
    script:
        "../workflow/scripts/evaluate_method.py"


rule table1:
    input:
        get_eval_records,
    output:
        csv=report(
            "results/tables/{model}/{pair_dataset}/table1.csv",
            caption="../report/table1.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Table 1 (csv)"},
        ),
        md="results/tables/{model}/{pair_dataset}/table1.md",
        html=report(
            "results/tables/{model}/{pair_dataset}/table1.html",
            caption="../report/table1.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Table 1"},
        ),
    log:
        "logs/table1/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/table1/{model}/{pair_dataset}.tsv"
    wildcard_constraints:
        pair_dataset=_alternatives(TWO_DIM_DATASETS),
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("table1")
    resources:
        **job_resources("table1"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/table1.py"


rule table2:
    input:
        get_eval_records,
    output:
        settings_csv="results/tables/{model}/{pair_dataset}/table2_settings.csv",
        settings_md="results/tables/{model}/{pair_dataset}/table2_settings.md",
        settings_html=report(
            "results/tables/{model}/{pair_dataset}/table2_settings.html",
            caption="../report/table2_settings.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Table 2: all settings"},
        ),
        summary_csv="results/tables/{model}/{pair_dataset}/table2_summary.csv",
        summary_md="results/tables/{model}/{pair_dataset}/table2_summary.md",
        summary_html=report(
            "results/tables/{model}/{pair_dataset}/table2_summary.html",
            caption="../report/table2_summary.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Table 2: win rate and mean accuracy"},
        ),
    log:
        "logs/table2/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/table2/{model}/{pair_dataset}.tsv"
    wildcard_constraints:
        pair_dataset=_alternatives(MULTI_DIM_DATASETS),
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("table2")
    resources:
        **job_resources("table2"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/table2.py"


rule figure2:
    input:
        get_eval_records,
    output:
        png=report(
            "results/tables/{model}/{pair_dataset}/figure2.png",
            caption="../report/figure2.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"figure": "Figure 2"},
        ),
        svg="results/tables/{model}/{pair_dataset}/figure2.svg",
    log:
        "logs/figure2/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/figure2/{model}/{pair_dataset}.tsv"
    wildcard_constraints:
        pair_dataset=_alternatives(MULTI_DIM_DATASETS),
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("figure2")
    resources:
        **job_resources("figure2"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/figure2.py"


rule figure3:
    input:
        get_eval_records,
    output:
        png=report(
            "results/tables/{model}/{pair_dataset}/figure3.png",
            caption="../report/figure3.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"figure": "Figure 3: helpfulness against each dimension"},
        ),
        svg="results/tables/{model}/{pair_dataset}/figure3.svg",
    log:
        "logs/figure3/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/figure3/{model}/{pair_dataset}.tsv"
    wildcard_constraints:
        pair_dataset=_alternatives(MULTI_DIM_DATASETS),
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("figure3")
    resources:
        **job_resources("figure3"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/figure3.py"


rule length_bias:
    input:
        get_final_records,
    output:
        csv="results/tables/{model}/{pair_dataset}/length_bias.csv",
        md="results/tables/{model}/{pair_dataset}/length_bias.md",
        html=report(
            "results/tables/{model}/{pair_dataset}/length_bias.html",
            caption="../report/length_bias.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Length bias of the implicit reward"},
        ),
        png=report(
            "results/tables/{model}/{pair_dataset}/length_bias.png",
            caption="../report/length_bias.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"figure": "Length bias of the implicit reward"},
        ),
        svg="results/tables/{model}/{pair_dataset}/length_bias.svg",
    log:
        "logs/length_bias/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/length_bias/{model}/{pair_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("length_bias")
    resources:
        **job_resources("length_bias"),
    script:
        "../workflow/scripts/length_bias.py"


rule ablation:
    input:
        get_ablation_records,
    output:
        csv="results/tables/{model}/{pair_dataset}/ablation.csv",
        md="results/tables/{model}/{pair_dataset}/ablation.md",
        html=report(
            "results/tables/{model}/{pair_dataset}/ablation.html",
            caption="../report/ablation.rst",
            category="Curriculum study",
            subcategory="{pair_dataset} / {model}",
            labels={"table": "Ablation: the curriculum after each stage"},
        ),
    log:
        "logs/ablation/{model}/{pair_dataset}.log",
    benchmark:
        "benchmarks/ablation/{model}/{pair_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("ablation")
    resources:
        **job_resources("ablation"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/ablation.py"


# The persona evaluations: one job per (model, dataset) for the base model, per seed for the trained variants
# and per analysed seed for the SFT+DPO merges; a job's start-up outweighs one variant's work
# (persona_eval.persona_eval_variants_job), and each variant still has its own metrics file.
rule persona_eval_base:
    input:
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
        pairs_eval=pairs_part("eval"),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/eval/{model}/{persona_dataset}/base/persona.json",
    log:
        "logs/persona_eval_base/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/persona_eval_base/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("persona_eval_base")
    resources:
        **job_resources("persona_eval_base"),
    params:
        variants=["base"],
        tokenize=get_persona_tokenize,
        generation=CFG.evaluation.generation,
    script:
        "../workflow/scripts/persona_eval.py"


rule persona_eval:
    input:
        unpack(persona_models(persona_trained(), job_seeds)),
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
        pairs_eval=pairs_part("eval"),
        manifest="results/models/{model}/manifest.json",
    output:
        seed_major(persona_metrics_outputs(persona_trained())),
    log:
        per_seed("logs/persona_eval/{model}/{persona_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/persona_eval/{model}/{persona_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("persona_eval")
    resources:
        **job_resources("persona_eval"),
    params:
        variants=persona_trained(),
        seeds=job_seeds,
        tokenize=get_persona_tokenize,
        generation=CFG.evaluation.generation,
    script:
        "../workflow/scripts/persona_eval.py"


if persona_merged():

    rule persona_eval_merges:
        input:
            unpack(persona_models(persona_merged(), one_seed)),
            sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
            pairs_eval=pairs_part("eval"),
            manifest="results/models/{model}/manifest.json",
        output:
            persona_metrics_outputs(persona_merged()),
        log:
            "logs/persona_eval_merges/{model}/{persona_dataset}/seed{seed}.log",
        benchmark:
            "benchmarks/persona_eval_merges/{model}/{persona_dataset}/seed{seed}.tsv"
        conda:
            "../envs/conflux.yaml"
        threads: job_threads("persona_eval_merges")
        resources:
            **job_resources("persona_eval_merges"),
        params:
            variants=persona_merged(),
            seeds=one_seed,
            tokenize=get_persona_tokenize,
            generation=CFG.evaluation.generation,
        script:
            "../workflow/scripts/persona_eval.py"


rule persona_table:
    input:
        metrics=get_persona_metrics,
        pairs_eval=pairs_part("eval"),
    output:
        csv="results/tables/{model}/{persona_dataset}/persona.csv",
        md="results/tables/{model}/{persona_dataset}/persona.md",
        html=report(
            "results/tables/{model}/{persona_dataset}/persona.html",
            caption="../report/persona.rst",
            category="Persona study",
            subcategory="{persona_dataset} / {model}",
            labels={"table": "Persona style, preference and perplexity"},
        ),
    log:
        "logs/persona_table/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/persona_table/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("persona_table")
    resources:
        **job_resources("persona_table"),
    params:
        bootstrap=get_bootstrap,
    script:
        "../workflow/scripts/persona_table.py"


rule training_curves:
    input:
        get_curve_inputs,
    output:
        runs_png=report(
            "results/tables/{model}/{dataset}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{dataset} / {model}",
            labels={"figure": "Training curves of every run"},
        ),
        runs_svg="results/tables/{model}/{dataset}/training_curves.svg",
        methods_png=report(
            "results/tables/{model}/{dataset}/training_curves_methods.png",
            caption="../report/training_curves.rst",
            category="Training",
            subcategory="{dataset} / {model}",
            labels={"figure": "Training curves by method"},
        ),
        methods_svg="results/tables/{model}/{dataset}/training_curves_methods.svg",
    log:
        "logs/training_curves/{model}/{dataset}.log",
    benchmark:
        "benchmarks/training_curves/{model}/{dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("training_curves")
    resources:
        **job_resources("training_curves"),
    params:
        runs=get_curve_runs,
        label=lambda wildcards: f"{wildcards.dataset} / {wildcards.model}",
    script:
        "../workflow/scripts/training_curves.py"
