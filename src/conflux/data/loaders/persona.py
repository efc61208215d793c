"""Persona dialogue in the OjousamaTalkScriptDataset formats, turned into SFT rows and DPO pairs.

The dataset ships the same rows three ways, and users' own persona files follow one of them:

(a) CSV with header ``prompt,completion``;
(b) legacy OpenAI fine-tuning JSONL ``{"prompt": "<text> ->", "completion": " <reply>\\n"}`` - the ``->``
    separator, the leading space and the trailing newline are format, not content, and are stripped;
(c) chat JSONL ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`` - the first
    user message and the first assistant message after it form the turn.

A DPO pair needs a general (persona-free) reply to the same prompt: chosen = persona reply (response_a,
score 1), rejected = general reply (response_b, score 0) on the single dimension ``persona``. The general
replies come from a file in one of the same formats (:func:`read_general`, matched by prompt) or are generated
by the base model (:mod:`conflux.data.general`); :func:`persona_pairs` forms the pairs either way.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from conflux.data.loaders.records import open_records
from conflux.data.loaders.values import require_text
from conflux.data.pairs import SFT_SCHEMA, PairTable, make_pair_table
from conflux.errors import DataError

log = logging.getLogger(__name__)

PERSONA_DIMS = ("persona",)


@dataclass(frozen=True)
class _Turn:
    row: int
    prompt: str
    reply: str


def read_dialogue(source: str, *, offline: bool = True) -> list[tuple[str, str]]:
    """All (prompt, reply) turns of a persona file in any of the three formats, whitespace stripped."""
    turns, _ = _read_turns(source, offline=offline)
    return [(turn.prompt, turn.reply) for turn in turns]


def read_persona(source: str, *, persona: str, offline: bool = True) -> tuple[pa.Table, dict[str, Any]]:
    """The SFT rows (prompt, response, persona) of a persona file, first turn per prompt, and the file's
    counts: ``{"file", "rows_read", "dropped"}``."""
    drops: Counter[str] = Counter()
    turns, rows_read = _read_turns(source, offline=offline)
    turns = _first_per_prompt(turns, drops)
    sft = pa.table(
        {
            "prompt": [turn.prompt for turn in turns],
            "response": [turn.reply for turn in turns],
            "persona": [persona] * len(turns),
        },
        schema=SFT_SCHEMA,
    )
    return sft, {"file": source, "rows_read": rows_read, "dropped": dict(drops)}


def read_general(
    source: str, prompts: Sequence[str], *, offline: bool = True
) -> tuple[dict[str, str], dict[str, Any]]:
    """The general reply of each of ``prompts`` that a general file has (first turn per prompt), and the
    file's counts: ``{"file", "rows_read", "dropped", "matched"}`` (``matched``: how many of ``prompts``)."""
    drops: Counter[str] = Counter()
    turns, rows_read = _read_turns(source, offline=offline)
    replies = {turn.prompt: turn.reply for turn in _first_per_prompt(turns, drops)}
    matched = {prompt: replies[prompt] for prompt in prompts if prompt in replies}
    info = {"file": source, "rows_read": rows_read, "dropped": dict(drops), "matched": len(matched)}
    return matched, info


def pair_id(name: str, prompt: str) -> str:
    """A persona pair's id: the dataset name and a hash of its prompt (a prompt has one pair per dataset),
    the same whichever split, base model or general source the pair comes from."""
    return f"{name}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:12]}"


def persona_pairs(
    sft: pa.Table, general: Mapping[str, str], *, name: str, source: str
) -> tuple[PairTable, dict[str, int]]:
    """Persona-vs-general pairs of SFT rows: chosen = the persona reply, rejected = ``general[prompt]``.

    Returns the pairs and the persona prompts that formed none (``no_general_response``,
    ``identical_responses``).
    """
    drops: Counter[str] = Counter()
    matched = []
    for prompt, reply in zip(
        sft.column("prompt").to_pylist(), sft.column("response").to_pylist(), strict=True
    ):
        rejected = general.get(prompt)
        if rejected is None:
            drops["no_general_response"] += 1
        elif rejected == reply:
            drops["identical_responses"] += 1  # no style difference to learn from
        else:
            matched.append((prompt, reply, rejected))
    n = len(matched)
    pairs = make_pair_table(
        pair_id=[pair_id(name, prompt) for prompt, _, _ in matched],
        prompt=[prompt for prompt, _, _ in matched],
        response_a=[reply for _, reply, _ in matched],
        response_b=[rejected for _, _, rejected in matched],
        scores_a=np.ones((n, 1), dtype=np.float32),
        scores_b=np.zeros((n, 1), dtype=np.float32),
        dims=PERSONA_DIMS,
        source=source,
        file=source,
        allow_empty=True,  # a part may form none; the callers check that some part does
    )
    return pairs, dict(drops)


def no_pairs_error(persona_source: str, general_file: Mapping[str, Any], n_prompts: int) -> DataError:
    """The error when a general file gives no persona prompt a (different) reply, with the counts."""
    return DataError(
        f"no persona prompt has a reply in the general file '{general_file['file']}' ({n_prompts} persona "
        f"prompts, {general_file['rows_read']} general rows, {general_file['matched']} in common); leave "
        "`general:` out (or set it to `generate`) to generate the general replies with the base model",
        file=persona_source,
        row="all",
        field="prompt",
    )


def _first_per_prompt(turns: list[_Turn], drops: Counter[str]) -> list[_Turn]:
    seen: set[str] = set()
    kept = []
    for turn in turns:
        if turn.prompt in seen:
            drops["duplicate_prompt"] += 1
            continue
        seen.add(turn.prompt)
        kept.append(turn)
    return kept


def _read_turns(source: str, *, offline: bool) -> tuple[list[_Turn], int]:
    """The turns of one file and the number of records read; the format is detected from the first record."""
    records = open_records(source, offline=offline)
    file = records.file
    if records.dataset[0].get("messages") is not None:
        messages = records.columns(["messages"])["messages"]
        turns = [_chat_turn(value, file, records.row(i)) for i, value in enumerate(messages)]
        return turns, len(records)
    for field in ("prompt", "completion"):
        if field not in records.dataset.column_names:
            raise DataError(
                "column is missing: a persona file has `prompt,completion` columns or chat `messages`",
                file=file,
                row="header",
                field=field,
            )
    data = records.columns(["prompt", "completion"])
    turns = []
    for index, (prompt, reply) in enumerate(zip(data["prompt"], data["completion"], strict=True)):
        row = records.row(index)
        prompt = require_text(prompt, file=file, row=row, field="prompt").strip()
        # Legacy fine-tuning files end each prompt with the separator "->"; it is format, not content.
        if prompt.endswith("->"):
            prompt = prompt[:-2].rstrip()
        reply = require_text(reply, file=file, row=row, field="completion").strip()
        turns.append(_Turn(row, require_text(prompt, file=file, row=row, field="prompt"), reply))
    return turns, len(records)


def _chat_turn(messages: Any, file: str, row: int) -> _Turn:
    """The first user message and the first assistant message after it."""
    if not isinstance(messages, list):
        raise DataError(
            f"expected a list of messages, got {messages!r:.60}", file=file, row=row, field="messages"
        )
    user = None
    for message in messages:
        if not isinstance(message, dict):
            raise DataError(f"message {message!r:.60} is not an object", file=file, row=row, field="messages")
        role = message.get("role")
        if user is None and role == "user":
            user = require_text(message.get("content"), file=file, row=row, field="messages").strip()
        elif user is not None and role == "assistant":
            reply = require_text(message.get("content"), file=file, row=row, field="messages").strip()
            return _Turn(row, user, reply)
    missing = "no user message" if user is None else "no assistant message after the user message"
    raise DataError(f"the chat has {missing}", file=file, row=row, field="messages")
