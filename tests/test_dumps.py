"""Task-vector dumps: every entry of τ back from a full dump, exactly the TIES trim in a trimmed one, and the
workflow's own norms recomputed by DuckDB with SQL over the dumps."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
from safetensors.torch import load_file

from conflux.analysis.dumps import MANIFEST, dump_task_vectors
from conflux.analysis.jobs import conflict_table_job, dump_task_vectors_job, taskvec_stats_job
from conflux.analysis.param_names import parse_param_name
from conflux.analysis.task_vectors import FullTaskVectors, adapter_set
from conflux.errors import ConfluxError
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy
from weight_checkpoints import perturbed, save_checkpoint, tiny_llama

DENSITY = 0.2


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A tiny Llama base, an "SFT" fine-tune and a "DPO" fine-tune whose τ is quantised (many equal |τ|,
    so the trim's cut falls inside runs of ties), and a manifest pointing at the base."""
    root = tmp_path_factory.mktemp("dumps")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    state = base.state_dict()
    dpo = {
        k: v + torch.round((theta - v) * 200) / 200
        for (k, v), theta in zip(state.items(), perturbed(base, 2).values(), strict=True)
    }
    save_checkpoint(
        root / "sft", perturbed(base, 1), shards=2, config=json.loads((root / "base/config.json").read_text())
    )
    save_checkpoint(root / "dpo", dpo, config=json.loads((root / "base/config.json").read_text()))
    (root / "manifest.json").write_text(json.dumps({"name": "tiny", "load_path": str(root / "base")}))
    return root


def _tau(ws: Path, run: str) -> dict[str, torch.Tensor]:
    """τ recomputed from the checkpoints' files alone, flat, in float32."""
    base = load_file(ws / "base" / "model.safetensors")
    ft = {}
    for f in sorted((ws / run).glob("*.safetensors")):
        ft.update(load_file(f))
    return {k: (ft[k].float() - base[k].float()).reshape(-1) for k in base}


def _read(dump: Path) -> pd.DataFrame:
    return ds.dataset(dump, format="parquet", partitioning="hive").to_table().to_pandas()


def test_full_dump_holds_every_entry_of_tau_bitwise(ws, tmp_path):
    manifest = dump_task_vectors(
        {"sft": FullTaskVectors(ws / "sft", ws / "base")},
        tmp_path / "d",
        mode="full",
        dtype="float32",
        density=DENSITY,
    )
    frame = _read(tmp_path / "d")
    taus = _tau(ws, "sft")
    assert manifest["kept"] == manifest["numel"] == sum(t.numel() for t in taus.values()) == len(frame)
    for name, tau in taus.items():
        rows = frame[frame["param"] == name].sort_values("index")
        assert rows["index"].tolist() == list(range(tau.numel()))
        assert np.array_equal(rows["value"].to_numpy().view(np.uint32), tau.numpy().view(np.uint32)), name
        layer, module = parse_param_name(name)
        assert (rows["module"] == module).all() and set(rows["source"]) == {"sft"}
        assert rows["layer"].isna().all() if layer is None else (rows["layer"] == layer).all()
    assert json.loads((tmp_path / "d" / MANIFEST).read_text())["sources"] == ["sft"]


@pytest.mark.parametrize("density", [0.2, 0.5])
def test_trimmed_dump_holds_exactly_the_entries_the_ties_trim_keeps(ws, tmp_path, density):
    dump_task_vectors(
        {"dpo": FullTaskVectors(ws / "dpo", ws / "base")},
        tmp_path / "d",
        mode="trimmed",
        dtype="float32",
        density=density,
    )
    frame = _read(tmp_path / "d")
    tied = 0
    for name, tau in _tau(ws, "dpo").items():
        k = max(1, int(density * tau.numel()))
        # a stable descending sort keeps the lower index among equal magnitudes, as the trim does
        expected = torch.sort(torch.argsort(-tau.abs(), stable=True)[:k]).values
        rows = frame[frame["param"] == name]
        assert rows["index"].tolist() == expected.tolist(), name  # in index order, exactly k
        assert np.array_equal(rows["value"].to_numpy(), tau[expected].numpy())
        cut = tau.abs()[expected].min()  # the k-th largest |τ|: a tie there is broken by index
        tied += int((tau.abs() == cut).sum()) > int((tau.abs()[expected] == cut).sum())
    assert tied > 0  # some cut fell inside a run of equal magnitudes


def test_float16_dump_stores_tau_rounded_to_half(ws, tmp_path):
    dump_task_vectors(
        {"sft": FullTaskVectors(ws / "sft", ws / "base")},
        tmp_path / "d",
        mode="full",
        dtype="float16",
        density=DENSITY,
    )
    frame = _read(tmp_path / "d")
    assert frame["value"].dtype == np.float16
    for name, tau in _tau(ws, "sft").items():
        rows = frame[frame["param"] == name].sort_values("index")
        assert np.array_equal(rows["value"].to_numpy(), tau.half().numpy())


def test_adapter_dump_holds_each_adapters_delta_w(ws, tmp_path):
    """A preference run's adapters are dumped as sources shared, dim0, ... with ΔW = (α/r)·B·A."""
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj", "down_proj"))
    policy = PreferencePolicy.create(tiny_llama(), k=2, lora=lora, shared=True, seed=0)
    with torch.no_grad():
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    policy.save(tmp_path / "run" / "adapters")
    dump_task_vectors_job(
        {"curriculum_stage3": tmp_path / "run"},
        ws / "manifest.json",
        tmp_path / "d",
        mode="full",
        dtype="float32",
        density=DENSITY,
    )
    frame = _read(tmp_path / "d")
    assert sorted(frame["source"].unique()) == ["dim0", "dim1", "shared"]
    for label, tv in adapter_set(tmp_path / "run" / "adapters", ws / "base").items():
        assert sorted(frame[frame["source"] == label]["param"].unique()) == sorted(tv.names)
        for name in tv.names:
            rows = frame[(frame["source"] == label) & (frame["param"] == name)].sort_values("index")
            assert np.array_equal(rows["value"].to_numpy(), tv.tau(name).reshape(-1).numpy())
    assert set(frame["module"]) == {"q", "down"}


def test_layer_and_module_partitions_prune_what_is_read(ws, tmp_path):
    dump_task_vectors(
        {"sft": FullTaskVectors(ws / "sft", ws / "base")},
        tmp_path / "d",
        mode="trimmed",
        dtype="float32",
        density=DENSITY,
    )
    dataset = ds.dataset(tmp_path / "d", format="parquet", partitioning="hive")
    wanted = (ds.field("layer") == 1) & (ds.field("module") == "down")
    fragments = list(dataset.get_fragments(filter=wanted))
    assert [Path(f.path).parent.relative_to(tmp_path / "d").as_posix() for f in fragments] == [
        "layer=1/module=down"
    ]
    assert set(dataset.to_table(filter=wanted).column("param").to_pylist()) == {
        "model.layers.1.mlp.down_proj.weight"
    }


def test_a_non_finite_task_vector_leaves_no_dump(ws, tmp_path):
    state = load_file(ws / "base" / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"].clone()
    state["model.norm.weight"][0] = float("nan")
    save_checkpoint(tmp_path / "bad", state, config=json.loads((ws / "base/config.json").read_text()))
    with pytest.raises(ConfluxError, match=r"model\.norm\.weight"):
        dump_task_vectors(
            {"bad": FullTaskVectors(tmp_path / "bad", ws / "base")},
            tmp_path / "d",
            mode="full",
            dtype="float32",
            density=DENSITY,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]


# ---- the workflow's tables, recomputed with SQL over the dumps -------------------------------------------

L2 = "SELECT source, param, sqrt(sum(value::DOUBLE * value::DOUBLE)) AS l2 FROM {dump} GROUP BY ALL"

# CL-L2 of SFT vs DPO: trim each task vector to its top-k |τ| (ties to the lower index), then the norm of each
# over the entries where the two trimmed vectors have opposite nonzero signs.
CL_L2_FULL = """
WITH ranked AS (
    SELECT source, param, "index", value,
           row_number() OVER (PARTITION BY source, param ORDER BY abs(value) DESC, "index") AS rank,
           count(*) OVER (PARTITION BY source, param) AS numel
    FROM {dump}
), trimmed AS (
    SELECT * FROM ranked WHERE rank <= greatest(1, floor({density} * numel))
)
SELECT a.param, sqrt(sum(a.value::DOUBLE ^ 2)) AS cl_l2_a, sqrt(sum(b.value::DOUBLE ^ 2)) AS cl_l2_b
FROM trimmed a JOIN trimmed b USING (param, "index")
WHERE a.source = 'sft' AND b.source = 'dpo' AND sign(a.value) * sign(b.value) < 0
GROUP BY a.param
"""
# A trimmed dump holds the trim already: the same norms are a join.
CL_L2_TRIMMED = """
SELECT a.param, sqrt(sum(a.value::DOUBLE ^ 2)) AS cl_l2_a, sqrt(sum(b.value::DOUBLE ^ 2)) AS cl_l2_b
FROM {dump} a JOIN {dump} b USING (param, "index")
WHERE a.source = 'sft' AND b.source = 'dpo' AND sign(a.value) * sign(b.value) < 0
GROUP BY a.param
"""


@pytest.mark.parametrize("mode", ["full", "trimmed"])
def test_duckdb_recomputes_the_l2_and_cl_l2_tables_from_the_dumps(ws, tmp_path, mode):
    runs = {"sft": ws / "sft", "dpo": ws / "dpo"}
    taskvec_stats_job(runs, ws / "manifest.json", tmp_path / "stats.parquet", density=DENSITY)
    conflict_table_job(runs, ws / "manifest.json", tmp_path / "conflict.parquet", density=DENSITY)
    for name, run in runs.items():  # one dump per method, as the workflow writes them
        dump_task_vectors_job(
            {name: run}, ws / "manifest.json", tmp_path / name, mode=mode, dtype="float32", density=DENSITY
        )
    files = ", ".join(f"'{tmp_path}/{name}/**/*.parquet'" for name in runs)
    dump = f"read_parquet([{files}], hive_partitioning=true)"

    stats = pd.read_parquet(tmp_path / "stats.parquet").set_index(["model", "param"])
    l2 = duckdb.sql(L2.format(dump=dump)).df().set_index(["source", "param"])
    if mode == "full":
        assert len(l2) == len(stats)
        np.testing.assert_allclose(l2["l2"], stats.loc[l2.index, "l2"], rtol=1e-6)
    else:  # the trimmed norm is the trim's share of the full one
        share = stats.loc[l2.index, "l2"] * stats.loc[l2.index, "trim_l2_share"]
        np.testing.assert_allclose(l2["l2"], share, rtol=1e-5)

    conflict = pd.read_parquet(tmp_path / "conflict.parquet").set_index("param")
    query = CL_L2_FULL if mode == "full" else CL_L2_TRIMMED
    cl = duckdb.sql(query.format(dump=dump, density=DENSITY)).df().set_index("param")
    assert (conflict["cl_l2_a"] > 0).sum() > 5  # the comparison has something to compare
    expected = conflict.loc[conflict["cl_l2_a"] > 0, ["cl_l2_a", "cl_l2_b"]]
    assert sorted(cl.index) == sorted(expected.index)
    np.testing.assert_allclose(cl.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-5)
