from _bootstrap import start

start(snakemake)

from conflux.eval_report import figure2_job

boot = snakemake.params.bootstrap
figure2_job(
    list(snakemake.input),
    png=snakemake.output.png,
    svg=snakemake.output.svg,
    resamples=boot["resamples"],
    level=boot["level"],
    seed=boot["seed"],
    label=f"{snakemake.wildcards.pair_dataset} / {snakemake.wildcards.model}",
)
