from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config is given: `--configfile config/paper.yaml` replaces it rather than
# being merged over it (Snakemake's default), so a paper run inherits none of the tiny model's settings.
if not workflow.overwrite_configfiles:

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
