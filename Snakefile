from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"
include: "rules/analysis.smk"
include: "rules/export.smk"
include: "rules/check.smk"
include: "rules/plan.smk"
include: "rules/download.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
