# Shared by persona_eval_base (the base model, no seed) and persona_eval (a trained variant per seed).
from _bootstrap import start

start(snakemake)

from conflux.evaluation.persona_eval import persona_eval_job
from conflux.modeling.generation import GenerationSettings
from conflux.modeling.tokenize import TokenizeSettings

persona_eval_job(
    variant=snakemake.params.variant,
    seed=snakemake.params.seed,
    manifest=snakemake.input.manifest,
    model_dir=snakemake.input.get("model"),
    sft_eval=snakemake.input.sft_eval,
    pairs_eval=snakemake.input.pairs_eval,
    out=snakemake.output[0],
    settings=TokenizeSettings(**snakemake.params.tokenize),
    generation=GenerationSettings(**snakemake.params.generation),
)
