# Shared by conflict_summary_methods (per dataset) and conflict_summary_datasets (per method); the inputs are
# named seed<n>, one pairwise conflict file per seed.
from _bootstrap import start

start(snakemake)

from conflux.analysis.conflict_summary import conflict_summary_job

conflict_summary_job(
    {int(name.removeprefix("seed")): path for name, path in snakemake.input.items()},
    csv=snakemake.output.csv,
    md=snakemake.output.md,
    html=snakemake.output.html,
    png=snakemake.output.png,
    svg=snakemake.output.svg,
    title=snakemake.params.title,
    label=snakemake.params.label,
)
