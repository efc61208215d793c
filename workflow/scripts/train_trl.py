# Shared by the sft and dpo rules of the persona study: they differ only in params.method and the data file.
from pathlib import Path

from _bootstrap import start

start(snakemake)

from conflux.training.config import train_config_from_dict
from conflux.training.launch import run_job
from conflux.training.trl_jobs import TrlJob

run_job(
    TrlJob(
        method=snakemake.params.method,
        data=Path(snakemake.input.data),
        manifest=Path(snakemake.input.manifest),
        out_dir=Path(snakemake.output[0]),
        work_dir=Path(snakemake.params.work_dir),
        cfg=train_config_from_dict(snakemake.params.train),
        seed=int(snakemake.wildcards.seed),
        keep_checkpoints=snakemake.params.keep_checkpoints,
    ),
    gpus=snakemake.resources.get("gpu", 0),
)
