"""Layer and module reverts: the targets of a sweep, the in-place swap, and the key-layers table's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from conflux.analysis.key_layers import key_layers_table
from conflux.analysis.merge import revert_to_base
from conflux.analysis.revert import BaseSwap, RevertTarget, revert_targets
from conflux.analysis.tensor_io import WeightFiles
from conflux.errors import ConfluxError
from weight_checkpoints import perturbed, tiny_llama

NAMES = [
    "model.embed_tokens.weight",
    *(f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 1) for p in "qkvo"),
    *(f"model.layers.{i}.mlp.{p}_proj.weight" for i in (0, 1) for p in ("gate", "up", "down")),
    *(
        f"model.layers.{i}.{n}.weight"
        for i in (0, 1)
        for n in ("input_layernorm", "post_attention_layernorm")
    ),
    "model.norm.weight",
    "lm_head.weight",
]


def test_targets_cover_every_layer_and_module_type_and_the_cells_that_exist() -> None:
    targets = revert_targets(NAMES, layers=None, modules=None, cells=True)
    labels = [t.label for t in targets]
    modules = ["q", "k", "v", "o", "gate", "up", "down", "embed", "norm", "lm_head"]
    assert labels[:2] == ["layer0", "layer1"]
    assert labels[2:12] == [f"module-{m}" for m in modules]
    # cells: only (layer, module) pairs with parameters; embed and lm_head live outside the layers
    cells = labels[12:]
    assert len(cells) == 2 * 8 and "layer0-embed" not in cells and "layer1-norm" in cells
    assert RevertTarget("cell", 1, "norm").select(NAMES) == [
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
    ]
    # a module target spans every layer and the non-layer parameters of that type
    assert RevertTarget("module", module="norm").select(NAMES)[-1] == "model.norm.weight"
    assert len(RevertTarget("layer", layer=0).select(NAMES)) == 9


def test_targets_reject_layers_and_modules_the_model_lacks() -> None:
    assert [t.label for t in revert_targets(NAMES, layers=[1], modules=["q"], cells=False)] == [
        "layer1",
        "module-q",
    ]
    with pytest.raises(ConfluxError, match=r"not \[5\]"):
        revert_targets(NAMES, layers=[5], modules=["q"], cells=False)
    with pytest.raises(ConfluxError, match="no \\['gate'\\] parameters"):
        revert_targets([n for n in NAMES if "gate" not in n], layers=None, modules=["gate"], cells=False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("revert")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    ft = tiny_llama()
    ft.load_state_dict(perturbed(base, seed=3))
    ft.save_pretrained(root / "ft")
    return root


def test_in_place_swap_equals_the_written_revert_and_restores_the_fine_tune(
    checkpoints: Path, tmp_path: Path
) -> None:
    """Inside the block the model computes what the reverted checkpoint of revert_to_base computes; after
    it every parameter is bit-identical to the fine-tune again; the yielded norm is ‖τ‖ of the target."""
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "ft").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_files = WeightFiles(checkpoints / "base")
    swap = BaseSwap(model, base_files)
    ids = torch.tensor([[1, 5, 7, 2, 9, 11]])
    for target in (RevertTarget("layer", layer=1), RevertTarget("module", module="v")):
        names = target.select(base_files.names)
        layers = [target.layer] if target.layer is not None else None
        modules = [target.module] if target.module is not None else None
        written = tmp_path / target.label
        assert revert_to_base(
            checkpoints / "ft", checkpoints / "base", written, layers=layers, modules=modules
        )
        reference = AutoModelForCausalLM.from_pretrained(written).eval()
        tau_sq = sum(float((before[n].double() - base_files.get(n).double()).square().sum()) for n in names)
        with torch.no_grad(), swap.reverted(names) as l2:
            assert torch.equal(model(ids).logits, reference(ids).logits)
        assert l2 == pytest.approx(math.sqrt(tau_sq), rel=1e-12)
        assert swap.tau_l2(names) == pytest.approx(l2, rel=1e-6)
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[name]), name


def test_swap_restores_the_fine_tune_when_evaluation_fails(checkpoints: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "ft").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap = BaseSwap(model, WeightFiles(checkpoints / "base"))
    with pytest.raises(RuntimeError, match="boom"), swap.reverted(["model.layers.0.mlp.up_proj.weight"]):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_swap_restores_tied_embeddings_listed_under_both_names(tmp_path: Path) -> None:
    """A checkpoint may store tied embeddings and head under both names; reverting both and restoring must
    leave the fine-tune, not the base (the second name's saved copy is taken after the first was reverted)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    embed = model.model.embed_tokens.weight
    assert embed.data_ptr() == model.lm_head.weight.data_ptr()
    (tmp_path / "base").mkdir()
    base = torch.zeros_like(embed)
    save_file({"model.embed_tokens.weight": base, "lm_head.weight": base.clone()},
              tmp_path / "base" / "model.safetensors")  # fmt: skip
    before = embed.detach().clone()
    swap = BaseSwap(model, WeightFiles(tmp_path / "base"))
    with swap.reverted(["model.embed_tokens.weight", "lm_head.weight"]):
        assert torch.equal(embed, base)
    assert torch.equal(embed, before) and torch.equal(model.lm_head.weight, before)


def test_layer_prefix_resumes_at_a_layer_from_the_kept_inputs_and_skips_the_layers_before() -> None:
    """Resuming at layer 1 from the recorded inputs gives bit-identical logits without running layer 0, also
    after layer 1 changed (as a revert changes it); over budget, nothing is kept and the whole model runs."""
    from conflux.analysis.layer_prefix import LayerPrefix, first_layer

    model = tiny_llama()
    batches = [torch.tensor([[1, 5, 7, 2, 9, 11]]), torch.tensor([[3, 4, 5], [6, 7, 8]])]
    prefix = LayerPrefix(model)
    with torch.no_grad(), prefix.recording():
        before = [model(ids).logits for ids in batches]
    calls: list[int] = []
    hook = model.model.layers[0].register_forward_hook(lambda *_: calls.append(0))
    with torch.no_grad():
        with prefix.starting_at(1):
            resumed = [model(ids).logits for ids in batches]
        assert calls == [] and all(torch.equal(a, b) for a, b in zip(resumed, before, strict=True))
        model.model.layers[1].mlp.up_proj.weight.mul_(2.0)
        with prefix.starting_at(1):
            resumed = [model(ids).logits for ids in batches]
        assert calls == []
        full = [model(ids).logits for ids in batches]
    hook.remove()
    assert len(calls) == 2 and len(model.model.layers) == 2
    assert all(torch.equal(a, b) for a, b in zip(resumed, full, strict=True))
    assert not torch.equal(full[0], before[0])
    small = LayerPrefix(model, budget_bytes=100)
    with torch.no_grad(), small.recording():
        model(batches[0])
    assert not small.ready
    assert first_layer(["model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"]) == 0
    assert first_layer(["model.layers.1.mlp.up_proj.weight", "model.layers.3.mlp.up_proj.weight"]) == 1
    assert first_layer(["model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"]) == 0


def metrics(margin: float, accuracy: float = 0.9, ppl: float = 10.0, style: float = 0.5) -> dict:
    return {
        "persona_margin": {"mean": margin, "accuracy": accuracy, "n": 4},
        "perplexity_general": ppl,
        "style": {"student": {"share": style, "mean_markers": 1.0, "n": 8}},
    }


def sweep(seed: int, ft: float, layer_margins: list[float]) -> dict:
    return {
        "method": "dpo",
        "seed": seed,
        "persona": "student",
        "tau_l2_total": 4.0,
        "finetuned": metrics(ft),
        "targets": [
            {"kind": "layer", "layer": i, "module": None, "label": f"layer{i}", "n_params": 9, "tau_l2": 2.0,
             "metrics": metrics(m, accuracy=0.8, ppl=12.0, style=0.25)}
            for i, m in enumerate(layer_margins)
        ] + [
            {"kind": "module", "layer": None, "module": "q", "label": "module-q", "n_params": 2,
             "tau_l2": 1.0, "metrics": metrics(ft)}
        ],
    }  # fmt: skip


def test_key_layers_table_numbers_by_hand() -> None:
    """Base margin 2; seed 0: fine-tune 10, layer reverts 6 and 9; seed 1: fine-tune 12, reverts 2 and 11.
    effect_removed = (ft - revert) / (ft - base): seed 0 → 0.5, 0.125; seed 1 → 1.0, 0.1."""
    table = key_layers_table([sweep(0, 10.0, [6.0, 9.0]), sweep(1, 12.0, [2.0, 11.0])], metrics(2.0))
    layer = table[table["kind"] == "layer"].set_index(["seed", "target"])
    assert layer.loc[("0", "layer0"), "effect_removed"] == pytest.approx(0.5)
    assert layer.loc[("0", "layer1"), "effect_removed"] == pytest.approx(0.125)
    assert layer.loc[("1", "layer0"), "effect_removed"] == pytest.approx(1.0)
    assert layer.loc[("mean", "layer0"), "effect_removed"] == pytest.approx(0.75)
    assert layer.loc[("mean", "layer1"), "effect_removed"] == pytest.approx(0.1125)
    assert layer.loc[("mean", "layer0"), "margin"] == pytest.approx(4.0)
    assert layer.loc[("mean", "layer0"), "rank"] == 1 and layer.loc[("mean", "layer1"), "rank"] == 2
    row = layer.loc[("0", "layer0")]
    assert row["tau_l2_share"] == pytest.approx(0.5)
    assert row["d_accuracy"] == pytest.approx(-0.1)
    assert row["ppl_ratio"] == pytest.approx(1.2)
    assert row["d_style_share"] == pytest.approx(-0.25)
    module = table[(table["kind"] == "module") & (table["seed"] == "mean")]
    assert module["effect_removed"].tolist() == [0.0] and module["tau_l2_share"].tolist() == [0.25]
    assert set(table["n_seeds"]) == {2} and table["layer"].dtype == pd.Int64Dtype()
    assert list(table["seed"].drop_duplicates()) == ["0", "1", "mean"]


def test_key_layers_table_refuses_sweeps_that_do_not_match() -> None:
    other = sweep(1, 12.0, [2.0])  # one layer fewer
    with pytest.raises(ConfluxError, match="same targets"):
        key_layers_table([sweep(0, 10.0, [6.0, 9.0]), other], metrics(2.0))
    sft = {**sweep(1, 12.0, [2.0, 11.0]), "method": "sft"}
    with pytest.raises(ConfluxError, match="share their method"):
        key_layers_table([sweep(0, 10.0, [6.0, 9.0]), sft], metrics(2.0))


# ---- the sweep against a per-target reload -----------------------------------------------------------------


@pytest.fixture(scope="module")
def persona_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny persona workspace: base, manifest, a full fine-tune (base + noise) and held-out data."""
    import numpy as np
    import pyarrow as pa

    from conflux.data.pairs import make_pair_table, write_pairs, write_sft
    from conflux.data.persona_text import persona_sets
    from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
    from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model

    root = tmp_path_factory.mktemp("revert_sweep")
    sets = persona_sets(seed=0)
    texts = [t for rows in sets.values() for pair in rows[:120] for t in pair]
    build_tiny_model(
        texts, TinyModelConfig(vocab_size=600, hidden_size=32, intermediate_size=64), root / "hf"
    )
    base_model_manifest_job(
        BaseModelSpec(name="tiny", source="embedded"), root / "manifest.json", built_dir=root / "hf"
    )
    held = list(range(200, 206))
    ojou, general = sets["ojousama"], sets["general"]
    prompts = [ojou[i][0] for i in held]
    write_sft(
        root / "sft_eval.parquet",
        pa.table({"prompt": prompts, "response": [ojou[i][1] for i in held], "persona": ["ojousama"] * 6}),
    )
    write_pairs(
        root / "pairs_eval.parquet",
        make_pair_table(
            pair_id=[f"p{i}" for i in held],
            prompt=prompts,
            response_a=[ojou[i][1] for i in held],
            response_b=[general[i][1] for i in held],
            scores_a=np.ones((6, 1)),
            scores_b=np.zeros((6, 1)),
            dims=("persona",),
            source="test",
        ),
    )
    model, _ = load_base_model(root / "manifest.json", dtype="float32")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(root / "ft")
    return root


def test_sweep_equals_evaluating_each_written_revert_from_scratch(persona_ws: Path, tmp_path: Path) -> None:
    """The sweep (one load, inputs tokenized once, τ per parameter cached, tensors swapped in place) gives
    every target the metrics of the straightforward way: write the reverted model with revert_to_base, load
    it and run persona_eval_job on it. Margins and perplexities agree to 1e-6 (relative), accuracy, style
    counts and τ's norm exactly or to 1e-9."""
    from conflux.analysis.revert import revert_sweep_job
    from conflux.evaluation.persona_eval import persona_eval_job
    from conflux.modeling.base_model import base_model_dir
    from conflux.modeling.generation import GenerationSettings
    from conflux.modeling.tokenize import TokenizeSettings

    common = {
        "manifest": persona_ws / "manifest.json",
        "sft_eval": persona_ws / "sft_eval.parquet",
        "pairs_eval": persona_ws / "pairs_eval.parquet",
        "settings": TokenizeSettings(max_length=192),
        "generation": GenerationSettings(max_new_tokens=8, batch_size=4),
    }
    sweep = revert_sweep_job(
        method="dpo", seed=0, model_dir=persona_ws / "ft", out=tmp_path / "sweep.json",
        layers=[1], modules=["q", "down"], cells=True, generate=True, **common,
    )  # fmt: skip
    assert [t["label"] for t in sweep["targets"]] == [
        "layer1", "module-q", "module-down", "layer1-q", "layer1-down",
    ]  # fmt: skip
    base = WeightFiles(base_model_dir(common["manifest"]))
    for t in sweep["targets"]:
        written = tmp_path / t["label"]
        names = revert_to_base(
            persona_ws / "ft",
            base.path,
            written,
            layers=[t["layer"]] if t["layer"] is not None else None,
            modules=[t["module"]] if t["module"] is not None else None,
        )
        assert len(names) == t["n_params"]
        tau_sq = sum(
            float((WeightFiles(persona_ws / "ft").get(n).double() - base.get(n).double()).square().sum())
            for n in names
        )
        assert t["tau_l2"] == pytest.approx(math.sqrt(tau_sq), rel=1e-9)
        ref = persona_eval_job(
            variant=t["label"], seed=0, model_dir=written, out=written / "m.json", **common
        )
        got, want = t["metrics"], ref["metrics"]
        assert got["persona_margin"]["mean"] == pytest.approx(want["persona_margin"]["mean"], rel=1e-6)
        assert got["persona_margin"]["accuracy"] == want["persona_margin"]["accuracy"]
        for key in ("perplexity_general", "perplexity_persona"):
            assert got[key] == pytest.approx(want[key], rel=1e-6)
        assert got["style"] == want["style"]
        assert got["tokens_general"] == want["tokens_general"] > 0
    # The reverts moved the metrics (the comparison is not between copies of the fine-tune).
    margins = {round(t["metrics"]["persona_margin"]["mean"], 6) for t in sweep["targets"]}
    assert len(margins | {round(sweep["finetuned"]["persona_margin"]["mean"], 6)}) > 1
