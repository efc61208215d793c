from _bootstrap import start

start(snakemake)

from conflux.export.policy_export import export_policy_job

export_policy_job(
    snakemake.input.manifest,
    list(snakemake.input.runs),
    snakemake.params.weights,
    snakemake.output[0],
    variant=snakemake.wildcards.variant,
    key=f"export.weights.{snakemake.wildcards.pair_dataset}",
)
