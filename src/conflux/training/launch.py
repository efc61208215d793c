"""Run a training job in this process, or across several GPUs (and nodes) with ``torchrun``.

A rule script holds one job description. With 0 or 1 GPU the job runs right here; with n > 1 GPUs the job is
written to JSON next to its checkpoints and ``python -m torch.distributed.run --nproc_per_node n -m
conflux.training.launch <spec>`` starts n processes, each of which rebuilds the job and trains as one rank of
the Hugging Face Trainer (DDP or FSDP2, :mod:`conflux.training.parallel`; the Trainer reads
WORLD_SIZE/LOCAL_RANK; rank 0 writes the outputs). With N > 1 nodes, ``srun`` starts one such torchrun on each
node of the SLURM allocation and they meet (c10d rendezvous) at its first node. Resume works the same in both
modes: the checkpoints are in the job's work directory, which the launching process locks and whose
fingerprint it checks first (:mod:`conflux.training.workdir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from conflux.atomic import write_json
from conflux.errors import ConfluxError
from conflux.methods import PREFERENCE, TRL
from conflux.training.config import train_config_from_dict
from conflux.training.preference_trainer import PreferenceJob, run_preference_job
from conflux.training.tracking import Tracking
from conflux.training.trl_jobs import TrlJob, run_trl_job
from conflux.training.workdir import check_resume, fingerprint, work_dir_lock

log = logging.getLogger(__name__)
_KINDS = {PREFERENCE: (PreferenceJob, run_preference_job), TRL: (TrlJob, run_trl_job)}
_PATH_FIELDS = {"manifest", "out_dir", "work_dir", "init_adapters", "data", "reference"}


def job_to_dict(job: PreferenceJob | TrlJob) -> dict[str, Any]:
    kind = PREFERENCE if isinstance(job, PreferenceJob) else TRL
    values = {}
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if f.name in ("cfg", "tracking"):
            value = dataclasses.asdict(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) for v in value]
        values[f.name] = value
    return {"kind": kind, "job": values}


def job_from_dict(spec: dict[str, Any]) -> PreferenceJob | TrlJob:
    if spec.get("kind") not in _KINDS:
        raise ConfluxError(f"unknown job kind {spec.get('kind')!r}")
    cls, _ = _KINDS[spec["kind"]]
    values = dict(spec["job"])
    values["cfg"] = train_config_from_dict(values["cfg"])
    values["tracking"] = Tracking(**values.get("tracking", {}))
    for key in _PATH_FIELDS & values.keys():
        if values[key] is not None:
            values[key] = Path(values[key])
    for key in ("pairs", "references"):
        if key in values:
            values[key] = [Path(p) for p in values[key]]
    return cls(**values)


def job_fingerprint(job: PreferenceJob | TrlJob, world_size: int) -> dict[str, Any]:
    """What shapes this job's run (:func:`conflux.training.workdir.fingerprint`): its settings and inputs."""
    if isinstance(job, PreferenceJob):
        init = job.init_adapters / "adapters" if job.init_adapters is not None else None
        inputs = {"pairs": job.pairs, "references": job.references, "manifest": job.manifest, "init": init}
    else:
        inputs = {"data": job.data, "manifest": job.manifest, "reference": job.reference}
    return fingerprint(
        method=job.method,
        seed=job.seed,
        dim=getattr(job, "dim", None),
        world_size=world_size,
        train=job.cfg.as_dict(),
        inputs=inputs,
    )


def torchrun_command(
    spec: Path, nproc: int, *, nodes: int = 1, endpoint: str | None = None, run_id: str = "conflux"
) -> list[str]:
    """The torchrun of one node: ``nproc`` ranks; with several nodes a c10d rendezvous at ``endpoint``
    (host:port, the same on every node) under ``run_id``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}"]
        cmd.append(f"--rdzv_id={run_id}")
    return [*cmd, "-m", "conflux.training.launch", str(spec)]


_HOSTLIST = re.compile(r"^([^,\[]+)(?:\[([^\]]+)\])?")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list (``gpu[07-09,12],login1`` → ``gpu07``), as ``scontrol show
    hostnames`` would list it first."""
    match = _HOSTLIST.match(nodelist.strip())
    if not match:
        raise ConfluxError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def slurm_rendezvous(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(host:port, run id) of a multi-node job's rendezvous: the allocation's first node, a port and an id
    derived from the SLURM job id, so every node computes the same without talking to the others."""
    env = dict(os.environ) if env is None else env
    if "SLURM_JOB_NODELIST" not in env or "SLURM_JOB_ID" not in env:
        raise ConfluxError("a training job with nodes > 1 runs inside a SLURM allocation (--profile slurm)")
    job_id = env["SLURM_JOB_ID"]
    port = 20000 + int(job_id) % 20000 if job_id.isdigit() else 29500
    return f"{first_host(env['SLURM_JOB_NODELIST'])}:{port}", f"conflux-{job_id}"


def train_job(
    job: PreferenceJob | TrlJob, *, gpus: int = 0, nodes: int = 1, resume: str = "refuse"
) -> dict[str, Any] | None:
    """Every training rule (the stages of :mod:`conflux.methods`): train ``job`` on ``gpus`` GPUs of each of
    ``nodes`` nodes (one GPU on one node: in this process) with the stage's trainer.

    The job holds its work directory's lock for the whole run, and resumes from a checkpoint there only when
    the checkpoint's fingerprint is this run's (``resume``: ``refuse`` a changed one, or ``restart``). Several
    nodes: ``srun`` starts one torchrun per node of the allocation, which meet at its first node.
    """
    per_node = max(gpus, 1)
    with work_dir_lock(job.work_dir):
        check_resume(job.work_dir, job_fingerprint(job, per_node * nodes), rule=job.method, policy=resume)
        if per_node == 1 and nodes == 1:
            run = run_preference_job if isinstance(job, PreferenceJob) else run_trl_job
            return run(job)
        spec = job.work_dir / "job.json"
        write_json(spec, job_to_dict(job))
        if nodes == 1:
            cmd = torchrun_command(spec, per_node)
        else:
            endpoint, run_id = slurm_rendezvous()
            srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1"]
            srun.append("--kill-on-bad-exit=1")  # one node's failure ends the others' torchrun too
            cmd = srun + torchrun_command(spec, per_node, nodes=nodes, endpoint=endpoint, run_id=run_id)
        log.info("launching %d x %d processes: %s", nodes, per_node, " ".join(cmd))
        subprocess.run(cmd, check=True)
    summary = job.out_dir / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m conflux.training.launch <job.json>")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    job = job_from_dict(spec)
    _, run = _KINDS[spec["kind"]]
    run(job)


if __name__ == "__main__":
    main()
