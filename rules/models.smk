rule build_tiny_model:
    output:
        directory("results/models/{tiny_model}/hf"),
    log:
        "logs/build_tiny_model/{tiny_model}.log",
    benchmark:
        "benchmarks/build_tiny_model/{tiny_model}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("build_tiny_model")
    resources:
        **job_resources("build_tiny_model"),
    params:
        tiny=get_tiny_config,
    script:
        "../workflow/scripts/build_tiny_model.py"


rule base_model_manifest:
    input:
        get_model_build,
    output:
        "results/models/{model}/manifest.json",
    log:
        "logs/base_model_manifest/{model}.log",
    benchmark:
        "benchmarks/base_model_manifest/{model}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("base_model_manifest")
    resources:
        **job_resources("base_model_manifest"),
    params:
        spec=get_model_spec,
        offline=OFFLINE,
    script:
        "../workflow/scripts/base_model_manifest.py"
