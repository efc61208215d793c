# Shared by the sft, dpo and sft_dpo rules of the persona study; the rule names the stage (its TRL trainer).
from pathlib import Path

from _bootstrap import start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.launch import train_job
from conflux.training.tracking import tracking_for
from conflux.training.trl_jobs import TrlJob

train_job(
    TrlJob(
        method=snakemake.rule,  # a training rule is named as its stage in the registry
        data=Path(snakemake.input.data),
        manifest=Path(snakemake.input.manifest),
        out_dir=Path(snakemake.output[0]),
        work_dir=Path(snakemake.params.work_dir),
        cfg=train_config_from_dict(snakemake.params.train),
        seed=int(snakemake.wildcards.seed),
        keep_checkpoints=snakemake.params.keep_checkpoints,
        # from the config, not params, like resume: turning tracking on reruns nothing
        tracking=tracking_for(snakemake.config["tracking"], snakemake.rule),
        reference=Path(snakemake.input.reference) if snakemake.input.get("reference") else None,
        init=Path(snakemake.input.init) if snakemake.input.get("init") else None,  # sft_dpo: the SFT run
    ),
    gpus=snakemake.resources.get("gpus_per_node", snakemake.resources.get("gpu", 0)),
    nodes=snakemake.resources.get("nodes", 1),
    # from the config, not params: changing it must not rerun every finished training job
    resume=snakemake.config["resume"],
)
