"""PKU-SafeRLHF: two responses per prompt, judged on helpfulness (``better``) and harmlessness (``safer``).

Each row gives the index (0 or 1) of the better and of the safer response, so a pair scores
s_a = (better == 0, safer == 0) and s_b = 1 - s_a over dims (helpful, harmless). A row where the two ids
differ is a conflict pair. Extra columns of the real files (``is_response_*_safe``, severity levels, harm
categories, sources) are ignored.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from conflux.data.loaders.records import open_records
from conflux.data.loaders.result import LoadResult, log_drops
from conflux.data.loaders.values import parse_choice, require_text
from conflux.data.pairs import make_pair_table
from conflux.data.synthetic import PKU_DIMS
from conflux.errors import DataError

log = logging.getLogger(__name__)

PKU_COLUMNS = ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id")


def load_pku_saferlhf(
    source: str,
    *,
    split: str = "train",
    offline: bool = True,
    name: str = "pku_saferlhf",
    revision: str | None = None,
    config: str | None = None,
) -> LoadResult:
    """Load PKU-SafeRLHF rows as canonical pairs; rows with identical responses (no preference) and exact
    repeats of an earlier row are dropped and counted."""
    records = open_records(source, split=split, offline=offline, columns=PKU_COLUMNS, revision=revision,
                           config=config)  # fmt: skip
    data = records.columns(PKU_COLUMNS)
    file = records.file
    keys = ("pair_id", "prompt", "response_a", "response_b", "better", "safer")
    out: dict[str, list] = {key: [] for key in keys}
    drops: Counter[str] = Counter()
    seen: set[tuple] = set()
    for index in range(len(records)):
        row = records.row(index)
        prompt, response_0, response_1 = (
            require_text(data[field][index], file=file, row=row, field=field)
            for field in ("prompt", "response_0", "response_1")
        )
        better, safer = (
            parse_choice(data[field][index], file=file, row=row, field=field)
            for field in ("better_response_id", "safer_response_id")
        )
        if response_0.strip() == response_1.strip():
            drops["identical_responses"] += 1
            continue
        # A row repeated verbatim would count one judgement twice (the same annotation, not a second one).
        key = (prompt, response_0, response_1, better, safer)
        if key in seen:
            drops["duplicate_rows"] += 1
            continue
        seen.add(key)
        for key, value in zip(
            out, (f"{name}-{row:07d}", prompt, response_0, response_1, better, safer), strict=True
        ):
            out[key].append(value)
    if not out["pair_id"]:
        raise DataError("no usable pairs (every row was dropped)", file=file, row="all", field="response_1")
    # Response 0 is a; it wins a dimension exactly when that dimension's id points at it.
    scores_a = np.column_stack([np.equal(out["better"], 0), np.equal(out["safer"], 0)]).astype(np.float32)
    pairs = make_pair_table(
        pair_id=out["pair_id"],
        prompt=out["prompt"],
        response_a=out["response_a"],
        response_b=out["response_b"],
        scores_a=scores_a,
        scores_b=1.0 - scores_a,
        dims=PKU_DIMS,
        source=source,
        file=file,
    )
    log_drops(name, drops)
    log.info("%s: %d pairs from %d rows", name, len(pairs), len(records))
    return LoadResult(pairs=pairs, drops=dict(drops), rows_read=len(records))
