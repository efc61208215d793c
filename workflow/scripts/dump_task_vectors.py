# Shared by dump_task_vectors_persona (one fine-tune) and dump_task_vectors_adapters (a method's adapters).
from _bootstrap import start

start(snakemake)

from conflux.analysis.jobs import dump_task_vectors_job

dump_task_vectors_job(
    snakemake.params.runs,
    snakemake.input.manifest,
    snakemake.output[0],
    **snakemake.params.dumps,  # mode, dtype
    density=snakemake.params.density,
)
