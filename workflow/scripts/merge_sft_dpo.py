from _bootstrap import start

start(snakemake)

from conflux.analysis_jobs import merge_job

merge_job(
    snakemake.input.manifest,
    snakemake.input.sft,
    snakemake.input.dpo,
    snakemake.output[0],
    lam=float(snakemake.wildcards.lam),
    method=snakemake.wildcards.merge_method,
    density=snakemake.params.density,
)
