"""The method registry names each method once: the schema, the workflow, the trainers and the rule entry
points agree with it, so a method added in one place only fails here."""

from __future__ import annotations

import ast
import copy
import importlib
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from conflux.methods import (
    METHODS,
    PREFERENCE,
    STAGES,
    TRAINS,
    TRL,
    Method,
    Stage,
    analysed_variants,
    revertable_methods,
    variants,
)
from conflux.training.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "config.schema.yaml").read_text(encoding="utf-8"))
RULE_FILES = sorted((ROOT / "rules").glob("*.smk"))


def _rule_bodies() -> dict[str, str]:
    """Every rule of rules/*.smk and the text of its body (a rule under an ``if`` is indented)."""
    bodies: dict[str, str] = {}
    for path in RULE_FILES:
        blocks = re.split(r"^ *rule (\w+):\n", path.read_text(encoding="utf-8"), flags=re.M)
        bodies.update(zip(blocks[1::2], blocks[2::2], strict=True))
    return bodies


def workflow_rules() -> dict[str, str | None]:
    """Every rule of rules/*.smk and the script it runs (None for a rule without one)."""
    scripts = {}
    for name, body in _rule_bodies().items():
        script = re.search(r'^ +script:\n\s+"\.\./workflow/scripts/(\w+\.py)"', body, flags=re.M)
        scripts[name] = script.group(1) if script else None
    return scripts


def cluster_rules() -> set[str]:
    """Rules whose jobs the cluster runs (resources.rules may size them): all but the local ones."""
    return {name for name, body in _rule_bodies().items() if "localrule: True" not in body}


def schema_disagreements(schema: dict, rules: set[str], methods: Mapping[str, Method] = METHODS) -> list[str]:
    """Where the config schema's enums of methods and rules differ from the registry and the workflow."""
    stages = {s.rule: s for m in methods.values() for s in m.stages}
    problems = []

    def compare(key: str, found, expected) -> None:
        extra, missing = sorted(set(found) - set(expected)), sorted(set(expected) - set(found))
        if extra or missing:
            problems.append(f"{key}: not in the registry or workflow {extra}, missing {missing}")

    compare(
        "studies.*.methods enum", schema["$defs"]["study"]["properties"]["methods"]["items"]["enum"], methods
    )
    by_rule = schema["properties"]["methods"]["properties"]
    compare("methods keys", by_rule, stages)
    for rule, spec in by_rule.items():
        if rule in stages:
            kind = "method_settings" if stages[rule].trainer == PREFERENCE else "train_settings"
            if spec.get("$ref") != f"#/$defs/{kind}":
                problems.append(f"methods.{rule}: expected the {kind} schema, got {spec}")
    tracked = schema["properties"]["tracking"]["properties"]["methods"]["propertyNames"]["enum"]
    compare("tracking.methods names", tracked, stages)
    # the registry's revertable methods, beside the pattern of the SFT+DPO merges' names
    revert = schema["properties"]["analysis"]["properties"]["revert"]["properties"]["methods"]["items"]
    revert = revert["anyOf"][0]["enum"]
    compare("analysis.revert.methods enum", revert, [m.name for m in methods.values() if m.revertable])
    resources = schema["properties"]["resources"]["properties"]
    compare("resources.rules names", resources["rules"]["propertyNames"]["enum"], rules)
    classes = {m.resource_class for m in methods.values()} - set(resources)
    if classes:
        problems.append(f"resources: no class {sorted(classes)}")
    return problems


def test_schema_enums_are_the_registry_and_the_workflow_rules():
    assert schema_disagreements(SCHEMA, cluster_rules()) == []


def test_a_method_added_to_the_schema_but_not_the_registry_fails():
    schema = copy.deepcopy(SCHEMA)
    schema["$defs"]["study"]["properties"]["methods"]["items"]["enum"].append("new_method")
    schema["properties"]["methods"]["properties"]["new_method"] = {"$ref": "#/$defs/method_settings"}
    problems = schema_disagreements(schema, cluster_rules())
    assert len(problems) == 2 and all("new_method" in p for p in problems), problems


def test_a_method_added_to_the_registry_but_not_the_schema_fails():
    new = Method("new_method", "curriculum", (Stage("new_method", "panacea", "new_method", trains="all"),))
    problems = schema_disagreements(SCHEMA, cluster_rules(), {**METHODS, "new_method": new})
    # the study's methods, the per-rule settings and the per-rule trackers all miss it
    assert len(problems) == 3 and all("new_method" in p for p in problems), problems


def test_every_stage_names_a_trainer_an_objective_and_what_it_trains():
    preference = {s.objective for s in STAGES.values() if s.trainer == PREFERENCE}
    assert preference == set(OBJECTIVES)
    assert all(cls.name == name for name, cls in OBJECTIVES.items())
    assert {s.objective for s in STAGES.values() if s.trainer == TRL} <= {"sft", "dpo"}
    assert all(s.trains in TRAINS and s.trainer in (PREFERENCE, TRL) for s in STAGES.values())
    assert set(analysed_variants()) <= set(STAGES) and set(revertable_methods()) <= set(METHODS)


_WORKFLOW_FACTS = """
import json
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    wf = api.workflow(
        resource_settings=ResourceSettings(),
        config_settings=ConfigSettings(),
        storage_settings=StorageSettings(),
        snakefile=Path("Snakefile"),
        workdir=Path("."),
    )
    wf.list_rules(only_targets=False)
    workflow = wf._workflow
    outputs = {r.name: [str(o) for o in r.output] for r in workflow.rules}
    print(json.dumps({"constraints": workflow.wildcard_constraints, "outputs": outputs}))
"""


@pytest.fixture(scope="module")
def workflow_facts() -> dict:
    """The parsed workflow's global wildcard constraints and rule outputs (default config)."""
    proc = subprocess.run(
        [sys.executable, "-c", _WORKFLOW_FACTS], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _matches(pattern: str, names: list[str]) -> list[bool]:
    return [re.fullmatch(pattern, n) is not None for n in names]


def test_workflow_wildcards_are_derived_from_the_registry(workflow_facts):
    constraints = workflow_facts["constraints"]
    others = ["sft_dpo", "curriculum", "curriculum_stage4", "panacea_adalora", "base"]
    for key, expected in (
        ("variant", variants("curriculum")),
        ("analysis_variant", analysed_variants()),
        ("revert_method", [*revertable_methods(), "ties_lam0.5", "ties_lam1"]),  # and the default merges
    ):
        assert all(_matches(constraints[key], expected)), (key, constraints[key])
        wrong = [n for n in [*STAGES, *others] if n not in expected]
        assert not any(_matches(constraints[key], wrong)), (key, constraints[key])
    # the persona evaluations name their variants in their outputs: the trained ones (the default config's,
    # in registry order) of every seed in one job (batch_seeds), the default merges in another per seed
    rules = ("persona_eval", "persona_eval_merges")
    named = {r: [o.rsplit("/persona_", 1)[1] for o in workflow_facts["outputs"][r]] for r in rules}
    assert named["persona_eval"] == [f"{v}.json" for _ in range(3) for v in variants("persona")]
    assert named["persona_eval_merges"] == ["ties_lam0.5.json", "ties_lam1.json"]


def test_every_training_rule_writes_where_the_registry_says(workflow_facts):
    outputs = {
        rule: re.sub(r"\{(\w+),[^{}]*\}", r"{\1}", out[0])
        for rule, out in workflow_facts["outputs"].items()
        if out
    }
    for rule, stage in STAGES.items():
        assert rule in outputs, f"the registry's rule {rule} is not in the workflow"
        assert outputs[rule].endswith("/" + stage.output), (rule, outputs[rule])


def _entry_call(script: Path) -> tuple[str, str]:
    """(module, function) of the package call a rule script ends with."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    imported = {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("conflux")
        for alias in node.names
    }
    # the call, or a loop over the job's seeds around it (config: batch_seeds)
    body = [n for node in tree.body for n in (node.body if isinstance(node, ast.For) else [node])]
    calls = [n.value for n in body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]
    calls = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id in imported]
    assert len(calls) == 1, f"{script.name}: expected one package call, found {len(calls)}"
    return imported[calls[0].func.id], calls[0].func.id


def test_every_rule_reaches_a_package_entry_named_for_it():
    """Grepping a rule's name finds its entry: ``<rule>_job``, a ``*_job`` whose docstring names the rule,
    or, for a training rule, the registry entry and ``train_job``."""
    scripts = ROOT / "workflow" / "scripts"
    for rule, script in workflow_rules().items():
        if script is None:
            continue
        module, name = _entry_call(scripts / script)
        func = getattr(importlib.import_module(module), name)
        named = name == f"{rule}_job" or f"``{rule}``" in (func.__doc__ or "")
        trains = rule in STAGES and name == "train_job"
        assert named or trains, f"rule {rule}: {script} calls {module}.{name}, which does not name the rule"
