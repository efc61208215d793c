"""Conflict-Limited L2 tables per parameter: pairs of sources and a set against its elected sign."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conflux.analysis.conflict_norm import pairwise_conflict
from conflux.analysis.conflict_tables import (
    elected_conflict_table,
    pairwise_conflict_table,
    write_conflict_table,
)
from conflux.analysis.task_vectors import FullTaskVectors
from conflux.errors import ConfluxError
from weight_checkpoints import TensorTaskVectors, perturbed, tiny_llama

P = "model.layers.2.mlp.up_proj.weight"
# Three task vectors of one 4-entry parameter, no trim (density 1):
#   col 0: 1, -1, 2  -> the set conflicts     col 1: -2, 1, 0 -> conflicts
#   col 2: 0, 2, 1   -> no conflict           col 3: 3, 1, 1  -> no conflict
T1 = torch.tensor([1.0, -2.0, 0.0, 3.0])
T2 = torch.tensor([-1.0, 1.0, 2.0, 1.0])
T3 = torch.tensor([2.0, 0.0, 1.0, 1.0])


def sources() -> dict[str, TensorTaskVectors]:
    return {name: TensorTaskVectors(name, {P: t}) for name, t in (("t1", T1), ("t2", T2), ("t3", T3))}


def test_elected_conflict_hand_example() -> None:
    # Unit weights: sums [2, -1, 3, 5] elect [+, -, +, +]; only t2 disagrees (cols 0 and 1).
    table = elected_conflict_table(sources(), density=1.0).set_index("source")
    assert table.loc["t1", "l2"] == pytest.approx(math.sqrt(14))
    assert table.loc["t1", "cl_l2_set"] == pytest.approx(math.sqrt(5))  # cols 0, 1 of t1: 1, -2
    assert table.loc["t1", "share_set"] == pytest.approx(math.sqrt(5 / 14))
    assert table.loc["t3", "cl_l2_set"] == pytest.approx(2.0)  # cols 0, 1 of t3: 2, 0
    assert list(table["conflict_fraction_set"]) == [0.5, 0.5, 0.5]
    assert list(table["cl_l2_elected"]) == pytest.approx([0.0, math.sqrt(2), 0.0])
    assert list(table["conflict_fraction_elected"]) == [0.0, 0.5, 0.0]
    assert (table["layer"] == 2).all() and (table["module"] == "up").all()


def test_elected_conflict_uses_merge_weights() -> None:
    # Weights [1, 3, 1]: sums [0, 1, 7, 7] elect [+, +, +, +] (0 elects +): t1's -2 and t2's -1 disagree.
    table = elected_conflict_table(sources(), density=1.0, weights=[1, 3, 1]).set_index("source")
    assert list(table["cl_l2_elected"]) == pytest.approx([2.0, 1.0, 0.0])
    assert list(table["weight"]) == [1.0, 3.0, 1.0]


def test_pairwise_table_equals_pairwise_conflict_per_parameter() -> None:
    gen = torch.Generator().manual_seed(0)
    taus = {
        s: {p: torch.randn(6, 5, generator=gen) for p in ("a.weight", "model.layers.0.q_proj.weight")}
        for s in "xyz"
    }
    named = {s: TensorTaskVectors(s, t) for s, t in taus.items()}
    table = pairwise_conflict_table(named, density=0.4)
    assert len(table) == 3 * 2 and set(zip(table["a"], table["b"], strict=True)) == {
        ("x", "y"),
        ("x", "z"),
        ("y", "z"),
    }
    for row in table.itertuples():
        expected = pairwise_conflict(taus[row.a][row.param], taus[row.b][row.param], density=0.4)
        for key, value in expected.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_missing_parameter_counts_as_zero() -> None:
    named = {
        "lora": TensorTaskVectors("lora", {P: T1}),
        "other": TensorTaskVectors("other", {"lm_head.weight": T2}),
    }
    table = pairwise_conflict_table(named, density=1.0).set_index("param")
    assert table.loc[P, "l2_b"] == 0.0 and table.loc[P, "cl_l2_a"] == 0.0
    assert (
        table.loc["lm_head.weight", "l2_a"] == 0.0 and table.loc["lm_head.weight", "conflict_fraction"] == 0.0
    )


def test_full_models_table_is_written_atomically(tmp_path: Path) -> None:
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    for name, seed in (("sft", 1), ("dpo", 2)):
        model = tiny_llama()
        model.load_state_dict(perturbed(base, seed))
        model.save_pretrained(tmp_path / name)
    pair = [FullTaskVectors(tmp_path / n, tmp_path / "base", label=n) for n in ("sft", "dpo")]
    table = pairwise_conflict_table(pair, density=0.2)
    assert len(table) == len(base.state_dict())
    assert table["share_a"].between(0, 1).all()
    assert (table.loc[table["numel"] > 100, "share_a"] > 0).all()  # 20% of independent noise: some conflict
    write_conflict_table(table, tmp_path / "out" / "cl.parquet", density=0.2)
    read = pq.read_table(tmp_path / "out" / "cl.parquet")
    assert read.num_rows == len(table) and read.schema.metadata[b"conflux.density"] == b"0.2"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cl.parquet"]


def test_conflict_tables_reject_bad_input() -> None:
    with pytest.raises(ConfluxError, match="at least two"):
        pairwise_conflict_table([TensorTaskVectors("x", {P: T1})], density=0.2)
    with pytest.raises(ConfluxError, match="shape"):
        pairwise_conflict_table(
            {"x": TensorTaskVectors("x", {P: T1}), "y": TensorTaskVectors("y", {P: T1[:2]})}, density=0.2
        )
    with pytest.raises(ConfluxError, match="unknown sources"):
        pairwise_conflict_table(sources(), pairs=[("t1", "t9")], density=0.2)
    with pytest.raises(ConfluxError, match="weights"):
        elected_conflict_table(sources(), weights=[1.0], density=0.2)


def test_conflict_summary_equals_the_norms_of_the_concatenated_task_vectors() -> None:
    """The summary's 'all' row of a pair is CL-L2 of the whole (concatenated, per-parameter trimmed) task
    vectors; per module the same over that module's parameters; the mean row averages the seeds."""
    from conflux.analysis.conflict_summary import conflict_summary

    params = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.layers.0.mlp.up_proj.weight")  # fmt: skip
    frames, taus = {}, {}
    for seed in (0, 1):
        gen = torch.Generator().manual_seed(seed)
        taus[seed] = {s: {p: torch.randn(4, 6, generator=gen) for p in params} for s in "xy"}
        named = {s: TensorTaskVectors(s, t) for s, t in taus[seed].items()}
        frames[seed] = pairwise_conflict_table(named, density=0.5)
    table = conflict_summary(frames)
    for seed in (0, 1):
        for module, chosen in (("all", params), ("q", params[:2]), ("up", params[2:])):
            row = table[(table["seed"] == seed) & (table["module"] == module)].iloc[0]
            parts = [pairwise_conflict(taus[seed]["x"][p], taus[seed]["y"][p], density=0.5) for p in chosen]
            l2_x = math.sqrt(sum(p["l2_a"] ** 2 for p in parts))
            cl_x = math.sqrt(sum(p["cl_l2_a"] ** 2 for p in parts))
            assert row["l2_a"] == pytest.approx(l2_x, rel=1e-6)
            assert row["cl_l2_a"] == pytest.approx(cl_x, rel=1e-6)
            assert row["share_a"] == pytest.approx(cl_x / l2_x, rel=1e-6)
            fraction = sum(p["conflict_fraction"] for p in parts) / len(parts)  # equal sizes: plain mean
            assert row["conflict_fraction"] == pytest.approx(fraction, rel=1e-6)
    mean = table[(table["seed"] == "mean") & (table["module"] == "all")].iloc[0]
    per_seed = table[(table["seed"] != "mean") & (table["module"] == "all")]
    assert mean["share_b"] == pytest.approx(per_seed["share_b"].mean(), rel=1e-9)
