"""Peak memory of one job per device, by component, from the architecture and the job's settings.

Weights, gradients and optimizer state are exact counts (:mod:`conflux.plan.arch`); activations, logits, the
KV cache and the analyses' buffers are estimates of what the code holds at its peak, each written out below
with its reason, and the GPU check (bench/gpu_check.py) compares the total with torch's measured peak. Every
number is in bytes; the plan prints GiB, as GPUs and SLURM count memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conflux.methods import STAGES, TRL
from conflux.plan.arch import DTYPE_BYTES, Arch, adamw_bytes
from conflux.training.config import TrainConfig
from conflux.training.parallel import load_dtype, resolve_distributed, resolve_precision

GIB = 2**30
# CUDA context and kernels (~0.5-1 GiB), NCCL buffers, and what the caching allocator cannot hand back.
OVERHEAD = 2 * GIB
HOST_BASELINE = 1 * GIB  # a Python process with torch and pyarrow loaded
# Per-token, per-layer activations a decoder layer saves for backward, in elements of the compute dtype:
# two RMSNorm inputs kept in float32 (2 x 2H), the q/k/v and gate/up inputs (2H), rotary q and k (H + kv),
# SDPA's q, k, v and output (2H + 2kv), o_proj's input (H); the MLP's gate, up, SiLU(gate) and product (4I).
ACT_H, ACT_KV, ACT_I = 10, 4, 4
# Logits per scored position: the compute-dtype logits, a float32 copy and the log-sum-exp's float32
# temporary (conflux.modeling.logprobs.token_logps); training adds the float32 gradient.
LOGIT_SCORE_EXTRA, LOGIT_TRAIN_EXTRA = 8, 12
# Host memory of the streamed analyses, in float32 copies of the largest tensor they see (measured and
# documented in their modules: stats hold two τ (one read while the other is analysed) and the two tensors
# each τ is read from; the CL-L2 tables ~5.5; the merge 1.25n + 6 for n = 2 sources plus half a copy per
# extra λ; a dump two τ buffers and the trimmed indices and values). A CL-L2 table of n sources holds all n
# trimmed τ of a parameter at once: one copy more per source beyond two.
ANALYSIS_COPIES = {
    "taskvec_stats_persona": 4.0,
    "taskvec_stats_adapters": 4.0,
    "conflict_methods": 5.5,
    "conflict_datasets": 5.5,
    "conflict_dims": 5.5,
    "merge_sft_dpo": 8.5,
    "dump_task_vectors_persona": 3.0,
    "dump_task_vectors_adapters": 3.0,
}
MERGE_SHARD_BYTES = 2 * GIB  # conflux.analysis.merge's output shard, buffered once per λ


@dataclass(frozen=True)
class Estimate:
    """One job's peak memory on one device (a GPU, or the host for a CPU job), by component."""

    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())


def layer_activation_elements(arch: Arch) -> int:
    return ACT_H * arch.hidden_size + ACT_KV * arch.kv_dim + ACT_I * arch.intermediate_size


def adapters_of(rule: str, k: int, shared: bool) -> tuple[int, int]:
    """(adapters the job's model holds, adapters it trains)."""
    trains = STAGES[rule].trains
    held = 1 if trains in ("dim", "model") else k + int(shared)
    trained = {"shared": 1, "dims": k, "all": k + int(shared), "dim": 1, "model": 1}[trains]
    return held, trained


def training_estimate(
    arch: Arch, cfg: TrainConfig, rule: str, k: int, shared: bool, world: int, gpu: bool
) -> Estimate:
    """A training job's peak per device: the whole step of one micro-batch, every rank alike."""
    precision = resolve_precision(cfg.precision, bf16=gpu)
    weights_dtype = load_dtype(cfg, bf16=gpu)
    sharded = world > 1 and resolve_distributed(cfg) == "fsdp"
    shard = world if sharded else 1
    compute = 4 if precision == "fp32" else 2
    numel, tensors = arch.numel(), arch.tensors()
    parts: dict[str, int] = {"weights": numel * DTYPE_BYTES[weights_dtype] // shard}
    full = cfg.finetune == "full" and STAGES[rule].trainer == TRL
    if full:
        parts["gradients"] = numel * DTYPE_BYTES[weights_dtype] // shard
        parts["optimizer"] = adamw_bytes(numel, tensors, weights_dtype) // shard
        if world > 1 and not sharded:  # DDP's gradient buckets, a second copy of every gradient
            parts["ddp buckets"] = parts["gradients"]
    else:
        held, trained = adapters_of(rule, k, shared)
        spec = cfg.lora.spec()
        per_numel, per_tensors = arch.lora_numel(spec.init_r)
        if spec.adapter == "adalora":  # Λ: a singular value per rank of each matrix, a third tensor each
            per_numel += spec.init_r * per_tensors // 2
            per_tensors += per_tensors // 2
        parts["adapters"] = held * per_numel * 4  # PEFT keeps adapters in float32 over a bf16 base
        parts["gradients"] = trained * per_numel * 4
        parts["optimizer"] = adamw_bytes(trained * per_numel, trained * per_tensors, "float32")
        if spec.adapter == "adalora":  # PEFT's RankAllocator: sensitivity, its EMA and uncertainty per entry
            parts["rank allocator"] = 3 * trained * per_numel * 4
    if sharded:  # FSDP2 gathers a layer (and the next, prefetched) and keeps the root's embed and head
        layer = 2 * arch.layer_numel() + (numel - arch.num_hidden_layers * arch.layer_numel())
        parts["gathered weights"] = layer * compute
    elif precision == "bf16_mixed" and weights_dtype == "float32":  # autocast's bf16 copies of the weights
        parts["autocast copies"] = numel * 2
    pairs = STAGES[rule].objective != "sft"
    tokens = cfg.per_device_batch_size * (2 if pairs else 1) * cfg.max_length
    residual = DTYPE_BYTES[weights_dtype]  # the residual stream stays in the weights' dtype under autocast
    per_layer = tokens * layer_activation_elements(arch) * compute
    if not full:  # each active adapter's branch saves its r-wide A output, and its input with dropout
        branch = sum(
            spec.init_r + (a * (compute + 1) if cfg.lora.dropout else 0) for a, _ in arch.linears().values()
        )
        per_layer += tokens * held * branch * compute
    if cfg.gradient_checkpointing:  # layer inputs, and one layer's recomputed activations in backward
        parts["activations"] = arch.num_hidden_layers * tokens * arch.hidden_size * residual + per_layer
    else:
        parts["activations"] = arch.num_hidden_layers * per_layer
    parts["logits"] = tokens * arch.vocab_size * (compute + LOGIT_TRAIN_EXTRA)
    parts["overhead"] = OVERHEAD if gpu else HOST_BASELINE
    return Estimate(parts)


def scoring_estimate(
    arch: Arch,
    dtype: str,
    *,
    pairs: int,
    max_length: int,
    adapters: int = 0,
    lora_r: int = 8,
    generate: tuple[int, int] | None = None,
    gpu: bool = True,
) -> Estimate:
    """A job that scores ``pairs`` pairs per batch (both responses, one pass, no gradients), optionally with
    adapters, and optionally generates (``generate``: batch, new tokens) with a KV cache."""
    compute = DTYPE_BYTES[dtype]
    tokens = 2 * pairs * max_length
    parts = {"weights": arch.numel() * compute}
    if adapters:
        parts["adapters"] = adapters * arch.lora_numel(lora_r)[0] * 4
    scoring = tokens * (arch.hidden_size * compute * 2 + layer_activation_elements(arch) * compute)
    scoring += tokens * arch.vocab_size * (compute + LOGIT_SCORE_EXTRA)
    parts["activations and logits"] = scoring
    if generate:
        batch, new = generate
        cache = batch * (max_length + new) * arch.num_hidden_layers * 2 * arch.kv_dim * compute
        parts["activations and logits"] = max(scoring, cache + batch * arch.vocab_size * 4)
    parts["overhead"] = OVERHEAD if gpu else HOST_BASELINE
    return Estimate(parts)


def analysis_estimate(
    arch: Arch, rule: str, *, adapters: bool, lambdas: int = 1, sources: int = 2
) -> Estimate:
    """A streamed weight analysis on the host: a few float32 copies of the largest tensor it sees (an
    adapter's dense ΔW is at most the largest projection; a full model's, its embedding)."""
    largest = max(a * b for a, b in arch.linears().values()) if adapters else arch.largest_numel()
    copies = ANALYSIS_COPIES[rule] + (0.5 * (lambdas - 1) if rule == "merge_sft_dpo" else 0.0)
    if rule.startswith("conflict_"):
        copies += max(sources - 2, 0)
    parts = {"tensor buffers": int(copies * largest * 4), "overhead": HOST_BASELINE}
    if rule == "merge_sft_dpo":  # one output shard buffered per λ (a small model's shard is all of it)
        parts["output shards"] = lambdas * min(MERGE_SHARD_BYTES, arch.numel() * 4)
    return Estimate(parts)


def export_estimate(arch: Arch, dtype: str, *, adapters: int, lora_r: int) -> Estimate:
    """``export_policy`` on the host: the policy (the base in its dtype and float32 adapters), the combined
    factors, one merged tensor in float32 beside its source, and one output shard of the merged model."""
    numel, _ = arch.lora_numel(lora_r)
    largest = arch.largest_numel()
    parts = {
        "weights": arch.numel() * DTYPE_BYTES[dtype],
        "adapters": 2 * adapters * numel * 4,  # the adapters and their concatenation
        "tensor buffers": 3 * largest * 4,
        "output shard": min(MERGE_SHARD_BYTES, arch.numel() * DTYPE_BYTES[dtype]),
        "overhead": HOST_BASELINE,
    }
    return Estimate(parts)
