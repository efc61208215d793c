from _bootstrap import start

start(snakemake)

from conflux.evaluation.records import evaluate_methods_job
from conflux.modeling.tokenize import TokenizeSettings


def runs_of(method):
    """A method's training outputs: one directory, or DPO-Soup's k (a named input holds a str or a list)."""
    value = snakemake.input[f"run_{method}"]
    return [value] if isinstance(value, str) else list(value)


methods = snakemake.params.methods
evaluate_methods_job(
    runs={m: runs_of(m) for m in methods},
    outs=dict(zip(methods, snakemake.output, strict=True)),
    seed=int(snakemake.wildcards.seed),
    manifest=snakemake.input.manifest,
    pairs=snakemake.input.pairs,
    references=list(snakemake.input.references),
    settings=TokenizeSettings(**snakemake.params.tokenize),
    batch_size=snakemake.params.batch_size,
)
