"""batch_seeds: one job trains every seed of a training rule, and each seed's output is the one a job of its
own would have written (config: batch_seeds; rules/common.smk: per_seed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from workflow_cli import RUN_TIMEOUT, equal_outputs, planned, planned_jobs, snakemake

ROOT = Path(__file__).resolve().parents[1]
PERSONA = "persona_ojousama"  # its rejected replies are bundled: no generation job before the DPO pairs
# Seed 1's evaluations, and so its training: the preference script with a per-seed init (stages 2 and 3),
# the TRL script with a per-seed init and reference (SFT→DPO from SFT, against the SFT model's cached
# log-probs), and both evaluation scripts with per-seed models: every kind of per-seed input there is.
TARGETS = ["results/eval/tiny/synth_pku/seed1/curriculum_stage3.parquet",
           "results/eval/tiny/persona_ojousama/seed1/persona_sft_dpo.json"]  # fmt: skip
SEEDED_RULES = ("curriculum_stage1", "curriculum_stage2", "curriculum_stage3", "sft",
                "reference_logps_sft_dpo", "sft_dpo", "evaluate_method", "persona_eval")  # fmt: skip


def two_seed_config(path: Path, batch: bool) -> Path:
    """The default config on two seeds, one pair set and one persona set, shrunk to seconds per job."""
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw.update(seeds=[0, 1], batch_seeds=batch, tracking={"backend": "none"})  # no event files' timestamps
    raw["analysis"]["seeds"] = [0]
    raw["datasets"]["synth_pku"]["n_pairs"] = 200
    raw["models"]["tiny"]["tiny"].update(vocab_size=600)
    raw["models"]["tiny"]["tiny"]["pretrain"]["steps"] = 10
    raw["studies"]["curriculum"].update(datasets=["synth_pku"], methods=["curriculum"])
    raw["studies"]["persona"].update(datasets=["persona_ojousama"], methods=["sft", "dpo", "sft_dpo"])
    raw["training"]["max_steps"] = 2
    raw["methods"]["sft"]["max_steps"] = raw["methods"]["dpo"]["max_steps"] = 2
    raw["evaluation"]["generation"]["max_new_tokens"] = 4
    path.write_text(yaml.safe_dump(raw))
    return path


# What both runs share and batch_seeds does not touch: the per-seed run starts from the batched run's copy.
SHARED = ["data", "models", "reference/tiny/synth_pku", "reference/tiny/persona_ojousama/dpo_train.parquet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same two targets (seed 1's) made with batch_seeds on (one job per rule trains seeds 0 and 1) and
    off (one job per seed: seed 1's only). The per-seed run starts from a copy of the batched run's data, base
    model and base-model references, which batch_seeds leaves alone (about half of a run's jobs)."""
    out = {}
    for name, batch in (("batched", True), ("per_seed", False)):
        work = tmp_path_factory.mktemp(name)
        cfg = two_seed_config(work / "config.yaml", batch)
        if not batch:
            for part in SHARED:
                src, dst = out["batched"] / "results" / part, work / "results" / part
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        plan = snakemake(ROOT, "-n", *TARGETS, "--configfile", str(cfg), workdir=work)
        (work / "plan.txt").write_text(plan.stdout + plan.stderr)
        snakemake(ROOT, "--cores", "2", *TARGETS, "--configfile", str(cfg), workdir=work, timeout=RUN_TIMEOUT)
        out[name] = work
    return out


@pytest.mark.slow
def test_one_job_per_rule_trains_every_seed_and_each_seed_keeps_its_log(runs):
    batched = planned_jobs((runs["batched"] / "plan.txt").read_text())
    per_seed = planned_jobs((runs["per_seed"] / "plan.txt").read_text())
    for rule in SEEDED_RULES:
        assert batched[rule] == per_seed[rule] == 1, rule  # one job: both seeds, or seed 1's alone
    work = runs["batched"]
    for rule, ds in (("curriculum_stage2", "synth_pku"), ("sft_dpo", PERSONA), ("persona_eval", PERSONA)):
        assert (work / f"benchmarks/{rule}/tiny/{ds}/seeds.tsv").is_file()  # one job, one benchmark
        for seed in (0, 1):
            log = (work / f"logs/{rule}/tiny/{ds}/seed{seed}.log").read_text()
            assert f"seed {seed} ({seed + 1} of 2 in this job)" in log
    stage2 = work / "results/train/tiny/synth_pku/seed0/curriculum/stage2"
    summary = json.loads((stage2 / "summary.json").read_text())
    assert summary["seed"] == 0 and summary["global_steps"] == 2


@pytest.mark.slow
def test_a_seed_trained_in_a_batch_equals_the_seed_trained_alone(runs):
    """Seed 1 after seed 0 in one process writes the same bits as seed 1 in a process of its own: each
    training job seeds every generator itself, and nothing of one seed's run leaks into the next."""
    parts = {
        "train/tiny/synth_pku/seed1/curriculum": "*.safetensors",  # stages 1, 2 and 3
        "train/tiny/persona_ojousama/seed1": "*.safetensors",  # sft and sft_dpo
        "reference/tiny/persona_ojousama/seed1": "*.parquet",
        "eval/tiny/synth_pku/seed1": "*.parquet",  # curriculum stages 1, 2 and 3
        "eval/tiny/persona_ojousama/seed1": "*.json",  # sft, dpo and sft_dpo
    }
    for part, kind in parts.items():
        batched, alone = runs["batched"] / "results" / part, runs["per_seed"] / "results" / part
        assert any(alone.rglob(kind)), f"{part}: nothing to compare"
        assert equal_outputs(batched, alone) == [], part
    assert not (runs["per_seed"] / f"results/train/tiny/{PERSONA}/seed0").exists()  # seed 1 alone, indeed


def test_a_batched_job_asks_the_cluster_for_every_seeds_time(tmp_path):
    """resources runtime is a seed's: a job that trains two seeds asks SLURM for twice as long."""
    runtime = {}
    for batch in (True, False):
        cfg = two_seed_config(tmp_path / f"config_{batch}.yaml", batch)
        plan = snakemake(ROOT, "-n", "--profile", "profiles/slurm", TARGETS[0], "--configfile", str(cfg),
                         workdir=tmp_path / f"work_{batch}")  # fmt: skip
        jobs = [j for j in planned(plan.stdout + plan.stderr) if j["rule"] == "curriculum_stage2"]
        runtime[batch] = int(jobs[0]["resources"]["runtime"])
    assert runtime[True] == 2 * runtime[False] > 0
