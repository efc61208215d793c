"""Pure reference implementations and conveniences that exist for tests only (the workflow never calls them).

Each is the textbook form of something the package computes another way (in place, streamed, or per pass),
so a test can compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from conflux.modeling.tokenize import PairBatch, collate_rows, encode_pair, pad_id_of


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    *,
    max_length: int,
    truncation: str = "keep_end_of_prompt",
) -> tuple[PairBatch, int]:
    """Tokenize B pairs into one right-padded [2B, T] batch; also return the number of truncated rows.

    Rows are counted rather than dropped so the caller can report how much of the data did not fit.
    """
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(
            f"prompts, responses_a, responses_b differ in length: "
            f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}"
        )
    pad_id = pad_id_of(tokenizer)
    rows_a, rows_b, n_truncated = [], [], 0
    for prompt, a, b in zip(prompts, responses_a, responses_b, strict=True):
        row_a, row_b, n_cut = encode_pair(
            tokenizer, prompt, a, b, max_length=max_length, truncation=truncation
        )
        rows_a.append(row_a)
        rows_b.append(row_b)
        n_truncated += n_cut
    return collate_rows(rows_a, rows_b, pad_id), n_truncated
