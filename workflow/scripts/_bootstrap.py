"""Shared start of every rule script: import the checkout's package and send logging to the rule's log.

Snakemake puts this folder on ``sys.path``, so ``from _bootstrap import start`` works in every script, under
``--sdm conda`` and on SLURM nodes alike, without installing the package into each environment.
"""

import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
# First on the path even when it is already there further back: a .venv shared by two checkouts puts the
# other checkout's src (its editable install) ahead of this one, and Snakemake appends this workflow's src
# behind it, so "already on sys.path" is not "the one imported".
sys.path[:] = [str(SRC), *(p for p in sys.path if p != str(SRC))]
if "conflux" in sys.modules and not Path(sys.modules["conflux"].__file__).resolve().is_relative_to(SRC):
    raise ImportError(f"conflux was imported from {sys.modules['conflux'].__file__} before the bootstrap")


def start(snakemake) -> logging.Logger:
    """Log to ``snakemake.log[0]``; an uncaught error is written there too before Snakemake reports it.

    Also caps the job's CPU threads at the rule's ``threads``: torch would otherwise start one thread per
    core in every job, and two jobs on two cores would fight over them. A lower OMP_NUM_THREADS from the
    caller (a test worker's share of the cores, a user's limit) is kept: OpenMP threads on more cores than
    are free spin for them (a 2-thread build_tiny_model beside another busy process ran several times
    longer).
    """
    if os.environ.get("CONFLUX_MALLOC") != "default":
        _keep_freed_memory()
    threads = snakemake.threads
    inherited = os.environ.get("OMP_NUM_THREADS", "")
    if inherited.isdigit() and 0 < int(inherited) < threads:
        threads = int(inherited)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    _log_to(snakemake.log[0])
    log = logging.getLogger(f"conflux.rule.{snakemake.rule}")

    def log_uncaught(exc_type, exc, tb):
        log.error("%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = log_uncaught
    log.info("rule %s, wildcards %s", snakemake.rule, dict(snakemake.wildcards))
    return log


def _keep_freed_memory() -> None:
    """glibc malloc: serve blocks up to 32 MiB from the heap, and keep up to 256 MiB of freed memory there.

    By default glibc maps a block of a few MiB (one step's logits on the tiny model, 16 x 128 x 2048 floats)
    fresh from the kernel and unmaps it when it is freed, so every step faults the same memory in again,
    zeroed page by page; the tiny jobs spent a fifth of their CPU in the kernel that way. PyTorch's CPU
    tuning guide suggests an allocator with a cache (jemalloc, tcmalloc) for the same reason; these two
    settings get most of it without another library. Without glibc's mallopt (macOS, musl) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _log_to(path: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(path, mode="w", encoding="utf-8")],
        force=True,
    )


def seeds(snakemake) -> Iterator[tuple[int, int | None]]:
    """(index, seed) of each seed a per-seed rule's job covers: one, or every seed with batch_seeds; a rule
    without params.seeds is one job, (0, None).

    The index picks the seed's entry of the job's per-seed lists (outputs, logs, params.work_dir, per-seed
    inputs; rules/common.smk: per_seed). Each seed logs to its own file, as a job of its own would.
    """
    job_seeds = snakemake.params.get("seeds", [None])
    for index, seed in enumerate(job_seeds):
        if index:
            _log_to(snakemake.log[index])
        if seed is not None:
            log = logging.getLogger(f"conflux.rule.{snakemake.rule}")
            log.info("seed %d (%d of %d in this job)", seed, index + 1, len(job_seeds))
        yield index, seed


def share(values, index: int, count: int) -> list[str]:
    """One seed's share of a per-seed list (each seed's paths, equally many, in seed order)."""
    values = [values] if isinstance(values, str) else list(values)
    if len(values) % count:
        raise ValueError(f"{len(values)} paths do not split into {count} seeds: {values}")
    size = len(values) // count
    return values[index * size : (index + 1) * size]


def of_seed(value, index: int) -> Path | None:
    """A job's input for one seed: its entry of a per-seed list, the one path every seed shares, or None."""
    if not value:
        return None
    return Path(value if isinstance(value, str) else value[index])
