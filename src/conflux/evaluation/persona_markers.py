"""Persona-style score: counting the speech markers of a persona in a text.

The lexicon is :data:`conflux.data.persona_text.PERSONA_MARKERS`: for ``ojousama`` お嬢様言葉
(わたくし, ですわ, ますわ, ですの, かしら, おほほ, ごきげんよう, ございますわ, よろしくてよ, ですこと,
くださいまし, あそばせ), for ``student`` casual male-student speech (俺, っす, だよな, じゃん, マジで, 講義,
サークル, バイト). The bundled
sets are written so that every persona reply holds a marker of its persona and no general reply holds any,
which makes the score's two ends meaningful: the held-out persona replies score 1, the general ones 0.

Counting rule: occurrences are found left to right without overlap, and at each position the longest marker
wins (``ございますわ`` counts once, not also as ``ますわ``). A marker that is also the start of an ordinary
word is not counted there: ``ですの``/``ませんの`` before で (the plain conjunction ですので, "so"). A
text's score for a persona is its number of markers; over a set of texts the persona-style score is the
*share* of texts with at least one marker, and the *mean* number of markers per text is reported beside it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# What may not follow a marker for it to count (ですので is everyday polite speech, not お嬢様言葉).
NOT_BEFORE: dict[str, str] = {"ですの": "で", "ませんの": "で"}


@lru_cache(maxsize=32)
def _pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first: regex alternation takes the first alternative that matches at a position.
    ordered = sorted(set(markers), key=lambda m: (-len(m), m))
    parts = [re.escape(m) + (f"(?!{re.escape(NOT_BEFORE[m])})" if m in NOT_BEFORE else "") for m in ordered]
    return re.compile("|".join(parts))


def count_markers(text: str, markers: Sequence[str]) -> int:
    """Non-overlapping marker occurrences in ``text`` (leftmost, then longest)."""
    if not markers:
        return 0
    return len(_pattern(tuple(markers)).findall(text))


def style_summary(counts: np.ndarray) -> dict[str, float | int]:
    """share (texts with ≥ 1 marker), mean_markers (per text) and n of a set of per-text marker counts."""
    n = len(counts)
    if n == 0:
        return {"share": float("nan"), "mean_markers": float("nan"), "n": 0}
    return {"share": float(np.mean(counts > 0)), "mean_markers": float(np.mean(counts)), "n": n}
