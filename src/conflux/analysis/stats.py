"""Per-parameter statistics of a task vector, streamed to Parquet: where does fine-tuning move the weights?

One row per (model, parameter) with the parameter name parsed into its layer index (null for embeddings, the
final norm and the head) and module type (q/k/v/o/gate/up/down/embed/norm/lm_head, ``other`` for anything
else), so a layer × module heatmap is one ``pivot_table`` away. Columns:

- ``numel``, ``l2`` = ‖τ‖₂, ``mean``, ``std`` (population, ddof 0), ``max_abs`` = max|τ|,
  ``frac_positive`` (τ > 0), ``frac_zero`` (τ = 0: untouched or frozen entries);
- the TIES trim at ``density`` (default 0.2, k = max(1, int(density·numel)) as in
  :func:`conflux.analysis.ties.trim_top_k`): ``trim_threshold`` (the k-th largest |τ|), ``frac_above_trim``
  (share of entries the trim keeps *and* that are nonzero: ≈ density for a dense τ, less when most of τ is 0)
  and ``trim_l2_share`` = ‖trim(τ)‖₂ / ‖τ‖₂ (how much of the update the top-k entries carry).

Everything is computed in float32 from the stored values, two parameters at a time in two threads when the job
has two cores (one being read while the other is analysed). A full fine-tune stored in bf16 or float32 is
analysed by one fused compiled pass (:mod:`conflux.analysis.native`) over both stored tensors, which widens
and subtracts as it goes, so τ is never written out and each entry is touched once: on bf16 that keeps the
statistics at ~0.95 of the raw read rate with two threads (bench/taskvec.py, load ~2). Other sources (LoRA,
policies at w, fp16) give their float32 τ to the same pass; where no C compiler exists the numpy pass below
computes the same values ~3x slower. Peak memory, whatever the model size, is per thread the two stored
tensors being read (mapped: their pages count in RSS until the tensor is done) and a band of a few % of its
entries (a float32 copy of τ in the rare cases that need a second selection). Σ τ and Σ τ² are float32 partial
sums of 32-64 entries added in float64 (errors ≤ 1e-8 relative, see
test_each_statistic_error_against_float64); the trim threshold is exact: a strided sample brackets the k-th
largest |τ| and the pass keeps the few % of entries in that bracket, from which it is selected
(:class:`conflux.analysis.topk.StreamingTopK`'s idea), never by sorting or partitioning all of |τ|.
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conflux.analysis import native
from conflux.analysis.param_names import parse_param_name
from conflux.analysis.task_vectors import FullTaskVectors, TaskVectors
from conflux.analysis.tensor_io import ScratchBuffer, chunk_entries, thread_buffer
from conflux.analysis.ties import trim_k
from conflux.analysis.topk import SAMPLE, StreamingTopK, TopK, exact_top_k, kth_largest, sum_squares
from conflux.atomic import atomic_path
from conflux.errors import ConfluxError
from conflux.progress import with_progress
from conflux.threads import ordered_map

log = logging.getLogger(__name__)

CHUNK = 1 << 19  # most entries of τ per step of the statistics pass: a chunk and its |τ| stay in cache
# Sample for the fused pass's bracket: a band of ~5% of n costs the kernel nothing (it packs whole vectors),
# while selecting within a 2^15 sample cost 0.2 ms a tensor, a quarter of the kernel's own time.
FUSED_SAMPLE = 1 << 13

STATS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("param", pa.string()),
        ("layer", pa.int32()),
        ("module", pa.string()),
        ("numel", pa.int64()),
        ("l2", pa.float64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("max_abs", pa.float64()),
        ("frac_positive", pa.float64()),
        ("frac_zero", pa.float64()),
        ("trim_threshold", pa.float64()),
        ("frac_above_trim", pa.float64()),
        ("trim_l2_share", pa.float64()),
    ]
)


class _Sums(NamedTuple):
    total: float  # Σ τ
    squares: float  # Σ τ²
    positive: int  # entries > 0
    zero: int  # entries == 0 (either sign)


def _chunked_pass(flat: torch.Tensor, top: StreamingTopK) -> _Sums:
    """Σ τ, Σ τ², the sign counts, and |τ| fed to ``top``, in one pass over τ in chunks.

    Each chunk is read from memory once and stays in cache for the ~10 vectorised operations on it, where
    whole-tensor passes would each stream τ from memory again; each chunk's float32 sums are added in
    float64, which is also more accurate than one float32 reduction over 10⁷ entries.
    """
    n = flat.numel()
    step = chunk_entries(n, CHUNK)
    values = flat.numpy()
    magnitude_buffer = thread_buffer("magnitude", torch.float32).take(min(n, step)).numpy()
    mask_buffer = thread_buffer("mask", torch.bool).take(min(n, step)).numpy()
    total = squares = 0.0
    positive = zero = 0
    for start in range(0, n, step):
        chunk = values[start : start + step]
        mask = mask_buffer[: chunk.size]
        total += float(flat[start : start + chunk.size].sum())  # torch's cascade sum: 2x numpy's speed
        squares += sum_squares(chunk)
        positive += int(np.count_nonzero(np.greater(chunk, 0, out=mask)))
        magnitude = np.abs(chunk, out=magnitude_buffer[: chunk.size])
        if magnitude.min() == 0:  # most chunks of a float32 fine-tune have no exact zero: skip the count
            zero += int(np.count_nonzero(np.equal(chunk, 0, out=mask)))
        top.add(magnitude, mask)
    return _Sums(total, squares, positive, zero)


def _numpy_stats(flat: torch.Tensor, density: float, scratch: ScratchBuffer) -> dict[str, float]:
    """Statistics of a flat float32 τ (not modified) without the compiled kernel; ``scratch`` is taken for
    all of τ only in the rare cases that need a second pass (a full trim selection, a two-pass std)."""
    n = flat.numel()
    if n == 0:
        raise ConfluxError("empty tensor")
    k = trim_k(n, density)
    values = flat.numpy()
    top = StreamingTopK(np.abs(values[:: -(-n // SAMPLE)]), n, k)  # a stride: at most SAMPLE entries
    sums = _chunked_pass(flat, top)
    l2 = math.sqrt(sums.squares)
    if not math.isfinite(l2):  # NaN or inf entries: the caller reports them; no order statistic either
        return {"numel": n, "l2": l2} | dict.fromkeys(STATS_SCHEMA.names[6:], math.nan)
    trim = top.result(lambda: np.abs(values, out=scratch.take(n).numpy()))
    mean, mean_square = sums.total / n, sums.squares / n
    if mean * mean <= 1e-4 * mean_square:  # task vectors: mean ≈ 0, E[τ²] − mean² loses nothing
        std = math.sqrt(max(mean_square - mean * mean, 0.0))
    else:  # a second pass, ‖τ − mean‖, where the one-pass formula would cancel
        # blocked float32 dots added in float64: torch's float32 vector_norm erred by ~3e-5 relative here
        std = math.sqrt(sum_squares(torch.sub(flat, mean, out=scratch.take(n)).numpy()) / n)
    return _row(n, density, l2, mean, std, sums.positive, sums.zero, trim)


def _fused_stats(a: torch.Tensor, b: torch.Tensor | None, density: float) -> dict[str, float]:
    """Statistics of τ = a − b (τ = a without b; flat, dtypes of :data:`native.KINDS`) by the fused kernel.

    A strided sample of τ brackets the trim threshold ([lo, hi], as :class:`StreamingTopK` places it); the
    pass counts the entries above hi with their Σ τ² and keeps those in the bracket, a few % of n, where the
    threshold is then selected. A sample that misled, or a band too large for its buffer, costs a second,
    exact selection over all of |τ|, never a wrong value.
    """
    n = a.numel()
    if n == 0:
        raise ConfluxError("empty tensor")
    k = trim_k(n, density)
    stride = -(-n // FUSED_SAMPLE)
    sample = a[::stride].to(torch.float32, copy=True)  # a copy: it becomes |τ| in place, a stays as is
    if b is not None:
        sample.sub_(b[::stride])
    magnitudes = sample.abs_().numpy()
    top = StreamingTopK(magnitudes, n, k)
    lo, hi = (top.lo, top.hi) if top.active else (math.inf, math.inf)
    in_band = np.count_nonzero((magnitudes >= lo) & (magnitudes <= hi)) / max(magnitudes.size, 1)
    capacity = min(n, int(n * in_band * 1.5) + 4096)  # the sample's share, with room for its error
    band = thread_buffer("band", torch.float32).take(capacity + native.SPILL)
    sums = native.tau_pass(a, b, shift=0.0, lo=lo, hi=hi, band=band)
    l2 = math.sqrt(sums.sum_squares)
    if not math.isfinite(l2):  # NaN or inf entries: the caller reports them; no order statistic either
        return {"numel": n, "l2": l2} | dict.fromkeys(STATS_SCHEMA.names[6:], math.nan)
    if top.active and sums.band <= capacity and sums.above < k <= sums.above + sums.band:
        # Fewer than k entries are above hi, so all are among the k largest; the rest are the band's largest.
        kept = band[: sums.band]
        need = k - sums.above
        threshold = kth_largest(kept.numpy(), need, top.guess)
        # Σ x² of the band's entries above the threshold: the kernel again, on the band (no band of its own)
        greater = native.tau_pass(
            kept, None, shift=0.0, lo=math.inf, hi=threshold, band=torch.empty(native.SPILL)
        )
        top_squares = sums.above_squares + greater.above_squares + (need - greater.above) * threshold**2
        trim = TopK(threshold, sums.max_abs, top_squares)
    else:
        whole = thread_buffer("whole", torch.float32).take(n)
        (whole.copy_(a) if b is None else whole.copy_(a).sub_(b)).abs_()
        trim = exact_top_k(whole.numpy(), k, top.guess)
    mean, mean_square = sums.sum / n, sums.sum_squares / n
    if mean * mean <= 1e-4 * mean_square:  # task vectors: mean ≈ 0, E[τ²] − mean² loses nothing
        std = math.sqrt(max(mean_square - mean * mean, 0.0))
    else:  # a second pass around the mean, where the one-pass formula would cancel (no band: a spill buffer)
        shift = float(np.float32(mean))
        centred = native.tau_pass(a, b, shift=shift, lo=math.inf, hi=math.inf, band=torch.empty(native.SPILL))
        mean = shift + centred.sum / n
        std = math.sqrt(max(centred.sum_squares / n - (centred.sum / n) ** 2, 0.0))
    return _row(n, density, l2, mean, std, sums.positive, sums.zero, trim)


def _row(
    n: int, density: float, l2: float, mean: float, std: float, positive: int, zero: int, trim: TopK
) -> dict[str, float]:
    """The statistics columns of one τ from its sums, counts and trim selection."""
    k = trim_k(n, density)
    return {
        "numel": n,
        "l2": l2,
        "mean": mean,
        "std": std,
        "max_abs": trim.largest,
        "frac_positive": positive / n,
        "frac_zero": zero / n,
        "trim_threshold": trim.threshold,
        # zeros are the smallest |τ|: kept only when k > nonzero
        "frac_above_trim": min(k, n - zero) / n,
        "trim_l2_share": math.sqrt(trim.sum_squares) / l2 if l2 > 0 else 0.0,
    }


def tensor_stats(tau: torch.Tensor, *, density: float) -> dict[str, float]:
    """The statistics of one task vector (see the module docstring); ``tau`` is not modified."""
    flat = tau.detach().to(torch.float32, copy=True).reshape(-1)
    if native.load() is not None:
        return _fused_stats(flat, None, density)
    return _numpy_stats(flat, density, ScratchBuffer())


def task_vector_stats(
    tv: TaskVectors,
    *,
    model: str | None = None,
    density: float,
    progress: bool = False,
) -> pd.DataFrame:
    """Statistics of every parameter ``tv`` changes, two τ at a time (see the module docstring).

    Args:
        tv: Task-vector source (:class:`conflux.analysis.task_vectors.FullTaskVectors`, a LoRA adapter, a
        policy at w). model: Value of the ``model`` column (default ``tv.label``).
        density: Trim density for the ``trim_*`` columns.
        progress: Show a tqdm bar.

    Returns:
        One row per parameter with the columns of ``STATS_SCHEMA``.
    """
    trim_k(1, density)  # fail on a bad density before reading anything
    label = model or tv.label
    names = tv.names
    local = threading.local()  # each worker thread's τ buffer and scratch, reused from tensor to tensor

    fused = native.load() is not None

    def one(seq: int) -> dict[str, Any]:
        if not hasattr(local, "tau"):
            local.tau, local.scratch = ScratchBuffer(), ScratchBuffer()
        name = names[seq]
        if fused and isinstance(tv, FullTaskVectors) and _kernel_reads(tv, name):
            with tv.stored(name) as (theta, base):
                stats = _fused_stats(theta, base, density)
        else:
            flat = tv.tau(name, out=local.tau.take(math.prod(tv.shape(name)))).reshape(-1)
            stats = _fused_stats(flat, None, density) if fused else _numpy_stats(flat, density, local.scratch)
        if not math.isfinite(stats["l2"]):
            raise ConfluxError(f"{label}: task vector of {name} has non-finite entries (NaN or inf)")
        layer, module = parse_param_name(name)
        return {"model": label, "param": name, "layer": layer, "module": module, **stats}

    # Two tensors at a time (one being read while the other is analysed; memory: two τ buffers) when the job
    # may use two cores: torch's thread count is the rule's threads (workflow/_bootstrap), so a job granted
    # one CPU stays on one.
    workers = max(1, min(2, torch.get_num_threads()))
    with closing(ordered_map(one, range(len(names)), workers)) as results:
        rows = list(with_progress(results, desc=f"stats {label}", total=len(names)) if progress else results)
    return to_frame(rows, STATS_SCHEMA)


def _kernel_reads(tv: FullTaskVectors, name: str) -> bool:
    """Whether the fused kernel reads both stored tensors of ``name`` as they are (bf16 or float32)."""
    return tv.model.dtype(name) in native.KINDS and tv.base.dtype(name) in native.KINDS


def write_task_vector_stats(
    tv: TaskVectors,
    out: str | Path,
    *,
    model: str | None = None,
    density: float,
    progress: bool = False,
) -> pd.DataFrame:
    """:func:`task_vector_stats` written atomically to the Parquet file ``out`` (density in its metadata)."""
    frame = task_vector_stats(tv, model=model, density=density, progress=progress)
    write_frame(frame, out, STATS_SCHEMA, {"density": density, "model": model or tv.label})
    log.info("task-vector stats of %s: %d parameters -> %s", model or tv.label, len(frame), out)
    return frame


def to_frame(rows: list[dict[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    """Rows as a DataFrame with the schema's types; ``layer`` stays an integer column with nulls (Int32)."""
    return pa.Table.from_pylist(rows, schema=schema).to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)


def write_frame(frame: pd.DataFrame, out: str | Path, schema: pa.Schema, meta: dict[str, Any]) -> None:
    """Write a table with a fixed schema and ``conflux.*`` key-value metadata to Parquet, atomically."""
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    extra = {f"conflux.{k}".encode(): str(v).encode() for k, v in meta.items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
