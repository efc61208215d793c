"""The method registry: every training method of conflux, named once.

A method belongs to one study and trains in one or more rules, its stages. Every other list of methods is
derived from this table: the workflow's wildcard constraints, resource classes and default targets
(rules/common.smk), the methods a study accepts and the settings that resolve (:mod:`conflux.config`,
:mod:`conflux.training.config`), the trainer, objective and trained adapters of each job
(:mod:`conflux.training`), and the variants that evaluation and analysis see. tests/test_registry.py checks
the config schema's enums and the workflow's rules against it, so a method added anywhere else but here fails
the suite.

Adding a method: an entry in :data:`METHODS`, its objective (:mod:`conflux.training.objectives`) or TRL
trainer, and its rule in rules/training.smk.

Kept free of heavy imports: the workflow reads it while it plans the DAG.
"""

from __future__ import annotations

from dataclasses import dataclass

STUDIES = ("curriculum", "persona")
PREFERENCE = "preference"  # conflux's trainer with an objective (training/preference_trainer.py)
TRL = "trl"  # TRL's SFTTrainer or DPOTrainer (training/trl_jobs.py)
# What a stage updates. shared / dims / all: adapters of the multi-adapter policy π(·; w) (all = shared and
# every dim<i>); dim: only the dim<i> of its own job (one job per dimension); model: the whole model or the
# LoRA adapter of a TRL run, as finetune says.
TRAINS = ("shared", "dims", "all", "dim", "model")


@dataclass(frozen=True)
class Stage:
    """One training rule of a method, with its own job and output directory.

    ``rule`` names the rule in rules/training.smk, the ``methods.<rule>`` settings in the config, and the
    method column of the evaluation records. ``objective`` is the objective the preference trainer runs
    (:data:`conflux.training.objectives.OBJECTIVES`) or, for TRL, its trainer (``sft`` or ``dpo``).
    ``output`` is the directory under ``results/train/<model>/<dataset>/seed<seed>/``; ``{dim}`` in it makes
    one job per preference dimension. ``init``: the training rule of another method whose trained model this
    stage starts from and, for DPO, takes as its reference (SFT→DPO starts from SFT); a method's later stages
    start from its earlier ones without saying so.
    """

    rule: str
    objective: str
    output: str
    trains: str
    trainer: str = PREFERENCE
    init: str | None = None

    @property
    def per_dimension(self) -> bool:
        return "{dim}" in self.output


@dataclass(frozen=True)
class Method:
    """A method of a study: its stages in order, each initialised from the one before it.

    ``shared``: the policy has a `shared` adapter besides dim0..dim{k-1} (preference methods).
    ``analysed``: stages whose adapters get task-vector statistics and dimension-vs-dimension CL-L2 tables.
    ``revertable``: its full models are reverted layer by layer by the persona study's sweep.
    ``compared``: one of the methods the study's tables compare (the paper's); a variant that is not (the
    length-controlled curriculum) appears in the analyses that are about it.
    ``settings``: training settings of the method, under the config's ``methods.<rule>`` (a variant's point).
    ``varies``: the compared method a variant changes one thing of; the ablation table sets them side by side.
    ``settings_from``: a training rule whose ``methods.<rule>`` settings apply before the method's own
    (SFT→DPO trains as DPO does unless the config says otherwise).
    Every stage is evaluated: a curriculum stage, Panacea or DPO-Soup as a policy at w (the soup's k jobs
    together), a persona model with the persona metrics.
    """

    name: str
    study: str
    stages: tuple[Stage, ...]
    shared: bool = True
    analysed: tuple[str, ...] = ()
    revertable: bool = False
    resource_class: str = "training"
    compared: bool = True
    settings: tuple[tuple[str, object], ...] = ()
    varies: str | None = None
    settings_from: str | None = None

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(s.rule for s in self.stages)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # The three-stage curriculum over k+1 LoRA modules (Nishida & Nishida).
        Method(
            "curriculum",
            "curriculum",
            (
                Stage("curriculum_stage1", "curriculum_stage1", "curriculum/stage1", trains="shared"),
                Stage("curriculum_stage2", "curriculum_stage2", "curriculum/stage2", trains="dims"),
                Stage("curriculum_stage3", "curriculum_stage3", "curriculum/stage3", trains="all"),
            ),
            analysed=("curriculum_stage3",),
        ),
        # The curriculum with R-DPO's length control in every loss and in its evaluation margin: the fix the
        # paper suggests for the length bias of Appendix C (beyond the paper; compared in length_bias tables).
        Method(
            "curriculum_rdpo",
            "curriculum",
            (
                Stage(
                    "curriculum_rdpo_stage1", "curriculum_stage1", "curriculum_rdpo/stage1", trains="shared"
                ),
                Stage("curriculum_rdpo_stage2", "curriculum_stage2", "curriculum_rdpo/stage2", trains="dims"),
                Stage("curriculum_rdpo_stage3", "curriculum_stage3", "curriculum_rdpo/stage3", trains="all"),
            ),
            compared=False,
            settings=(("length_control", "rdpo"),),
            varies="curriculum",
        ),
        # Panacea with linear scalarization over k+1 AdaLoRA modules, as the curriculum paper ran it
        # (Appendix B; Zhong et al., 2024): the paper's settings are in config/paper.yaml.
        Method(
            "panacea",
            "curriculum",
            (Stage("panacea", "panacea", "panacea", trains="all"),),
            settings=(("lora", {"adapter": "adalora"}),),
        ),
        # The same objective over plain LoRA modules with the proposed method's settings: a variant that
        # separates the adapter type from the method (beside the three in the ablation table).
        Method(
            "panacea_lora",
            "curriculum",
            (Stage("panacea_lora", "panacea", "panacea_lora", trains="all"),),
            compared=False,
            settings=(("lora", {"adapter": "lora"}),),
            varies="panacea",
        ),
        # DPO-Soup: k independent DPO runs, one adapter each, interpolated at w (Rame et al., 2023).
        Method(
            "dpo_soup",
            "curriculum",
            (Stage("dpo_soup", "dpo_soup", "dpo_soup/dim{dim}", trains="dim"),),
            shared=False,
            analysed=("dpo_soup",),
        ),
        # The persona study's fine-tunes through TRL (full fine-tuning or LoRA by config).
        Method("sft", "persona", (Stage("sft", "sft", "sft", trains="model", trainer=TRL),), revertable=True),
        Method("dpo", "persona", (Stage("dpo", "dpo", "dpo", trains="model", trainer=TRL),), revertable=True),
        # SFT→DPO (the thesis's sequential combination): DPO from the SFT model, which is also its reference.
        Method(
            "sft_dpo",
            "persona",
            (Stage("sft_dpo", "dpo", "sft_dpo", trains="model", trainer=TRL, init="sft"),),
            revertable=True,
            settings_from="dpo",
        ),
    )
}
STAGES: dict[str, Stage] = {s.rule: s for m in METHODS.values() for s in m.stages}
_METHOD_OF_RULE = {s.rule: m for m in METHODS.values() for s in m.stages}


def methods_of(study: str) -> tuple[str, ...]:
    """The methods of one study, in registry order."""
    return tuple(m.name for m in METHODS.values() if m.study == study)


def stage(rule: str) -> Stage:
    """The stage of a training rule (KeyError for a rule that trains nothing)."""
    return STAGES[rule]


def method_of(rule: str) -> Method:
    """The method a training rule belongs to."""
    return _METHOD_OF_RULE[rule]


def training_rules(trainer: str | None = None) -> tuple[str, ...]:
    """Every training rule, or those of one trainer (:data:`PREFERENCE` or :data:`TRL`)."""
    return tuple(r for r, s in STAGES.items() if trainer is None or s.trainer == trainer)


def variants(study: str, methods: tuple[str, ...] | None = None) -> list[str]:
    """The evaluated variants (stage rules) of a study's methods, all of them by default."""
    chosen = methods_of(study) if methods is None else methods
    return [rule for name in chosen for rule in METHODS[name].rules]


def final_variants(study: str, methods: tuple[str, ...] | None = None) -> list[str]:
    """Every method's final stage, variants included (the length-bias analysis compares them all)."""
    chosen = methods_of(study) if methods is None else methods
    return [METHODS[name].rules[-1] for name in chosen]


def compared_variants(study: str, methods: tuple[str, ...] | None = None) -> list[str]:
    """The variant each compared method is judged by in the study's tables: its final stage. The curriculum
    study compares three methods as the paper does (the curriculum after stage 3, Panacea, DPO-Soup)."""
    chosen = methods_of(study) if methods is None else methods
    return final_variants(study, tuple(name for name in chosen if METHODS[name].compared))


def ablation_variants(study: str, methods: tuple[str, ...] | None = None) -> list[str]:
    """The ablation table's variants: every stage of the study's compared multi-stage methods (the curriculum
    after stages 1, 2 and 3), then each chosen variant beside the method it varies (R-DPO's curriculum beside
    stage 3, Panacea on LoRA beside Panacea on AdaLoRA), final stages only."""
    chosen = methods_of(study) if methods is None else methods
    out = [r for n in chosen if METHODS[n].compared and len(METHODS[n].stages) > 1 for r in METHODS[n].rules]
    for name in chosen:
        varies = METHODS[name].varies
        if varies is not None and varies in chosen:
            out += [r for r in (METHODS[varies].rules[-1], METHODS[name].rules[-1]) if r not in out]
    return out


def analysed_variants() -> list[str]:
    """Variants whose adapters the weight analysis covers."""
    return [v for m in METHODS.values() for v in m.analysed]


def revertable_methods() -> list[str]:
    """Methods whose models the revert sweep may set back to the base, layer by layer."""
    return [m.name for m in METHODS.values() if m.revertable]
