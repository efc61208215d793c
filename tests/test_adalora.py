"""Panacea on AdaLoRA: conflux's multi-adapter AdaLoRA against PEFT's single-adapter AdaLoraModel.

PEFT trains one AdaLoRA adapter per model; conflux trains k+1 at once (training/adalora.py). One adapter
alone must then be PEFT's AdaLoRA exactly: the loss with its orthogonal term, the AdamW update of P, Λ, Q and
the rank allocation's masks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel, get_peft_model

from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy
from conflux.modeling.tokenize import PairBatch
from conflux.training.adalora import RankSchedule
from conflux.training.losses import per_dim_dpo_loss
from conflux.training.objectives import StepContext, StepInputs, make_objective
from weight_checkpoints import tiny_llama

SPEC = LoraSpec(r=8, alpha=512, adapter="adalora", orth_reg_weight=0.5)  # the paper's Panacea
STEPS = 3  # AdaLoRA's schedule over 3 steps: no masking at step 0, masking at steps 1 and 2
BETA = 0.1


def pair_batch(n: int = 4, length: int = 12, seed: int = 1) -> tuple[PairBatch, torch.Tensor]:
    """Random pairs: prompt tokens 0..4, responses after, a few pad positions on the b side."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (2 * n, length), generator=gen)
    attention = torch.ones_like(ids)
    attention[n:, -2:] = 0
    loss_mask = attention.clone()
    loss_mask[:, :5] = 0
    labels = torch.tensor([[1], [-1], [1], [-1]])[:n]
    return PairBatch(ids, attention, loss_mask, n_pairs=n), labels


def peft_regulariser(model: PeftModel, ids: torch.Tensor) -> torch.Tensor:
    """PEFT's own orthogonal term: AdaLoraModel.forward adds it to ``outputs.loss``; take the CE back off."""
    out = model(input_ids=ids, labels=ids)
    logits = out.logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return out.loss - ce


def test_one_adapter_trains_exactly_as_peft_adalora_model():
    """Two optimizer steps of conflux's Panacea objective on one AdaLoRA module (k = 1, no shared) and of
    PEFT's AdaLoraModel from the same initialisation: the loss with its orthogonal term, then P, Λ, Q after
    AdamW and after the rank allocator, to 1e-6; the allocator masks the same triplets."""
    reference = get_peft_model(tiny_llama(), SPEC.to_peft(total_step=STEPS))
    policy = PreferencePolicy.create(tiny_llama(), 1, SPEC, shared=False, seed=5)
    with torch.no_grad():  # the same P, Λ, Q; Λ nonzero so the adapter matters from the first step
        gen = torch.Generator().manual_seed(2)
        ours = dict(policy.model.named_parameters())
        for name, p in reference.named_parameters():
            if ".lora_" in name:
                if ".lora_E." in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
                ours[name.replace(".default", ".dim0")].copy_(p)
    batch, labels = pair_batch()
    ref_a, ref_b = torch.full((4,), -40.0), torch.full((4,), -41.0)
    objective = make_objective("panacea", 1, BETA)
    policy.train_only(objective.trained(policy))
    schedule = RankSchedule(policy, ["dim0"])
    schedule.on_train_begin(None, SimpleNamespace(max_steps=STEPS), None)
    opt_ours = torch.optim.AdamW(policy.trainable_parameters(), lr=2e-4, weight_decay=0.0)
    theirs = [p for p in reference.parameters() if p.requires_grad]
    opt_theirs = torch.optim.AdamW(theirs, lr=2e-4, weight_decay=0.0)
    assert len(theirs) == len(policy.trainable_parameters()) == 3 * 14  # P, Λ, Q of 7 projections x 2 layers

    for step in range(2):
        # conflux: the objective's passes (at w = 1_0 and the Dirichlet draw, which is 1 for k = 1)
        ctx = StepContext(policy.model, torch.enable_grad, seed=0, global_step=step)
        total, metrics = 0.0, {}
        for loss, pass_metrics in objective.passes(policy, ctx, StepInputs(batch, labels, ref_a, ref_b)):
            loss.backward()
            total += loss.item()
            metrics.update(pass_metrics)
        assert metrics["loss/orth"] > 0
        # PEFT: the same two DPO passes, plus the regulariser as AdaLoraModel adds it (once per forward loss)
        logp_a, logp_b = sequence_logps(reference, batch)
        dpo, _ = per_dim_dpo_loss(logp_a - ref_a, logp_b - ref_b, labels[:, 0], BETA)
        expected = 2 * dpo + peft_regulariser(reference, batch.input_ids)
        expected.backward()
        assert total == pytest.approx(expected.item(), abs=1e-6)

        opt_ours.step()
        opt_theirs.step()
        schedule.step(step)
        reference.base_model.update_and_allocate(step)
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
        for name, p in reference.named_parameters():
            if ".lora_" in name:
                torch.testing.assert_close(ours[name.replace(".default", ".dim0")], p, atol=1e-6, rtol=0)

    pattern = {k.replace(".dim0", ".default"): v for k, v in schedule.patterns["dim0"].items()}
    assert pattern == reference.peft_config["default"].rank_pattern
    kept = sum(sum(v) for v in pattern.values())
    assert 8 * 14 < kept < 12 * 14  # pruned on the way from init_r = 12 towards the budget r = 8
    masked = [p for n, p in ours.items() if ".lora_E." in n and (p == 0).any()]
    assert masked  # the pruned singular values are zero


def random_adapters(policy: PreferencePolicy, seed: int) -> None:
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for _, p in policy.model.named_parameters():
            if ".lora_" in _:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_policy_at_w_is_the_weighted_sum_of_adalora_updates():
    """π(·; w) on AdaLoRA modules = the base with ΔW = Σ_name s_name · Q (Λ ⊙ P) α / r_init merged in."""
    policy = PreferencePolicy.create(tiny_llama(), 2, SPEC, shared=True, seed=0)
    random_adapters(policy, 3)
    w = [0.3, 0.7]
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), policy.at(w) as m:
        got = m(input_ids=ids).logits
    merged = tiny_llama()
    params = dict(merged.named_parameters())
    scales = policy.weights(w)
    with torch.no_grad():
        for name, module in policy.model.base_model.model.named_modules():
            if hasattr(module, "lora_E"):
                for adapter, s in scales.items():
                    # by hand, not PEFT's get_delta_weight: B (A * E) · α / (ranknum + 1e-5)
                    delta = module.lora_B[adapter] @ (module.lora_A[adapter] * module.lora_E[adapter])
                    params[f"{name}.weight"].add_(s * delta * 512 / (12 + 1e-5))
        want = merged(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_pruned_adapters_save_and_load_as_the_same_policy(tmp_path):
    """After rank allocation the saved adapters hold only the kept triplets (as AdaLoraModel saves them), and
    loading them (PEFT resizes the modules) gives the same π(·; w)."""
    policy = PreferencePolicy.create(tiny_llama(), 2, SPEC, shared=True, seed=0)
    random_adapters(policy, 7)
    schedule = RankSchedule(policy, list(policy.adapter_names))
    schedule.on_train_begin(None, SimpleNamespace(max_steps=STEPS), None)
    batch, labels = pair_batch()
    for step in range(2):
        ctx = StepContext(policy.model, torch.enable_grad, seed=0, global_step=step)
        inputs = StepInputs(batch, labels.repeat(1, 2), torch.zeros(4), torch.zeros(4))
        for loss, _ in make_objective("panacea", 2, BETA).passes(policy, ctx, inputs):
            loss.backward()
        schedule.step(step)
        policy.model.zero_grad()
    schedule.finalize()
    policy.save(tmp_path / "adapters")
    loaded = PreferencePolicy.load(tiny_llama(), {n: tmp_path / "adapters" / n for n in policy.adapter_names})
    ids = torch.randint(0, 40, (2, 10), generator=torch.Generator().manual_seed(4))
    for w in ([1.0, 0.0], [0.25, 0.75]):
        with torch.no_grad(), policy.at(w) as a, loaded.at(w) as b:
            torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-5, rtol=0)
    module = loaded.model.base_model.model.model.layers[0].self_attn.q_proj
    kept = sum(schedule.patterns["dim0"]["model.layers.0.self_attn.q_proj.lora_E.dim0"])
    assert module.lora_A["dim0"].shape[0] == kept < 12
