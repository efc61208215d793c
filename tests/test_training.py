"""The preference training engine on the embedded tiny model: reference cache, stages, resume, learning."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from conflux.data.pairs import read_pairs
from conflux.errors import DataError
from conflux.modeling.base_model import load_base_model
from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import TokenizeSettings
from conflux.training.objectives import StepContext, StepInputs, make_objective
from conflux.training.preference_trainer import PreferenceJob, run_preference_job
from conflux.training.reference import read_reference
from conflux.training.workdir import resume_point
from reference_impl import implicit_reward_margins, merged_delta, pair_accuracy, tokenize_pairs
from tiny_workspace import CFG, SETTINGS, kill_after_checkpoint, make_job, tiny_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny model, a split synthetic k=2 set (800 pairs) and its reference caches."""
    return tiny_workspace(tmp_path_factory.mktemp("train_ws"))


def adapter(out: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(out / "adapters" / name / "adapter_model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- reference cache ---------------------------------------------------------------------------------------


def test_reference_cache_equals_unbatched_log_probs(ws):
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    pairs = read_pairs(ws / "conflict.parquet")
    ids = pairs.table.column("pair_id").to_pylist()
    ref_a, ref_b = read_reference([ws / "ref_conflict.parquet"], SETTINGS, ids)
    cols = pairs.table.slice(0, 6).to_pydict()
    for i in range(6):
        batch, _ = tokenize_pairs(
            tokenizer, [cols["prompt"][i]], [cols["response_a"][i]], [cols["response_b"][i]], max_length=128
        )
        with torch.no_grad():
            a, b = sequence_logps(model, batch)
        assert a.item() == pytest.approx(ref_a[i], abs=1e-4)
        assert b.item() == pytest.approx(ref_b[i], abs=1e-4)


def test_reference_cache_with_other_settings_is_refused(ws):
    with pytest.raises(DataError, match=r"ref_agree\.parquet: row header, field 'max_length'"):
        read_reference([ws / "ref_agree.parquet"], TokenizeSettings(max_length=64), ["x"])
    with pytest.raises(DataError, match=r"field 'pair_id'.*1 pairs have no reference"):
        read_reference([ws / "ref_agree.parquet"], SETTINGS, ["no-such-pair"])


# ---- what each stage trains --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages(ws) -> dict[str, Path]:
    """Stage 1 (1 epoch) then stage 2 (3 epochs) of the curriculum, seed 0."""
    s1 = make_job(ws, "curriculum_stage1", "stage1", parts=["agree"])
    run_preference_job(s1)
    s2 = make_job(
        ws, "curriculum_stage2", "stage2", parts=["conflict"], cfg=replace(CFG, epochs=3), init=s1.out_dir
    )
    run_preference_job(s2)
    return {"stage1": s1.out_dir, "stage2": s2.out_dir}


def fresh_adapters(ws: Path, seed: int = 0) -> PreferencePolicy:
    model, _ = load_base_model(ws / "manifest.json", dtype="float32")
    return PreferencePolicy.create(model, 2, LoraSpec(r=8, alpha=16), shared=True, seed=seed)


def test_stage1_changes_only_shared(ws, stages):
    init = fresh_adapters(ws)
    for name in ("dim0", "dim1"):  # bit-identical to their seeded initialization
        assert same(adapter(stages["stage1"], name), init.adapter_state(name))
    shared = adapter(stages["stage1"], "shared")
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in shared.items())  # B starts at 0: it moved


def test_stage2_changes_only_dimension_adapters(stages):
    assert same(adapter(stages["stage1"], "shared"), adapter(stages["stage2"], "shared"))
    for name in ("dim0", "dim1"):
        assert not same(adapter(stages["stage1"], name), adapter(stages["stage2"], name))
    summary = json.loads((stages["stage2"] / "summary.json").read_text())
    assert summary["trained_adapters"] == ["dim0", "dim1"]
    metrics = [json.loads(line) for line in (stages["stage2"] / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/accuracies/dim0" in m and "rewards/accuracies/dim1" in m for m in metrics)


def test_saved_adapters_load_with_plain_peft(ws, stages):
    model, _ = load_base_model(ws / "manifest.json", dtype="float32")
    peft_model = PeftModel.from_pretrained(model, str(stages["stage2"] / "adapters" / "dim1"))
    assert peft_model.peft_config["default"].r == 8


def test_stage2_adapters_learn_their_own_dimension_on_held_out_conflict_pairs(ws, stages):
    """Each dimension's adapter, alone at w = 1_i, ranks held-out *conflict* pairs by its own dimension.

    On a conflict pair the two dimensions disagree, so accuracy against dim i's label is the share of pairs
    where the policy at w = 1_i sides with i; chance is 0.5, and an adapter that learned the other dimension
    would score below 0.5. Threshold 0.75 with seed 0 (the run reaches about 0.9 here).
    """
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    root = stages["stage2"] / "adapters"
    policy = PreferencePolicy.load(model, {n: root / n for n in ("shared", "dim0", "dim1")})
    pairs = read_pairs(ws / "eval_conflict.parquet")
    s_a, s_b = pairs.scores()
    labels = np.sign(s_a - s_b)
    for i, w in enumerate(([1.0, 0.0], [0.0, 1.0])):
        margins = implicit_reward_margins(
            policy, tokenizer, pairs, [ws / "ref_eval_conflict.parquet"], w, SETTINGS, CFG.beta
        )
        accuracy, n = pair_accuracy(margins, labels[:, i])
        assert n >= 40
        assert accuracy >= 0.75, f"dim{i}: accuracy {accuracy:.3f} on {n} held-out conflict pairs"


# ---- stage 3, Panacea and DPO-Soup -------------------------------------------------------------------------


def test_stage3_and_panacea_train_every_adapter(ws, stages):
    short = replace(CFG, max_steps=3)
    s3 = make_job(
        ws, "curriculum_stage3", "stage3", parts=["agree_sub", "conflict"], cfg=short, init=stages["stage2"]
    )
    summary = run_preference_job(s3)
    assert summary["trained_adapters"] == ["shared", "dim0", "dim1"] and summary["global_steps"] == 3
    for name in ("shared", "dim0", "dim1"):
        assert not same(adapter(stages["stage2"], name), adapter(s3.out_dir, name))
    metrics = [json.loads(line) for line in (s3.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/kl" in m for m in metrics) or summary["global_steps"] < CFG.logging_steps
    pan = make_job(ws, "panacea_lora", "panacea_lora", parts=["agree", "conflict"], cfg=short)
    assert run_preference_job(pan)["trained_adapters"] == ["shared", "dim0", "dim1"]


def test_panacea_on_adalora_prunes_ranks_and_saves_plain_peft_adapters(ws):
    """The paper's Panacea: every adapter is AdaLoRA, its rank budget shrinks over the run, and each saved
    adapter loads with plain PEFT at its pruned ranks."""
    cfg = replace(CFG, max_steps=4, logging_steps=2, lora=replace(CFG.lora, adapter="adalora", alpha=512))
    job = make_job(ws, "panacea", "panacea_adalora", parts=["agree", "conflict"], cfg=cfg)
    summary = run_preference_job(job)
    assert summary["trained_adapters"] == ["shared", "dim0", "dim1"]
    n_modules = 2 * 7
    initial, target = 12 * n_modules, 8 * n_modules
    # AdaLoRA's cubic schedule at the last step (3 of 4, tinit = tfinal = 0): the budget it masks down to
    budget = int((initial - target) * (1 - 3 / 4) ** 3 + target)
    for name in ("shared", "dim0", "dim1"):
        ranks = summary["adalora_ranks"][name]
        assert ranks == {"initial_rank": initial, "kept_rank": budget}
        model, _ = load_base_model(ws / "manifest.json", dtype="float32")
        peft_model = PeftModel.from_pretrained(model, str(job.out_dir / "adapters" / name))
        config = peft_model.peft_config["default"]
        assert config.peft_type.value == "ADALORA" and config.total_step == 4 and config.target_r == 8
        saved = sum(m.lora_A["default"].shape[0] for m in peft_model.modules() if hasattr(m, "lora_E"))
        assert saved == ranks["kept_rank"]
    metrics = [json.loads(line) for line in (job.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("loss/orth", 0) > 0 for m in metrics)


def test_dpo_soup_interpolation_equals_merged_weights(ws):
    soup_cfg = replace(CFG, max_steps=4, lora=replace(CFG.lora, r=16, alpha=32))
    outs = {}
    for i in range(2):
        job = make_job(ws, "dpo_soup", f"soup{i}", parts=["agree", "conflict"], cfg=soup_cfg, dim=i)
        summary = run_preference_job(job)
        assert summary["trained_adapters"] == [f"dim{i}"]
        assert sorted(p.name for p in (job.out_dir / "adapters").iterdir() if p.is_dir()) == [f"dim{i}"]
        outs[f"dim{i}"] = job.out_dir / "adapters" / f"dim{i}"
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    policy = PreferencePolicy.load(model, outs)
    assert not policy.has_shared and policy.k == 2
    w = [0.3, 0.7]
    ids = torch.tensor([tokenizer("hello there, how are you today?")["input_ids"]])
    with torch.no_grad(), policy.at(w) as m:
        ours = m(input_ids=ids).logits
    merged, _ = load_base_model(ws / "manifest.json", dtype="float32")
    deltas = merged_delta(policy, w)
    assert len(deltas) == 2 * 7  # every projection of both layers
    with torch.no_grad():
        params = dict(merged.named_parameters())
        for name, delta in deltas.items():
            params[name.replace("base_layer.", "")].add_(delta)
        reference = merged(input_ids=ids).logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


# ---- one step is the sum of its passes ---------------------------------------------------------------------


def _grads(policy: PreferencePolicy) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("method", ["curriculum_stage3", "panacea"])
def test_per_pass_backward_equals_gradient_of_the_summed_loss(ws, method, checkpointing):
    """The trainer backpropagates each pass inside its own policy.at(w); that must equal d(Σ losses)."""
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    policy = PreferencePolicy.create(model, 2, LoraSpec(), shared=True, seed=3)
    with torch.no_grad():  # non-zero B so every adapter affects the output
        gen = torch.Generator().manual_seed(0)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    objective = make_objective(method, 2, 0.1)
    policy.train_only(objective.trained(policy))
    pairs = read_pairs(ws / "conflict.parquet").table.slice(0, 4).to_pydict()
    batch, _ = tokenize_pairs(
        tokenizer, pairs["prompt"], pairs["response_a"], pairs["response_b"], max_length=128
    )
    labels = torch.sign(torch.tensor(pairs["scores_a"]) - torch.tensor(pairs["scores_b"])).long()
    inputs = StepInputs(batch, labels, torch.full((4,), -60.0), torch.full((4,), -61.0))
    ctx = StepContext(policy.model, torch.enable_grad, seed=0, global_step=7)
    policy.model.train()

    # Reference: all passes first, one backward of the sum (no checkpointing: the scalings are in the graph).
    losses = [loss for loss, _ in objective.passes(policy, ctx, inputs)]
    torch.stack(losses).sum().backward()
    expected = _grads(policy)
    policy.model.zero_grad(set_to_none=True)

    if checkpointing:
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    total = 0.0
    for loss, _ in objective.passes(policy, ctx, inputs):
        loss.backward()  # inside the pass's policy.at(w), as PreferenceTrainer.training_step does
        total += loss.item()
    assert total == pytest.approx(torch.stack(losses).sum().item(), rel=1e-6)
    got = _grads(policy)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)


def test_dirichlet_weight_is_a_function_of_seed_and_step():
    ctx = StepContext(torch.nn.Identity(), torch.enable_grad, seed=5, global_step=11)
    again = StepContext(torch.nn.Identity(), torch.enable_grad, seed=5, global_step=11)
    other = StepContext(torch.nn.Identity(), torch.enable_grad, seed=5, global_step=12)
    draw = torch.rand(3, generator=ctx.weight_generator())
    assert torch.equal(draw, torch.rand(3, generator=again.weight_generator()))
    assert not torch.equal(draw, torch.rand(3, generator=other.weight_generator()))


# ---- resume ------------------------------------------------------------------------------------------------


def same_adapters(a: PreferenceJob, b: PreferenceJob, names=("shared", "dim0", "dim1")) -> None:
    for name in names:
        got, want = adapter(a.out_dir, name), adapter(b.out_dir, name)
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)


def test_job_killed_mid_run_resumes_to_the_uninterrupted_result(ws, tmp_path):
    """SIGKILL after a checkpoint, rerun: same adapters as a run that was never interrupted (Panacea on
    AdaLoRA, whose Dirichlet draws and rank allocator must also continue where they were), and the same mean
    training loss over all steps."""
    from conflux.training.launch import train_job

    cfg = replace(CFG, max_steps=14, save_steps=3, logging_steps=1, lora=replace(CFG.lora, adapter="adalora"))
    straight = make_job(ws, "panacea", "resume_straight", parts=["agree", "conflict"], cfg=cfg, seed=1)
    straight_summary = train_job(straight)

    killed = make_job(ws, "panacea", "resume_killed", parts=["agree", "conflict"], cfg=cfg, seed=1)
    kill_after_checkpoint(killed, tmp_path, 6)
    summary = train_job(killed)
    assert summary["resumed_from"] in ("checkpoint-6", "checkpoint-9", "checkpoint-12")
    assert summary["global_steps"] == 14
    same_adapters(killed, straight)
    assert summary["train_loss"] == pytest.approx(straight_summary["train_loss"], rel=1e-6)
    assert not killed.work_dir.exists()  # checkpoints are removed once the output is complete


def test_resume_under_a_changed_learning_rate_is_refused_or_restarts(ws, tmp_path):
    """A checkpoint made at one learning rate is not continued at another: the rerun stops naming the key;
    with resume: restart it trains from scratch and equals an uninterrupted run at the new value."""
    from conflux.errors import ConfluxError
    from conflux.training.launch import train_job

    old, new = (
        replace(CFG, max_steps=8, save_steps=2),
        replace(CFG, max_steps=8, save_steps=2, learning_rate=2e-3),
    )
    straight = make_job(ws, "curriculum_stage1", "lr_straight", parts=["agree"], cfg=new)
    train_job(straight)
    job = make_job(ws, "curriculum_stage1", "lr_changed", parts=["agree"], cfg=old)
    kill_after_checkpoint(job, tmp_path, 2)
    changed = replace(job, cfg=new)
    with pytest.raises(ConfluxError, match=r"train\.learning_rate: 0\.005 -> 0\.002") as err:
        train_job(changed)
    assert "resume: restart" in str(err.value) and str(job.work_dir) in str(err.value)
    assert resume_point(job.work_dir) is not None and not job.out_dir.exists()  # the refusal changed nothing
    summary = train_job(changed, resume="restart")
    assert summary["resumed_from"] is None and summary["global_steps"] == 8
    same_adapters(job, straight, names=("shared",))


def test_a_second_run_of_a_job_in_progress_is_refused(ws, tmp_path):
    from conflux.errors import ConfluxError
    from conflux.training.launch import train_job
    from conflux.training.workdir import LOCK, work_dir_lock

    job = make_job(ws, "curriculum_stage1", "locked", parts=["agree"], cfg=replace(CFG, max_steps=2))
    with work_dir_lock(job.work_dir), pytest.raises(ConfluxError, match=r"in use by another run.*pid"):
        train_job(job)
    assert not job.out_dir.exists()
    # a lock whose holder died on this host is stale and taken over
    (job.work_dir / LOCK).write_text(f"{socket.gethostname()} {2**22 + 17} -")
    assert train_job(job)["global_steps"] == 2


def test_a_lock_from_another_node_is_taken_over_only_when_it_went_silent(tmp_path, monkeypatch):
    """A holder refreshes its lock every 30 s; one from a crashed node goes silent. A requeued SLURM job
    keeps its job id, so its own previous run's lock is stale at once."""
    from conflux.errors import ConfluxError
    from conflux.training.workdir import LOCK, STALE_AFTER_SECONDS, work_dir_lock

    lock = tmp_path / LOCK
    lock.write_text("node-7 4242 -")
    with pytest.raises(ConfluxError, match="host node-7, pid 4242"), work_dir_lock(tmp_path):
        pass
    old = time.time() - STALE_AFTER_SECONDS - 10
    os.utime(lock, (old, old))
    with work_dir_lock(tmp_path):
        assert lock.read_text().startswith(socket.gethostname())
    assert not lock.exists()
    lock.write_text("node-7 4242 991")
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    with work_dir_lock(tmp_path):
        pass


def test_a_torn_metrics_line_is_cut_and_the_log_goes_on(tmp_path):
    from conflux.training.workdir import MetricsFile, final_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    assert [r["step"] for r in final_metrics(path)] == [1, 2]
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo')
    state = SimpleNamespace(is_world_process_zero=True, global_step=2, epoch=0.5)
    MetricsFile(path).on_log(None, state, None, logs={"loss": 0.6})
    assert [r["step"] for r in final_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DataError, match="row 2"):
        final_metrics(path)


def test_trl_job_resumes_and_says_so(ws):
    """A TRL SFT job rerun over its kept checkpoints resumes (from the last one before the end: see
    resume_point): resumed_from in its summary, the same steps and the train_loss of the whole run."""
    import pyarrow as pa

    from conflux.data.pairs import SFT_SCHEMA, write_sft
    from conflux.training.launch import train_job
    from conflux.training.trl_jobs import TrlJob

    pairs = read_pairs(ws / "agree.parquet").table.slice(0, 64).to_pydict()
    rows = {"prompt": pairs["prompt"], "response": pairs["response_a"], "persona": ["p"] * 64}
    write_sft(ws / "sft_rows.parquet", pa.table(rows, schema=SFT_SCHEMA))
    cfg = replace(CFG, max_steps=4, save_steps=2, batch_size=8, per_device_batch_size=8)
    job = TrlJob(method="sft", data=ws / "sft_rows.parquet", manifest=ws / "manifest.json",
                 out_dir=ws / "out" / "trl", work_dir=ws / "ckpt" / "trl", cfg=cfg, seed=0,
                 keep_checkpoints=True)  # fmt: skip
    first = train_job(job)
    assert first["resumed_from"] is None
    import shutil

    shutil.rmtree(job.out_dir)
    again = train_job(job)
    assert again["resumed_from"] == "checkpoint-2" and again["global_steps"] == 4
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)


def test_sft_dpo_with_lora_continues_the_sft_adapter_against_the_sft_model(ws):
    """SFT→DPO on LoRA: the DPO job loads the SFT adapter trainable and its cached reference is the SFT
    model's (TRL's pass over the same PeftModel). With a learning rate too small to move a weight, policy =
    reference at every step, so the DPO loss is exactly log 2 and the saved adapter is the SFT adapter;
    a real run moves it, and saves only its own adapter (not TRL's frozen "ref" copy)."""
    from conflux.training.trl_jobs import TrlJob, run_trl_job
    from conflux.training.trl_reference import trl_reference_job

    lora = replace(CFG, finetune="lora", max_steps=2, batch_size=8, per_device_batch_size=8, logging_steps=1)
    common = {"manifest": ws / "manifest.json", "seed": 0}
    sft = TrlJob(method="sft", data=ws / "sft_rows.parquet", out_dir=ws / "out/lora_sft",
                 work_dir=ws / "ckpt/lora_sft", cfg=lora, **common)  # fmt: skip
    run_trl_job(sft)
    reference = ws / "ref_sft_dpo.parquet"
    trl_reference_job(ws / "dpo_pairs.parquet", ws / "manifest.json", reference, lora, batch_size=16,
                      init=sft.out_dir)  # fmt: skip
    sft_adapter = load_file(sft.out_dir / "model/adapter_model.safetensors")
    outputs = {}
    for name, lr in (("still", 1e-30), ("moved", lora.learning_rate)):
        job = TrlJob(method="sft_dpo", data=ws / "dpo_pairs.parquet", out_dir=ws / f"out/sft_dpo_{name}",
                     work_dir=ws / f"ckpt/sft_dpo_{name}", cfg=replace(lora, learning_rate=lr),
                     reference=reference, init=sft.out_dir, **common)  # fmt: skip
        outputs[name] = (run_trl_job(job), job.out_dir / "model")
    summary, still = outputs["still"]
    assert summary["train_loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert sorted(p.name for p in still.iterdir() if p.is_dir()) == []  # no "ref" adapter saved
    assert same(load_file(still / "adapter_model.safetensors"), sft_adapter)
    moved = load_file(outputs["moved"][1] / "adapter_model.safetensors")
    assert moved.keys() == sft_adapter.keys() and not same(moved, sft_adapter)
    base, _ = load_base_model(ws / "manifest.json", dtype="float32")
    assert PeftModel.from_pretrained(base, str(outputs["moved"][1])).active_adapter == "default"


# ---- several processes ----------------------------------------------------------------------------------


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(ws):
    """torchrun with 2 ranks (gloo on CPU; NCCL on GPUs) x micro-batch 8 must train exactly what one process
    does with 2 accumulation steps of 8: same global batch, same data order, gradients averaged."""
    from conflux.training.launch import job_from_dict, job_to_dict, train_job

    cfg = replace(CFG, max_steps=3, batch_size=16, per_device_batch_size=8)
    one = make_job(ws, "curriculum_stage2", "ddp1", parts=["conflict"], cfg=cfg)
    two = make_job(ws, "curriculum_stage2", "ddp2", parts=["conflict"], cfg=cfg)
    assert job_from_dict(job_to_dict(two)) == two  # the spec the ranks rebuild the job from
    assert train_job(one, gpus=1)["world_size"] == 1
    assert train_job(two, gpus=2)["world_size"] == 2
    for name in ("dim0", "dim1"):
        got, want = adapter(two.out_dir, name), adapter(one.out_dir, name)
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-7, rtol=0)


# ---- tracking ----------------------------------------------------------------------------------------------


def test_tensorboard_tracking_writes_trl_metric_names_beside_the_run(ws):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conflux.training.launch import train_job
    from conflux.training.tracking import Tracking

    job = replace(
        make_job(
            ws,
            "curriculum_stage2",
            "tracked",
            parts=["conflict"],
            cfg=replace(CFG, max_steps=4, logging_steps=2),
        ),
        tracking=Tracking("tensorboard"),
    )
    train_job(job)
    events = EventAccumulator(str(job.out_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/rewards/accuracies/dim0", "train/rewards/margins/dim1"} <= tags, tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    logged = [
        r["loss"]
        for r in map(json.loads, (job.out_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)


def test_tracking_is_chosen_per_rule_and_wandb_runs_offline_without_a_project(tmp_path, monkeypatch):
    import importlib.util

    import transformers.integrations

    from conflux.errors import ConfluxError
    from conflux.training.tracking import Tracking, tracking_callbacks, tracking_for

    section = {"backend": "tensorboard", "methods": {"panacea": "wandb"}}
    assert tracking_for(section, "sft") == Tracking("tensorboard")
    assert tracking_for(section, "panacea") == Tracking("wandb")
    assert tracking_for({}, "sft") == Tracking("none") and tracking_callbacks(Tracking(), tmp_path, "x") == []

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name)
    )
    with pytest.raises(ConfluxError, match=r"conflux\[wandb\]"):
        tracking_callbacks(Tracking("wandb"), tmp_path, "x")

    # W&B's own callback stands in (the package is an optional extra): what conflux sets up is the point
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "wandb" else None)
    monkeypatch.setattr(transformers.integrations, "WandbCallback", lambda: "wandb-callback")
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_NAME"):
        monkeypatch.delenv(var, raising=False)
    assert tracking_callbacks(Tracking("wandb"), tmp_path, "tiny/synth_pku/seed0/panacea") == [
        "wandb-callback"
    ]
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str(tmp_path)
    assert os.environ["WANDB_NAME"] == "tiny/synth_pku/seed0/panacea"
    monkeypatch.delenv("WANDB_MODE")
    tracking_callbacks(Tracking("wandb", wandb_project="conflux"), tmp_path, "x")
    assert os.environ["WANDB_PROJECT"] == "conflux" and "WANDB_MODE" not in os.environ


def test_the_length_controlled_curriculum_scores_pairs_with_rdpo_in_every_pass(ws):
    """curriculum_rdpo's stage 3 (registry settings: length_control rdpo): each dimension pass's loss is
    L_DPO,i of β(h_a − h_b) − α(|y_a| − |y_b|), with |y| the response tokens scored; its KL target uses the
    same scores. Hand-computed from the raw log-ratios of the same policy."""
    from conflux.errors import ConfigError
    from conflux.training.config import resolve_train_config
    from conflux.training.losses import kl_bernoulli_loss, kl_target, sample_dirichlet_weights

    cfg = resolve_train_config({}, "curriculum_rdpo_stage3", "synth")
    assert (cfg.length_control, cfg.length_alpha) == ("rdpo", 0.01)
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    policy = PreferencePolicy.create(model, 2, LoraSpec(), shared=True, seed=3)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # adapters that differ, so the passes differ and the KL target is not trivial
        for name, param in policy.model.named_parameters():
            if ".lora_B." in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    objective = make_objective("curriculum_rdpo_stage3", 2, 0.1, None, "rdpo", 0.05)
    pairs = read_pairs(ws / "conflict.parquet").table.slice(0, 4).to_pydict()
    batch, _ = tokenize_pairs(
        tokenizer, pairs["prompt"], pairs["response_a"], pairs["response_b"], max_length=128
    )
    labels = torch.sign(torch.tensor(pairs["scores_a"]) - torch.tensor(pairs["scores_b"])).long()
    ref_a, ref_b = torch.full((4,), -60.0), torch.full((4,), -61.0)
    inputs = StepInputs(batch, labels, ref_a, ref_b)
    ctx = StepContext(policy.model, torch.no_grad, seed=0, global_step=7)
    got = [loss.item() for loss, _ in objective.passes(policy, ctx, inputs)]
    counts = batch.loss_mask.sum(dim=1).float()
    len_diff = counts[:4] - counts[4:]
    deltas = []
    with torch.no_grad():
        for i in range(2):
            with policy.at(torch.eye(2)[i]) as m:
                la, lb = sequence_logps(m, batch)
            z = 0.1 * ((la - ref_a) - (lb - ref_b)) - 0.05 * len_diff
            deltas.append(z / 0.1)
            used = labels[:, i] != 0
            want = -torch.nn.functional.logsigmoid(labels[used, i] * z[used]).mean()
            assert got[i] == pytest.approx(want.item(), rel=1e-5)
        w = sample_dirichlet_weights(2, ctx.weight_generator())
        p = kl_target(torch.stack(deltas, dim=1), w, 0.1)
        with policy.at(w) as m:
            la, lb = sequence_logps(m, batch)
        z_w = 0.1 * ((la - ref_a) - (lb - ref_b)) - 0.05 * len_diff
        kl = kl_bernoulli_loss(z_w, p).item()
        assert kl > 1e-7  # fresh adapters (B = 0) would make it 0 in exact arithmetic, float32 noise here
        # The KL is a difference of terms near log 2: summation order leaves ~1e-10, hence the abs floor.
        assert got[2] == pytest.approx(kl, rel=1e-5, abs=1e-9)
    with pytest.raises(ConfigError, match="preference methods only"):
        resolve_train_config({"methods": {"dpo": {"length_control": "rdpo"}}}, "dpo", "p")
