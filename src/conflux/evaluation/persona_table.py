"""The persona-study table: every model variant's persona style, persona preference and perplexity.

Reads the metrics files of :func:`conflux.evaluation.persona_eval.persona_eval_job` (one per variant and seed)
of one persona dataset. Per variant it reports each seed and the mean over its seeds, every number with a
percentile bootstrap interval: generation scores resample the held-out prompts, margin and perplexity the
held-out pairs, with one draw shared by every variant and seed (so variants are compared on the same resampled
sets). Optionally the held-out replies themselves are scored with the same lexicon, as the scale's two ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conflux.data.specs import GENERAL_PERSONA
from conflux.errors import ConfluxError, DataError
from conflux.evaluation.bootstrap import (
    Estimate,
    PairResampler,
    bootstrap_mean,
    bootstrap_ratio,
    resample_counts,
)
from conflux.evaluation.persona_data import held_out_pairs
from conflux.evaluation.persona_markers import count_markers
from conflux.evaluation.report_files import (
    MEAN,
    fmt_estimate,
    interval_note,
    write_csv,
    write_table_files,
)

NO_SEED = "-"  # the base model has no training seed


def read_persona_metrics(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Metrics files of one persona dataset; they must share persona, prompt format and lexicon."""
    records = []
    for path in paths:
        try:
            rec = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"not a readable metrics file ({err})", file=path, row="all", field="-") from None
        for key in ("persona", "prompt_format", "lexicon"):
            if records and rec[key] != records[0][key]:
                raise DataError(
                    f"{key} {rec[key]!r} differs from {records[0][key]!r} in {paths[0]}",
                    file=path,
                    row="header",
                    field=key,
                )
        if any((r["variant"], r["seed"]) == (rec["variant"], rec["seed"]) for r in records):
            raise DataError(
                f"variant {rec['variant']!r} seed {rec['seed']} comes twice",
                file=path,
                row="all",
                field="seed",
            )
        records.append(rec)
    if not records:
        raise ConfluxError("no persona metrics files given")
    return records


def _items(records: list[dict[str, Any]], kind: str, key: str) -> list[str]:
    """The item ids (prompts or pair ids) every record must share, in the first record's order."""
    ids = [item[key] for item in records[0][kind]]
    for rec in records[1:]:
        if sorted(item[key] for item in rec[kind]) != sorted(ids):
            raise ConfluxError(
                f"variant {rec['variant']!r} seed {rec['seed']} was evaluated on other {kind} than "
                f"{records[0]['variant']!r}: not one held-out set"
            )
    return ids


def _matrix(group: list[dict[str, Any]], kind: str, key: str, ids: list[str], field) -> np.ndarray:
    """(items, seeds) values of ``field(item)`` aligned on ``ids``."""
    cols = []
    for rec in group:
        by_id = {item[key]: field(item) for item in rec[kind]}
        cols.append([by_id[i] for i in ids])
    return np.asarray(cols, dtype=np.float64).T


def _row(name: str, seed: str, n_seeds: int, estimates: dict[str, Estimate]) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": name, "seed": seed, "seeds": n_seeds}
    for col, e in estimates.items():
        row.update({col: e.point, f"{col}_ci_low": e.low, f"{col}_ci_high": e.high})
    return row


def persona_table(
    records: list[dict[str, Any]], *, resamples: int, level: float, seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Long table (a mean row then one row per seed for each variant) and the item counts n."""
    prompts = _items(records, "generations", "prompt")
    pair_ids = _items(records, "pairs", "pair_id")
    w_prompts = PairResampler(prompts, resamples, level, seed).counts_for(prompts)
    w_pairs = PairResampler(pair_ids, resamples, level, seed + 1).counts_for(pair_ids)
    styles = list(records[0]["lexicon"])
    variants: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        variants.setdefault(rec["variant"], []).append(rec)
    rows = []
    for name, recs in variants.items():
        recs = sorted(recs, key=lambda r: -1 if r["seed"] is None else r["seed"])
        groups = [(MEAN, recs)] + [(NO_SEED if r["seed"] is None else str(r["seed"]), [r]) for r in recs]
        for label, group in groups:
            est: dict[str, Estimate] = {}
            for style in styles:
                counts = _matrix(group, "generations", "prompt", prompts, lambda g, s=style: g["markers"][s])
                est[f"{style}_share"] = bootstrap_mean(counts > 0, w_prompts, level)
                est[f"{style}_markers"] = bootstrap_mean(counts, w_prompts, level)
            margin = _matrix(
                group, "pairs", "pair_id", pair_ids, lambda p: p["logp_persona"] - p["logp_general"]
            )
            est["margin_mean"] = bootstrap_mean(margin, w_pairs, level)
            est["margin_accuracy"] = bootstrap_mean(margin > 0, w_pairs, level)
            # per token: a margin that length differences between the two replies do not make
            per_token = _matrix(group, "pairs", "pair_id", pair_ids, lambda p: p["logp_persona"] / max(
                p["tokens_persona"], 1) - p["logp_general"] / max(p["tokens_general"], 1))  # fmt: skip
            est["margin_per_token"] = bootstrap_mean(per_token, w_pairs, level)
            for side in ("general", "persona"):
                nll = -_matrix(group, "pairs", "pair_id", pair_ids, lambda p, s=side: p[f"logp_{s}"])
                tokens = _matrix(group, "pairs", "pair_id", pair_ids, lambda p, s=side: p[f"tokens_{s}"])
                est[f"ppl_{side}"] = bootstrap_ratio(nll, tokens, w_pairs, level, transform=np.exp)
            rows.append(_row(name, label, len(group), est))
    return pd.DataFrame(rows), {"prompts": len(prompts), "pairs": len(pair_ids)}


def data_rows(
    pairs_eval: str | Path, lexicon: dict[str, list[str]], *, resamples: int, level: float, seed: int
) -> pd.DataFrame:
    """Style scores of the held-out persona and general replies themselves (the scale's two ends)."""
    pairs = held_out_pairs(pairs_eval)
    counts = resample_counts(len(pairs["pair_id"]), resamples, seed + 2)
    rows = []
    for side in ("persona", "general"):
        est = {}
        for style, markers in lexicon.items():
            c = np.array([count_markers(t, markers) for t in pairs[side]], dtype=np.float64)
            est[f"{style}_share"] = bootstrap_mean(c > 0, counts, level)
            est[f"{style}_markers"] = bootstrap_mean(c, counts, level)
        rows.append(_row(f"data: {side} replies", NO_SEED, 0, est))
    return pd.DataFrame(rows)


def persona_table_job(
    metrics: Sequence[str | Path],
    *,
    csv: str | Path,
    md: str | Path,
    html: str | Path | None = None,
    pairs_eval: str | Path | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    label: str = "",
) -> pd.DataFrame:
    """The persona table of one dataset from its variants' metrics files (CSV and Markdown)."""
    records = read_persona_metrics(metrics)
    table, n = persona_table(records, resamples=resamples, level=level, seed=seed)
    lexicon = records[0]["lexicon"]
    if pairs_eval is not None:
        table = pd.concat(
            [table, data_rows(pairs_eval, lexicon, resamples=resamples, level=level, seed=seed)],
            ignore_index=True,
        )
    write_csv(csv, table)
    persona, first = records[0]["persona"], records[0]
    gen = first["generation"]
    mode = "greedy" if gen["greedy"] else f"sampled (T={gen['temperature']}, seed {gen['seed']})"
    notes = [
        f"Persona: {persona}. n = {n['prompts']} held-out prompts (generations), {n['pairs']} held-out "
        "persona-vs-general pairs (margin, perplexity).",
        f"Seeds per variant: {_seed_lists(records)}.",
        f"Generations: {mode}, at most {gen['max_new_tokens']} new tokens, prompt format "
        f"'{first['prompt_format']}'.",
        "Style share: share of generations with ≥ 1 marker of the persona (leftmost-longest, non-overlapping "
        "matches of the lexicon); markers: mean count per generation. Margin: log π(persona reply) − "
        "log π(general reply), summed over response tokens; accuracy: share of pairs with margin > 0; per "
        "token: the same with each reply's log-prob divided by its tokens (not driven by reply length). "
        "Perplexity: exp(total NLL / total tokens) of the held-out replies given their prompt.",
        interval_note(resamples, level, seed, over="held-out prompts and pairs", rows="variant"),
    ]
    if persona == GENERAL_PERSONA:
        general = (
            "The general set: its 'persona' reply is the data's own reply and its 'general' reply the base "
            "model's greedy one (SPIN's pairing); the style columns check that no persona markers appear."
        )
        notes.insert(1, general)
    pretrain = first.get("base_pretrain")
    if pretrain:
        notes.insert(1, _pretrain_note(pretrain))
    mean_rows = (table["seed"] == MEAN) | (table["seeds"] == 0)  # seeds = 0: the data's own replies
    sections = [
        ("Mean over seeds", _view(table[mean_rows], persona)),
        ("Per seed", _view(table[~mean_rows], persona, with_seed=True)),
    ]
    title = f"Persona study: {persona}" + (f" ({label})" if label else "")
    write_table_files(md, html, title, notes, sections)
    return table


def _pretrain_note(pretrain: dict[str, Any]) -> str:
    """The base model's pretraining in one line, so a reader sees that the variants start from a real LM."""
    return (
        f"Base model: the embedded tiny Llama, pretrained {pretrain['steps']} steps on the bundled general "
        "replies and synthetic text (not the persona replies); held-out reply perplexity "
        f"{pretrain['held_out_reply_perplexity']:.2f} (at initialisation "
        f"{pretrain['initial_held_out_reply_perplexity']:.0f})."
    )


def _seed_lists(records: list[dict[str, Any]]) -> str:
    seeds: dict[str, list[str]] = {}
    for rec in records:
        seeds.setdefault(rec["variant"], []).append(NO_SEED if rec["seed"] is None else str(rec["seed"]))
    return "; ".join(f"{v} {', '.join(s)}" for v, s in seeds.items())


def _view(table: pd.DataFrame, persona: str, with_seed: bool = False) -> pd.DataFrame:
    out = table[["variant", "seed"]].copy() if with_seed else table[["variant", "seeds"]].copy()

    def est(col: str) -> list[str]:
        return [fmt_estimate(*v) for v in table[[col, f"{col}_ci_low", f"{col}_ci_high"]].to_numpy()]

    styles = [c.removesuffix("_share") for c in table.columns if c.endswith("_share")]
    for style in [*(s for s in styles if s == persona), *(s for s in styles if s != persona)]:
        out[f"{style} share"] = est(f"{style}_share")
        out[f"{style} markers"] = est(f"{style}_markers")
    for col, name in (
        ("margin_mean", "margin"),
        ("margin_accuracy", "margin acc."),
        ("margin_per_token", "margin/token"),
        ("ppl_general", "ppl general"),
        ("ppl_persona", "ppl persona"),
    ):
        out[name] = est(col)
    return out
