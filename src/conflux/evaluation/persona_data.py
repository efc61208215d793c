"""The held-out part of a persona dataset as the persona metrics read it: its persona, its prompts and its
persona-vs-general pairs. Kept apart from :mod:`conflux.evaluation.persona_eval` (which loads torch and the
model code) so the table job that reads them starts without either."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conflux.data.pairs import read_pairs, read_sft
from conflux.errors import DataError


def persona_of(sft_eval: str | Path) -> str:
    """The persona named in held-out SFT rows (one per file)."""
    personas = sorted(set(read_sft(sft_eval).column("persona").to_pylist()))
    if len(personas) != 1:
        raise DataError(f"expected one persona, found {personas}", file=sft_eval, row="all", field="persona")
    return personas[0]


def held_out_pairs(pairs_eval: str | Path) -> dict[str, list]:
    """Persona-vs-general pairs with the persona response identified by its score (k = 1)."""
    table = read_pairs(pairs_eval)
    if table.k != 1:
        raise DataError(
            f"expected one dimension, got {list(table.dims)}", file=pairs_eval, row="header", field="dims"
        )
    s_a, s_b = table.scores()
    if np.any(s_a[:, 0] == s_b[:, 0]):
        row = int(np.flatnonzero(s_a[:, 0] == s_b[:, 0])[0]) + 1
        raise DataError("equal scores: no persona side", file=pairs_eval, row=row, field="scores_a")
    a_persona = s_a[:, 0] > s_b[:, 0]
    cols = table.table.to_pydict()
    pick = zip(cols["response_a"], cols["response_b"], a_persona, strict=True)
    persona, general = zip(*((a, b) if first else (b, a) for a, b, first in pick), strict=True)
    return {
        "pair_id": cols["pair_id"],
        "prompt": cols["prompt"],
        "persona": list(persona),
        "general": list(general),
    }


def held_out_inputs(sft_eval: str | Path, pairs_eval: str | Path) -> tuple[str, list[str], dict[str, list]]:
    """(persona, distinct held-out prompts to generate from, held-out persona-vs-general pairs)."""
    prompts = list(dict.fromkeys(read_sft(sft_eval).column("prompt").to_pylist()))
    return persona_of(sft_eval), prompts, held_out_pairs(pairs_eval)
