from _bootstrap import start

start(snakemake)

from conflux.evaluation.length_bias import length_bias_job

length_bias_job(
    list(snakemake.input),
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    html=snakemake.output.html,
    png=snakemake.output.png,
    svg=snakemake.output.svg,
    label=f"{snakemake.wildcards.pair_dataset} / {snakemake.wildcards.model}",
)
