from _bootstrap import start

start(snakemake)

from conflux.modeling.base_model import BaseModelSpec, write_manifest

write_manifest(
    BaseModelSpec(**snakemake.params.spec),
    snakemake.output[0],
    built_dir=snakemake.input[0] if snakemake.input else None,
    offline=snakemake.params.offline,
)
