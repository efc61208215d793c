from _bootstrap import start

start(snakemake)

from conflux.config import DatasetSpec
from conflux.data.jobs import write_pair_dataset

write_pair_dataset(
    DatasetSpec(**snakemake.params.spec),
    snakemake.output.pairs,
    snakemake.output.stats,
    offline=snakemake.params.offline,
)
