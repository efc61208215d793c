"""Layer x module grids of the weight-analysis figures: quadrature sums and CL-L2 shares by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conflux.analysis.figures import NON_LAYER, heatmaps, quadrature_grid, share_panels, stats_panels


def stats_frame() -> pd.DataFrame:
    rows = [
        ("sft", 0, "q", 3.0),
        ("sft", 0, "q", 4.0),  # two q parameters of layer 0 (weight and bias): sqrt(9 + 16) = 5
        ("sft", 1, "down", 2.0),
        ("sft", None, "lm_head", 1.0),
        ("dpo", 0, "q", 1.0),
        ("dpo", 1, "down", 0.5),
        ("dpo", None, "lm_head", 6.0),
    ]
    frame = pd.DataFrame(rows, columns=["model", "layer", "module", "l2"])
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def test_cells_add_norms_in_quadrature_with_layers_first_and_modules_in_model_order() -> None:
    grid = quadrature_grid(stats_frame()[lambda f: f["model"] == "sft"], "l2")
    assert list(grid.index) == [0, 1, NON_LAYER]
    assert list(grid.columns) == ["q", "down", "lm_head"]
    assert grid.loc[0, "q"] == pytest.approx(5.0)
    assert grid.loc[1, "down"] == pytest.approx(2.0) and grid.loc[NON_LAYER, "lm_head"] == pytest.approx(1.0)
    assert math.isnan(grid.loc[0, "down"])  # no parameter there: no value, not zero


def test_cl_share_of_a_cell_is_its_cl_l2_over_its_l2() -> None:
    conflict = pd.DataFrame(
        {
            "a": ["sft"] * 2,
            "b": ["dpo"] * 2,
            "layer": pd.array([0, 0], dtype="Int64"),
            "module": ["q", "q"],
            "l2_a": [3.0, 4.0],
            "cl_l2_a": [3.0, 0.0],
            "l2_b": [1.0, 1.0],
            "cl_l2_b": [0.0, 1.0],
        }
    )
    (fa, ta, ga), (fb, tb, gb) = share_panels(conflict)
    assert fa == fb == "share" and ta == "CL-L2 share sft (vs dpo)" and tb == "CL-L2 share dpo (vs sft)"
    assert ga.loc[0, "q"] == pytest.approx(3.0 / 5.0)
    assert gb.loc[0, "q"] == pytest.approx(1.0 / math.sqrt(2.0))


def test_panels_of_one_family_share_a_colour_scale() -> None:
    panels = stats_panels(stats_frame())
    fig = heatmaps(panels, title="t")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    assert (
        images[0].get_clim() == images[1].get_clim() == pytest.approx((0.5, 6.0))
    )  # min and max over both runs


def test_cell_labels_are_black_on_bright_cells_and_white_on_dark_ones() -> None:
    # viridis runs from dark purple (vmin) to bright yellow (vmax): 0.5 at the bottom, 6.0 at the top
    fig = heatmaps(stats_panels(stats_frame()), title="t")
    colours = {text.get_text(): text.get_color() for ax in fig.axes for text in ax.texts}
    assert colours["0.5"] == "w" and colours["6"] == "k"
