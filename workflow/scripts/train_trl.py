# Shared by the sft, dpo and sft_dpo rules of the persona study; the rule names the stage (its TRL trainer).
from pathlib import Path

from _bootstrap import of_seed, seeds, start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.launch import train_job
from conflux.training.tracking import tracking_for
from conflux.training.trl_jobs import TrlJob

for i, seed in seeds(snakemake):  # one seed, or every seed (config: batch_seeds)
    train_job(
        TrlJob(
            method=snakemake.rule,  # a training rule is named as its stage in the registry
            data=Path(snakemake.input.data),
            manifest=Path(snakemake.input.manifest),
            out_dir=Path(snakemake.output[i]),
            work_dir=Path(snakemake.params.work_dir[i]),
            cfg=train_config_from_dict(snakemake.params.train),
            seed=seed,
            keep_checkpoints=snakemake.params.keep_checkpoints,
            # from the config, not params, like resume: turning tracking on reruns nothing
            tracking=tracking_for(snakemake.config["tracking"], snakemake.rule),
            # dpo: the base model's cached log-probs; sft_dpo: the SFT run and its own, per seed
            reference=of_seed(snakemake.input.get("reference"), i),
            init=of_seed(snakemake.input.get("init"), i),
        ),
        gpus=snakemake.resources.get("gpus_per_node", snakemake.resources.get("gpu", 0)),
        nodes=snakemake.resources.get("nodes", 1),
        # from the config, not params: changing it must not rerun every finished training job
        resume=snakemake.config["resume"],
    )
