from _bootstrap import start

start(snakemake)

from conflux.analysis.key_layers import key_layers_job

key_layers_job(
    list(snakemake.input.sweeps),
    snakemake.input.base,
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    html=snakemake.output.html,
    png=snakemake.output.png,
    svg=snakemake.output.svg,
    label=snakemake.params.label,
)
