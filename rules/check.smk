# `snakemake check` verifies every finished output under results/ (conflux.check). No output and no
# benchmark: Snakemake counts a benchmark file as an output and would then run the check only once.
rule check:
    log:
        "logs/check/check.log",
    localrule: True
    conda:
        "../envs/conflux.yaml"
    params:
        root="results",
    script:
        "../workflow/scripts/check_run.py"
