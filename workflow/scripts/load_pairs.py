from _bootstrap import start

start(snakemake)

from conflux.data.jobs import write_pair_dataset
from conflux.data.specs import DatasetSpec

write_pair_dataset(
    DatasetSpec(**snakemake.params.spec),
    snakemake.output.pairs,
    snakemake.output.stats,
    offline=snakemake.params.offline,
)
