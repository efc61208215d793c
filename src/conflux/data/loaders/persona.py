"""Persona dialogue in the OjousamaTalkScriptDataset formats, turned into SFT rows and DPO pairs.

The dataset ships the same rows three ways, and users' own persona files follow one of them:

(a) CSV with header ``prompt,completion``;
(b) legacy OpenAI fine-tuning JSONL ``{"prompt": "<text> ->", "completion": " <reply>\\n"}`` - the ``->``
    separator, the leading space and the trailing newline are format, not content, and are stripped;
(c) chat JSONL ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`` - the first
    user message and the first assistant message after it form the turn.

A DPO pair needs a general (persona-free) reply to the same prompt: chosen = persona reply (response_a,
score 1), rejected = general reply (response_b, score 0) on the single dimension ``persona``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from conflux.data.loaders.records import open_records
from conflux.data.loaders.result import log_drops
from conflux.data.loaders.values import require_text
from conflux.data.pairs import SFT_SCHEMA, PairTable, make_pair_table
from conflux.errors import DataError

log = logging.getLogger(__name__)

PERSONA_DIMS = ("persona",)


@dataclass(frozen=True)
class PersonaData:
    """SFT rows (prompt, response, persona), persona-vs-general DPO pairs, and what was dropped.

    ``drops``: persona prompts that formed no pair (no general reply, identical replies). ``files``: per input
    file (``persona``, ``general``) its path, records read and rows dropped (duplicate prompts), so counts
    never add the two files up. ``general_matched``: persona prompts the general file has a reply for.
    """

    sft: pa.Table
    pairs: PairTable
    drops: dict[str, int]
    files: dict[str, dict[str, Any]]
    general_matched: int

    @property
    def rows_read(self) -> int:
        """Records read from the persona file."""
        return int(self.files["persona"]["rows_read"])


@dataclass(frozen=True)
class _Turn:
    row: int
    prompt: str
    reply: str


def read_dialogue(source: str, *, offline: bool = True) -> list[tuple[str, str]]:
    """All (prompt, reply) turns of a persona file in any of the three formats, whitespace stripped."""
    turns, _ = _read_turns(source, offline=offline)
    return [(turn.prompt, turn.reply) for turn in turns]


def load_persona(
    persona_source: str,
    general_source: str,
    *,
    persona: str,
    offline: bool = True,
    name: str | None = None,
) -> PersonaData:
    """Persona SFT rows and persona-vs-general pairs, matched by prompt text (whitespace stripped)."""
    name = name or persona
    drops: Counter[str] = Counter()
    persona_drops: Counter[str] = Counter()
    general_drops: Counter[str] = Counter()
    persona_turns, persona_rows = _read_turns(persona_source, offline=offline)
    general_turns, general_rows = _read_turns(general_source, offline=offline)
    persona_turns = _first_per_prompt(persona_turns, persona_drops)
    general_reply = {turn.prompt: turn.reply for turn in _first_per_prompt(general_turns, general_drops)}

    sft = pa.table(
        {
            "prompt": [turn.prompt for turn in persona_turns],
            "response": [turn.reply for turn in persona_turns],
            "persona": [persona] * len(persona_turns),
        },
        schema=SFT_SCHEMA,
    )
    matched = []
    for turn in persona_turns:
        general = general_reply.get(turn.prompt)
        if general is None:
            drops["no_general_response"] += 1
        elif general == turn.reply:
            drops["identical_responses"] += 1  # no style difference to learn from
        else:
            matched.append((turn, general))
    general_matched = len(persona_turns) - drops["no_general_response"]
    if not matched:
        raise DataError(
            f"no persona prompt has a reply in the general file '{general_source}' ({len(persona_turns)} "
            f"persona prompts, {len(general_reply)} general prompts, {general_matched} in common)",
            file=persona_source,
            row="all",
            field="prompt",
        )
    n = len(matched)
    pairs = make_pair_table(
        pair_id=[f"{name}-{turn.row:06d}" for turn, _ in matched],
        prompt=[turn.prompt for turn, _ in matched],
        response_a=[turn.reply for turn, _ in matched],
        response_b=[general for _, general in matched],
        scores_a=np.ones((n, 1), dtype=np.float32),
        scores_b=np.zeros((n, 1), dtype=np.float32),
        dims=PERSONA_DIMS,
        source=persona_source,
        file=persona_source,
    )
    files = {
        "persona": {"file": persona_source, "rows_read": persona_rows, "dropped": dict(persona_drops)},
        "general": {"file": general_source, "rows_read": general_rows, "dropped": dict(general_drops)},
    }
    for role, info in files.items():
        log_drops(f"{name} ({role} file)", Counter(info["dropped"]))
    log_drops(name, drops)
    log.info("%s: %d SFT rows, %d persona-vs-general pairs (%d of %d persona prompts have a general reply)",
             name, sft.num_rows, len(pairs), general_matched, len(persona_turns))  # fmt: skip
    return PersonaData(sft=sft, pairs=pairs, drops=dict(drops), files=files, general_matched=general_matched)


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
