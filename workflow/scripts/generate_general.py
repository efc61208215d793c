from _bootstrap import start

start(snakemake)

from conflux.modeling.general_replies import generate_general_job
from conflux.modeling.generation import GenerationSettings

generate_general_job(
    dataset=snakemake.wildcards.persona_dataset,
    manifest=snakemake.input.manifest,
    parts=[snakemake.input.sft_train, snakemake.input.sft_eval],
    out=snakemake.output[0],
    generation=GenerationSettings(**snakemake.params.generation),
    max_length=snakemake.params.tokenize["max_length"],
)
