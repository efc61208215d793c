from _bootstrap import start

start(snakemake)

from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model_job

build_tiny_model_job(TinyModelConfig(**snakemake.params.tiny), snakemake.output[0])
