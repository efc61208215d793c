"""From text to token rows: prompt and response ids, the pair truncation, and right-padded pair batches.

Every rule that scores or trains on pairs (the reference cache, the preference trainer, evaluation, the
persona metrics) turns text into tokens here, so a pair is cut and padded the same way wherever it is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from conflux.data.pairs import PairTable
from conflux.errors import ConfluxError

if TYPE_CHECKING:  # only for hints: the weight-analysis jobs import this module without transformers
    from transformers import PreTrainedTokenizerBase

TRUNCATIONS = ("keep_end_of_prompt", "keep_start")
Row = tuple[list[int], list[int]]  # (prompt ids, response ids) of one response


@dataclass(frozen=True)
class TokenizeSettings:
    """How pairs become token rows; the cache is only valid for the settings it was computed with."""

    max_length: int
    truncation: str = "keep_end_of_prompt"


@dataclass
class PairBatch:
    """Token tensors [2B, T] of the concatenated batch: rows 0..B-1 hold response a, rows B..2B-1 response b.

    ``loss_mask`` marks the response tokens (eos included), the only tokens whose log-prob counts; prompt
    and padding tokens are 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    n_pairs: int

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device), self.n_pairs
        )


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt tokens, through the chat template when the tokenizer has one (ending in the assistant cue)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        # The template writes its own special tokens (bos, role markers); adding them again would double bos.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def response_ids(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Response tokens followed by eos, so the model is also scored on ending the answer."""
    if tokenizer.eos_token_id is None:
        raise ConfluxError("the tokenizer has no eos token; log π(y|x) needs one to end the response")
    return [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def fit_pair(
    prompt: list[int], responses: tuple[list[int], list[int]], max_length: int, truncation: str
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Cut one pair to ``max_length``; return the two (prompt, response) rows and how many rows were cut.

    keep_end_of_prompt: drop prompt tokens from the start first (the end of the prompt is what the answer
    depends on most), then cut response ends. The prompt is cut once per pair, for the longer response, so
    both responses are scored under the same context; at least one prompt token is kept so the first response
    token has a position to be predicted from. keep_start: plain right truncation of prompt + response.
    """
    if truncation == "keep_end_of_prompt":
        longest = max(len(r) for r in responses)
        keep = min(len(prompt), max(max_length - longest, min(1, len(prompt))))
        kept_prompt = prompt[len(prompt) - keep :]
    else:
        kept_prompt = prompt[:max_length]
    rows, n_cut = [], 0
    for response in responses:
        kept_response = response[: max(max_length - len(kept_prompt), 0)]
        n_cut += len(kept_prompt) < len(prompt) or len(kept_response) < len(response)
        rows.append((kept_prompt, kept_response))
    return rows, n_cut


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ConfluxError("the tokenizer has neither a pad nor an eos token to pad with")
    return pad_id


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response_a: str,
    response_b: str,
    *,
    max_length: int,
    truncation: str = "keep_end_of_prompt",
) -> tuple[Row, Row, int]:
    """Token rows of one pair, cut to ``max_length``: (row_a, row_b, number of rows cut)."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (a prompt and a response token), got {max_length}")
    p = prompt_ids(tokenizer, prompt)
    (row_a, row_b), n_cut = fit_pair(
        p, (response_ids(tokenizer, response_a), response_ids(tokenizer, response_b)), max_length, truncation
    )
    return row_a, row_b, n_cut


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: PairTable, settings: TokenizeSettings
) -> tuple[list[Row], list[Row], list[bool]]:
    """Token rows of every pair (a rows, b rows) and whether each pair was cut to ``max_length``."""
    cols = pairs.table.to_pydict()
    rows_a, rows_b, cut = [], [], []
    for prompt, a, b in zip(cols["prompt"], cols["response_a"], cols["response_b"], strict=True):
        row_a, row_b, n_cut = encode_pair(
            tokenizer, prompt, a, b, max_length=settings.max_length, truncation=settings.truncation
        )
        rows_a.append(row_a)
        rows_b.append(row_b)
        cut.append(n_cut > 0)
    return rows_a, rows_b, cut


def collate_rows(rows_a: Sequence[Row], rows_b: Sequence[Row], pad_id: int) -> PairBatch:
    """Right-pad B pairs of token rows into one [2B, T] :class:`PairBatch` (a rows first, then b rows)."""
    if len(rows_a) != len(rows_b):
        raise ValueError(f"{len(rows_a)} a-rows but {len(rows_b)} b-rows")
    rows = [*rows_a, *rows_b]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, len(p) : n] = 1
    return PairBatch(input_ids, attention_mask, loss_mask, n_pairs=len(rows_a))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (longest first), so padding is small and an OOM shows up at once."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
