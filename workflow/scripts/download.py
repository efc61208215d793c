from _bootstrap import start

start(snakemake)

from conflux.download import download_job

download_job(snakemake.params.models, snakemake.params.datasets, snakemake.output[0])
