"""Evaluating trained methods on the tiny model: DPO-Soup from two adapter runs, shared+dims, the reports."""

from __future__ import annotations

import json
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from docutils.core import publish_parts
from safetensors.torch import load_file

from conflux.data.pairs import read_pairs, write_pairs
from conflux.data.split import SplitConfig, split_pairs
from conflux.data.synthetic import synthetic_pku
from conflux.errors import ConfluxError
from conflux.evaluation.implicit_reward import run_beta
from conflux.evaluation.records import (
    evaluate_method_job,
    evaluate_methods_job,
    read_records,
    weighted_labels,
)
from conflux.evaluation.tables import figure2_job, table1_job, table2_job
from conflux.modeling.base_model import BaseModelSpec, base_model_manifest_job, load_base_model
from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy, adapter_dirs
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
from conflux.modeling.tokenize import TokenizeSettings
from conflux.training.reference import compute_reference_logps, write_reference
from reference_impl import implicit_reward_margins, tokenize_pairs

SETTINGS = TokenizeSettings(max_length=256)
BETA = 0.1
LORA = LoraSpec(r=4, alpha=8)


def _perturb(policy: PreferencePolicy, seed: int) -> None:
    """LoRA B starts at zero (no effect); give every adapter a delta that changes the log-probs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _save_run(policy: PreferencePolicy, names: list[str], out: Path, beta: float = BETA) -> Path:
    """A training output as run_preference_job writes it: adapters/<name>/ and train_config.json."""
    policy.model.save_pretrained(str(out / "adapters"), selected_adapters=names)
    (out / "train_config.json").write_text(json.dumps({"beta": beta}), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Tiny model, held-out k=2 conflict pairs with their reference cache, a DPO-Soup and a curriculum run."""
    root = tmp_path_factory.mktemp("eval_ws")
    pairs = synthetic_pku(80, conflict_rate=0.5, seed=0)
    write_pairs(
        root / "eval.parquet", split_pairs(pairs, SplitConfig(eval_fraction=0.2)).parts["eval_conflict"]
    )
    cols = pairs.table.to_pydict()
    texts = cols["prompt"] + cols["response_a"] + cols["response_b"]
    cfg = TinyModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2)
    build_tiny_model(texts, cfg, root / "hf")
    base_model_manifest_job(
        BaseModelSpec(name="tiny", source="embedded"), root / "manifest.json", built_dir=root / "hf"
    )
    model, tokenizer = load_base_model(root / "manifest.json", dtype="float32")
    table = compute_reference_logps(model, tokenizer, read_pairs(root / "eval.parquet"), SETTINGS)
    write_reference(root / "ref.parquet", table, SETTINGS, "tiny")
    # DPO-Soup: k = 2 adapters without `shared`, each saved by its own run (as dpo_soup/dim<i>).
    soup = PreferencePolicy.create(model, 2, LORA, shared=False, seed=1)
    _perturb(soup, seed=2)
    for i in range(2):
        _save_run(soup, [f"dim{i}"], root / "soup" / f"dim{i}")
    model, _ = load_base_model(root / "manifest.json", dtype="float32")
    curriculum = PreferencePolicy.create(model, 2, LORA, shared=True, seed=3)
    _perturb(curriculum, seed=4)
    _save_run(curriculum, ["shared", "dim0", "dim1"], root / "curriculum")
    return root


def _evaluate(ws: Path, method: str, runs: list[Path], out: Path, **kwargs) -> pd.DataFrame:
    return evaluate_method_job(
        method=method,
        seed=0,
        run_dirs=runs,
        manifest=ws / "manifest.json",
        pairs=ws / "eval.parquet",
        references=[ws / "ref.parquet"],
        out=out,
        settings=SETTINGS,
        **kwargs,
    )


def _merged_logps(ws: Path, w: tuple[float, float], pairs) -> tuple[np.ndarray, np.ndarray]:
    """log π at w with base + Σ_i w_i (α/r) B_i A_i written into the weights from the saved files alone."""
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for i, wi in enumerate(w):
            state = load_file(ws / "soup" / f"dim{i}" / "adapters" / f"dim{i}" / "adapter_model.safetensors")
            for key, a in state.items():
                if "lora_A" in key:
                    b = state[key.replace("lora_A", "lora_B")]
                    target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
                    params[target] += wi * (LORA.alpha / LORA.r) * (b @ a)
    cols = pairs.table.to_pydict()
    batch, _ = tokenize_pairs(
        tokenizer, cols["prompt"], cols["response_a"], cols["response_b"], max_length=SETTINGS.max_length
    )
    with torch.no_grad():
        a, b = sequence_logps(model, batch)
    return a.double().numpy(), b.double().numpy()


@pytest.fixture(scope="module")
def records(ws) -> dict[str, Path]:
    """Records files of the DPO-Soup and the shared+dims run, each at the default plan of weights."""
    files = {"dpo_soup": ws / "records" / "soup.parquet", "curriculum": ws / "records" / "cur.parquet"}
    _evaluate(ws, "dpo_soup", [ws / "soup" / "dim0", ws / "soup" / "dim1"], files["dpo_soup"])
    _evaluate(ws, "curriculum", [ws / "curriculum"], files["curriculum"])
    return files


def test_one_job_for_every_method_writes_what_each_method_alone_writes(ws, records, tmp_path):
    """The rule evaluates all methods of a seed in one job: each method's records equal those of the method
    evaluated alone, bit for bit (no adapter of one method is left on the model of the next)."""
    runs = {"curriculum": [ws / "curriculum"], "dpo_soup": [ws / "soup" / "dim0", ws / "soup" / "dim1"]}
    outs = {m: tmp_path / f"{m}.parquet" for m in runs}
    evaluate_methods_job(
        runs=runs,
        outs=outs,
        seed=0,
        manifest=ws / "manifest.json",
        pairs=ws / "eval.parquet",
        references=[ws / "ref.parquet"],
        settings=SETTINGS,
    )
    for method in runs:
        together, _ = read_records([outs[method]])
        alone, _ = read_records([records[method]])
        pd.testing.assert_frame_equal(together, alone, check_exact=True)
    inputs = {
        "manifest": ws / "manifest.json",
        "pairs": ws / "eval.parquet",
        "references": [ws / "ref.parquet"],
    }
    with pytest.raises(ConfluxError, match="differ"):  # a method without its records file
        evaluate_methods_job(
            runs=runs, outs={"curriculum": outs["curriculum"]}, seed=0, settings=SETTINGS, **inputs
        )


def _at(frame: pd.DataFrame, w: tuple[float, float], ids: list[str]) -> pd.DataFrame:
    return frame[(frame["w0"] == w[0]) & (frame["w1"] == w[1])].set_index("pair_id").loc[ids]


def test_dpo_soup_of_two_adapter_runs_evaluates_as_the_interpolated_weights(ws, records):
    assert list(adapter_dirs([ws / "soup" / "dim0", ws / "soup" / "dim1"])) == ["dim0", "dim1"]
    frame, dims = read_records([records["dpo_soup"]])
    assert dims == ("helpful", "harmless")
    pairs = read_pairs(ws / "eval.parquet")
    ids = pairs.table.column("pair_id").to_pylist()
    weights = sorted({tuple(r) for r in frame[["w0", "w1"]].to_numpy()})
    assert weights == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert len(frame) == 5 * len(ids)  # k = 2 held-out pairs all conflict: every weight on every pair
    ref = pd.read_parquet(ws / "ref.parquet").set_index("pair_id").loc[ids]
    s_a, s_b = pairs.scores()
    for w in [(1.0, 0.0), (0.75, 0.25)]:
        la, lb = _merged_logps(ws, w, pairs)
        expected = BETA * ((la - ref["ref_logp_a"].to_numpy()) - (lb - ref["ref_logp_b"].to_numpy()))
        np.testing.assert_allclose(_at(frame, w, ids)["margin"].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    for w in weights:
        assert _at(frame, w, ids)["label"].tolist() == weighted_labels(s_a, s_b, w).tolist()
    assert not np.allclose(frame["margin"], 0.0)  # the adapters do move the policy off the reference
    # the response tokens each log-prob sums over (eos included), for the length-bias analysis
    _, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    cols = pairs.table.to_pydict()
    batch, _ = tokenize_pairs(
        tokenizer, cols["prompt"], cols["response_a"], cols["response_b"], max_length=SETTINGS.max_length
    )
    scored = batch.loss_mask.sum(dim=1).numpy()
    at = _at(frame, (1.0, 0.0), ids)
    np.testing.assert_array_equal(at["len_a"].to_numpy(), scored[: len(ids)])
    np.testing.assert_array_equal(at["len_b"].to_numpy(), scored[len(ids) :])


def test_shared_and_dimension_adapters_of_one_run_evaluate_like_the_policy_in_memory(ws, records):
    run = ws / "curriculum"
    assert list(adapter_dirs([run])) == ["shared", "dim0", "dim1"]
    frame, _ = read_records([records["curriculum"]])
    pairs = read_pairs(ws / "eval.parquet")
    model, tokenizer = load_base_model(ws / "manifest.json", dtype="float32")
    policy = PreferencePolicy.load(model, adapter_dirs([run]))
    expected = implicit_reward_margins(
        policy, tokenizer, pairs, [ws / "ref.parquet"], (0.25, 0.75), SETTINGS, BETA
    )
    got = _at(frame, (0.25, 0.75), pairs.table.column("pair_id").to_pylist())["margin"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_explicit_weights_are_scored_on_every_pair(ws, tmp_path):
    frame = _evaluate(ws, "curriculum", [ws / "curriculum"], tmp_path / "r.parquet", weights=[(0.5, 0.5)])
    assert len(frame) == len(read_pairs(ws / "eval.parquet")) and (frame["w0"] == 0.5).all()


def test_reports_from_records_of_two_methods(ws, records, tmp_path):
    files = [records["dpo_soup"], records["curriculum"]]
    out = tmp_path / "report"
    wide = table1_job(files, csv=out / "t1.csv", md=out / "t1.md", html=out / "t1.html", resamples=100)
    assert list(wide["method"]) == ["dpo_soup", "curriculum", "dpo_soup", "curriculum"]
    assert pd.read_csv(out / "t1.csv").shape[0] == 4
    md = (out / "t1.md").read_text(encoding="utf-8")
    n = len(read_pairs(ws / "eval.parquet"))
    assert f"helpful {n}" in md and "Seeds: 0 (1)" in md and "100 resamples" in md
    settings, summary = table2_job(
        files,
        settings_csv=out / "s.csv",
        settings_md=out / "s.md",
        summary_csv=out / "w.csv",
        summary_md=out / "w.md",
        settings_html=out / "s.html",
        summary_html=out / "w.html",
        figure_png=out / "f.png",
        figure_svg=out / "f.svg",
        resamples=50,
    )
    assert len(settings[settings["seed"] == "mean"]) == 5 * 2
    mean = summary[summary["seed"] == "mean"]
    assert mean["win_rate"].sum() == pytest.approx(1.0)
    assert (out / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "f.svg").read_text(encoding="utf-8")
    for name in ("t1", "s", "w"):  # the report's HTML page shows the Markdown file's text and cells
        page = (out / f"{name}.html").read_text(encoding="utf-8")
        md = (out / f"{name}.md").read_text(encoding="utf-8")
        assert _html_cells(page) == _markdown_cells(md) and len(_html_cells(page)) > 2, name
        title, note = md.splitlines()[0].removeprefix("# "), md.splitlines()[2].strip()
        assert escape(title) in page and escape(note) in page
    for caption in sorted(
        (Path(__file__).resolve().parents[1] / "report").glob("*.rst")
    ):  # the report's captions render without a message
        html = publish_parts(
            caption.read_text(encoding="utf-8"),
            writer_name="html",
            settings_overrides={"report_level": 1, "halt_level": 2},
        )["body"]
        assert html.startswith("<p>") and "system-message" not in html, caption.name
    figure2_job(files, png=out / "g.png", svg=out / "g.svg", resamples=50)
    assert (out / "g.svg").read_bytes() == (out / "f.svg").read_bytes()  # same numbers, same bytes
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_inconsistent_runs_are_refused(ws, tmp_path):
    with pytest.raises(ConfluxError, match="is in both"):
        adapter_dirs([ws / "soup" / "dim0", ws / "soup" / "dim0"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "train_config.json").write_text(json.dumps({"beta": 0.5}), encoding="utf-8")
    with pytest.raises(ConfluxError, match="different beta"):
        run_beta([ws / "soup" / "dim0", other])
    with pytest.raises(ConfluxError, match="no adapters/ directory"):
        adapter_dirs([other])


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "strong" and self.cell is not None:
            self.cell.append("**")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append("".join(self.cell))
            self.cell = None
        elif tag == "strong" and self.cell is not None:
            self.cell.append("**")

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _html_cells(page: str) -> list[list[str]]:
    parser = _Cells()
    parser.feed(page)
    return parser.rows


def _markdown_cells(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip().replace("\\|", "|") for c in row.strip("| ").split(" | ")] for row in rows]
