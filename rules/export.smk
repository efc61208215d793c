# pi(w) for serving: one PEFT LoRA adapter and one merged model per configured weight vector (config: export).


rule export_policy:
    input:
        runs=get_eval_runs,
        manifest="results/models/{model}/manifest.json",
    output:
        directory("results/export/{model}/{pair_dataset}/seed{seed}/{variant}"),
    log:
        "logs/export_policy/{model}/{pair_dataset}/seed{seed}/{variant}.log",
    benchmark:
        "benchmarks/export_policy/{model}/{pair_dataset}/seed{seed}/{variant}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("export_policy")
    resources:
        **job_resources("export_policy"),
    params:
        weights=get_export_weights,
    script:
        "../workflow/scripts/export_policy.py"
