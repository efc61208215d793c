from _bootstrap import start

start(snakemake)

from conflux.data.jobs import bundled_corpus
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model

cfg = TinyModelConfig(**snakemake.params.tiny)
build_tiny_model(bundled_corpus(seed=cfg.seed), cfg, snakemake.output[0])
