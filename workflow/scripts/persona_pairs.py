from _bootstrap import start

start(snakemake)

from conflux.data.jobs import persona_pairs_job
from conflux.data.specs import DatasetSpec

persona_pairs_job(
    DatasetSpec(**snakemake.params.spec),
    {"train": snakemake.input.sft_train, "eval": snakemake.input.sft_eval},
    {"train": snakemake.output.pairs_train, "eval": snakemake.output.pairs_eval},
    snakemake.output.stats,
    generated=snakemake.input.get("general"),
    offline=snakemake.params.offline,
)
