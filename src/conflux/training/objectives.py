"""What one training step of each preference method computes, as a sequence of (w, loss) passes.

A method's step is a few forward passes of the policy at different preference weights w, each with its own
loss (curriculum stage 2: k passes at w = 1_i; Panacea: k+1 weight vectors; ...). An objective is a generator
that yields each pass's loss while the policy is still *at* that pass's w, so the trainer can run
``backward`` right there: gradient checkpointing recomputes the forward during ``backward`` and must see the
same adapter scalings. Summing the passes' gradients equals the gradient of the summed loss.

Why hand-written: no library has multi-adapter, weight-conditioned DPO passes; everything else of a step
(optimizer, accumulation, mixed precision, distribution) is the Hugging Face Trainer's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from conflux.errors import ConfluxError
from conflux.methods import PREFERENCE, STAGES, stage
from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.policy import SHARED, PreferencePolicy, dim_name
from conflux.modeling.tokenize import PairBatch
from conflux.training.losses import (
    kl_bernoulli_loss,
    kl_target,
    length_controlled,
    one_hot_weights,
    per_dim_dpo_loss,
    preference_rewards,
    reward_metrics,
    sample_dirichlet_weights,
)

Metrics = dict[str, float]


@dataclass
class StepInputs:
    """One micro-batch as the objectives see it (all tensors on the model's device)."""

    batch: PairBatch
    labels: Tensor  # [B, k] in {-1, 0, +1}: sign(s_a - s_b) per dimension
    ref_a: Tensor  # [B] log π_ref(y_a|x)
    ref_b: Tensor  # [B]


@dataclass
class StepContext:
    """What a pass needs from the trainer: the (possibly wrapped) model, the autocast context, the step."""

    model: torch.nn.Module
    forward_context: Callable[[], AbstractContextManager]
    seed: int
    global_step: int

    def weight_generator(self) -> torch.Generator:
        """A generator for this optimizer step's Dirichlet draw, a pure function of (seed, step).

        One w per optimizer step, as the paper draws it: every micro-batch and every rank of the step uses
        the same w, so a run's draws do not depend on the number of GPUs or the micro-batch size. Deriving it
        instead of carrying one RNG stream through training makes a resumed run draw exactly the w an
        uninterrupted run draws at the same step.
        """
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.global_step * 8191) % (2**63))


def sampled_w_metrics(w: Tensor) -> Metrics:
    """The step's Dirichlet draw in metrics.jsonl (``w/dim<i>``): which w a logged step trained at."""
    return {f"w/dim{i}": float(v) for i, v in enumerate(w.tolist())}


def logratios(policy: PreferencePolicy, ctx: StepContext, inputs: StepInputs) -> tuple[Tensor, Tensor]:
    """h(y_a), h(y_b) = log π(y|x; w) − log π_ref(y|x) of the policy at the w currently set."""
    with ctx.forward_context():
        logp_a, logp_b = sequence_logps(ctx.model, inputs.batch)
    return logp_a - inputs.ref_a, logp_b - inputs.ref_b


def overall_labels(labels: Tensor) -> Tensor:
    """One label per agree pair: the common sign of its nonzero per-dimension labels.

    Stage 1 trains on agree pairs only; a conflict pair here would be a split bug, so it is an error.
    """
    pos, neg = (labels > 0).any(dim=1), (labels < 0).any(dim=1)
    if (pos & neg).any():
        raise ConfluxError("stage 1 got a conflict pair; it trains on the agree split only")
    return pos.long() - neg.long()


class Objective(ABC):
    """Base class: ``name`` is the objective's name in the method registry (:mod:`conflux.methods`), whose
    stage entry says which adapters it trains; :meth:`passes` is what one step computes."""

    name = "objective"

    def __init__(
        self,
        k: int,
        beta: float,
        dim: int | None = None,
        length_control: str = "none",
        length_alpha: float = 0.0,
    ) -> None:
        self.k = k
        self.beta = beta
        self.dim = dim
        self.length_control = length_control
        self.length_alpha = length_alpha

    def logratios(
        self, policy: PreferencePolicy, ctx: StepContext, inputs: StepInputs
    ) -> tuple[Tensor, Tensor]:
        """The log-ratios every loss of the step scores pairs by, length-controlled as configured."""
        h_a, h_b = logratios(policy, ctx, inputs)
        if self.length_control == "none":
            return h_a, h_b
        counts = inputs.batch.loss_mask.sum(dim=1)  # response tokens scored, rows a then rows b
        n = inputs.batch.n_pairs
        return length_controlled(h_a, h_b, counts[:n], counts[n:], self.length_control, self.length_alpha,
                                 self.beta)  # fmt: skip

    def trained(self, policy: PreferencePolicy) -> list[str]:
        """The adapters this objective updates, as its registry stage says (``trains``)."""
        trains = stage(self.name).trains
        if trains == "shared":
            return [SHARED]
        if trains == "dims":
            return [dim_name(i) for i in range(self.k)]
        if trains == "all":
            return list(policy.adapter_names)
        if trains == "dim" and self.dim is not None:
            return [dim_name(self.dim)]
        raise ConfluxError(f"objective {self.name} cannot train {trains!r}")

    @abstractmethod
    def passes(
        self, policy: PreferencePolicy, ctx: StepContext, inputs: StepInputs
    ) -> Iterator[tuple[Tensor, Metrics]]: ...

    def _dim_pass(
        self, policy: PreferencePolicy, ctx: StepContext, inputs: StepInputs, i: int, suffix: str
    ) -> Iterator[tuple[Tensor, Metrics, Tensor]]:
        """One pass at w = 1_i with L_DPO,i; also yields the detached Δ_i = h(y_a) − h(y_b)."""
        with policy.at(one_hot_weights(self.k)[i]):
            h_a, h_b = self.logratios(policy, ctx, inputs)
            loss, n_used = per_dim_dpo_loss(h_a, h_b, inputs.labels[:, i], self.beta)
            metrics = reward_metrics(
                *preference_rewards(h_a, h_b, inputs.labels[:, i], self.beta), suffix=suffix
            )
            metrics[f"loss{suffix}"] = loss.item()
            metrics[f"pairs{suffix}"] = float(n_used)
            yield loss, metrics, (h_a - h_b).detach()


class CurriculumStage1(Objective):
    """Agree pairs, w = 0: only `shared` is active and trained, with plain DPO."""

    name = "curriculum_stage1"

    def passes(self, policy, ctx, inputs):
        labels = overall_labels(inputs.labels)
        with policy.at(torch.zeros(self.k)):
            h_a, h_b = self.logratios(policy, ctx, inputs)
            loss, _ = per_dim_dpo_loss(h_a, h_b, labels, self.beta)
            metrics = reward_metrics(*preference_rewards(h_a, h_b, labels, self.beta))
            yield loss, metrics


class CurriculumStage2(Objective):
    """Conflict pairs, `shared` frozen: k passes, pass i at w = 1_i trains dim_i on L_DPO,i."""

    name = "curriculum_stage2"

    def passes(self, policy, ctx, inputs):
        for i in range(self.k):
            for loss, metrics, _ in self._dim_pass(policy, ctx, inputs, i, f"/dim{i}"):
                yield loss, metrics


class CurriculumStage3(Objective):
    """agree_sub ∪ conflict, all adapters: k passes of L_DPO,i, then one pass at w ~ Dirichlet(1) with L_KL.

    p = σ(β Σ_i w_i Δ_i) comes from the k passes' detached log-ratio differences; z_w is the policy's own at
    the sampled w, so the KL pass teaches π(·; w) to agree with the weighted single-dimension judgements.
    """

    name = "curriculum_stage3"

    def passes(self, policy, ctx, inputs):
        deltas = []
        for i in range(self.k):
            for loss, metrics, delta in self._dim_pass(policy, ctx, inputs, i, f"/dim{i}"):
                deltas.append(delta)
                yield loss, metrics
        w = sample_dirichlet_weights(self.k, ctx.weight_generator())
        p = kl_target(torch.stack(deltas, dim=1), w.to(deltas[0].device), self.beta)
        with policy.at(w):
            h_a, h_b = self.logratios(policy, ctx, inputs)
            z = self.beta * (h_a - h_b)
            loss = kl_bernoulli_loss(z, p)
            yield loss, {"loss/kl": loss.item(), "kl/target_mean": p.mean().item(), **sampled_w_metrics(w)}


class Panacea(Objective):
    """All pairs, all adapters: m = k+1 weight vectors per step (the k one-hots and one Dirichlet draw),
    loss Σ_j Σ_i w_ji L_DPO,i(π(·; w_j)) (linear scalarization, as Panacea's LS variant).

    On AdaLoRA adapters (the paper's Panacea) the step's loss also has each trained adapter's orthogonal
    penalty (:meth:`PreferencePolicy.orthogonal_penalty`), once per micro-batch as ``AdaLoraModel`` adds it
    to every forward's loss. An adapter's penalty joins the first pass in which the adapter is active, so
    under DDP its gradient arrives in a pass whose forward used it (a pass that skips an adapter has already
    marked its gradient ready).
    """

    name = "panacea"

    def passes(self, policy, ctx, inputs):
        weights = [*one_hot_weights(self.k), sample_dirichlet_weights(self.k, ctx.weight_generator())]
        pending = set(self.trained(policy)) if policy.adalora else set()
        orth = 0.0
        for j, w in enumerate(weights):
            suffix = f"/dim{j}" if j < self.k else "/w"
            with policy.at(w):
                h_a, h_b = self.logratios(policy, ctx, inputs)
                loss = h_a.new_zeros(())
                for i in range(self.k):
                    if w[i] > 0:
                        loss_i, _ = per_dim_dpo_loss(h_a, h_b, inputs.labels[:, i], self.beta)
                        loss = loss + float(w[i]) * loss_i
                metrics: Metrics = {f"loss{suffix}": loss.item()}
                active = sorted(n for n, s in policy.weights(w).items() if s != 0.0 and n in pending)
                for name in active:
                    penalty = policy.orthogonal_penalty(name)
                    loss = loss + penalty
                    orth += penalty.item()
                pending.difference_update(active)
                if j == self.k:
                    metrics.update(sampled_w_metrics(w))
                    if policy.adalora:
                        metrics["loss/orth"] = orth
                if j < self.k:
                    metrics.update(
                        reward_metrics(
                            *preference_rewards(h_a, h_b, inputs.labels[:, j], self.beta), suffix=suffix
                        )
                    )
                yield loss, metrics


class SoupDimension(Objective):
    """DPO-Soup member i: plain DPO on dimension i's labels (ties masked), training adapter dim_i alone."""

    name = "dpo_soup"

    def __init__(self, k: int, beta: float, dim: int | None = None, **length: object) -> None:
        if dim is None:
            raise ConfluxError("dpo_soup needs the dimension it trains")
        if not 0 <= dim < k:
            raise ConfluxError(f"DPO-Soup dimension {dim} is out of range for k={k}")
        super().__init__(k, beta, dim, **length)

    def passes(self, policy, ctx, inputs):
        for loss, metrics, _ in self._dim_pass(policy, ctx, inputs, self.dim, f"/dim{self.dim}"):
            yield loss, metrics


OBJECTIVES: dict[str, type[Objective]] = {
    c.name: c for c in (CurriculumStage1, CurriculumStage2, CurriculumStage3, Panacea, SoupDimension)
}


def make_objective(
    rule: str,
    k: int,
    beta: float,
    dim: int | None = None,
    length_control: str = "none",
    length_alpha: float = 0.0,
) -> Objective:
    """The objective a preference training rule runs, as the method registry names it."""
    if rule not in STAGES or STAGES[rule].trainer != PREFERENCE:
        raise ConfluxError(f"unknown preference method '{rule}'")
    return OBJECTIVES[STAGES[rule].objective](k, beta, dim, length_control=length_control,
                                              length_alpha=length_alpha)  # fmt: skip
