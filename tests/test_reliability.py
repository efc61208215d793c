"""What a crash, a shared environment or a hand-made target must not break: stale temporaries, the package
a rule script imports, the check of a finished run, duplicate rows, an impossible dimension."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from conflux.atomic import atomic_path, remove_stale_temporaries, write_json
from conflux.check import check_outputs
from conflux.data.loaders import load_pku_saferlhf
from conflux.errors import ConfluxError
from weight_checkpoints import tiny_llama
from workflow_cli import snakemake

ROOT = Path(__file__).resolve().parents[1]
DEAD_PID = 2**22 + 17  # above Linux's default pid_max: no process has it


def _stale(path: Path, pid: int = DEAD_PID, host: str | None = None) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{host or socket.gethostname()}-{pid}")
    tmp.mkdir(parents=True)
    (tmp / "half.safetensors").write_bytes(b"\0" * 10)
    return tmp


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "model"
    dead = _stale(out)
    alive = _stale(out, pid=os.getppid())  # a writer that still runs keeps its temporary
    elsewhere = _stale(out, host="another-node")  # nothing can be known about another host's processes
    with atomic_path(out, directory=True) as tmp:
        (tmp / "config.json").write_text("{}")
    assert not dead.exists() and alive.exists() and elsewhere.exists() and (out / "config.json").exists()
    assert remove_stale_temporaries(out) == []


def test_rule_scripts_import_their_own_checkout_even_behind_another_on_the_path(tmp_path):
    """A .venv shared by two checkouts puts the other checkout's src first and this one's behind it."""
    other = tmp_path / "other" / "src" / "conflux"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("WHO = 'the other checkout'\n")
    code = (
        "import sys; "
        f"sys.path[:0] = [{str(other.parent)!r}, {str(ROOT / 'workflow' / 'scripts')!r}]; "
        f"sys.path.append({str(ROOT / 'src')!r}); "
        "import _bootstrap, conflux; print(conflux.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert Path(out.stdout.strip()) == ROOT / "src" / "conflux" / "__init__.py"


def test_check_of_a_finished_run_names_every_broken_output(tmp_path):
    results = tmp_path / "results"
    model = results / "models" / "m" / "hf"
    tiny_llama().save_pretrained(model)
    save_file({"w": torch.ones(3)}, results / "ok.safetensors")
    pq.write_table(pa.table({"a": [1, 2]}), results / "ok.parquet")
    write_json(results / "ok.json", {"a": 1})
    (results / "ok.jsonl").write_text('{"a": 1}\n')
    assert check_outputs(results) == ([], 4 + len(list(model.iterdir())))

    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])  # a node died mid-copy
    (results / "ok.parquet").write_bytes((results / "ok.parquet").read_bytes()[:-20])
    (results / "ok.json").write_text('{"a": ')
    (results / "ok.jsonl").write_text('{"a": 1}\n{"a"')
    stale = _stale(results / "train" / "run")
    problems, _ = check_outputs(results)
    named = {p.path.relative_to(results).as_posix(): p.reason for p in problems}
    assert set(named) == {
        "models/m/hf",
        "models/m/hf/model.safetensors",
        "ok.parquet",
        "ok.json",
        "ok.jsonl",
        stale.relative_to(results).as_posix(),
    }, named
    assert "writer is dead" in named[stale.relative_to(results).as_posix()]
    assert "line 2" in named["ok.jsonl"]


def test_check_rule_runs_on_demand_and_fails_on_a_broken_output(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    write_json(results / "ok.json", {})
    # the target before --configfile, which takes every word after it
    args = ["check", "--cores", "1", "--configfile", str(ROOT / "config" / "config.yaml")]
    assert snakemake(ROOT, *args, workdir=tmp_path, check=False).returncode == 0
    (results / "bad.json").write_text("{")
    proc = snakemake(ROOT, *args, workdir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "bad.json" in (tmp_path / "logs" / "check" / "check.log").read_text()


def test_duplicate_pku_rows_are_dropped_and_counted(tmp_path):
    row = {
        "prompt": "q",
        "response_0": "a",
        "response_1": "b",
        "better_response_id": 0,
        "safer_response_id": 1,
    }
    other = {**row, "prompt": "q2"}
    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row, other, row, row)))
    result = load_pku_saferlhf(str(path))
    assert len(result.pairs) == 2 and result.drops == {"duplicate_rows": 2} and result.rows_read == 4


def test_a_dpo_soup_dimension_beyond_k_is_refused_when_planning(tmp_path):
    target = "results/train/tiny/synth_pku/seed0/dpo_soup/dim7"
    config = str(ROOT / "config" / "config.yaml")
    proc = snakemake(ROOT, target, "-n", "--configfile", config, workdir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "dim7 does not exist: dataset 'synth_pku' has k=2" in proc.stdout + proc.stderr


def test_resume_policy_is_checked(tmp_path):
    from conflux.training.workdir import check_resume

    with pytest.raises(ConfluxError, match="resume must be one of"):
        check_resume(tmp_path, {}, rule="sft", policy="sometimes")
