"""A training job's work directory: its checkpoints, the fingerprint that guards their resume, a lock, the
metrics log and the running loss.

Checkpoints live in ``results/checkpoints/...``, outside the rule's output, so a killed or cancelled job
resumes when it runs again (Snakemake deletes a failed job's outputs, not this directory). Three things can
make such a resume wrong, and each is refused here rather than trained through:

- **changed settings.** A checkpoint made under other settings would continue the old run under the new
  ones (the old learning-rate schedule, a new β), a result that belongs to neither. Each work directory
  holds the **fingerprint** of what shapes its run: the resolved training settings, the method, seed,
  dimension and process count, a content hash of every input file (pairs, reference caches, the previous
  stage's adapters, the base model's manifest) and the versions of the libraries that change numerics. A
  resume under another fingerprint stops with the changed keys named, or starts afresh with
  ``resume: restart`` in the config.
- **two runs at once** (``--nolock``, or a job resubmitted while the first is still running): the directory
  is locked by the job's launcher, which refreshes the lock while it runs; a live holder makes the second
  run fail at once, a dead one (or one silent for five minutes: a crashed node) is taken over.
- **a torn log.** A crash can cut the last line of ``metrics.jsonl``; it is cut off before the log grows.

The Trainer's ``train_loss`` covers only the steps since its last start, so each checkpoint also records
the loss summed so far (``conflux_loss.json``) and a resumed run reports the mean over all its steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from conflux.atomic import process_alive, write_json
from conflux.errors import ConfluxError, DataError

log = logging.getLogger(__name__)

FINGERPRINT = "fingerprint.json"
LOSS_FILE = "conflux_loss.json"
LOCK = ".lock"
RESUME_POLICIES = ("refuse", "restart")
# Libraries whose versions change the numbers a run produces (kernels, defaults, training loops).
NUMERIC_PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate")


# ---- fingerprint -------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content (streamed), or of every file under a directory with its relative name."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def fingerprint(
    *,
    method: str,
    seed: int,
    dim: int | None,
    world_size: int,
    train: Mapping[str, Any],
    inputs: Mapping[str, Path | Sequence[Path] | None],
) -> dict[str, Any]:
    """What shapes a training run, as a nested dict of plain values (see the module docstring)."""
    digests: dict[str, Any] = {}
    for role, paths in inputs.items():
        if paths is None:
            continue
        listed = [paths] if isinstance(paths, Path) else list(paths)
        digests[role] = [file_digest(Path(p)) for p in listed]
    versions = {}
    for package in NUMERIC_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "method": method,
        "seed": seed,
        "dim": dim,
        "world_size": world_size,
        "train": dict(train),
        "inputs": digests,
        "versions": versions,
    }


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new`` (input hashes shortened)."""
    a, b = _flat(old), _flat(new)

    def shown(v: Any) -> str:
        if isinstance(v, list) and v and all(isinstance(x, str) and len(x) == 64 for x in v):
            return "[" + ", ".join(x[:12] for x in v) + "]"
        return repr(v)

    return [
        f"{k}: {shown(a.get(k))} -> {shown(b.get(k))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def check_resume(work_dir: Path, current: Mapping[str, Any], *, rule: str, policy: str) -> str | None:
    """The checkpoint this run may resume from, after comparing the work directory's fingerprint.

    Writes ``current`` as the directory's fingerprint. A checkpoint made under another fingerprint is refused
    (``policy: refuse``, naming the changed keys and the ways out) or removed with its directory
    (``policy: restart``). Returns None when the run starts from scratch.
    """
    if policy not in RESUME_POLICIES:
        raise ConfluxError(f"resume must be one of {RESUME_POLICIES}, got {policy!r}")
    work_dir = Path(work_dir)
    point = resume_point(work_dir)
    if point is not None:
        path = work_dir / FINGERPRINT
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}  # checkpoints without a readable fingerprint: nothing says they match
        changes = changed_keys(stored, current)
        if changes and policy == "restart":
            log.warning("%s: settings changed (%s); restarting from scratch", work_dir, "; ".join(changes))
            for child in work_dir.iterdir():
                if child.name != LOCK:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            point = None
        elif changes:
            raise ConfluxError(
                f"{work_dir}: the checkpoint {Path(point).name} of rule {rule} was made with other settings "
                f"than this run's ({'; '.join(changes)}). Resuming would continue the old run under the new "
                "settings. To start this job afresh, set `resume: restart` in the config (or add "
                f"`--config resume=restart` to the command) or delete {work_dir}; to resume it, restore "
                "the settings it was started with."
            )
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / FINGERPRINT, dict(current))
    return point


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resume_point(work_dir: Path) -> str | None:
    """The newest checkpoint in ``work_dir`` that an earlier attempt of this job left and a run can resume.

    - A job killed while writing a checkpoint leaves a partial ``checkpoint-N``. The Trainer writes
      ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, and conflux writes the
      loss ledger after that, so a checkpoint with both is complete and a partial one is skipped.
    - A checkpoint at the end of training (global step = max steps) is skipped too: resumed there, the
      Trainer takes one step more before it checks max_steps (transformers 5.23), so the run would end one
      step past an uninterrupted one. The checkpoint before it resumes to the same result.
    """
    if not work_dir.is_dir():
        return None
    steps = []
    for path in work_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        state = _read_json(path / TRAINER_STATE_NAME)
        if not suffix.isdigit() or state is None or _read_json(path / LOSS_FILE) is None:
            continue
        if 0 < state.get("max_steps", 0) <= state.get("global_step", 0):
            continue
        steps.append((int(suffix), path))
    if not steps:
        return None
    last = str(max(steps)[1])
    log.info("resuming from %s", last)
    return last


# ---- lock --------------------------------------------------------------------------------------------------


HEARTBEAT_SECONDS = 30  # how often a holder touches its lock
STALE_AFTER_SECONDS = 300  # a lock untouched this long belongs to a holder that is gone (a crashed node)


def _lock_owner(path: Path) -> tuple[str, int, str] | None:
    """(host, pid, SLURM job id or "-") written in a lock, or None if it cannot be read."""
    try:
        host, pid, job = path.read_text(encoding="utf-8").split()
        return host, int(pid), job
    except (OSError, ValueError):
        return None


def _stale(path: Path) -> bool:
    """Whether a lock's holder is gone: dead on this host, this very SLURM job before its requeue, or
    silent for longer than :data:`STALE_AFTER_SECONDS` (a holder touches its lock every
    :data:`HEARTBEAT_SECONDS`)."""
    owner = _lock_owner(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True  # removed meanwhile
    if owner is None:
        return age > STALE_AFTER_SECONDS
    host, pid, job = owner
    if job != "-" and job == os.environ.get("SLURM_JOB_ID"):
        return True  # a requeued SLURM job keeps its id: the holder was this job's previous run
    return not process_alive(host, pid) or age > STALE_AFTER_SECONDS


@contextmanager
def work_dir_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``work_dir/.lock`` while a run uses the directory, refreshing it every 30 s.

    Created with O_EXCL, which shared file systems honour, unlike advisory locks on some of them. The lock
    holds host, pid and SLURM job id; a stale one (see :func:`_stale`) is taken over, a live one is an
    error that names its holder.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK
    me = f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '-')}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _stale(path):
                host, pid, _ = _lock_owner(path) or ("?", 0, "-")
                raise ConfluxError(
                    f"{work_dir} is in use by another run of this job (host {host}, pid {pid}); two runs "
                    "would overwrite each other's checkpoints and outputs. Wait for it to end; a lock whose "
                    f"holder crashed with its node is taken over {STALE_AFTER_SECONDS} s after its last "
                    f"refresh (or delete {path})."
                ) from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(me)
        break
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(path)

    heart = threading.Thread(target=beat, name="conflux-lock-heartbeat", daemon=True)
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()
        with contextlib.suppress(OSError):  # the finished job may have removed its whole work directory
            if path.read_text(encoding="utf-8") == me:
                path.unlink()


# ---- metrics and loss --------------------------------------------------------------------------------------


def repair_jsonl(path: Path) -> int:
    """Cut a torn last record (a write cut by a crash) off a JSONL log; returns the bytes removed."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
    else:
        last = data[data.rfind(b"\n", 0, max(len(data) - 1, 0)) + 1 :] if data else b""
        if last.strip():
            try:
                json.loads(last)
            except ValueError:
                keep = len(data) - len(last)
    if keep < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)
        log.warning(
            "%s: removed a torn last record (%d bytes) left by an interrupted run", path, len(data) - keep
        )
    return len(data) - keep


class MetricsFile(TrainerCallback):
    """Append every log record to a JSONL file, kept with the checkpoints so a resumed run continues it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        repair_jsonl(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def final_metrics(path: Path) -> list[dict[str, Any]]:
    """The metric records of the finished run: a record logged again after a resume replaces the old one."""
    if not path.exists():
        return []
    repair_jsonl(path)
    records: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise DataError(f"not a JSON record ({err})", file=path, row=number, field="-") from None
        records[(rec["step"], tuple(sorted(rec)))] = rec
    return sorted(records.values(), key=lambda r: r["step"])


class LossLedger(TrainerCallback):
    """Records in each checkpoint the training loss summed over every step so far (``conflux_loss.json``).

    The Trainer's own sum restarts at zero on resume (its ``train_loss`` averages the steps since), so the
    ledger starts from the resumed checkpoint's sum and :meth:`train_loss` averages over all steps, as an
    uninterrupted run does. Reads the Trainer's running sums (``_total_loss_scalar``, ``_tr_loss``), which
    the pinned transformers keeps as attributes.
    """

    def __init__(self, resume_from: str | None) -> None:
        self.trainer: Any = None
        self.step, self.prior = 0, 0.0
        if resume_from is not None:
            saved = json.loads((Path(resume_from) / LOSS_FILE).read_text(encoding="utf-8"))
            self.step, self.prior = int(saved["step"]), float(saved["loss_sum"])

    def on_save(self, args, state, control, **kwargs):
        if self.trainer is not None and state.is_world_process_zero:
            running = self.trainer._total_loss_scalar + float(self.trainer._tr_loss.item())
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_json(checkpoint / LOSS_FILE, {"step": state.global_step, "loss_sum": self.prior + running})

    def train_loss(self, trainer_loss: float, global_step: int) -> float:
        """The mean loss over every step, from the Trainer's mean over the steps since the resume."""
        steps = global_step - self.step
        return (self.prior + trainer_loss * steps) / max(global_step, 1)


def write_run_outputs(
    tmp: Path, work_dir: Path, cfg_dict: Mapping[str, Any], summary: dict[str, Any]
) -> None:
    """metrics.jsonl (deduplicated over resumes), train_config.json and summary.json of a finished run."""
    with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as handle:
        for rec in final_metrics(work_dir / "metrics.jsonl"):
            handle.write(json.dumps(rec) + "\n")
    write_json(tmp / "train_config.json", dict(cfg_dict))
    write_json(tmp / "summary.json", summary)
