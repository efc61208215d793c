from _bootstrap import start

start(snakemake)

from conflux.data.jobs import write_persona_dataset
from conflux.data.specs import DatasetSpec, PersonaSplitConfig

write_persona_dataset(
    DatasetSpec(**snakemake.params.spec),
    PersonaSplitConfig(**snakemake.params.split),
    {part: snakemake.output[part] for part in ("sft_train", "sft_eval", "pairs_train", "pairs_eval")},
    snakemake.output.stats,
    offline=snakemake.params.offline,
)
