"""Run a training job in this process, or across several GPUs of one node with ``torchrun``.

A rule script holds one job description. With 0 or 1 GPU the job runs right here; with n > 1 GPUs the job is
written to JSON next to its checkpoints and ``python -m torch.distributed.run --nproc_per_node n -m
conflux.training.launch <spec>`` starts n processes, each of which rebuilds the job and trains as one rank of
the Hugging Face Trainer's distributed data parallel (the Trainer reads WORLD_SIZE/LOCAL_RANK; rank 0 writes
the outputs). Resume works the same in both modes: the checkpoints are in the job's work directory, which
the launching process locks and whose fingerprint it checks first (:mod:`conflux.training.workdir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
_PATH_FIELDS = {"manifest", "out_dir", "work_dir", "init_adapters", "data"}


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
        inputs = {"data": job.data, "manifest": job.manifest}
    return fingerprint(
        method=job.method,
        seed=job.seed,
        dim=getattr(job, "dim", None),
        world_size=world_size,
        train=job.cfg.as_dict(),
        inputs=inputs,
    )


def train_job(job: PreferenceJob | TrlJob, *, gpus: int = 0, resume: str = "refuse") -> dict[str, Any] | None:
    """Every training rule (the stages of :mod:`conflux.methods`): train ``job`` on ``gpus`` GPUs of this node
    (0 or 1: in this process) with the stage's trainer.

    The job holds its work directory's lock for the whole run, and resumes from a checkpoint there only when
    the checkpoint's fingerprint is this run's (``resume``: ``refuse`` a changed one, or ``restart``).
    """
    world = max(gpus, 1)
    with work_dir_lock(job.work_dir):
        check_resume(job.work_dir, job_fingerprint(job, world), rule=job.method, policy=resume)
        if gpus <= 1:
            run = run_preference_job if isinstance(job, PreferenceJob) else run_trl_job
            return run(job)
        spec = job.work_dir / "job.json"
        write_json(spec, job_to_dict(job))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            "conflux.training.launch",
            str(spec),
        ]
        log.info("launching %d processes: %s", gpus, " ".join(cmd))
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
