from _bootstrap import start

start(snakemake)

from conflux.analysis.jobs import merge_sft_dpo_job

merge_sft_dpo_job(
    snakemake.input.manifest,
    snakemake.input.sft,
    snakemake.input.dpo,
    dict(zip(snakemake.params.lambdas, snakemake.output, strict=True)),
    method=snakemake.params.method,
    density=snakemake.params.density,
)
