"""Per-pair evaluation records: the implicit-reward margin of one trained method and seed at each weight w.

Every table and figure of the curriculum study is an aggregate of these records, so they are computed once
per (method, seed) and kept as a long Parquet table, one row per (w, pair):

``method, seed, pair_id, w0..w{k-1}, d0..d{k-1}, label, margin, logp_a, logp_b, ref_logp_a, ref_logp_b,
len_a, len_b``

with d = s_a − s_b (the pair's score difference, which tells which dimension pairs it conflicts on),
label = sign(w·s_a − w·s_b) (+1: a is better under w, −1: b, 0: a tie, dropped and counted by the tables)
and margin = r_w(y_a) − r_w(y_b) = β[(log π(y_a; w) − log π_ref(y_a)) − (log π(y_b; w) − log π_ref(y_b))].
``len_a``/``len_b`` count the response tokens the log-probs sum over (after truncation, eos included): the
length-bias analysis (:mod:`conflux.evaluation.length_bias`) reads them. The Parquet metadata holds the
dimension names, β and where the inputs came from.

Which (w, pair) rows are computed (:func:`evaluation_plan`): each unit weight 1_i on every pair of the file
(Table 1, and the end points of Figure 2), and each mixed weight of a dimension pair (a, b) only on the pairs
where a and b prefer opposite responses (Table 2's settings), so nothing is scored that no table reads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from conflux.atomic import atomic_path
from conflux.data.pairs import PairTable, read_pairs
from conflux.data.split import dim_pair_conflict
from conflux.errors import ConfluxError, DataError
from conflux.progress import with_progress

if TYPE_CHECKING:
    from conflux.modeling.policy import PreferencePolicy
    from conflux.modeling.tokenize import TokenizeSettings

log = logging.getLogger(__name__)

Weight = tuple[float, ...]
# (w_a, w_b) on a dimension pair (a, b), every other dimension at 0: the five weights of the paper's Table 2.
WEIGHT_GRID: tuple[tuple[float, float], ...] = (
    (1.0, 0.0),
    (0.75, 0.25),
    (0.5, 0.5),
    (0.25, 0.75),
    (0.0, 1.0),
)
_META_KEY = b"conflux_eval"


def w_columns(k: int) -> list[str]:
    return [f"w{i}" for i in range(k)]


def d_columns(k: int) -> list[str]:
    return [f"d{i}" for i in range(k)]


# ---- weights and labels ------------------------------------------------------------------------------------


def unit_weight(k: int, i: int) -> Weight:
    """1_i: only dimension i's adapter on."""
    return tuple(1.0 if j == i else 0.0 for j in range(k))


def pair_weight(k: int, a: int, b: int, w_a: float, w_b: float) -> Weight:
    """w_a on dimension a, w_b on dimension b, 0 elsewhere."""
    w = [0.0] * k
    w[a], w[b] = float(w_a), float(w_b)
    return tuple(w)


def weighted_labels(scores_a: np.ndarray, scores_b: np.ndarray, w: Sequence[float]) -> np.ndarray:
    """sign(w·s_a − w·s_b) per pair as int8: the response preferred under weight w, 0 for a tie."""
    wv = np.asarray(w, dtype=np.float64)
    return np.sign(scores_a.astype(np.float64) @ wv - scores_b.astype(np.float64) @ wv).astype(np.int8)


def evaluation_plan(
    scores_a: np.ndarray, scores_b: np.ndarray, grid: Sequence[tuple[float, float]] = WEIGHT_GRID
) -> list[tuple[Weight, np.ndarray]]:
    """(w, pair indices) to score: each 1_i on all pairs, each mixed grid weight on its dim pair's conflicts.

    A grid weight with a single nonzero entry (such as (1, 0)) weighs one dimension, like 1_i, and is scored
    on every pair; one with two nonzero entries only on the pairs where its two dimensions conflict.
    """
    n, k = scores_a.shape
    everything = np.arange(n)
    plan: dict[Weight, np.ndarray] = {unit_weight(k, i): everything for i in range(k)}
    d = scores_a.astype(np.float64) - scores_b.astype(np.float64)
    for a, b in combinations(range(k), 2):
        conflict = np.flatnonzero(dim_pair_conflict(d, a, b))
        for w_a, w_b in grid:
            w = pair_weight(k, a, b, w_a, w_b)
            nonzero = (w_a != 0.0) + (w_b != 0.0)
            if nonzero == 1:
                plan[w] = everything
            elif nonzero == 2:
                plan[w] = np.union1d(plan.get(w, conflict), conflict)
    return list(plan.items())


# ---- the record table --------------------------------------------------------------------------------------


def records_frame(
    *,
    method: str,
    seed: int,
    pair_ids: Sequence[str],
    w: Sequence[float],
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    margins: np.ndarray,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Records of one weight w: labels from the scores, margins as given (from a model, or set by hand)."""
    k = len(w)
    n = len(pair_ids)
    frame = pd.DataFrame(
        {"method": [method] * n, "seed": np.full(n, seed, dtype=np.int64), "pair_id": pair_ids}
    )
    for col, value in zip(w_columns(k), w, strict=True):
        frame[col] = np.full(n, float(value))
    d = np.asarray(scores_a, dtype=np.float64) - np.asarray(scores_b, dtype=np.float64)
    for i, col in enumerate(d_columns(k)):
        frame[col] = d[:, i]
    frame["label"] = weighted_labels(np.asarray(scores_a), np.asarray(scores_b), w)
    frame["margin"] = np.asarray(margins, dtype=np.float64)
    for name, values in (extra or {}).items():
        frame[name] = np.asarray(values, dtype=np.float64)
    return frame


def write_records(path: str | Path, frame: pd.DataFrame, meta: dict) -> None:
    """Write records to Parquet atomically, with ``meta`` (dims, β, inputs) in the file metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_records(paths: Sequence[str | Path]) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """All records files of a table (every method and seed) as one frame, and their common dimensions.

    Fails naming the file when its dimensions differ from the first file's, or when a (method, seed) comes
    twice (two files for one run would be averaged as if they were two seeds).
    """
    frames, dims, seen = [], None, {}
    for path in paths:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        if "dims" not in meta:
            raise DataError("no conflux evaluation metadata", file=path, row="header", field="dims")
        file_dims = tuple(meta["dims"])
        if dims is not None and file_dims != dims:
            raise DataError(
                f"dimensions {list(file_dims)} differ from {list(dims)}",
                file=path,
                row="header",
                field="dims",
            )
        dims = file_dims
        frame = table.to_pandas()
        for key in frame[["method", "seed"]].drop_duplicates().itertuples(index=False):
            if tuple(key) in seen:
                raise DataError(
                    f"method {key[0]!r} seed {key[1]} is also in {seen[tuple(key)]}",
                    file=path,
                    row="all",
                    field="method",
                )
            seen[tuple(key)] = str(path)
        frames.append(frame)
    if not frames:
        raise ConfluxError("no evaluation records files given")
    return pd.concat(frames, ignore_index=True), dims


# ---- evaluation --------------------------------------------------------------------------------------------


def evaluate_policy(
    policy: PreferencePolicy,
    tokenizer,
    pairs: PairTable,
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    plan: Sequence[tuple[Weight, np.ndarray]],
    settings: TokenizeSettings,
    beta: float,
    *,
    method: str,
    seed: int,
    batch_size: int = 32,
    length_control: tuple[str, float] = ("none", 0.0),
) -> pd.DataFrame:
    """Records of ``policy`` at every (w, pair indices) of ``plan``; ``ref_*`` are in the pairs' order.
    ``length_control``: the method's (control, α), which its margins use as its losses did."""
    # torch and the model code load here, not with the module: the table and figure jobs read records only
    from conflux.evaluation.implicit_reward import implicit_reward_margin, rows_logps
    from conflux.modeling.tokenize import encode_pairs, pad_id_of

    if policy.k != pairs.k:
        raise ConfluxError(f"the policy has k={policy.k} dimension adapters, the pairs have k={pairs.k}")
    s_a, s_b = pairs.scores()
    ids = np.asarray(pairs.table.column("pair_id").to_pylist(), dtype=object)
    rows_a, rows_b, _ = encode_pairs(tokenizer, pairs, settings)  # once: every w scores the same rows
    pad_id = pad_id_of(tokenizer)
    len_a = np.array([len(response) for _, response in rows_a], dtype=np.float64)
    len_b = np.array([len(response) for _, response in rows_b], dtype=np.float64)
    frames = []
    for w, idx in with_progress(plan, desc=f"evaluate {method} seed {seed}", unit="weight"):
        if len(idx) == 0:
            continue
        logp_a, logp_b = rows_logps(policy, [rows_a[i] for i in idx], [rows_b[i] for i in idx], w, pad_id,
                                    batch_size=batch_size)  # fmt: skip
        length = (*length_control, len_a[idx], len_b[idx])
        margins = implicit_reward_margin(logp_a, logp_b, ref_a[idx], ref_b[idx], beta, length=length)
        extra = {"logp_a": logp_a, "logp_b": logp_b, "ref_logp_a": ref_a[idx], "ref_logp_b": ref_b[idx],
                 "len_a": len_a[idx], "len_b": len_b[idx]}  # fmt: skip
        frames.append(
            records_frame(
                method=method,
                seed=seed,
                pair_ids=list(ids[idx]),
                w=w,
                scores_a=s_a[idx],
                scores_b=s_b[idx],
                margins=margins,
                extra=extra,
            )
        )
    if not frames:
        raise ConfluxError("the evaluation plan scores no pair")
    return pd.concat(frames, ignore_index=True)


def evaluate_method_job(
    *,
    method: str,
    seed: int,
    run_dirs: Sequence[str | Path],
    manifest: str | Path,
    pairs: str | Path,
    references: Sequence[str | Path],
    out: str | Path,
    settings: TokenizeSettings,
    weights: Sequence[Sequence[float]] | None = None,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Evaluate one trained method and seed on a held-out pair file and write its records file.

    Args:
        method: name shown in the tables (e.g. ``curriculum_stage3``, ``panacea``, ``dpo_soup``).
        run_dirs: the method's training outputs: one directory, or DPO-Soup's k ``dim<i>`` directories.
        manifest: the base model's manifest; the reference is this model without adapters.
        pairs, references: held-out pairs (``eval_conflict``) and their cached reference log-probs.
        settings: the tokenization the reference cache was computed with (checked against its metadata).
        weights: score exactly these w on every pair; default: :func:`evaluation_plan` over ``grid``.
    """
    frames = evaluate_methods_job(
        runs={method: run_dirs},
        outs={method: out},
        seed=seed,
        manifest=manifest,
        pairs=pairs,
        references=references,
        settings=settings,
        weights=weights,
        grid=grid,
        batch_size=batch_size,
    )
    return frames[method]


def evaluate_methods_job(
    *,
    runs: Mapping[str, Sequence[str | Path]],
    outs: Mapping[str, str | Path],
    seed: int,
    manifest: str | Path,
    pairs: str | Path,
    references: Sequence[str | Path],
    settings: TokenizeSettings,
    weights: Sequence[Sequence[float]] | None = None,
    grid: Sequence[tuple[float, float]] = WEIGHT_GRID,
    batch_size: int = 32,
) -> dict[str, pd.DataFrame]:
    """Rule ``evaluate_method``: every method of one (model, dataset, seed), each to its own records file.

    One job for all of them because a job's start-up (torch, transformers and PEFT imports, ~4 s of CPU)
    outweighs scoring one method on the tiny default several times over, and on a GPU node the pairs and
    their reference log-probs are read once. Each method is scored on a freshly loaded base model, so no
    method sees another's adapters: the records equal :func:`evaluate_method_job`'s, method by method.

    Args:
        runs: per method name, its training outputs (see :func:`evaluate_method_job`'s ``run_dirs``).
        outs: per method name, the records file to write (every method of ``runs``).
    """
    from conflux.evaluation.implicit_reward import run_beta, run_length_control
    from conflux.modeling.base_model import load_base_model, to_work_device, working_dtype
    from conflux.modeling.policy import load_method_policy
    from conflux.training.reference import read_reference

    if set(runs) != set(outs):
        raise ConfluxError(f"methods to evaluate {sorted(runs)} and records to write {sorted(outs)} differ")
    pair_table = read_pairs(pairs)
    ids = pair_table.table.column("pair_id").to_pylist()
    ref_a, ref_b = read_reference(references, settings, ids)
    if weights is None:
        s_a, s_b = pair_table.scores()
        plan = evaluation_plan(s_a, s_b, grid)
    else:
        plan = [(tuple(float(x) for x in w), np.arange(len(pair_table))) for w in weights]
    frames = {}
    for method, run_dirs in runs.items():
        beta = run_beta(run_dirs)
        control = run_length_control(run_dirs)
        model, tokenizer = load_base_model(manifest, dtype=working_dtype())
        policy = load_method_policy(to_work_device(model), run_dirs)
        frame = evaluate_policy(
            policy,
            tokenizer,
            pair_table,
            ref_a,
            ref_b,
            plan,
            settings,
            beta,
            method=method,
            seed=seed,
            batch_size=batch_size,
            length_control=control,
        )
        meta = {
            "dims": list(pair_table.dims),
            "method": method,
            "seed": seed,
            "beta": beta,
            "length_control": list(control),
            "pairs": str(pairs),
            "references": [str(r) for r in references],
            "run_dirs": [str(r) for r in run_dirs],
            "adapters": list(policy.adapter_names),
            "max_length": settings.max_length,
            "truncation": settings.truncation,
            "grid": [list(g) for g in grid] if weights is None else None,
        }
        out = outs[method]
        write_records(out, frame, meta)
        log.info("%s seed %d: %d records (%d weights) -> %s", method, seed, len(frame), len(plan), out)
        frames[method] = frame
        del policy, model
    return frames


def table2_setting_counts(
    scores_a: np.ndarray, scores_b: np.ndarray, grid: Sequence[tuple[float, float]] = WEIGHT_GRID
) -> dict[tuple[int, int, float, float], int]:
    """Pairs each Table 2 setting (dim a, dim b, w_a, w_b) is judged on: the pairs where a and b prefer
    opposite responses, less the ties under w. Lets a config be checked for empty settings before training."""
    d = scores_a.astype(np.float64) - scores_b.astype(np.float64)
    k = d.shape[1]
    counts = {}
    for a, b in combinations(range(k), 2):
        opposed = dim_pair_conflict(d, a, b)
        for w_a, w_b in grid:
            labels = weighted_labels(scores_a[opposed], scores_b[opposed], pair_weight(k, a, b, w_a, w_b))
            counts[(a, b, w_a, w_b)] = int((labels != 0).sum())
    return counts
