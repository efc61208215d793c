from _bootstrap import start

start(snakemake)

from conflux.evaluation.training_curves import training_curves_job

training_curves_job(
    snakemake.params.runs,
    runs_png=snakemake.output.runs_png,
    runs_svg=snakemake.output.runs_svg,
    methods_png=snakemake.output.methods_png,
    methods_svg=snakemake.output.methods_svg,
    label=snakemake.params.label,
)
