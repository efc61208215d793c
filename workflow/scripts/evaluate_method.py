from _bootstrap import start

start(snakemake)

from conflux.evaluation.records import evaluate_method_job
from conflux.modeling.tokenize import TokenizeSettings

evaluate_method_job(
    method=snakemake.wildcards.variant,
    seed=int(snakemake.wildcards.seed),
    run_dirs=list(snakemake.input.runs),
    manifest=snakemake.input.manifest,
    pairs=snakemake.input.pairs,
    references=list(snakemake.input.references),
    out=snakemake.output[0],
    settings=TokenizeSettings(**snakemake.params.tokenize),
    batch_size=snakemake.params.batch_size,
)
