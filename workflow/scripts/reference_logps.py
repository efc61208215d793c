from _bootstrap import start

start(snakemake)

from conflux.modeling.tokenize import TokenizeSettings
from conflux.training.reference import reference_logps_job

reference_logps_job(
    snakemake.input.pairs,
    snakemake.input.manifest,
    snakemake.output[0],
    TokenizeSettings(**snakemake.params.tokenize),
    batch_size=snakemake.params.batch_size,
)
