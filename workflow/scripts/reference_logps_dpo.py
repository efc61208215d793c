# Shared by reference_logps_dpo (the base model) and reference_logps_sft_dpo (the SFT model: init).
from _bootstrap import start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.trl_reference import trl_reference_job

trl_reference_job(
    snakemake.input.data,
    snakemake.input.manifest,
    snakemake.output[0],
    train_config_from_dict(snakemake.params.train),
    batch_size=snakemake.params.batch_size,
    init=snakemake.input.get("init"),
)
