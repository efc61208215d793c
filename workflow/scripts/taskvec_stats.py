# Shared by taskvec_stats_persona (SFT and DPO full fine-tunes) and taskvec_stats_adapters (LoRA adapters).
from _bootstrap import start

start(snakemake)

from conflux.analysis.jobs import taskvec_stats_job

taskvec_stats_job(
    snakemake.params.runs, snakemake.input.manifest, snakemake.output[0], density=snakemake.params.density
)
