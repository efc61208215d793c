# Shared by persona_eval_base (the base model, no seed), persona_eval (the trained variants of a seed) and
# persona_eval_merges (the SFT+DPO merges of an analysed seed).
from _bootstrap import start

start(snakemake)

from conflux.evaluation.persona_eval import persona_eval_variants_job
from conflux.modeling.generation import GenerationSettings
from conflux.modeling.tokenize import TokenizeSettings

variants = snakemake.params.variants
persona_eval_variants_job(
    # a variant's weights are the named input model_<variant>; the base model has none
    variants={v: snakemake.input.get(f"model_{v}") for v in variants},
    outs=dict(zip(variants, snakemake.output, strict=True)),
    seed=snakemake.params.seed,
    manifest=snakemake.input.manifest,
    sft_eval=snakemake.input.sft_eval,
    pairs_eval=snakemake.input.pairs_eval,
    settings=TokenizeSettings(**snakemake.params.tokenize),
    generation=GenerationSettings(**snakemake.params.generation),
)
