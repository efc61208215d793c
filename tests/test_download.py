"""The download step for offline clusters: `snakemake download` where the hub is reachable fills the hub
cache; then the workflow runs with HF_HUB_OFFLINE=1, the config's hub ids unchanged (a local stand-in of the
hub, tests/hub_stand_in.py, plays the network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conflux.data.jobs import bundled_corpus
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
from hub_stand_in import HubStandIn

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PKU = [
    {"prompt": f"q{i}", "response_0": f"a{i}", "response_1": f"b{i}", "better_response_id": i % 2,
     "safer_response_id": (i // 2) % 2}
    for i in range(12)
]  # fmt: skip


def _run(args: list[str], workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    build_tiny_model(bundled_corpus(seed=0), TinyModelConfig(vocab_size=400), root / "tiny")
    (root / "tiny" / "pytorch_model.bin").write_bytes(b"a pickle the download must not fetch")
    stand_in = HubStandIn()
    commits = {
        "model": stand_in.add_directory("model", "org/tiny-llama", root / "tiny"),
        "dataset": stand_in.add("dataset", "org/pku-mini", {
            "data/train.jsonl": "".join(json.dumps(r) + "\n" for r in PKU).encode(),
            "README.md": b"a PKU-SafeRLHF-shaped stand-in",
        }),
    }  # fmt: skip
    yield stand_in, commits
    stand_in.close()


def test_download_then_offline_run_finds_every_hub_id_in_the_cache(hub, tmp_path):
    stand_in, commits = hub
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["offline"] = True  # what compute nodes run with; the download step ignores it
    raw["models"]["hubby"] = {"source": "hub", "path": "org/tiny-llama", "revision": "main"}
    raw["models"]["missing"] = {"source": "hub", "path": "org/not-downloaded"}
    raw["datasets"]["pku"] = {"kind": "pku_saferlhf", "path": "org/pku-mini"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    base_env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                                 "TRANSFORMERS_OFFLINE")}  # fmt: skip
    env = {**base_env, "HF_HOME": str(tmp_path / "hf"), "PATH": f"{BIN}:{os.environ['PATH']}"}

    download = ["download", "--cores", "1", "--configfile", str(config)]
    online = {**env, "HF_ENDPOINT": stand_in.url}
    failed = _run(download, tmp_path, online)  # a hub id the hub does not have: the step fails naming it
    assert (
        failed.returncode != 0
        and "org/not-downloaded" in (tmp_path / "logs/download/download.log").read_text()
    )
    raw["models"].pop("missing")
    config.write_text(yaml.safe_dump(raw))
    done = _run(download, tmp_path, online)
    assert done.returncode == 0, done.stdout[-3000:]
    record = json.loads((tmp_path / "results/download/sources.json").read_text())
    assert record["models"]["hubby"]["commit"] == commits["model"]
    assert record["datasets"]["pku"]["commit"] == commits["dataset"]
    snapshot = Path(record["models"]["hubby"]["local_path"])
    assert (snapshot / "model.safetensors").is_file() and not (snapshot / "pytorch_model.bin").exists()

    # the compute nodes: no network (the hub is gone), HF_HUB_OFFLINE set, the same config
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    targets = ["results/models/hubby/manifest.json", "results/data/pku/pairs.parquet"]
    run = _run([*targets, "--cores", "1", "--configfile", str(config)], tmp_path, offline)
    assert run.returncode == 0, run.stdout[-3000:]
    manifest = json.loads((tmp_path / targets[0]).read_text())
    assert manifest["load_path"] == str(snapshot) and manifest["hub_id"] == "org/tiny-llama"
    assert pq.read_table(tmp_path / targets[1]).num_rows == len(PKU)


def test_a_hub_id_that_was_not_downloaded_names_the_download_step_when_offline(tmp_path, monkeypatch):
    from conflux.errors import ConfluxError
    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    spec = BaseModelSpec(name="m", source="hub", path="org/nothing")
    with pytest.raises(ConfluxError, match=r"org/nothing.*snakemake download") as err:
        base_model_manifest_job(spec, tmp_path / "m.json", offline=True)
    assert "HF_HUB_CACHE" in str(err.value) and not (tmp_path / "m.json").exists()
