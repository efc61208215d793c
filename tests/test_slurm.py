"""The workflow on SLURM: a slice run through a real single-node cluster equals the local run, and the paper
matrix plans with the SLURM profile (dry-run, no cluster needed) with GPUs on every training job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from slurm_cluster import SlurmCluster, _kill_job_leftovers, session_cluster
from workflow_cli import equal_outputs, planned

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
# Data and base-model rules of the default workflow: four jobs, each a real sbatch job on the cluster.
SLICE = ["results/data/synth_pku/split/stats.json", "results/models/tiny/manifest.json"]
SLICE_RULES = {"load_pairs", "split_pairs", "build_tiny_model", "base_model_manifest"}
TRAINING_RULES = {
    "curriculum_stage1",
    "curriculum_stage2",
    "curriculum_stage3",
    "panacea",
    "dpo_soup",
    "sft",
    "dpo",
}


def snakemake(*args: str, workdir: Path, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run snakemake on this checkout in ``workdir``; return its output and wall seconds, fail loudly."""
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args]
    env = env or dict(os.environ)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out, seconds


def slice_config(path: Path) -> Path:
    """The default config, shrunk so the slice runs in seconds per job."""
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["datasets"]["synth_pku"]["n_pairs"] = 400
    raw["models"]["tiny"]["tiny"]["vocab_size"] = 600
    # SLURM = local, not how well it pretrains (tests/test_tinymodel.py): 20 steps, on the worker's share
    raw["models"]["tiny"]["tiny"]["pretrain"]["steps"] = 20
    raw["resources"] = {"rules": {"build_tiny_model": {"cpus_per_task": 1}}}
    raw["batch_seeds"] = False  # a cluster's setting: one job per seed
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    """A running single-node SLURM cluster (installed when missing), stopped by pid at the session's end."""
    return session_cluster(request)


@pytest.fixture(scope="module")
def slice_runs(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The slice run twice from the same config: as local processes, and as sbatch jobs on the cluster."""
    cfg = slice_config(tmp_path_factory.mktemp("slice_cfg") / "config.yaml")
    local, on_slurm = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("on_slurm")
    with ThreadPoolExecutor(2) as pool:  # the SLURM run mostly waits for status checks: overlap the two
        slurm_run = pool.submit(
            snakemake,
            "--executor", "slurm", "--profile", "profiles/slurm", "--jobs", "2",
            # The test cluster's jobs finish in seconds: check their status early.
            "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
            "--slurm-keep-successful-logs",
            *SLICE, "--configfile", str(cfg),
            workdir=on_slurm, env=slurm_cluster.env,
        )  # fmt: skip
        local_run = pool.submit(snakemake, "--cores", "2", *SLICE, "--configfile", str(cfg), workdir=local)
        slurm_log, slurm_s = slurm_run.result()
        _, local_s = local_run.result()
    return {
        "local": local,
        "slurm": on_slurm,
        "slurm_log": slurm_log,
        "seconds": {"local": local_s, "slurm": slurm_s, **slurm_cluster.timings},
    }


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_run_equals_local_run(slice_runs):
    local, on_slurm = slice_runs["local"] / "results", slice_runs["slurm"] / "results"
    assert (on_slurm / "data/synth_pku/split/conflict.parquet").exists()
    assert (on_slurm / "models/tiny/hf").is_dir()
    assert equal_outputs(local, on_slurm) == []
    print("seconds:", {k: round(v, 1) for k, v in slice_runs["seconds"].items()})


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_run_submitted_every_job_with_sbatch(slice_runs, slurm_cluster):
    log = slice_runs["slurm_log"]
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    assert len(submitted) == len(SLICE_RULES), log[-4000:]
    finished = {job["JobId"]: job for job in slurm_cluster.finished_jobs()}
    for job_id in submitted:
        assert finished[job_id]["JobState"] == "COMPLETED", finished[job_id]
        assert finished[job_id]["WorkDir"] == str(slice_runs["slurm"])
    # Each job ran one rule of the slice, in its own sbatch allocation, and logged through SLURM.
    slurm_logs = list((slice_runs["slurm"] / "logs/slurm").rglob("*.log"))
    assert {p.parent.parent.name for p in slurm_logs} == {f"rule_{r}" for r in SLICE_RULES}


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], float]:
    """The paper matrix planned with the SLURM profile (no cluster needed): its jobs and the wall seconds."""
    out, seconds = snakemake(
        "-n",
        "--profile",
        "profiles/slurm",
        "--configfile",
        str(ROOT / "config/paper.yaml"),
        workdir=tmp_path_factory.mktemp("paper_plan"),
    )
    return planned(out), seconds


def test_paper_dry_run_with_the_slurm_profile_plans_every_job(paper_plan):
    jobs, seconds = paper_plan
    counts = {rule: sum(j["rule"] == rule for j in jobs) for rule in {j["rule"] for j in jobs}}
    runs = 2 * 2 * 3  # datasets x models x seeds of the curriculum study
    assert counts["panacea"] == counts["curriculum_stage3"] == runs
    assert counts["sft"] == counts["sft_dpo"] == 3 * 2 * 3  # general, ojousama, student x models x seeds
    assert counts["dpo_soup"] == (2 + 5) * 2 * 3
    print(f"paper-matrix dry-run with profiles/slurm: {len(jobs)} jobs in {seconds:.2f} s")


def test_paper_dry_run_requests_gpus_for_every_training_job(paper_plan):
    jobs, _ = paper_plan
    training = [j for j in jobs if j["rule"] in TRAINING_RULES]
    assert len(training) > 0
    for job in training + [j for j in jobs if j["rule"] == "reference_logps"]:
        assert int(job["resources"].get("gpu", 0)) >= 1, job
        assert "runtime" in job["resources"] and "mem_mb" in job["resources"], job
    for job in jobs:
        if job["rule"] in SLICE_RULES | {"load_persona"}:
            assert "gpu" not in job["resources"], job


def sbatch_call(resources: dict[str, str], threads: int = 1) -> str:
    """The sbatch command line snakemake-executor-plugin-slurm builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    values = Resources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=values, threads=threads)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "x", "account": "", "partition": ""}
    return get_submit_command(job, {**params, "workdir": "."}) + set_gres_string(job)


def test_a_training_job_submits_with_its_configured_gpus_cpus_memory_and_time(paper_plan):
    jobs, _ = paper_plan
    raw = yaml.safe_load((ROOT / "config/paper.yaml").read_text())["resources"]
    for rule in ("panacea", "sft"):
        want = {**raw["training"], **raw.get("rules", {}).get(rule, {})}
        job = next(j for j in jobs if j["rule"] == rule)
        call = sbatch_call(job["resources"])
        assert f"--gpus={want['gpu']}" in call, call
        assert f"--cpus-per-task={want['cpus_per_task']}" in call, call
        assert f"--mem {want['mem_mb']}" in call and f"-t {want['runtime']}" in call, call


def test_default_dry_run_with_the_slurm_profile_asks_for_no_gpu(tmp_path):
    out, _ = snakemake(
        "-n",
        "--profile",
        "profiles/slurm",
        "--configfile",
        str(ROOT / "config/config.yaml"),
        workdir=tmp_path,
    )
    jobs = planned(out)
    assert {j["rule"] for j in jobs} >= SLICE_RULES | TRAINING_RULES
    assert all("gpu" not in j["resources"] for j in jobs)
    # every submitted job asks for memory and time (resources.default); `all` is a local rule
    submitted = [j for j in jobs if j["rule"] != "all"]
    assert all("runtime" in j["resources"] and "mem_mb" in j["resources"] for j in submitted)


@pytest.mark.slurm
@pytest.mark.slow
def test_training_job_cancelled_with_scancel_resumes_to_the_uninterrupted_result(
    slurm_cluster, tmp_path_factory
):
    """scancel a training job after its first checkpoints; the profile's retry resubmits it, the log shows
    the resumed step, and the adapters equal those of an uninterrupted local run of the same target."""
    raw = yaml.safe_load(slice_config(tmp_path_factory.mktemp("resume_cfg") / "c.yaml").read_text())
    raw["training"].update(max_steps=40, save_steps=4, logging_steps=1)
    cfg = tmp_path_factory.mktemp("resume_cfg2") / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    target = "results/train/tiny/synth_pku/seed0/curriculum/stage1"
    inputs = ["results/reference/tiny/synth_pku/agree.parquet", "results/models/tiny/manifest.json"]
    straight, cancelled = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("cancelled")
    snakemake("--cores", "2", target, "--configfile", str(cfg), workdir=straight)
    snakemake("--cores", "2", *inputs, "--configfile", str(cfg), workdir=cancelled)

    ckpt = cancelled / target.replace("results/train/", "results/checkpoints/")
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            snakemake,
            "--executor", "slurm", "--profile", "profiles/slurm", "--jobs", "1",
            "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
            target, "--configfile", str(cfg),
            workdir=cancelled, env=slurm_cluster.env,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while not any((p / "trainer_state.json").exists() for p in ckpt.glob("checkpoint-*")):
            assert not run.done(), run.result()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        jobs = slurm_cluster.run("squeue", "-h", "-o", "%i").stdout.split()
        assert jobs, "the training job is not in the queue"
        slurm_cluster.run("scancel", *jobs)
        log, _ = run.result()
    summary = json.loads((cancelled / target / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["global_steps"] == 40, summary
    rule_log = (cancelled / "logs/curriculum_stage1/tiny/synth_pku/seed0.log").read_text()
    assert "resuming from" in rule_log and summary["resumed_from"] in rule_log
    assert "attempt 2" in log.lower() or "retry" in log.lower() or len(re.findall(r"SLURM jobid", log)) >= 2
    from safetensors.torch import load_file

    for name in ("shared", "dim0", "dim1"):
        rel = f"{target}/adapters/{name}/adapter_model.safetensors"
        got, want = load_file(cancelled / rel), load_file(straight / rel)
        assert got.keys() == want.keys()
        assert all((got[k] == want[k]).all() for k in want), name


def _wait_for_exec_environment(pid: int) -> None:
    """Wait until ``/proc/<pid>/environ`` shows the exec'd program's environment.

    Popen returns when the exec closes its close-on-exec error pipe, which the kernel does before it lays out
    the new image's environment: read in between, environ is empty (about 1 in 10 reads right after Popen on
    this machine), and the teardown below would find no SLURM_CONF to kill by.
    """
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{pid}/environ").read_bytes():
        assert time.monotonic() < deadline, f"process {pid} shows no environment after 10 s"
        time.sleep(0.001)


def test_the_teardown_kills_what_the_clusters_jobs_left_running_and_nothing_else(tmp_path):
    """A job's process that escaped SLURM (it outlived its slurmstepd) still carries the cluster's SLURM_CONF:
    the teardown kills it by that, and leaves a process of another cluster alone."""
    conf = tmp_path / "slurm.conf"
    leftover, other = (
        subprocess.Popen(["sleep", "120"], env={**os.environ, "SLURM_CONF": str(path)})
        for path in (conf, tmp_path / "other" / "slurm.conf")
    )
    try:
        for proc in (leftover, other):
            _wait_for_exec_environment(proc.pid)
        _kill_job_leftovers(conf)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (leftover, other):
            proc.kill()
            proc.wait()
