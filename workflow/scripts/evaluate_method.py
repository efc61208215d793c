from _bootstrap import seeds, share, start

start(snakemake)

from conflux.evaluation.records import evaluate_methods_job
from conflux.modeling.tokenize import TokenizeSettings

methods, n_seeds = snakemake.params.methods, len(snakemake.params.seeds)
for i, seed in seeds(snakemake):  # one seed, or every seed (config: batch_seeds)
    evaluate_methods_job(
        # a method's training outputs, the named input run_<method>: one directory per seed, DPO-Soup's k
        runs={m: share(snakemake.input[f"run_{m}"], i, n_seeds) for m in methods},
        outs=dict(zip(methods, share(snakemake.output, i, n_seeds), strict=True)),
        seed=seed,
        manifest=snakemake.input.manifest,
        pairs=snakemake.input.pairs,
        references=list(snakemake.input.references),
        settings=TokenizeSettings(**snakemake.params.tokenize),
        batch_size=snakemake.params.batch_size,
    )
