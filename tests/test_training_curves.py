"""Training curves: the plotted lines are the logged metrics, averaged over dimensions and seeds by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conflux.errors import DataError
from conflux.evaluation.training_curves import methods_figure, read_metrics, runs_figure, training_curves_job


def _run(root: Path, records: list[dict]) -> Path:
    root.mkdir(parents=True)
    lines = [json.dumps(r) for r in records] + [json.dumps({"step": 99, "train_loss": 0.1, "epoch": 1.0})]
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _panacea(step: int, seed: int) -> dict:
    return {
        "step": step,
        "loss": 1.0 / step + seed,
        "rewards/accuracies/dim0": 0.5 + 0.01 * step,
        "rewards/accuracies/dim1": 0.6 + 0.01 * step + seed,
        "rewards/margins/dim0": 0.1 * step,
        "rewards/margins/dim1": 0.2 * step,
        "rewards/accuracies/w": 0.0,  # the pass at a sampled w has no single dimension: not plotted
    }


@pytest.fixture
def runs(tmp_path):
    return {
        "panacea": [(s, _run(tmp_path / f"p{s}", [_panacea(k, s) for k in (5, 10)])) for s in (0, 1)],
        "dpo": [
            (
                0,
                _run(
                    tmp_path / "d0",
                    [{"step": 5, "loss": 0.7, "rewards/accuracies": 0.8, "rewards/margins": 0.3}],
                ),
            )
        ],
    }


def test_every_run_row_plots_its_logged_metrics_per_dimension_and_seed(runs):
    frames = {name: {s: read_metrics(d) for s, d in pairs} for name, pairs in runs.items()}
    assert list(frames["panacea"][0]["step"]) == [5, 10]  # the final summary record has no loss
    fig = runs_figure(frames, title="t")
    accuracy = fig.axes[1]  # row panacea, panel reward accuracy
    lines = {
        line.get_label(): line.get_ydata() for line in accuracy.get_lines() if line.get_label()[0] != "_"
    }
    assert set(lines) == {"dim0 seed 0", "dim1 seed 0", "dim0 seed 1", "dim1 seed 1"}
    np.testing.assert_allclose(lines["dim1 seed 1"], [0.6 + 0.05 + 1, 0.6 + 0.10 + 1])


def test_the_method_figure_averages_over_dimensions_then_seeds(runs):
    frames = {name: {s: read_metrics(d) for s, d in pairs} for name, pairs in runs.items()}
    fig = methods_figure(frames, title="t")
    accuracy = {
        line.get_label(): line.get_ydata() for line in fig.axes[1].get_lines() if line.get_label()[0] != "_"
    }
    # seed s, step k: mean(0.5 + 0.01k, 0.6 + 0.01k + s); then the mean over seeds 0 and 1
    expected = [np.mean([np.mean([0.5 + 0.01 * k, 0.6 + 0.01 * k + s]) for s in (0, 1)]) for k in (5, 10)]
    np.testing.assert_allclose(accuracy["panacea"], expected)
    np.testing.assert_allclose(accuracy["dpo"], [0.8])
    colours = {
        line.get_label(): line.get_color()
        for ax in fig.axes
        for line in ax.get_lines()
        if line.get_label()[0] != "_"
    }
    assert colours["dpo"] != colours["panacea"]


def test_the_job_writes_both_figures_and_names_a_corrupt_log(runs, tmp_path):
    out = {k: tmp_path / f"{k}.{k[-3:]}" for k in ("runs_png", "runs_svg", "methods_png", "methods_svg")}
    training_curves_job(runs, **out, label="synth / tiny")
    assert all(p.stat().st_size > 1000 for p in out.values())
    bad = runs["dpo"][0][1] / "metrics.jsonl"
    bad.write_text('{"step": 5, "loss": 0.7}\nnot json\n')
    with pytest.raises(DataError, match="row 2"):
        read_metrics(bad.parent)


def test_a_run_shorter_than_logging_steps_is_drawn_from_its_final_mean_loss(tmp_path):
    run = tmp_path / "short"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "epoch": 0.1, "train_loss": 0.65}) + "\n")
    frame = read_metrics(run)
    assert frame[["step", "loss"]].to_dict("records") == [{"step": 2, "loss": 0.65}]
