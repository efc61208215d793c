from _bootstrap import start

start(snakemake)

from conflux.evaluation.persona_table import persona_table_job

persona_table_job(
    list(snakemake.input.metrics),
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    html=snakemake.output.html,
    pairs_eval=snakemake.input.pairs_eval,
    **snakemake.params.bootstrap,  # resamples, level, seed
    label=f"{snakemake.wildcards.persona_dataset} / {snakemake.wildcards.model}",
)
