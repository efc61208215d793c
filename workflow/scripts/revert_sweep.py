from _bootstrap import start

start(snakemake)

from conflux.analysis.revert import revert_sweep_job
from conflux.modeling.generation import GenerationSettings
from conflux.modeling.tokenize import TokenizeSettings

revert = snakemake.params.revert
revert_sweep_job(
    method=snakemake.wildcards.revert_method,
    seed=snakemake.params.seed,
    manifest=snakemake.input.manifest,
    model_dir=snakemake.input.model,
    sft_eval=snakemake.input.sft_eval,
    pairs_eval=snakemake.input.pairs_eval,
    out=snakemake.output[0],
    settings=TokenizeSettings(**snakemake.params.tokenize),
    generation=GenerationSettings(**snakemake.params.generation),
    layers=revert["layers"],
    modules=revert["modules"],
    cells=revert["cells"],
    generate=revert["generate"],
)
