"""A training workspace on the embedded tiny model, shared by the training and distributed tests.

One tiny Llama, a split synthetic k=2 set with its reference caches, 64 persona-like SFT rows and 64 k=1 DPO
pairs; and the helpers that build jobs on it and kill a running job mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from conflux.data.jobs import bundled_corpus
from conflux.data.pairs import SFT_SCHEMA, make_pair_table, read_pairs, write_pairs, write_sft
from conflux.data.split import SplitConfig, split_pairs
from conflux.data.synthetic import synthetic_pku
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
from conflux.modeling.tokenize import TokenizeSettings
from conflux.training.config import TrainConfig
from conflux.training.preference_trainer import PreferenceJob
from conflux.training.reference import compute_reference_logps, write_reference
from conflux.training.workdir import resume_point
from processes import processes_naming

SETTINGS = TokenizeSettings(max_length=128)
CFG = TrainConfig(
    beta=0.1,
    learning_rate=5e-3,
    batch_size=16,
    per_device_batch_size=16,
    max_length=SETTINGS.max_length,
    save_steps=1000,
    logging_steps=5,
)


def tiny_workspace(root: Path, *, n_pairs: int = 800) -> Path:
    """Build the workspace under ``root`` (about 10 s) and return ``root``."""
    parts = split_pairs(synthetic_pku(n_pairs, conflict_rate=0.4, seed=0), SplitConfig()).parts
    for name, part in parts.items():
        write_pairs(root / f"{name}.parquet", part)
    build_tiny_model(bundled_corpus(seed=0), TinyModelConfig(vocab_size=1024), root / "hf")
    base_model_manifest_job(
        BaseModelSpec(name="tiny", source="embedded"),
        root / "manifest.json",
        built_dir=root / "hf",
        offline=True,
    )
    model, tokenizer = load_base_model(root / "manifest.json", dtype="float32")
    for name in ("agree", "conflict", "eval_conflict"):
        table = compute_reference_logps(model, tokenizer, read_pairs(root / f"{name}.parquet"), SETTINGS)
        write_reference(root / f"ref_{name}.parquet", table, SETTINGS, "tiny")
    agree = read_pairs(root / "agree.parquet").table.slice(0, 64).to_pydict()
    rows = {"prompt": agree["prompt"], "response": agree["response_a"], "persona": ["p"] * 64}
    write_sft(root / "sft_rows.parquet", pa.table(rows, schema=SFT_SCHEMA))
    pairs = make_pair_table(
        pair_id=agree["pair_id"],
        prompt=agree["prompt"],
        response_a=agree["response_a"],
        response_b=agree["response_b"],
        scores_a=np.ones((64, 1), np.float32),
        scores_b=np.zeros((64, 1), np.float32),
        dims=("persona",),
        source="dpo_pairs",
    )
    write_pairs(root / "dpo_pairs.parquet", pairs)
    return root


def make_job(
    ws: Path, method: str, name: str, *, parts, cfg=CFG, init=None, dim=None, seed=0
) -> PreferenceJob:
    refs = ["agree" if p == "agree_sub" else p for p in parts]
    return PreferenceJob(
        method=method,
        pairs=[ws / f"{p}.parquet" for p in parts],
        references=[ws / f"ref_{r}.parquet" for r in refs],
        manifest=ws / "manifest.json",
        out_dir=ws / "out" / name,
        work_dir=ws / "ckpt" / name,
        cfg=cfg,
        seed=seed,
        init_adapters=init,
        dim=dim,
    )


DRIVER = """
import json, sys
from pathlib import Path
from conflux.training.launch import job_from_dict, train_job
job = job_from_dict(json.loads(Path(sys.argv[1]).read_text()))
print(json.dumps(train_job(job, gpus=int(sys.argv[2]))))
"""


def kill_after_checkpoint(job, tmp_path: Path, step: int, *, gpus: int = 0) -> None:
    """Run ``job`` through train_job (on ``gpus`` ranks) in a child process group; SIGKILL the whole group
    (torchrun and its ranks too) once checkpoint-``step`` (or a later one) is complete."""
    from conflux.training.launch import job_to_dict

    driver, spec = tmp_path / "driver.py", tmp_path / "spec.json"
    driver.write_text(DRIVER)
    spec.write_text(json.dumps(job_to_dict(job)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(spec), str(gpus)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300

    def reached() -> bool:  # checkpoint-step or a later one (a busy poll may miss the moment of -step)
        point = resume_point(job.work_dir)
        return point is not None and int(point.rsplit("-", 1)[1]) >= step

    while not reached():
        assert proc.poll() is None, "the job finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # torchrun starts its ranks in sessions of their own: kill them too, as a node's failure would
    ranks = processes_naming(job.work_dir / "job.json")
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    while processes_naming(job.work_dir / "job.json"):
        assert time.time() < deadline
        time.sleep(0.05)
    assert not job.out_dir.exists(), sorted(map(str, job.out_dir.rglob("*")))  # nothing that looks finished
