# `snakemake download` (where there is network) fills the hub cache with every hub model and dataset of the
# config, so compute nodes can run offline (conflux.download). Local: a login node has the network.
rule download:
    output:
        "results/download/sources.json",
    log:
        "logs/download/download.log",
    benchmark:
        "benchmarks/download/download.tsv"
    localrule: True
    conda:
        "../envs/conflux.yaml"
    params:
        models=lambda wildcards: {name: get_model_spec_of(name) for name in CFG.models},
        datasets=lambda wildcards: {name: asdict(spec) for name, spec in CFG.datasets.items()},
    script:
        "../workflow/scripts/download.py"
