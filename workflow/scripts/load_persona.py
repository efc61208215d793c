from _bootstrap import start

start(snakemake)

from conflux.data.jobs import load_persona_job
from conflux.data.specs import DatasetSpec, PersonaSplitConfig

load_persona_job(
    DatasetSpec(**snakemake.params.spec),
    PersonaSplitConfig(**snakemake.params.split),
    {part: snakemake.output[part] for part in ("sft_train", "sft_eval")},
    snakemake.output.stats,
    offline=snakemake.params.offline,
)
