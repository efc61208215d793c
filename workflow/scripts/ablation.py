from _bootstrap import start

start(snakemake)

from conflux.evaluation.tables import ablation_job

ablation_job(
    list(snakemake.input),
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    html=snakemake.output.html,
    **snakemake.params.bootstrap,  # resamples, level, seed
    label=f"{snakemake.wildcards.pair_dataset} / {snakemake.wildcards.model}",
)
