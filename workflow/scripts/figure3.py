from _bootstrap import start

start(snakemake)

from conflux.evaluation.tables import figure3_job

figure3_job(
    list(snakemake.input),
    png=snakemake.output.png,
    svg=snakemake.output.svg,
    **snakemake.params.bootstrap,  # resamples, level, seed
)
