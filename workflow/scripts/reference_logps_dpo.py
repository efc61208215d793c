# Shared by reference_logps_dpo (the base model) and reference_logps_sft_dpo (each seed's SFT model: init).
from _bootstrap import of_seed, seeds, start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.trl_reference import trl_reference_job

for i, _ in seeds(snakemake):  # reference_logps_sft_dpo: one seed or every seed (config: batch_seeds)
    trl_reference_job(
        snakemake.input.data,
        snakemake.input.manifest,
        snakemake.output[i],
        train_config_from_dict(snakemake.params.train),
        batch_size=snakemake.params.batch_size,
        init=of_seed(snakemake.input.get("init"), i),
    )
