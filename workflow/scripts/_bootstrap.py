"""Shared start of every rule script: import the checkout's package and send logging to the rule's log.

Snakemake puts this folder on ``sys.path``, so ``from _bootstrap import start`` works in every script, under
``--sdm conda`` and on SLURM nodes alike, without installing the package into each environment.
"""

import logging
import os
import sys
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
    core in every job, and two jobs on two cores would fight over them.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(snakemake.threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(snakemake.threads)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0], mode="w", encoding="utf-8")],
        force=True,
    )
    log = logging.getLogger(f"conflux.rule.{snakemake.rule}")

    def log_uncaught(exc_type, exc, tb):
        log.error("%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        sys.__excepthook__(exc_type, exc, tb)

    sys.excepthook = log_uncaught
    log.info("rule %s, wildcards %s", snakemake.rule, dict(snakemake.wildcards))
    return log
