"""Training at scale, checked on CPU: FSDP2 over gloo ranks, precision, TRL's cached reference, multi-node.

Every test here starts real torch.distributed processes (torchrun, gloo) or runs the real Trainer; nothing is
mocked. Weights are compared in float32: two ranks reduce gradients in another order than one process that
accumulates, so "equal" means within 1e-6 (measured: ≤ 2e-7); a resumed run is the same computation as an
uninterrupted one and must match to 1e-7.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conflux.errors import DataError
from conflux.training.trl_jobs import TrlJob
from tiny_workspace import CFG, kill_after_checkpoint, make_job, tiny_workspace

FP32_ATOL = 1e-6  # one process vs two ranks: float32 sums in another order


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return tiny_workspace(tmp_path_factory.mktemp("dist_ws"), n_pairs=400)


def trl_job(ws: Path, method: str, name: str, cfg, **extra) -> TrlJob:
    data = ws / ("sft_rows.parquet" if method == "sft" else "dpo_pairs.parquet")
    return TrlJob(method=method, data=data, manifest=ws / "manifest.json", out_dir=ws / "out" / name,
                  work_dir=ws / "ckpt" / name, cfg=cfg, seed=0, **extra)  # fmt: skip


def weights(job) -> dict[str, torch.Tensor]:
    """The trained tensors of a job's output: full weights, or every adapter's LoRA weights."""
    if isinstance(job, TrlJob):
        files = sorted((job.out_dir / "model").glob("*.safetensors"))
    else:
        files = sorted((job.out_dir / "adapters").glob("*/adapter_model.safetensors"))
    out = {}
    for f in files:
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(f).items()})
    return out


def assert_same(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=key)


FULL = replace(CFG, learning_rate=1e-3, batch_size=16, per_device_batch_size=8, finetune="full", max_steps=3,
               save_steps=2, logging_steps=1)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "dpo", "curriculum_stage2"])
def test_fsdp_over_two_ranks_trains_what_one_process_trains(ws, method):
    """Full SFT and full DPO through TRL, and a curriculum stage (LoRA adapters) through the preference
    trainer: FSDP2 with 2 gloo ranks × micro-batch 8 against one process accumulating 2 × 8. The ranks hold
    sharded checkpoints (one file per rank) and the output is the whole, gathered model."""
    from conflux.training.launch import train_job

    if method == "curriculum_stage2":
        cfg = replace(FULL, finetune="lora", learning_rate=5e-3, distributed="fsdp")
        one, two = (make_job(ws, method, f"fsdp_{n}", parts=["conflict"], cfg=cfg) for n in ("one", "two"))
        one, two = replace(one, keep_checkpoints=True), replace(two, keep_checkpoints=True)
    else:
        one, two = (trl_job(ws, method, f"fsdp_{method}_{n}", FULL, keep_checkpoints=True) for n in (1, 2))
    single, sharded = train_job(one), train_job(two, gpus=2)
    assert single["world_size"] == 1 and (sharded["world_size"], sharded["distributed"]) == (2, "fsdp")
    shards = sorted(p.name for p in (two.work_dir / "checkpoint-2").rglob("*.distcp"))
    assert len(shards) >= 4 and {"__0_0.distcp", "__1_0.distcp"} <= set(shards)  # model + optimizer, per rank
    assert_same(weights(two), weights(one), FP32_ATOL)
    if method != "curriculum_stage2":  # it trained: the gathered weights left the base
        base = load_file(ws / "hf" / "model.safetensors")
        moved = max((w - base[k.split("/", 1)[1]]).abs().max().item() for k, w in weights(two).items())
        assert moved > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "curriculum_stage2"])
def test_fsdp_run_killed_mid_run_resumes_to_the_uninterrupted_result(ws, tmp_path, method):
    """SIGKILL the torchrun and its ranks after a sharded checkpoint, rerun: same weights as an uninterrupted
    FSDP run. The curriculum stage has several PEFT adapters, which conflux checkpoints itself under FSDP
    (accelerate's checkpoint of a PEFT model holds only the active adapter)."""
    from conflux.training.launch import train_job

    if method == "sft":
        cfg = replace(FULL, max_steps=12, save_steps=2)
        straight, killed = (trl_job(ws, "sft", f"kill_sft_{n}", cfg) for n in ("straight", "killed"))
    else:
        cfg = replace(
            FULL, finetune="lora", learning_rate=5e-3, distributed="fsdp", max_steps=12, save_steps=2
        )
        straight, killed = (make_job(ws, method, f"kill_stage_{n}", parts=["conflict"], cfg=cfg)
                            for n in ("straight", "killed"))  # fmt: skip
    want = train_job(straight, gpus=2)
    kill_after_checkpoint(killed, tmp_path, 2, gpus=2)
    got = train_job(killed, gpus=2)
    assert got["resumed_from"] is not None and got["global_steps"] == cfg.max_steps
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
    assert_same(weights(killed), weights(straight), 1e-7)


def test_an_lr_5e_7_update_survives_bf16_mixed_and_rounds_away_under_bf16_pure(ws, tmp_path):
    """One AdamW step of lr 5e-7 (a step of ≈ lr per weight) on weights of magnitude 1e-2, whose bf16
    spacing is 2^-14 ≈ 6e-5: under bf16_mixed (fp32 master weights, bf16 autocast) the weights move by
    5e-7; under bf16_pure (bf16 weights and update) every update rounds away."""
    from transformers import AutoModelForCausalLM

    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job
    from conflux.training.launch import train_job

    small = tmp_path / "small"
    shutil.copytree(ws / "hf", small)
    model = AutoModelForCausalLM.from_pretrained(small)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            size = 0.008 + 0.004 * torch.rand(p.shape, generator=gen)
            p.copy_(size * torch.sign(torch.randn(p.shape, generator=gen)))
    model.to(torch.bfloat16).save_pretrained(small)  # bf16 on disk: loading it in bf16 is exact
    spec = BaseModelSpec(name="small", source="local", path=str(small), dtype="bfloat16")
    base_model_manifest_job(spec, tmp_path / "manifest.json", offline=True)
    base = load_file(small / "model.safetensors")
    moved = {}
    for precision in ("bf16_mixed", "bf16_pure"):
        cfg = replace(FULL, learning_rate=5e-7, max_steps=1, warmup_ratio=0.0, precision=precision,
                      lr_scheduler="constant_with_warmup", save_steps=100)  # fmt: skip
        job = replace(trl_job(ws, "sft", f"prec_{precision}", cfg), manifest=tmp_path / "manifest.json")
        assert train_job(job)["precision"] == precision
        out = load_file(job.out_dir / "model" / "model.safetensors")  # save_dtype float32
        assert {t.dtype for t in out.values()} == {torch.float32}
        diffs = torch.cat([(out[k] - base[k].float()).abs().flatten() for k in base])
        moved[precision] = (float((diffs > 0).float().mean()), float(diffs.max()))
    share, largest = moved["bf16_mixed"]
    assert share > 0.5 and largest == pytest.approx(5e-7, rel=0.01)  # most weights got their 5e-7 step
    assert moved["bf16_pure"] == (0.0, 0.0)  # not one survived


def test_lora_under_bf16_mixed_trains_fp32_adapters_over_a_bf16_base(ws):
    from conflux.modeling.base_model import load_base_model
    from conflux.modeling.policy import PreferencePolicy
    from conflux.training.parallel import load_dtype

    cfg = replace(CFG, precision="bf16_mixed")
    assert load_dtype(cfg) == "bfloat16" and load_dtype(replace(cfg, finetune="full")) == "float32"
    assert load_dtype(replace(cfg, precision="bf16_pure", finetune="full")) == "bfloat16"
    model, _ = load_base_model(ws / "manifest.json", dtype=load_dtype(cfg))
    policy = PreferencePolicy.create(model, 2, cfg.lora.spec(), seed=0)
    dtypes = {n: p.dtype for n, p in policy.model.named_parameters()}
    assert {d for n, d in dtypes.items() if ".lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".lora_" not in n} == {torch.bfloat16}


@pytest.mark.parametrize("save_dtype", ["bfloat16", "base"])
def test_a_full_fine_tune_is_written_in_its_save_dtype(ws, tmp_path, save_dtype):
    import json

    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job
    from conflux.training.launch import train_job

    spec = BaseModelSpec(name="tiny", source="local", path=str(ws / "hf"), dtype="bfloat16")
    base_model_manifest_job(spec, tmp_path / "manifest.json", offline=True)
    cfg = replace(FULL, max_steps=1, save_dtype=save_dtype, precision="fp32")
    job = replace(trl_job(ws, "sft", f"save_{save_dtype}", cfg), manifest=tmp_path / "manifest.json")
    assert train_job(job)["save_dtype"] == "bfloat16"
    out = job.out_dir / "model"
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


# ---- TRL's reference, cached ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_dpo_on_the_cached_reference_equals_trls_own_reference_pass(ws, tmp_path, finetune):
    """The reference_logps_dpo cache holds exactly what TRL's precompute computes; a DPO run that reads it
    (no reference model in memory) trains the weights TRL trains with its reference model beside the policy,
    to 1e-5."""
    import pyarrow.parquet as pq

    from conflux.modeling.base_model import load_base_model
    from conflux.training.launch import train_job
    from conflux.training.trl_jobs import dpo_dataset, make_trainer
    from conflux.training.trl_reference import REF_COLUMNS, trl_reference_job

    cfg = replace(FULL, finetune=finetune, max_steps=4)
    cache = tmp_path / "dpo_train.parquet"
    trl_reference_job(ws / "dpo_pairs.parquet", ws / "manifest.json", cache, cfg, batch_size=16)
    cached = pq.read_table(cache).to_pydict()
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    data = dpo_dataset(ws / "dpo_pairs.parquet", tokenizer)
    own = make_trainer("dpo", model, tokenizer, data, cfg, tmp_path / "own", seed=0, precompute=True)
    own = own.train_dataset
    assert cached["pair_id"] == own["pair_id"] and len(own) == 64
    for column in REF_COLUMNS:
        want = torch.tensor(own[column], dtype=torch.float64)
        got = torch.tensor(cached[column], dtype=torch.float64)
        # sums of ~100 token log-probs near -400, float32 spacing 3e-5 there: equal to float32 rounding
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-6)
    beside = trl_job(ws, "dpo", f"ref_model_{finetune}", cfg)
    reading = trl_job(ws, "dpo", f"ref_cached_{finetune}", cfg, reference=cache)
    a, b = train_job(beside), train_job(reading)
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    assert_same(weights(reading), weights(beside), 1e-5)


def test_a_cache_made_with_other_settings_is_refused(ws, tmp_path):
    from conflux.training.launch import train_job
    from conflux.training.trl_reference import trl_reference_job

    cache = tmp_path / "dpo_train.parquet"
    trl_reference_job(ws / "dpo_pairs.parquet", ws / "manifest.json", cache, replace(FULL, max_length=64),
                      batch_size=16)  # fmt: skip
    with pytest.raises(DataError, match=r"max_length=64.*128") as err:
        train_job(trl_job(ws, "dpo", "ref_stale", FULL, reference=cache))
    assert err.value.field == "max_length" and str(cache) in str(err.value)


# ---- several nodes ---------------------------------------------------------------------------------------


def test_the_rendezvous_is_the_allocations_first_node():
    from conflux.errors import ConfluxError
    from conflux.training.launch import first_host, slurm_rendezvous

    assert first_host("gpu[07-09,12],login1") == "gpu07"
    assert first_host("node12") == "node12"
    assert first_host("a100-[3,5-6]") == "a100-3"
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    assert slurm_rendezvous(env) == ("gpu07:23456", "conflux-123456")
    with pytest.raises(ConfluxError, match="SLURM allocation"):
        slurm_rendezvous({})


@pytest.mark.slow
def test_two_torchrun_nodes_meeting_at_a_c10d_rendezvous_train_what_one_node_trains(ws, tmp_path):
    """What srun starts on each node of a 2-node allocation (one torchrun each, 1 rank per node, c10d
    rendezvous), here as two local processes: the same weights as one node running 2 ranks."""
    import socket

    from conflux.atomic import write_json
    from conflux.training.launch import job_to_dict, torchrun_command, train_job

    cfg = replace(FULL, finetune="lora", learning_rate=5e-3, max_steps=3)
    one_node = make_job(ws, "curriculum_stage2", "node_one", parts=["conflict"], cfg=cfg)
    two_nodes = make_job(ws, "curriculum_stage2", "node_two", parts=["conflict"], cfg=cfg)
    assert train_job(one_node, gpus=2)["world_size"] == 2
    two_nodes.work_dir.mkdir(parents=True)
    spec = two_nodes.work_dir / "job.json"
    write_json(spec, job_to_dict(two_nodes))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = torchrun_command(spec, 1, nodes=2, endpoint=f"127.0.0.1:{port}", run_id="conflux-test")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # fmt: skip
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert sys.executable in cmd[0] and "--rdzv_backend=c10d" in cmd
    assert_same(weights(two_nodes), weights(one_node), FP32_ATOL)


# ---- one w per optimizer step ----------------------------------------------------------------------------


def logged_w(job) -> list[tuple[int, float, float]]:
    import json

    rows = [json.loads(line) for line in (job.out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["w/dim0"], r["w/dim1"]) for r in rows if "w/dim0" in r]


@pytest.mark.slow
def test_the_dirichlet_w_is_one_per_step_whatever_the_gpus_and_micro_batch(ws):
    """Stage 3's Dirichlet w is drawn once per optimizer step: 1 process with micro-batch 4 (4 micro-steps a
    step) or 8 (2), and 2 ranks with micro-batch 8 (1 each), train at the same w sequence."""
    from conflux.training.launch import train_job

    cfg = replace(CFG, batch_size=16, max_steps=3, logging_steps=1, distributed="ddp")
    runs = {}
    for name, micro, gpus in (("w_m4", 4, 0), ("w_m8", 8, 0), ("w_2ranks", 8, 2)):
        job = make_job(ws, "curriculum_stage3", name, parts=["agree_sub", "conflict"],
                       cfg=replace(cfg, per_device_batch_size=micro))  # fmt: skip
        train_job(job, gpus=gpus)
        runs[name] = logged_w(job)
    assert [s for s, *_ in runs["w_m4"]] == [1, 2, 3]
    assert runs["w_m4"] == runs["w_m8"] == runs["w_2ranks"]
    assert len({w for _, w, _ in runs["w_m4"]}) == 3  # a new draw each step
    assert all(abs(a + b - 1) < 1e-6 for _, a, b in runs["w_m4"])


# ---- rows cut at max_length --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_rows_cut_at_max_length_are_counted_in_the_summary(ws, method):
    """Rows TRL cuts (not only those it drops) are counted: none at a length nothing reaches, more (cut or
    dropped) the shorter the limit."""
    from conflux.training.launch import train_job

    counts = {}
    for max_length in (1024, 48, 32):
        cfg = replace(FULL, max_length=max_length, max_steps=1, batch_size=8, per_device_batch_size=8)
        summary = train_job(trl_job(ws, method, f"cut_{method}_{max_length}", cfg))
        counts[max_length] = summary["n_rows_truncated"] + summary["n_rows_dropped_by_truncation"]
        assert counts[max_length] <= summary["n_rows"]
    assert counts[1024] == 0 < counts[48] <= counts[32]  # cut or dropped
