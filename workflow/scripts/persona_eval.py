# Shared by persona_eval_base (the base model, no seed), persona_eval (the trained variants of a seed, or of
# every seed: config batch_seeds) and persona_eval_merges (the SFT+DPO merges of an analysed seed).
from _bootstrap import of_seed, seeds, share, start

start(snakemake)

from conflux.evaluation.persona_eval import persona_eval_variants_job
from conflux.modeling.generation import GenerationSettings
from conflux.modeling.tokenize import TokenizeSettings

variants, n_seeds = snakemake.params.variants, len(snakemake.params.get("seeds", [None]))
for i, seed in seeds(snakemake):
    persona_eval_variants_job(
        # a variant's weights are the named input model_<variant>, one per seed; the base model has none
        variants={v: of_seed(snakemake.input.get(f"model_{v}"), i) for v in variants},
        outs=dict(zip(variants, share(snakemake.output, i, n_seeds), strict=True)),
        seed=seed,
        manifest=snakemake.input.manifest,
        sft_eval=snakemake.input.sft_eval,
        pairs_eval=snakemake.input.pairs_eval,
        settings=TokenizeSettings(**snakemake.params.tokenize),
        generation=GenerationSettings(**snakemake.params.generation),
    )
