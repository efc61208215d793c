from _bootstrap import start

start(snakemake)

from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job

base_model_manifest_job(
    BaseModelSpec(**snakemake.params.spec),
    snakemake.output[0],
    built_dir=snakemake.input[0] if snakemake.input else None,
    offline=snakemake.params.offline,
)
