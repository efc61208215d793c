# The memory plan, computed while the workflow parsed the config (rules/common.smk), as CSV and Markdown.
from _bootstrap import start

start(snakemake)

from conflux.plan.jobs import plan_job

plan_job(snakemake.params.plan, snakemake.output.csv, snakemake.output.md)
