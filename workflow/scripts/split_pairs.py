from _bootstrap import start

start(snakemake)

from conflux.data.split import SPLIT_NAMES, SplitConfig, split_pairs_job

split_pairs_job(
    snakemake.input.pairs,
    {part: snakemake.output[part] for part in SPLIT_NAMES},
    snakemake.output.stats,
    SplitConfig(**snakemake.params.split),
)
