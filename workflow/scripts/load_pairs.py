from _bootstrap import start

start(snakemake)

from conflux.data.jobs import load_pairs_job
from conflux.data.specs import DatasetSpec

load_pairs_job(
    DatasetSpec(**snakemake.params.spec),
    snakemake.output.pairs,
    snakemake.output.stats,
    offline=snakemake.params.offline,
)
