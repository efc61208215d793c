"""Table 1 and Table 2 arithmetic on records whose implicit-reward margins are set by hand."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from conflux.errors import ConfluxError
from conflux.evaluation.accuracy import table1, table1_wide, table2, win_shares
from conflux.evaluation.records import WEIGHT_GRID, evaluation_plan, records_frame, weighted_labels
from conflux.evaluation.report_files import MEAN
from conflux.evaluation.tables import seed_spread

DIMS2 = ("helpful", "harmless")
# Three k=2 pairs. d = s_a - s_b: p0 (2, -1), p1 (-1, 2), p2 (1, -1); at (.5, .5) p2 is a tie.
S_A = np.array([[2, 0], [0, 2], [1, 0]], dtype=np.float32)
S_B = np.array([[0, 1], [1, 0], [0, 1]], dtype=np.float32)
IDS = ["p0", "p1", "p2"]


def hand_records(method: str, seed: int, correct: dict[tuple[float, float], list[bool]]) -> pd.DataFrame:
    """Records whose margin agrees with the label exactly where ``correct`` says so (wrong: 0 or flipped)."""
    frames = []
    for w, right in correct.items():
        labels = weighted_labels(S_A, S_B, w).astype(float)
        # A wrong pair gets the opposite sign, or a margin of exactly 0 (which must count as wrong too).
        margins = np.array(
            [
                lab * 0.3 if ok else (0.0 if i == 2 else -lab * 0.3)
                for i, (lab, ok) in enumerate(zip(labels, right, strict=True))
            ]
        )
        frames.append(
            records_frame(
                method=method, seed=seed, pair_ids=IDS, w=w, scores_a=S_A, scores_b=S_B, margins=margins
            )
        )
    return pd.concat(frames, ignore_index=True)


T, F = True, False
# Per setting, which of p0, p1, p2 each method gets right (p2 is dropped at (.5, .5): a tie under w).
METHOD_A = {(1.0, 0.0): [T, T, T], (0.75, 0.25): [T, T, F], (0.5, 0.5): [T, F, T], (0.25, 0.75): [F, F, F],
            (0.0, 1.0): [F, F, T]}  # fmt: skip
METHOD_B = {(1.0, 0.0): [T, T, F], (0.75, 0.25): [F, T, T], (0.5, 0.5): [F, T, F], (0.25, 0.75): [F, T, F],
            (0.0, 1.0): [T, T, T]}  # fmt: skip
METHOD_C = {(1.0, 0.0): [T, F, T], (0.75, 0.25): [F, F, T], (0.5, 0.5): [T, F, F], (0.25, 0.75): [T, T, T],
            (0.0, 1.0): [T, F, T]}  # fmt: skip


def test_labels_compare_weighted_scores_with_ties_as_zero():
    expected = {(1.0, 0.0): [1, -1, 1], (0.75, 0.25): [1, -1, 1], (0.5, 0.5): [1, 1, 0],
                (0.25, 0.75): [-1, 1, -1], (0.0, 1.0): [-1, 1, -1]}  # fmt: skip
    for w, labels in expected.items():
        assert weighted_labels(S_A, S_B, w).tolist() == labels


def test_plan_scores_unit_weights_on_all_pairs_and_mixed_weights_on_dimension_pair_conflicts():
    # k = 3: p0 conflicts on (0, 1) only, p1 on (1, 2) only, p2 on none (an agree pair).
    s_a = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.float32)
    s_b = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32)
    plan = dict(evaluation_plan(s_a, s_b))
    assert len(plan) == 3 + 3 * 3
    for w in [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]:
        assert plan[w].tolist() == [0, 1, 2]
    assert plan[(0.75, 0.25, 0.0)].tolist() == [0]
    assert plan[(0.0, 0.5, 0.5)].tolist() == [1]
    assert plan[(0.25, 0.0, 0.75)].tolist() == []


def test_k5_has_fifty_settings_and_their_labels_drop_and_count_ties():
    # One pair per dimension pair (a, b) with d_a = +2, d_b = -2 (tie at (.5, .5)) and one with d_a = +4,
    # d_b = -1 (no tie at any grid weight): 20 pairs, each conflicting on exactly its own dimension pair.
    dims = tuple(f"x{i}" for i in range(5))
    s_a, s_b, ids = [], [], []
    for a, b in combinations(range(5), 2):
        for da, db in ((2, -2), (4, -1)):
            row_a, row_b = np.zeros(5), np.zeros(5)
            row_a[a], row_b[b] = da, -db
            s_a.append(row_a)
            s_b.append(row_b)
            ids.append(f"{a}{b}:{da}")
    s_a, s_b = np.array(s_a, dtype=np.float32), np.array(s_b, dtype=np.float32)
    frames = []
    for w, idx in evaluation_plan(s_a, s_b):
        labels = weighted_labels(s_a[idx], s_b[idx], w)
        frames.append(
            records_frame(
                method="m",
                seed=0,
                pair_ids=[ids[i] for i in idx],
                w=w,
                scores_a=s_a[idx],
                scores_b=s_b[idx],
                margins=labels.astype(float),
            )
        )
    settings, summary = table2(pd.concat(frames), dims, resamples=0, level=0.95, seed=0)
    mean = settings[settings["seed"] == MEAN]
    assert len(mean) == 50 and len(mean.drop_duplicates(["dim_a", "dim_b", "w_a", "w_b"])) == 50
    half = mean[mean["w_a"] == 0.5]
    assert (half["n"] == 1).all() and (half["ties_dropped"] == 1).all()
    rest = mean[mean["w_a"] != 0.5]
    assert (rest["n"] == 2).all() and (rest["ties_dropped"] == 0).all()
    assert (mean["accuracy"] == 1.0).all()  # margins equal to the labels: every used pair right
    assert summary.loc[0, "settings"] == 50 and summary.loc[0, "win_rate"] == 1.0
    # At (.75, .25) the pair (2, -2) is labelled for a: .75·2 − .25·0 vs .75·0 + .25·2.
    assert weighted_labels(s_a[:1], s_b[:1], (0.75, 0.25, 0, 0, 0)).tolist() == [1]
    assert weighted_labels(s_a[:1], s_b[:1], (0.25, 0.75, 0, 0, 0)).tolist() == [-1]


def test_win_rate_shares_ties_and_mean_accuracy_is_over_settings():
    records = pd.concat(
        [hand_records("A", 0, METHOD_A), hand_records("B", 0, METHOD_B), hand_records("C", 0, METHOD_C)]
    )
    settings, summary = table2(records, DIMS2, resamples=0, level=0.95, seed=0)
    mean = settings[settings["seed"] == MEAN].set_index(["w_a", "method"])
    assert mean.loc[(1.0, "A"), "accuracy"] == 1.0 and mean.loc[(1.0, "B"), "accuracy"] == 2 / 3
    assert mean.loc[(0.5, "A"), "n"] == 2 and mean.loc[(0.5, "A"), "ties_dropped"] == 1
    assert mean.loc[(0.5, "B"), "accuracy"] == 0.5  # p2 dropped; B right on p1 only
    shares = mean["win_share"].unstack("method").loc[[1.0, 0.75, 0.5, 0.25, 0.0]]
    expected = [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1], [0, 1, 0]]
    np.testing.assert_allclose(shares.to_numpy(), expected, rtol=0, atol=1e-15)
    s = summary[summary["seed"] == MEAN].set_index("method")
    assert s["win_rate"].to_dict() == pytest.approx({"A": 11 / 30, "B": 11 / 30, "C": 8 / 30})
    assert s["mean_accuracy"].to_dict() == pytest.approx({"A": 0.5, "B": 19 / 30, "C": 19 / 30})
    assert (s["settings"] == 5).all() and (s["settings_empty"] == 0).all()


def test_win_shares_split_a_tie_equally():
    assert win_shares(np.array([3, 3, 1])).tolist() == [0.5, 0.5, 0.0]
    assert win_shares(np.array([[2, 2, 2], [0, 1, 0]])).tolist() == [[1 / 3] * 3, [0.0, 1.0, 0.0]]


def test_table1_values_per_seed_and_mean_over_seeds():
    all_right = {w: [T, T, T] for w in METHOD_A}
    records = pd.concat(
        [
            hand_records("A", 0, METHOD_A),
            hand_records("A", 1, all_right),
            hand_records("B", 0, METHOD_B),
            hand_records("B", 1, METHOD_B),
        ]
    )
    long = table1(records, DIMS2, resamples=200, level=0.9, seed=0)
    wide = table1_wide(long, DIMS2).set_index(["method", "seed"])
    assert wide.loc[("A", "0"), "helpful"] == 1.0 and wide.loc[("A", "0"), "harmless"] == 1 / 3
    assert wide.loc[("A", "1"), "harmless"] == 1.0
    assert wide.loc[("A", MEAN), "harmless"] == pytest.approx(2 / 3)
    assert wide.loc[("B", MEAN), "helpful"] == pytest.approx(2 / 3)
    assert wide.loc[("B", MEAN), "harmless"] == 1.0
    assert (wide["helpful_n"] == 3).all() and (wide["harmless_ties_dropped"] == 0).all()
    assert list(wide.index.get_level_values("seed")[:2]) == [MEAN, MEAN]  # the mean rows come first
    assert (long.loc[long["seed"] == MEAN, "seeds"] == 2).all()
    inside = (long["ci_low"] <= long["accuracy"] + 1e-12) & (long["accuracy"] <= long["ci_high"] + 1e-12)
    assert inside.all()
    # the spread over seeds: A's harmless is 1/3 on seed 0 and 1 on seed 1; B is the same on both seeds
    spread = seed_spread(wide.reset_index(), "method", "harmless")
    assert spread == {"A": "0.333–1.000", "B": "1.000–1.000"}


def test_methods_with_other_seeds_or_other_pairs_are_refused():
    a = hand_records("A", 0, METHOD_A)
    with pytest.raises(ConfluxError, match="seeds"):
        table1(pd.concat([a, hand_records("B", 1, METHOD_B)]), DIMS2, resamples=0, level=0.95, seed=0)
    fewer = hand_records("B", 0, METHOD_B)
    fewer = fewer[fewer["pair_id"] != "p1"]
    with pytest.raises(ConfluxError, match="not one eval set"):
        table1(pd.concat([a, fewer]), DIMS2, resamples=0, level=0.95, seed=0)


def test_grid_is_the_papers_five_weights():
    assert WEIGHT_GRID == ((1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0))


def test_the_tables_compare_the_papers_three_methods_and_the_stages_go_to_the_ablation():
    from conflux.methods import ablation_variants, compared_variants

    assert compared_variants("curriculum") == ["curriculum_stage3", "panacea", "dpo_soup"]
    stages = ["curriculum_stage1", "curriculum_stage2", "curriculum_stage3"]
    assert ablation_variants("curriculum", ("curriculum", "panacea", "dpo_soup")) == stages
    # each chosen variant goes beside the method it varies, which joins the ablation with it
    assert ablation_variants("curriculum") == [*stages, "curriculum_rdpo_stage3", "panacea", "panacea_lora"]
    assert ablation_variants("curriculum", ("panacea", "panacea_lora")) == ["panacea", "panacea_lora"]
    assert compared_variants("curriculum", ("curriculum", "dpo_soup")) == ["curriculum_stage3", "dpo_soup"]
    assert ablation_variants("curriculum", ("panacea", "dpo_soup")) == []
    assert ablation_variants("curriculum", ("panacea_lora", "dpo_soup")) == []  # nothing to set it beside


def test_ablation_table_is_table1_of_the_stages_for_k2(tmp_path):
    """k = 2: the ablation holds Table 1's numbers of the stages, computed by hand from the records."""
    from conflux.evaluation.records import write_records
    from conflux.evaluation.tables import ablation_job

    files = []
    for method, correct in (("curriculum_stage1", METHOD_A), ("curriculum_stage2", METHOD_B),
                            ("curriculum_stage3", METHOD_C)):  # fmt: skip
        files.append(tmp_path / f"{method}.parquet")
        write_records(files[-1], hand_records(method, 0, correct), {"dims": list(DIMS2)})
    csv, md, html = (tmp_path / f"ablation.{ext}" for ext in ("csv", "md", "html"))
    wide = ablation_job(files, csv=csv, md=md, html=html, resamples=0).set_index(["method", "seed"])
    # helpful at w = (1, 0): A right on 3 of 3, B 2, C 2; harmless at (0, 1): A 1, B 3, C 2 (p0..p2)
    assert wide.loc[("curriculum_stage1", MEAN), "helpful"] == 1.0
    assert wide.loc[("curriculum_stage2", MEAN), "helpful"] == pytest.approx(2 / 3)
    assert wide.loc[("curriculum_stage3", MEAN), "harmless"] == pytest.approx(2 / 3)
    assert wide.loc[("curriculum_stage2", MEAN), "harmless"] == 1.0
    text = md.read_text()
    assert "Ablation: the curriculum after each stage" in text and "curriculum_stage1" in text
    assert pd.read_csv(csv)["method"].nunique() == 3 and html.read_text().startswith("<!DOCTYPE html>")


def test_figure3_puts_one_dimension_on_x_against_each_other_one():
    """The paper's Figure 3: Figure 2's panels that contain the anchor dimension, the anchor's weight on x
    (a pair where it comes second is turned around: its w_a is the other's 1 - w)."""
    from conflux.evaluation.figures import figure2

    rows = []
    for a, b in (("x0", "x1"), ("x0", "x2"), ("x1", "x2")):
        for w_a, w_b in WEIGHT_GRID:
            rows.append({"dim_a": a, "dim_b": b, "w_a": w_a, "w_b": w_b, "method": "m", "seed": MEAN, "n": 4,
                         "accuracy": w_a, "ci_low": w_a, "ci_high": w_a, "ties_dropped": 0})  # fmt: skip
    settings = pd.DataFrame(rows)
    fig = figure2(settings, paired_with="x2", ncols=2)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["x2 vs x0 (n=4)", "x2 vs x1 (n=4)"]
    for ax in axes:  # accuracy was set to the first dimension's weight, so on x2's axis it reads 1 - w
        x, y = ax.lines[0].get_data()
        np.testing.assert_allclose(np.asarray(y), 1 - np.asarray(x))
