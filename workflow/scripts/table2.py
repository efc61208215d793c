from _bootstrap import start

start(snakemake)

from conflux.evaluation.tables import table2_job

table2_job(
    list(snakemake.input),
    settings_csv=snakemake.output.settings_csv,
    settings_md=snakemake.output.settings_md,
    summary_csv=snakemake.output.summary_csv,
    summary_md=snakemake.output.summary_md,
    settings_html=snakemake.output.settings_html,
    summary_html=snakemake.output.summary_html,
    **snakemake.params.bootstrap,  # resamples, level, seed
    label=f"{snakemake.wildcards.pair_dataset} / {snakemake.wildcards.model}",
)
