"""Synthetic preference sets with the curriculum paper's structure and known ground truth: the default's data.

Two generators mimic the real datasets at laptop scale:

* :func:`synthetic_pku` - PKU-SafeRLHF-like, k=2 (helpful, harmless), s in {0,1}^2 with s_b = 1 - s_a.
* :func:`~conflux.data.synthetic_helpsteer.synthetic_helpsteer` - HelpSteer2-like, k=5, scores 0-4.

The structure that makes the paper's point measurable (Nishida & Nishida: on conflict pairs, methods trained
on all data give dimension-specific rewards near chance for the dimension the agree majority does not teach):

* **Conflict rate**: exactly ``round(conflict_rate * n)`` pairs are conflict pairs; the agree pairs are the
  large majority (PKU-SafeRLHF's are too).
* **Signal strength per dimension** (``signal``): the probability that a pair's text shows that dimension's
  preference at all. A visible dimension puts its good phrase in the winner and its bad phrase in the loser
  (:data:`PKU_MARKERS`); a hidden one gives both responses a neutral sentence of the same kind.
* **The shortcut**: ``harmless`` is the easy dimension (visible in 90% of pairs by default, ``helpful`` in
  50%). On agree pairs its markers predict both labels, so a model trained on all data can learn "the safe
  answer wins" for either dimension; ``helpful``'s own markers matter only where the dimensions conflict,
  and there the shortcut points the wrong way.

Oracle (what a reader of the markers scores on held-out conflict pairs, margin 0 counting as wrong): from
dimension i's own markers, ``signal[i]``; knowing that the pair is a conflict pair and reading both
dimensions, ``1 - (1 - signal[helpful]) (1 - signal[harmless])`` (0.95 at the defaults). A model that follows
the shortcut scores at most ``signal[helpful]`` on helpful and ``signal[harmless]`` on harmless.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from conflux.data.pairs import PairTable, make_pair_table
from conflux.data.synthetic_helpsteer import (
    AUDIENCES,
    CORES,
    FILLERS,
    HELPSTEER_DIMS,
    HS_PROMPTS,
    OPENINGS,
    QUALITY_WORDS,
    SUBJECTS,
    TECH_TERMS,
    signal_vector,
    synthetic_helpsteer,
)

__all__ = ["HELPSTEER_DIMS", "PKU_DIMS", "PKU_SIGNAL", "corpus_texts", "synthetic_helpsteer", "synthetic_pku"]

PKU_DIMS = ("helpful", "harmless")
PKU_SIGNAL: dict[str, float] = {"helpful": 0.5, "harmless": 0.9}

# -- PKU-like vocabulary -------------------------------------------------------------------------------------
TASKS = (
    "fix a leaking faucet", "clean a cast iron pan", "change a flat tire", "paint a small room",
    "install a ceiling fan", "replace a light switch", "build a campfire", "sharpen a kitchen knife",
    "cut down a small tree", "clean the oven", "unclog a kitchen drain", "use a power drill",
    "mix cleaning products", "repair a bicycle brake", "climb onto the roof", "charge a car battery",
    "store old medicine", "cook chicken on a grill", "deep fry a turkey", "move a heavy sofa",
    "trim a tall hedge", "remove mold from a wall", "hang a heavy mirror", "jump start a car",
    "replace a broken window", "fix a loose railing", "set up a home network", "get rid of wasps",
    "thaw frozen pipes", "use a ladder outdoors", "dispose of old paint", "clean a chimney",
    "light a gas stove", "repair an extension cord", "lift weights at home", "go hiking alone",
    "swim in a cold lake", "ride a scooter in traffic",
)  # fmt: skip
PKU_PROMPTS = (
    "How do I {task}?",
    "What is the best way to {task} at home?",
    "Can you explain how to {task} quickly?",
    "I need to {task} this weekend. Any advice?",
    "My friend asked me how to {task}. What should I say?",
    "Is there an easy way to {task} without any help?",
)
STEPS = (
    "gather the right tools", "read the manual", "measure everything twice", "work in small parts",
    "check the result", "clear the work area", "write down each part", "test it once more",
    "set aside enough time", "ask a friend to hold things", "sort the parts by size", "label every piece",
)  # fmt: skip
HELPFUL = (
    "Here are the steps to {task}: first {s1}, then {s2}.",
    "Follow these steps: first {s1}, then {s2}, and finally {s3}.",
    "Here are the steps: first {s1}, then {s2}, and you are done.",
    "To {task}, follow these steps: first {s1}, then {s2}.",
)
UNHELPFUL = (
    "I am not sure how to {task}, it really depends on many things.",
    "I am not sure, it is hard to say anything about that in general.",
    "Sorry, I do not really know much about how to {task}.",
    "I do not really know, maybe look it up somewhere some other day.",
    "Hard to say, I am not sure it matters how you {task}.",
)
HARMLESS = (
    "Please do it safely and consult a professional if anything feels wrong.",
    "Work safely, wear protective gear, and consult a professional when unsure.",
    "Stay careful: read the safety label and consult a professional first.",
    "Take your time, go slowly and safely, and keep children away.",
)
HARMFUL = (
    "Just ignore the warning labels and take the dangerous shortcut.",
    "Ignore the warning signs, a dangerous shortcut saves a lot of time.",
    "Skip the checks and ignore the warning, nobody will ever notice.",
    "Take the dangerous shortcut and do not bother with any gear.",
)
# Lower-case phrases that mark each side of each dimension; every template above contains one of its side's.
PKU_MARKERS: dict[str, tuple[str, ...]] = {
    "helpful": ("here are the steps", "follow these steps"),
    "unhelpful": ("i am not sure", "i do not really know"),
    "harmless": ("safely", "consult a professional"),
    "harmful": ("ignore the warning", "dangerous shortcut"),
}

# Neutral sentences for a hidden dimension: the same kind of clause, no marker of either side.
NEUTRAL_HELP = (
    "People {task} in many different ways.",
    "There is more than one way to {task}.",
    "It can take a while to {task} the first time.",
    "Lots of people {task} at some point.",
)
NEUTRAL_SAFE = (
    "It usually takes about an hour.",
    "Many people do this on a weekend.",
    "The weather can make a difference.",
    "It is a common job around the house.",
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _pku_response(rng: np.random.Generator, task: str, helpful: bool | None, harmless: bool | None) -> str:
    """One response; ``None`` for a dimension hidden in this pair (a neutral clause instead of a marker)."""
    steps = rng.choice(len(STEPS), size=3, replace=False)
    s1, s2, s3 = (STEPS[int(i)] for i in steps)
    help_options = NEUTRAL_HELP if helpful is None else HELPFUL if helpful else UNHELPFUL
    help_part = _pick(rng, help_options).format(task=task, s1=s1, s2=s2, s3=s3)
    safe_part = _pick(rng, NEUTRAL_SAFE if harmless is None else HARMLESS if harmless else HARMFUL)
    # Clause order is random and independent of the labels, so position carries no preference.
    parts = [help_part, safe_part] if rng.random() < 0.5 else [safe_part, help_part]
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def _pku_rows(n_pairs: int, conflict_rate: float, visible_p: np.ndarray, rng: np.random.Generator) -> dict:
    n_conflict = round(conflict_rate * n_pairs)
    conflict = np.zeros(n_pairs, dtype=bool)
    conflict[rng.permutation(n_pairs)[:n_conflict]] = True
    # a wins "helpful" with probability 1/2; "harmless" goes the same way unless the pair is a conflict pair.
    a_helpful = rng.random(n_pairs) < 0.5
    a_harmless = a_helpful ^ conflict
    visible = rng.random((n_pairs, 2)) < visible_p
    scores_a = np.stack([a_helpful, a_harmless], axis=1).astype(np.float32)
    rows: dict[str, list] = {"prompt": [], "response_a": [], "response_b": []}
    for i in range(n_pairs):
        task = _pick(rng, TASKS)
        help_a = bool(a_helpful[i]) if visible[i, 0] else None
        safe_a = bool(a_harmless[i]) if visible[i, 1] else None
        rows["prompt"].append(_pick(rng, PKU_PROMPTS).format(task=task))
        rows["response_a"].append(_pku_response(rng, task, help_a, safe_a))
        rows["response_b"].append(
            _pku_response(
                rng, task, None if help_a is None else not help_a, None if safe_a is None else not safe_a
            )
        )
    return {**rows, "scores_a": scores_a, "scores_b": 1.0 - scores_a}


def synthetic_pku(
    n_pairs: int,
    *,
    conflict_rate: float = 0.3,
    signal: Mapping[str, float] | None = None,
    seed: int = 0,
    name: str = "synthetic_pku",
) -> PairTable:
    """A PKU-SafeRLHF-like k=2 set over ("helpful", "harmless") with exactly round(rate * n) conflict pairs.

    Like the real data every dimension prefers one side (s_b = 1 - s_a, scores in {0, 1}); an *agree* pair has
    one winner in both dimensions, a *conflict* pair opposite winners. ``signal`` overrides
    :data:`PKU_SIGNAL` (per dimension, the share of pairs whose text shows it); see the module docstring.
    """
    if n_pairs < 1 or not 0.0 <= conflict_rate <= 1.0:
        raise ValueError(f"need n_pairs >= 1 and 0 <= conflict_rate <= 1, got {n_pairs}, {conflict_rate}")
    visible_p = signal_vector(signal, PKU_DIMS, PKU_SIGNAL)
    rows = _pku_rows(n_pairs, conflict_rate, visible_p, np.random.default_rng(seed))
    pair_id = [f"{name}-{i:06d}" for i in range(n_pairs)]
    return make_pair_table(pair_id=pair_id, **rows, dims=PKU_DIMS, source=name)


def corpus_texts(seed: int = 0, n: int = 2000) -> list[str]:
    """``n`` texts for training the tiny model's tokenizer: every word list once, then prompts and responses
    sampled from both generators, so the tokenizer covers all synthetic vocabularies."""
    vocab = [
        *TASKS, *PKU_PROMPTS, *STEPS, *HELPFUL, *UNHELPFUL, *HARMLESS, *HARMFUL, *NEUTRAL_HELP,
        *NEUTRAL_SAFE, *SUBJECTS, *HS_PROMPTS,
        " ".join(AUDIENCES), *OPENINGS, *CORES, " ".join(TECH_TERMS), *FILLERS,
        *(" ".join(good + bad) for good, bad in QUALITY_WORDS.values()),
    ]  # fmt: skip
    texts = vocab[:n]
    remaining = n - len(texts)
    if remaining <= 0:
        return texts
    # Each pair gives 3 texts: together more than ``remaining``.
    pku = synthetic_pku(remaining // 4 + 1, seed=seed).table
    helpsteer = synthetic_helpsteer(remaining // 4 + 1, seed=seed).table
    sampled: list[str] = []
    for table in (pku, helpsteer):
        for column in ("prompt", "response_a", "response_b"):
            sampled.extend(table.column(column).to_pylist())
    order = np.random.default_rng([seed, 1]).permutation(len(sampled))
    texts.extend(sampled[int(i)] for i in order[:remaining])
    return texts
