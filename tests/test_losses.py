"""The preference losses on hand numbers, against TRL's own DPO loss code, and their gradients."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
import torch

from conflux.errors import ConfluxError
from conflux.training.losses import (
    kl_bernoulli_loss,
    kl_target,
    one_hot_weights,
    per_dim_dpo_loss,
    preference_rewards,
    reward_metrics,
    sample_dirichlet_weights,
)
from reference_impl import dpo_loss, linear_scalarization_loss, panacea_loss


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    """Compare at 1e-6 without measuring float32 rounding; restored so other test files are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _random_logps(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(-50 * torch.rand(n, generator=g) for _ in range(4))


# --- TRL 1.16 as the oracle -------------------------------------------------------------------------------
TrlLoss = Callable[..., tuple[torch.Tensor, dict[str, list[float]]]]


@pytest.fixture(scope="module")
def trl_loss() -> TrlLoss:
    """Run TRL 1.16's own loss lines on given sequence log-probs.

    TRL 1.16 has no standalone DPO loss function: ``DPOTrainer._compute_loss(self, model, inputs,
    return_outputs)`` (trl/trainer/dpo_trainer.py, lines 1285-1612) runs the model and then computes every
    ``loss_type`` inline (``sigmoid`` at line 1387: ``-F.logsigmoid(self.beta * delta_score)``; the
    reward metrics at lines 1583-1598). We call that method unmodified on a bare instance
    (``object.__new__(DPOTrainer)``, no ``__init__``, so no hub model) with only the attributes it reads:
    precomputed reference log-probs come from ``inputs``, and a stand-in model returns per-token
    ``log_probs`` of one completion token per row, so TRL's sequence sum is exactly the given log-prob.
    TRL reduces by the batch mean; calling with a batch of one gives the per-pair loss.
    """
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")

    def run(
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
        beta: float,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
    ) -> tuple[torch.Tensor, dict[str, list[float]]]:
        trainer = object.__new__(dpo_trainer.DPOTrainer)
        trainer.model = torch.nn.Module()  # only `.training` is read (train/eval metric bucket)
        identity = lambda x: x  # noqa: E731  (single process: gather is the identity)
        trainer.accelerator = SimpleNamespace(
            device=torch.device("cpu"), gather=identity, gather_for_metrics=identity
        )
        trainer.aux_loss_enabled = False
        trainer.ld_alpha = None
        trainer.precompute_ref_logps = True
        trainer.f_divergence_type = "reverse_kl"
        trainer.loss_types = [loss_type]
        trainer.loss_weights = [1.0]
        trainer.beta = beta
        trainer.label_smoothing = label_smoothing
        trainer.use_weighting = False
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer._total_train_tokens = 0
        trainer._tp_size = 1

        rows = 2 * chosen.shape[0]  # TRL's batch is [chosen; rejected]
        log_probs = torch.cat([chosen, rejected]).unsqueeze(1)  # [2B, 1]: one completion token per row
        zeros = torch.zeros(rows, 1)
        outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
        inputs = {
            "input_ids": torch.zeros(rows, 2, dtype=torch.long),  # prompt token + completion token
            "attention_mask": torch.ones(rows, 2, dtype=torch.long),
            "completion_mask": torch.tensor([[0, 1]] * rows),
            "ref_chosen_logps": ref_chosen,
            "ref_rejected_logps": ref_rejected,
        }
        model = lambda **_: outputs  # noqa: E731
        loss = dpo_trainer.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
        return loss, trainer._metrics["train"]

    return run


def test_dpo_loss_matches_trl_sigmoid_per_pair_and_in_mean(trl_loss: TrlLoss) -> None:
    beta = 0.1
    chosen, rejected, ref_c, ref_r = _random_logps(16)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_c, ref_r, beta)
    for n in range(16):
        one = slice(n, n + 1)
        trl, _ = trl_loss(chosen[one], rejected[one], ref_c[one], ref_r[one], beta)
        assert losses[n].item() == pytest.approx(trl.item(), abs=1e-6)
    trl_mean, trl_metrics = trl_loss(chosen, rejected, ref_c, ref_r, beta)
    assert losses.mean().item() == pytest.approx(trl_mean.item(), abs=1e-6)
    ours = reward_metrics(chosen_rewards, rejected_rewards)
    assert set(ours) == {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"}
    for name, value in ours.items():
        assert value == pytest.approx(trl_metrics[name][0], abs=1e-6)


def test_dpo_loss_gradient_matches_trl(trl_loss: TrlLoss) -> None:
    beta = 0.5
    base = _random_logps(8, seed=1)
    ours_in = [t.clone().requires_grad_() for t in base[:2]]
    trl_in = [t.clone().requires_grad_() for t in base[:2]]
    dpo_loss(*ours_in, *base[2:], beta)[0].mean().backward()
    trl_loss(*trl_in, *base[2:], beta)[0].backward()
    for ours, trl in zip(ours_in, trl_in, strict=True):
        torch.testing.assert_close(ours.grad, trl.grad, atol=1e-6, rtol=0)


def test_label_smoothing_matches_trl_conservative_form(trl_loss: TrlLoss) -> None:
    # TRL 1.16's `sigmoid` ignores label_smoothing; its `aot` loss (dpo_trainer.py lines 1446-1456) keeps the
    # conservative-DPO lines, and on a batch of one its sort is the identity, so it is exactly smoothed DPO.
    beta, eps = 0.2, 0.1
    chosen, rejected, ref_c, ref_r = _random_logps(6, seed=2)
    losses, _, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta, label_smoothing=eps)
    for n in range(6):
        one = slice(n, n + 1)
        trl, _ = trl_loss(chosen[one], rejected[one], ref_c[one], ref_r[one], beta, "aot", eps)
        assert losses[n].item() == pytest.approx(trl.item(), abs=1e-6)


# --- DPO by hand --------------------------------------------------------------------------------------------
def test_dpo_loss_on_hand_computed_pairs() -> None:
    # logits = (c − r) − (ref_c − ref_r) = 2, 0, −4; β = 0.5 → β·logits = 1, 0, −2.
    chosen = torch.tensor([-10.0, -5.0, -20.0])
    rejected = torch.tensor([-12.0, -5.0, -14.0])
    ref_c = torch.tensor([-11.0, -7.0, -18.0])
    ref_r = torch.tensor([-11.0, -7.0, -16.0])
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_c, ref_r, 0.5)
    # −log σ(x) = log(1 + e^{−x}): log(1 + e^{−1}), log 2, log(1 + e^{2})
    expected = torch.tensor([0.3132616875182229, 0.6931471805599453, 2.126928011042973])
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, 1.0, -1.0]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 1.0, 1.0]))


def test_label_smoothing_mixes_in_the_flipped_label() -> None:
    one = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])
    losses, _, _ = dpo_loss(*one, 0.5, label_smoothing=0.1)  # β·logits = 1
    # 0.9 log(1 + e^{−1}) + 0.1 log(1 + e^{1})
    assert losses.item() == pytest.approx(0.4132616875182229, abs=1e-12)


def test_rewards_are_detached() -> None:
    chosen, rejected, ref_c, ref_r = (t.requires_grad_() for t in _random_logps(4))
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_c, ref_r, 0.1)
    assert losses.requires_grad
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


# --- per-dimension DPO -------------------------------------------------------------------------------------
def test_per_dim_label_minus_one_swaps_chosen_and_rejected() -> None:
    h_a, h_b = torch.randn(5), torch.randn(5)
    labels = torch.tensor([1, -1, -1, 1, -1])
    loss, n_used = per_dim_dpo_loss(h_a, h_b, labels, 0.3)
    chosen = torch.where(labels > 0, h_a, h_b)
    rejected = torch.where(labels > 0, h_b, h_a)
    zero = torch.zeros(5)  # log-ratios already subtract the reference
    expected, _, _ = dpo_loss(chosen, rejected, zero, zero, 0.3)
    assert n_used == 5
    assert loss.item() == pytest.approx(expected.mean().item(), abs=1e-12)


def test_tied_pairs_get_zero_gradient_and_do_not_change_the_loss() -> None:
    h_a, h_b = torch.randn(6).requires_grad_(), torch.randn(6).requires_grad_()
    labels = torch.tensor([1, 0, -1, 0, 1, 0])
    loss, n_used = per_dim_dpo_loss(h_a, h_b, labels, 0.5)
    loss.backward()
    tied = labels == 0
    assert n_used == 3
    assert torch.all(h_a.grad[tied] == 0) and torch.all(h_b.grad[tied] == 0)
    assert torch.all(h_a.grad[~tied] != 0)
    untied, _ = per_dim_dpo_loss(h_a[~tied], h_b[~tied], labels[~tied], 0.5)
    assert loss.item() == pytest.approx(untied.item(), abs=1e-12)


def test_all_tie_batch_gives_zero_and_backward_works() -> None:
    h_a, h_b = torch.randn(3).requires_grad_(), torch.randn(3).requires_grad_()
    loss, n_used = per_dim_dpo_loss(h_a, h_b, torch.zeros(3, dtype=torch.long), 0.5)
    assert n_used == 0 and loss.item() == 0.0
    loss.backward()
    assert torch.all(h_a.grad == 0) and torch.all(h_b.grad == 0)


def test_per_dim_rejects_labels_outside_minus_one_zero_one() -> None:
    with pytest.raises(ConfluxError, match="-1, 0 or \\+1"):
        per_dim_dpo_loss(torch.zeros(2), torch.zeros(2), torch.tensor([2, 0]), 0.1)


def test_preference_rewards_orient_by_label_and_drop_ties() -> None:
    h_a, h_b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 5.0, -1.0])
    chosen, rejected = preference_rewards(h_a, h_b, torch.tensor([1, 0, -1]), 2.0)
    torch.testing.assert_close(chosen, torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(rejected, torch.tensor([0.0, 6.0]))
    metrics = reward_metrics(chosen, rejected, prefix="eval_", suffix="/dim1")
    assert metrics["eval_rewards/accuracies/dim1"] == 0.5
    assert metrics["eval_rewards/margins/dim1"] == pytest.approx(-3.0)
    assert reward_metrics(torch.zeros(0), torch.zeros(0), suffix="/dim0") == {}


# --- linear scalarization ----------------------------------------------------------------------------------
def test_linear_scalarization_is_the_weighted_sum() -> None:
    losses, w = torch.tensor([0.7, 0.2, 1.5]), torch.tensor([0.5, 0.25, 0.25])
    assert linear_scalarization_loss(losses, w).item() == pytest.approx(0.5 * 0.7 + 0.25 * 0.2 + 0.25 * 1.5)
    with pytest.raises(ConfluxError):
        linear_scalarization_loss(losses, w[:2])


def test_panacea_loss_is_the_double_sum() -> None:
    g = torch.Generator().manual_seed(3)
    k = 3
    weights = torch.stack([*one_hot_weights(k), sample_dirichlet_weights(k, g)]).double()
    losses = torch.rand(k + 1, k, generator=g)
    expected = sum(weights[j, i] * losses[j, i] for j in range(k + 1) for i in range(k))
    assert panacea_loss(losses, weights).item() == pytest.approx(float(expected), abs=1e-12)
    assert panacea_loss(losses, weights).item() == pytest.approx(
        sum(linear_scalarization_loss(losses[j], weights[j]).item() for j in range(k + 1)), abs=1e-12
    )


# --- KL curriculum loss ------------------------------------------------------------------------------------
def test_kl_value_matches_closed_form_on_hand_numbers() -> None:
    z = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])  # σ(z) = 0.5, 0.75, 0.25
    p = torch.tensor([0.25, 1.0, 0.0])
    # 0.25 log(0.25/0.5) + 0.75 log(0.75/0.5); then log(1/0.75) twice (hard targets, 0·log 0 = 0)
    expected = (0.13081203594113697 + 2 * 0.28768207245178085) / 3
    assert kl_bernoulli_loss(z, p).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("target", ["soft", "hard"])
def test_kl_gradient_is_sigmoid_minus_p(target: str) -> None:
    g = torch.Generator().manual_seed(4)
    z = (10 * torch.randn(32, generator=g)).requires_grad_()
    p = torch.rand(32, generator=g) if target == "soft" else torch.randint(0, 2, (32,), generator=g).double()
    kl_bernoulli_loss(z, p).backward()
    torch.testing.assert_close(z.grad, (torch.sigmoid(z) - p).detach() / 32, atol=1e-6, rtol=0)


def test_kl_is_zero_at_sigmoid_z_equal_p_and_positive_elsewhere() -> None:
    p = torch.tensor([0.1, 0.5, 0.9])
    z = torch.logit(p)
    assert kl_bernoulli_loss(z, p).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_bernoulli_loss(z + 0.1, p).item() > 0 and kl_bernoulli_loss(z - 0.1, p).item() > 0


def test_kl_target_gets_no_gradient() -> None:
    deltas = torch.randn(4, 2).requires_grad_()
    p = kl_target(deltas, torch.tensor([0.3, 0.7]), 0.5)
    assert not p.requires_grad
    torch.testing.assert_close(p, torch.sigmoid(0.5 * (0.3 * deltas[:, 0] + 0.7 * deltas[:, 1])).detach())
    z = torch.randn(4).requires_grad_()
    p_leaf = p.clone().requires_grad_()
    kl_bernoulli_loss(z, p_leaf).backward()
    assert p_leaf.grad is None and z.grad is not None


def test_kl_target_takes_one_weight_per_pair() -> None:
    deltas, w = torch.randn(3, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    p = kl_target(deltas, w, 1.0)
    torch.testing.assert_close(p, torch.sigmoid(torch.stack([deltas[0, 0], deltas[1, 1], deltas[2].mean()])))
    with pytest.raises(ConfluxError):
        kl_target(deltas, torch.ones(3), 1.0)


# --- preference weights ------------------------------------------------------------------------------------
def test_dirichlet_weights_are_fixed_by_the_generator_seed() -> None:
    a = [sample_dirichlet_weights(4, g) for g in [torch.Generator().manual_seed(7)] for _ in range(3)]
    b = [sample_dirichlet_weights(4, g) for g in [torch.Generator().manual_seed(7)] for _ in range(3)]
    for wa, wb in zip(a, b, strict=True):
        assert torch.equal(wa, wb)
    assert not torch.equal(a[0], a[1])  # the generator advances between draws


def test_dirichlet_weights_lie_on_the_simplex_with_mean_one_over_k() -> None:
    g = torch.Generator().manual_seed(8)
    k = 5
    draws = torch.stack([sample_dirichlet_weights(k, g) for _ in range(4000)])
    assert draws.shape == (4000, k) and draws.dtype == torch.float32
    assert torch.all(draws > 0)
    torch.testing.assert_close(draws.sum(dim=1), torch.ones(4000, dtype=torch.float32))
    # Dirichlet(1) marginal is Beta(1, k−1): sd ≈ 0.16, so the mean of 4000 draws is within ~0.0026 (1σ)
    expected_mean = torch.full((k,), 1 / k, dtype=torch.float32)
    torch.testing.assert_close(draws.mean(dim=0), expected_mean, atol=0.015, rtol=0)


def test_one_hot_weights_are_the_corners() -> None:
    corners = one_hot_weights(3)
    assert len(corners) == 3
    torch.testing.assert_close(torch.stack(corners), torch.eye(3, dtype=torch.float32))


# ---- length control ----------------------------------------------------------------------------------------


def test_rdpo_and_normalized_log_ratios_give_the_hand_computed_pair_scores() -> None:
    """R-DPO: z = β(h_a − h_b) − α(|y_a| − |y_b|) for a preferred (label +1), mirrored for label −1;
    normalized: z = β(h_a/|y_a| − h_b/|y_b|). Checked through L_DPO,i, whose loss is −log σ(l·z)."""
    from conflux.training.losses import length_controlled

    h_a, h_b = torch.tensor([-3.0, -10.0, -4.0]), torch.tensor([-5.0, -2.0, -4.5])
    len_a, len_b = torch.tensor([12, 40, 7]), torch.tensor([20, 8, 7])
    labels = torch.tensor([1, -1, 1])
    beta, alpha = 0.1, 0.02
    a, b = length_controlled(h_a, h_b, len_a, len_b, "rdpo", alpha, beta)
    loss, _ = per_dim_dpo_loss(a, b, labels, beta)
    z = [beta * (-3 + 5) - alpha * (12 - 20), -(beta * (-10 + 2) - alpha * (40 - 8)), beta * 0.5 - 0.0]
    assert loss.item() == pytest.approx(sum(-math.log(1 / (1 + math.exp(-v))) for v in z) / 3, rel=1e-6)
    a, b = length_controlled(h_a, h_b, len_a, len_b, "normalized", alpha, beta)
    torch.testing.assert_close(a, h_a / len_a.float())
    torch.testing.assert_close(b, h_b / len_b.float())
    a, b = length_controlled(h_a, h_b, len_a, len_b, "none", alpha, beta)
    assert a is h_a and b is h_b
    with pytest.raises(ConfluxError, match="length_control"):
        length_controlled(h_a, h_b, len_a, len_b, "simpo", alpha, beta)


def test_the_evaluation_margin_of_a_length_controlled_method_is_its_training_score() -> None:
    import numpy as np

    from conflux.evaluation.implicit_reward import implicit_reward_margin

    logp_a, logp_b = np.array([-30.0, -12.0]), np.array([-25.0, -40.0])
    ref_a, ref_b = np.array([-28.0, -11.0]), np.array([-26.0, -37.0])
    len_a, len_b = np.array([10.0, 5.0]), np.array([6.0, 30.0])
    plain = implicit_reward_margin(logp_a, logp_b, ref_a, ref_b, 0.1)
    np.testing.assert_allclose(plain, 0.1 * ((logp_a - ref_a) - (logp_b - ref_b)))
    rdpo = implicit_reward_margin(logp_a, logp_b, ref_a, ref_b, 0.1, length=("rdpo", 0.02, len_a, len_b))
    np.testing.assert_allclose(rdpo, plain - 0.02 * (len_a - len_b), rtol=1e-12)
