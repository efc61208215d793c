# Shared by weight_figures_persona (SFT vs DPO) and weight_figures_adapters (curriculum / DPO-Soup adapters).
from _bootstrap import start

start(snakemake)

from conflux.analysis.figures import weight_figures_job

weight_figures_job(
    snakemake.input.stats,
    snakemake.input.conflict,
    heatmap_png=snakemake.output.heatmap_png,
    heatmap_svg=snakemake.output.heatmap_svg,
    norms_png=snakemake.output.norms_png,
    norms_svg=snakemake.output.norms_svg,
    label=snakemake.params.label,
)
