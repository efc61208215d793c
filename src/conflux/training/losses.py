"""The preference losses the trainer uses, as pure functions of policy log-ratios.

Notation: the policy log-ratio of a response is h(y) = log π(y|x) − log π_ref(y|x) (sums over response
tokens), and a pair (y_a, y_b) is scored by z = β (h(y_a) − h(y_b)). The implicit reward of a response is
r(y) = β h(y).

No function here sees a model: the trainers compute log-probs (``conflux.modeling.logprobs``) and hand tensors
over, so every loss, mask and gradient can be unit-tested on hand-made numbers. Metric names follow TRL's
DPOTrainer (``rewards/chosen`` ...) so users' dashboards carry over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from conflux.errors import ConfluxError
from conflux.training.config import LENGTH_CONTROLS


def length_controlled(
    logratio_a: Tensor,
    logratio_b: Tensor,
    len_a: Tensor,
    len_b: Tensor,
    control: str,
    alpha: float,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """The log-ratios a length-controlled method scores pairs by (the paper's suggested fix for length bias).

    - ``none``: h(y) as it is.
    - ``rdpo`` (R-DPO, Park et al. 2024): h(y) − (α/β)|y|, so that the pair score is
      z = β(h(y_a) − h(y_b)) − α(|y_a| − |y_b|): a longer response must earn its extra tokens.
    - ``normalized`` (SimPO-style length normalization, Meng et al. 2024): h(y)/|y|, the per-token log-ratio.

    |y| counts the response tokens the log-ratio sums over. Every use goes through here (the per-dimension
    DPO losses, the stage-3 KL target and its z_w, the evaluation margin), so training and evaluation agree.
    """
    if control == "none":
        return logratio_a, logratio_b
    len_a, len_b = len_a.to(logratio_a.dtype), len_b.to(logratio_b.dtype)
    if control == "rdpo":
        return logratio_a - (alpha / beta) * len_a, logratio_b - (alpha / beta) * len_b
    if control == "normalized":
        return logratio_a / len_a.clamp(min=1), logratio_b / len_b.clamp(min=1)
    raise ConfluxError(f"length_control must be one of {LENGTH_CONTROLS}, not {control!r}")


def _sigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """−(1−ε) log σ(z) − ε log σ(−z), per element.

    ``logsigmoid`` instead of ``log(sigmoid(z))``: the latter underflows to log 0 = −inf for z ≪ 0, exactly
    the badly-ranked pairs whose gradient matters most.
    """
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return losses


def _check_labels(labels: Tensor) -> None:
    if not torch.isin(labels, torch.tensor([-1, 0, 1], device=labels.device, dtype=labels.dtype)).all():
        raise ConfluxError(f"per-dimension labels must be -1, 0 or +1; got values {labels.unique().tolist()}")


def per_dim_dpo_loss(
    logratio_a: Tensor, logratio_b: Tensor, labels_i: Tensor, beta: float
) -> tuple[Tensor, int]:
    """L_DPO,i: DPO on dimension i's own preference, ties masked out.

    With label l ∈ {+1 (a preferred), −1 (b preferred), 0 (tie)} per pair:

        z_n  = β l_n (h(y_a) − h(y_b))                   (l = −1 swaps chosen and rejected)
        loss = Σ_{n: l_n ≠ 0} −log σ(z_n) / |{n: l_n ≠ 0}|

    A tie says nothing about dimension i, so it must not pull the policy either way: its z is multiplied by
    l = 0 (exactly zero gradient into its log-ratios) and its term is dropped from the mean. The mean is over
    the pairs used, so a batch with many ties is not silently down-weighted.

    Args:
        logratio_a, logratio_b: h(y_a), h(y_b) under the policy at w = 1_i, shape [B].
        labels_i: dimension i's labels, shape [B], values in {−1, 0, +1}.
        beta: the DPO temperature β.

    Returns:
        (scalar loss, number of non-tied pairs). With only ties the loss is a zero that is still connected to
        the graph, so ``backward`` works (giving zero gradients) and the k-pass step needs no special case.
    """
    _check_labels(labels_i)
    used = labels_i != 0
    z = beta * labels_i.to(logratio_a.dtype) * (logratio_a - logratio_b)
    losses = torch.where(used, _sigmoid_loss(z, 0.0), torch.zeros_like(z))
    n_used = int(used.sum())
    return losses.sum() / max(n_used, 1), n_used


def preference_rewards(
    logratio_a: Tensor, logratio_b: Tensor, labels_i: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Detached implicit rewards β h(y) of the chosen and rejected response by dimension i's labels.

    Tied pairs are left out, so ``reward_metrics`` on the result reports dimension i's accuracy on the pairs
    that L_DPO,i trains on. Returns (chosen_rewards, rejected_rewards), each of shape [n_used].
    """
    _check_labels(labels_i)
    used = labels_i != 0
    a_wins = labels_i[used] > 0
    r_a, r_b = beta * logratio_a.detach()[used], beta * logratio_b.detach()[used]
    return torch.where(a_wins, r_a, r_b), torch.where(a_wins, r_b, r_a)


def kl_bernoulli_loss(z_w: Tensor, target_p: Tensor) -> Tensor:
    """The curriculum's stage-3 loss L_KL = KL_Bernoulli(p ‖ σ(z_w)), mean over the batch.

        KL = p log(p / σ(z)) + (1−p) log((1−p) / (1−σ(z)))
           = [p log p + (1−p) log(1−p)] − p log σ(z) − (1−p) log σ(−z)       (since 1−σ(z) = σ(−z))

    The bracket is the entropy term: it has no gradient and uses ``xlogy`` so that 0·log 0 = 0 for the hard
    targets p ∈ {0, 1}; the log σ terms use ``logsigmoid`` so large |z| stays finite. Per example,
    dKL/dz = −p σ(−z) + (1−p) σ(z) = σ(z) − p: the loss pulls σ(z_w) onto p and is 0 exactly there.
    ``target_p`` is detached: p is the teacher signal from the per-dimension passes, not something to move.

    Args:
        z_w: β (h_w(y_a) − h_w(y_b)) of the policy at the sampled w, shape [B].
        target_p: p in [0, 1], shape [B] (see :func:`kl_target`).
    """
    if z_w.shape != target_p.shape:
        raise ConfluxError(
            f"z_w and target_p must have one shape; got {tuple(z_w.shape)} and {tuple(target_p.shape)}"
        )
    p = target_p.detach().to(z_w.dtype)
    neg_entropy = torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p)
    cross_entropy = -p * F.logsigmoid(z_w) - (1.0 - p) * F.logsigmoid(-z_w)
    return (neg_entropy + cross_entropy).mean()


def kl_target(detached_logratio_deltas: Tensor, weights: Tensor, beta: float) -> Tensor:
    """The stage-3 target p = σ(β Σ_i w_i Δ_i), with Δ_i = h_i(y_a) − h_i(y_b) from the pass at w = 1_i.

    p is what the k single-dimension policies jointly say about the pair at preference weight w; it is
    computed without gradient so that L_KL trains the policy at w towards the per-dimension policies and
    never the other way round.

    Args:
        detached_logratio_deltas: Δ, shape [B, k].
        weights: w, shape [k] (one w for the batch) or [B, k] (one per pair).
        beta: the DPO temperature β.

    Returns:
        p, shape [B], with no autograd history.
    """
    b, k = detached_logratio_deltas.shape
    if weights.shape not in ((k,), (b, k)):
        raise ConfluxError(f"weights must have shape [{k}] or [{b}, {k}]; got {tuple(weights.shape)}")
    with torch.no_grad():
        return torch.sigmoid(beta * (detached_logratio_deltas * weights).sum(dim=-1))


def reward_metrics(
    chosen_rewards: Tensor, rejected_rewards: Tensor, prefix: str = "", suffix: str = ""
) -> dict[str, float]:
    """TRL's reward metrics as batch means: ``{prefix}rewards/{stat}{suffix}``.

    stat is ``chosen``, ``rejected`` (mean rewards), ``accuracies`` (share of pairs with chosen > rejected,
    strictly, as TRL) and ``margins`` (mean chosen − rejected). Naming scheme:

    - ``prefix`` names the phase, e.g. ``"eval_"`` as the Hugging Face Trainer prefixes eval metrics;
    - ``suffix`` names the objective, e.g. ``"/dim0"`` for L_DPO,0 (``rewards/accuracies/dim0``), ``"/w"`` for
      the policy at a sampled weight; no suffix is the single-objective DPO of TRL.

    An empty batch (a dimension whose pairs are all ties) returns ``{}`` rather than NaNs that would poison
    running averages.
    """
    if chosen_rewards.numel() == 0:
        return {}
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    stats = {
        "chosen": chosen.mean(),
        "rejected": rejected.mean(),
        "accuracies": (chosen > rejected).float().mean(),
        "margins": (chosen - rejected).mean(),
    }
    return {f"{prefix}rewards/{name}{suffix}": value.item() for name, value in stats.items()}


def sample_dirichlet_weights(k: int, generator: torch.Generator) -> Tensor:
    """One preference weight w ~ Dirichlet(1, ..., 1) on the k-simplex, shape [k].

    Drawn as e_i ~ Exp(1), w = e / Σ e (normalized i.i.d. Gamma(1) draws are Dirichlet(1)). ``exponential_``
    with an explicit generator, unlike ``torch.distributions.Dirichlet``, takes no global RNG state, so the
    seeded generator alone fixes the sequence of w across runs and resumes.
    """
    if k < 1:
        raise ConfluxError(f"the number of dimensions k must be at least 1; got {k}")
    draws = torch.empty(k, dtype=torch.float64, device=generator.device).exponential_(generator=generator)
    return (draws / draws.sum()).float()


def one_hot_weights(k: int) -> list[Tensor]:
    """The k corner weights 1_0, ..., 1_{k-1} (float32, shape [k] each): the per-dimension passes."""
    if k < 1:
        raise ConfluxError(f"the number of dimensions k must be at least 1; got {k}")
    return [row.clone() for row in torch.eye(k, dtype=torch.float32)]
