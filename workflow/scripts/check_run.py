# `snakemake check`: verify every finished output under results/ (a rule without outputs runs when named).
from _bootstrap import start

start(snakemake)

from conflux.check import check_job

check_job(snakemake.params.root)
