from _bootstrap import start

start(snakemake)

from conflux.sources import bundled_corpus
from conflux.tinymodel import TinyModelConfig, build_tiny_model

cfg = TinyModelConfig(**snakemake.params.tiny)
build_tiny_model(bundled_corpus(seed=cfg.seed), cfg, snakemake.output[0])
