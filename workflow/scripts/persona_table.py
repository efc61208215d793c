from _bootstrap import start

start(snakemake)

from conflux.persona_table import persona_table_job

boot = snakemake.params.bootstrap
persona_table_job(
    list(snakemake.input.metrics),
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    pairs_eval=snakemake.input.pairs_eval,
    resamples=boot["resamples"],
    level=boot["level"],
    seed=boot["seed"],
    label=f"{snakemake.wildcards.persona_dataset} / {snakemake.wildcards.model}",
)
