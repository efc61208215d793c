# Shared by the preference training rules (curriculum stages, panacea, dpo_soup); the rule names the stage.
from pathlib import Path

from _bootstrap import of_seed, seeds, start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.launch import train_job
from conflux.training.preference_trainer import PreferenceJob
from conflux.training.tracking import tracking_for

for i, seed in seeds(snakemake):  # one seed, or every seed (config: batch_seeds)
    train_job(
        PreferenceJob(
            method=snakemake.rule,  # a training rule is named as its stage in the registry
            pairs=[Path(p) for p in snakemake.input.pairs],
            references=[Path(p) for p in snakemake.input.references],
            manifest=Path(snakemake.input.manifest),
            out_dir=Path(snakemake.output[i]),
            work_dir=Path(snakemake.params.work_dir[i]),
            cfg=train_config_from_dict(snakemake.params.train),
            seed=seed,
            init_adapters=of_seed(snakemake.input.get("init"), i),
            dim=int(snakemake.wildcards.dim) if snakemake.wildcards.get("dim") else None,
            keep_checkpoints=snakemake.params.keep_checkpoints,
            # from the config, not params, like resume: turning tracking on reruns nothing
            tracking=tracking_for(snakemake.config["tracking"], snakemake.rule),
        ),
        gpus=snakemake.resources.get("gpus_per_node", snakemake.resources.get("gpu", 0)),
        nodes=snakemake.resources.get("nodes", 1),
        # from the config, not params: changing it must not rerun every finished training job
        resume=snakemake.config["resume"],
    )
