"""HelpSteer2: one response per row with five 0-4 attribute scores; pairs are responses sharing a prompt.

Responses to one prompt usually sit in consecutive rows (two, sometimes more), but grouping by the prompt
text over the whole file does not rely on that. Every unordered pair within a group becomes one canonical
pair (three responses give three pairs), with the raw 0-4 scores kept as floats. Multi-turn prompts embed the
earlier turns in the prompt text, so the text is the key as is.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from conflux.data.loaders.records import open_records
from conflux.data.loaders.result import LoadResult, log_drops
from conflux.data.loaders.values import parse_score, require_text
from conflux.data.pairs import make_pair_table
from conflux.data.synthetic import HELPSTEER_DIMS
from conflux.errors import DataError

log = logging.getLogger(__name__)

SCORES = (0.0, 4.0)  # the raters' Likert range


def select_dims(dims: Sequence[str] | None, *, file: str) -> tuple[str, ...]:
    """The attributes to use, in the given order; all five by default."""
    if dims is None:
        return HELPSTEER_DIMS
    chosen = tuple(dims)
    if not chosen:
        raise DataError(
            f"no dimensions selected; valid: {list(HELPSTEER_DIMS)}", file=file, row="header", field="dims"
        )
    for dim in chosen:
        if dim not in HELPSTEER_DIMS:
            raise DataError(
                f"unknown HelpSteer2 dimension '{dim}'; valid names: {list(HELPSTEER_DIMS)}",
                file=file,
                row="header",
                field=dim,
            )
        if chosen.count(dim) > 1:
            raise DataError("dimension is selected twice", file=file, row="header", field=dim)
    return chosen


def load_helpsteer2(
    source: str,
    *,
    split: str = "train",
    offline: bool = True,
    name: str = "helpsteer2",
    dims: Sequence[str] | None = None,
    revision: str | None = None,
    config: str | None = None,
) -> LoadResult:
    """Load HelpSteer2 rows and pair every two responses to the same prompt."""
    chosen = select_dims(dims, file=source)  # before reading: a typo in the config should not cost a load
    columns = ("prompt", "response", *chosen)
    records = open_records(
        source, split=split, offline=offline, columns=columns, revision=revision, config=config
    )
    data = records.columns(("prompt", "response", *chosen))
    file = records.file
    groups: dict[str, list[tuple[int, str, list[float]]]] = {}
    for index in range(len(records)):
        row = records.row(index)
        prompt = require_text(data["prompt"][index], file=file, row=row, field="prompt")
        response = require_text(data["response"][index], file=file, row=row, field="response")
        scores = [parse_score(data[d][index], file=file, row=row, field=d, bounds=SCORES) for d in chosen]
        groups.setdefault(prompt, []).append((row, response, scores))

    drops: Counter[str] = Counter()
    pair_id, prompts, response_a, response_b, scores_a, scores_b = [], [], [], [], [], []
    for prompt, members in groups.items():
        if len(members) == 1:
            drops["single_response_prompt"] += 1
            continue
        for (row_a, text_a, s_a), (row_b, text_b, s_b) in combinations(members, 2):
            if text_a.strip() == text_b.strip():
                drops["identical_responses"] += 1
                continue
            pair_id.append(f"{name}-r{row_a}-r{row_b}")
            prompts.append(prompt)
            response_a.append(text_a)
            response_b.append(text_b)
            scores_a.append(s_a)
            scores_b.append(s_b)
    if not pair_id:
        raise DataError(
            "no prompt has two different responses, so no pairs", file=file, row="all", field="prompt"
        )
    k = len(chosen)
    pairs = make_pair_table(
        pair_id=pair_id,
        prompt=prompts,
        response_a=response_a,
        response_b=response_b,
        scores_a=np.asarray(scores_a, dtype=np.float32).reshape(-1, k),
        scores_b=np.asarray(scores_b, dtype=np.float32).reshape(-1, k),
        dims=chosen,
        source=source,
        file=file,
    )
    log_drops(name, drops)
    log.info("%s: %d pairs from %d rows (%d prompts)", name, len(pairs), len(records), len(groups))
    return LoadResult(pairs=pairs, drops=dict(drops), rows_read=len(records))
