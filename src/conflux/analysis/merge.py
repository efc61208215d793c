"""Streamed model surgery: TIES / task-arithmetic merges, SFT+DPO combinations, layer and module reverts.

Each function walks the base model's tensors in order, computes one output tensor from the base tensor and
each source's τ of that parameter (:mod:`conflux.analysis.task_vectors`), hands it to a
:class:`conflux.analysis.sharded_writer.ShardedWriter` and forgets it. A merge's shards are planned from the
base's tensors, so each output tensor is written the moment it is made and no shard is held: memory stays at
about 1.25n + 6 float32 copies of the largest tensor for n sources (and the mapped stored tensors of the
parameter being merged), whatever the model size (mergekit's lazy-loader idea in a much smaller driver); a
revert holds one output shard (``max_shard_bytes``) besides. Measured for n = 2 bfloat16 checkpoints before
the compiled kernels and the planned writer: 8.1 copies, i.e. ~16 GB for Llama-3-8B's 128256 x 4096 embedding;
a λ grid (:func:`merge_lambda_grid`) adds half a copy per extra λ. The output directory is an ordinary Hugging
Face model (the base's config and tokenizer files plus safetensors shards) that
``AutoModelForCausalLM.from_pretrained`` loads without conflux, written atomically, with a
``conflux_merge.json`` / ``conflux_revert.json`` that records what was done.

The merge math is :func:`conflux.analysis.ties.ties` / :func:`conflux.analysis.ties.task_arithmetic`
(mergekit's conventions, computed in float32), run by the in-place kernels of
:mod:`conflux.analysis.merge_kernels` (bitwise the same results); the output is ``(θ_base + merged τ)`` cast
to the base tensor's dtype, as mergekit writes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from conflux.analysis import native
from conflux.analysis.merge_kernels import (
    MergeBuffers,
    magnitude_cut,
    task_arithmetic_in_place,
    ties_in_place,
)
from conflux.analysis.param_names import MODULE_TYPES, parse_param_name
from conflux.analysis.sharded_writer import DEFAULT_SHARD_BYTES, ShardedWriter
from conflux.analysis.task_vectors import FullTaskVectors, TaskVectors, open_task_vectors
from conflux.analysis.tensor_io import ScratchBuffer, WeightFiles, copy_side_files
from conflux.analysis.ties import trim_k
from conflux.atomic import atomic_path
from conflux.errors import ConfluxError, DataError
from conflux.progress import with_progress

log = logging.getLogger(__name__)

METHODS = ("ties", "task_arithmetic")
MERGE_RECORD = "conflux_merge.json"
REVERT_RECORD = "conflux_revert.json"


def _check_sources(base: WeightFiles, sources: Sequence[TaskVectors]) -> None:
    for source in sources:
        for name in source.names:
            if name not in base:
                raise DataError(
                    f"{source.label} changes {name}, which the base lacks",
                    file=base.path,
                    row=name,
                    field="tensor",
                )
            if source.shape(name) != base.shape(name):
                msg = f"{source.label} has shape {source.shape(name)} for {name}, the base {base.shape(name)}"
                raise DataError(msg, file=base.file(name), row=name, field="shape")


def _fill_row(
    row: torch.Tensor,
    source: TaskVectors,
    name: str,
    changed: frozenset[str],
    method: str,
    density: float,
    buffers: MergeBuffers,
) -> tuple[float, int, int] | None:
    """Write one source's τ of ``name`` into ``row``; for a TIES merge of a full fine-tune stored in bf16 or
    float32, also its trim cut, from the same compiled pass over the mapped files (None: found later)."""
    if name not in changed:
        row.zero_()
        return None
    k = trim_k(row.numel(), density)
    kinds = native.KINDS
    if (
        method == "ties"
        and k < row.numel()
        and native.load() is not None
        and isinstance(source, FullTaskVectors)
        and source.model.dtype(name) in kinds
        and source.base.dtype(name) in kinds
    ):
        with source.stored(name) as (theta, base):
            return magnitude_cut(theta, k, buffers, b=base, out=row)
    source.tau(name, out=row)
    return None


def merge_task_vectors(
    base_dir: str | Path,
    sources: Sequence[TaskVectors],
    out_dir: str | Path,
    *,
    method: str = "ties",
    weights: Sequence[float] | None = None,
    lam: float = 1.0,
    density: float,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> Path:
    """Write θ_base + λ·merge(τ_1..τ_n) as a loadable model directory, one tensor at a time.

    Args:
        base_dir: The base model directory (its config and tokenizer files are copied).
        sources: Task vectors against that base (full fine-tunes, LoRA adapters, policies at w).
        out_dir: Output model directory (replaced if it exists; written atomically).
        method: ``ties`` (trim to ``density``, elect, disjoint mean, λ) or ``task_arithmetic`` (λ Σ w_i τ_i).
        weights: w_i per source; default all 1.
        lam: λ, the scale of the merged task vector.
        density: TIES trim density (ignored by task arithmetic).
        max_shard_bytes: Largest output shard.
        progress: Show a tqdm bar.

    Returns:
        ``out_dir`` as a Path.
    """
    (out,) = merge_lambda_grid(
        base_dir,
        sources,
        {lam: out_dir},
        method=method,
        weights=weights,
        density=density,
        max_shard_bytes=max_shard_bytes,
        progress=progress,
    )
    return out


def merge_lambda_grid(
    base_dir: str | Path,
    sources: Sequence[TaskVectors],
    outputs: Mapping[float, str | Path],
    *,
    method: str = "ties",
    weights: Sequence[float] | None = None,
    density: float,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = False,
) -> list[Path]:
    """θ_base + λ·merge(τ_1..τ_n) for each λ of ``outputs`` (λ -> model directory), merging each tensor once.

    λ only scales the merged task vector, so a grid of λ costs one merge (reads, trim, election) plus a
    scaled add per λ; each output equals :func:`merge_task_vectors` at that λ bit for bit. All outputs are
    written atomically: a failure leaves none of them.
    """
    if method not in METHODS:
        raise ConfluxError(f"merge method must be one of {METHODS}, got {method!r}")
    if not sources:
        raise ConfluxError("a merge needs at least one task-vector source")
    if not outputs:
        raise ConfluxError("a merge needs at least one (λ, output directory)")
    w = [1.0] * len(sources) if weights is None else [float(x) for x in weights]
    if len(w) != len(sources):
        raise ConfluxError(f"{len(w)} weights for {len(sources)} sources")
    trim_k(1, density)
    base = WeightFiles(base_dir)
    _check_sources(base, sources)
    changes = [frozenset(s.names) for s in sources]
    buffers = MergeBuffers(len(sources))
    grid = [(float(lam), Path(out)) for lam, out in outputs.items()]
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(out, directory=True)) for _, out in grid]
        # Streamed: every output tensor has the base's name, shape and dtype, so the shards are known upfront
        # and each tensor is written when it is made (no shard held in memory, θ's buffer reused).
        plan = [(name, base.shape(name), base.dtype(name)) for name in base.names]
        writers = [ShardedWriter(tmp, max_shard_bytes, plan) for tmp in tmps]
        theta_buffer = ScratchBuffer(torch.uint8)
        names = with_progress(base.names, desc=f"{method} merge", unit="tensor") if progress else base.names
        for name in names:
            nbytes, dtype = base.nbytes(name), base.dtype(name)
            theta = base.read_into(name, 0, theta_buffer.take(nbytes).view(dtype)).view(base.shape(name))
            if not (any(name in c for c in changes) and theta.is_floating_point()):
                for writer in writers:
                    writer.add(name, theta)
                continue
            taus = buffers.stack(theta.numel())
            cuts = []
            for row, source, changed in zip(taus, sources, changes, strict=True):
                cuts.append(_fill_row(row, source, name, changed, method, density, buffers))
            if method == "ties":
                merged = ties_in_place(taus, w, density, 1.0, buffers, cuts)  # × 1.0 is exact; λ comes below
            else:
                merged = task_arithmetic_in_place(taus, w, 1.0, buffers)
            for i, ((lam, _), writer) in enumerate(zip(grid, writers, strict=True)):
                # the kernels' last step, λ·m in float32, then θ + λm (θ widened exactly) cast to θ's dtype
                scaled = torch.mul(merged, lam, out=buffers.entry(0, merged.numel())).view(theta.shape)
                if theta.dtype != torch.float32:
                    writer.add(name, scaled.add_(theta).to(theta.dtype))
                elif i == len(grid) - 1:
                    writer.add(name, theta.add_(scaled))  # θ's buffer is ours to modify
                else:
                    writer.add(name, theta + scaled)
        for (lam, _), writer, tmp in zip(grid, writers, tmps, strict=True):
            writer.close()
            copy_side_files(base_dir, tmp)
            record = {
                "method": method,
                "sources": [s.label for s in sources],
                "weights": w,
                "lambda": lam,
                "density": density if method == "ties" else None,
                "base": str(base_dir),
            }
            (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("%s merge of %s -> %s", method, [s.label for s in sources], [str(out) for _, out in grid])
    return [out for _, out in grid]


def merge_sft_dpo(
    base_dir: str | Path,
    sft_dir: str | Path,
    dpo_dir: str | Path,
    outputs: Mapping[float, str | Path],
    *,
    method: str = "ties",
    density: float,
    weights: tuple[float, float] = (1.0, 1.0),
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[Path]:
    """The SFT+DPO λ grid: θ_base + λ·merge(τ_SFT, τ_DPO) per λ of ``outputs`` (λ -> model directory).

    ``sft_dir`` and ``dpo_dir`` are full fine-tune model directories or LoRA adapter directories, both trained
    from ``base_dir``. With ``task_arithmetic`` this is θ_base + λ(w_SFT τ_SFT + w_DPO τ_DPO); with ``ties``
    the TIES merge of the two (at λ = 1 and unit weights: their mean where they agree, the agreeing one where
    one is trimmed away). The two are merged once for the whole grid (:func:`merge_lambda_grid`).
    """
    sources = [
        open_task_vectors(sft_dir, base_dir, label="sft"),
        open_task_vectors(dpo_dir, base_dir, label="dpo"),
    ]
    return merge_lambda_grid(
        base_dir,
        sources,
        outputs,
        method=method,
        weights=weights,
        density=density,
        max_shard_bytes=max_shard_bytes,
        progress=True,
    )


def revert_selection(
    names: Sequence[str], *, layers: Collection[int] | None = None, modules: Collection[str] | None = None
) -> list[str]:
    """The parameter names in the given layers and of the given module types (both filters apply)."""
    if layers is None and modules is None:
        raise ConfluxError("a revert needs layers, modules or both")
    unknown = set(modules or ()) - set(MODULE_TYPES)
    if unknown:
        raise ConfluxError(f"unknown module types {sorted(unknown)}; known: {MODULE_TYPES}")
    chosen = []
    for name in names:
        layer, module = parse_param_name(name)
        if (layers is None or layer in layers) and (modules is None or module in modules):
            chosen.append(name)
    return chosen


def revert_to_base(
    model: str | Path | TaskVectors,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    layers: Collection[int] | None = None,
    modules: Collection[str] | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[str]:
    """Write a copy of a fine-tuned model whose chosen parameters are set back to the base's, streamed.

    Args:
        model: A full fine-tune directory (its tensors are copied byte for byte, its config and tokenizer
            files too), or any task-vector source such as a LoRA adapter or a policy at w (then the output
            is θ_base + τ, i.e. the merged adapter, with τ = 0 on the chosen parameters).
        base_dir: The base model directory.
        out_dir: Output model directory (written atomically).
        layers: Layer indices to revert (e.g. ``[3]``); ``None`` = every layer and the non-layer parameters.
        modules: Module types to revert (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``, ``embed``,
            ``norm``, ``lm_head``); ``None`` = every module type. Both given: their intersection.

    Returns:
        The reverted parameter names (also in ``conflux_revert.json`` in the output).
    """
    if isinstance(model, str | Path) and not (Path(model) / "adapter_config.json").is_file():
        source: TaskVectors = FullTaskVectors(model, base_dir)
        side_dir: Path = Path(model)
    else:
        source = model if not isinstance(model, str | Path) else open_task_vectors(model, base_dir)
        side_dir = Path(base_dir)
    base = WeightFiles(base_dir)
    _check_sources(base, [source])
    chosen = revert_selection(base.names, layers=layers, modules=modules)
    if not chosen:
        raise ConfluxError(f"no parameter of {base_dir} is in layers {layers} and modules {modules}")
    reverted = set(chosen)
    changed = set(source.names)
    record: dict[str, Any] = {"model": source.label, "reverted": chosen}
    record["layers"] = sorted(layers) if layers is not None else None
    record["modules"] = sorted(modules) if modules is not None else None
    with atomic_path(out_dir, directory=True) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes)
        for name in base.names:
            if isinstance(source, FullTaskVectors):
                theta = source.model.get(name)
                if name in reverted:
                    theta = base.get(name).to(theta.dtype)
            else:
                theta = base.get(name)
                if name in changed and name not in reverted:
                    theta = (theta.to(torch.float32) + source.tau(name)).to(theta.dtype)
            writer.add(name, theta)
        writer.close()
        copy_side_files(side_dir, tmp)
        (tmp / REVERT_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log.info("reverted %d parameters of %s -> %s", len(chosen), source.label, out_dir)
    return chosen
