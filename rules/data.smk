rule load_pairs:
    output:
        pairs="results/data/{pair_dataset}/pairs.parquet",
        stats="results/data/{pair_dataset}/load_stats.json",
    log:
        "logs/load_pairs/{pair_dataset}.log",
    benchmark:
        "benchmarks/load_pairs/{pair_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("load_pairs")
    resources:
        **job_resources("load_pairs"),
    params:
        spec=get_dataset_spec,
        fingerprint=get_source_fingerprint,
        offline=OFFLINE,
    script:
        "../workflow/scripts/load_pairs.py"


rule split_pairs:
    input:
        pairs="results/data/{pair_dataset}/pairs.parquet",
    output:
        agree="results/data/{pair_dataset}/split/agree.parquet",
        conflict="results/data/{pair_dataset}/split/conflict.parquet",
        agree_sub="results/data/{pair_dataset}/split/agree_sub.parquet",
        eval_conflict="results/data/{pair_dataset}/split/eval_conflict.parquet",
        eval_agree="results/data/{pair_dataset}/split/eval_agree.parquet",
        stats="results/data/{pair_dataset}/split/stats.json",
    log:
        "logs/split_pairs/{pair_dataset}.log",
    benchmark:
        "benchmarks/split_pairs/{pair_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("split_pairs")
    resources:
        **job_resources("split_pairs"),
    params:
        split=get_split_config,
    script:
        "../workflow/scripts/split_pairs.py"


rule load_persona:
    output:
        sft_train="results/data/{persona_dataset}/persona/sft_train.parquet",
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
        stats="results/data/{persona_dataset}/persona/stats.json",
    log:
        "logs/load_persona/{persona_dataset}.log",
    benchmark:
        "benchmarks/load_persona/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("load_persona")
    resources:
        **job_resources("load_persona"),
    params:
        spec=get_dataset_spec,
        split=get_persona_split_config,
        fingerprint=get_source_fingerprint,
        offline=OFFLINE,
    script:
        "../workflow/scripts/load_persona.py"


rule generate_general:
    input:
        sft_train="results/data/{persona_dataset}/persona/sft_train.parquet",
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
        manifest="results/models/{model}/manifest.json",
    output:
        "results/data/{persona_dataset}/persona/{model}/general_generated.parquet",
    log:
        "logs/generate_general/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/generate_general/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("generate_general")
    resources:
        **job_resources("generate_general"),
    params:
        tokenize=get_persona_tokenize,
        generation=CFG.evaluation.generation,
    script:
        "../workflow/scripts/generate_general.py"


rule persona_pairs:
    input:
        unpack(get_general_replies),
        sft_train="results/data/{persona_dataset}/persona/sft_train.parquet",
        sft_eval="results/data/{persona_dataset}/persona/sft_eval.parquet",
    output:
        pairs_train=pairs_part("train"),
        pairs_eval=pairs_part("eval"),
        stats="results/data/{persona_dataset}/persona/{model}/pairs_stats.json",
    log:
        "logs/persona_pairs/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/persona_pairs/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("persona_pairs")
    resources:
        **job_resources("persona_pairs"),
    params:
        spec=get_dataset_spec,
        fingerprint=get_source_fingerprint,
        offline=OFFLINE,
    script:
        "../workflow/scripts/persona_pairs.py"
