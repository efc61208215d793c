# Shared by conflict_methods (SFT vs DPO vs SFT→DPO), conflict_datasets (dataset vs dataset, one method) and
# conflict_dims (dim_i vs dim_j adapters).
from _bootstrap import start

start(snakemake)

from conflux.analysis.jobs import conflict_table_job

conflict_table_job(
    snakemake.params.runs, snakemake.input.manifest, snakemake.output[0], density=snakemake.params.density
)
