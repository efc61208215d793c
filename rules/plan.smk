# `snakemake plan`: the memory plan of every training, scoring and analysis job of the config (conflux.plan),
# per device, with what each estimate is made of. Computed when the workflow starts (a job that cannot fit
# stops it there); this rule writes it down. A laptop builds the paper's plan: the models' architecture facts
# sit in config/paper.yaml.
rule plan:
    output:
        csv="results/plan/plan.csv",
        md="results/plan/plan.md",
    log:
        "logs/plan/plan.log",
    benchmark:
        "benchmarks/plan/plan.tsv"
    localrule: True
    conda:
        "../envs/conflux.yaml"
    params:
        plan=PLAN,
    script:
        "../workflow/scripts/plan.py"
