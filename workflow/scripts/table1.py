from _bootstrap import start

start(snakemake)

from conflux.eval_report import table1_job

boot = snakemake.params.bootstrap
table1_job(
    list(snakemake.input),
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    resamples=boot["resamples"],
    level=boot["level"],
    seed=boot["seed"],
    label=f"{snakemake.wildcards.pair_dataset} / {snakemake.wildcards.model}",
)
