"""Pretraining the embedded tiny Llama: a short causal-LM run so the base model speaks the data's language.

A randomly initialised base scores every reply at about the vocabulary size in perplexity, so persona SFT,
DPO and the weight analysis would start from noise. A few hundred steps of next-token prediction on the
bundled (prompt, reply) documents, formatted with the chat template every later rule uses, bring the
held-out reply perplexity far below uniform. The loop is plain torch, not ``transformers.Trainer``: it is a
few hundred steps of one tiny model in one process, and the Trainer's checkpointing, logging and data-loader
machinery would add start-up time and nondeterminism knobs (workers, shuffling seeds) and buy nothing here.

Determinism: the order of documents and every weight update come from ``seed`` alone (a seeded generator, no
data-loader workers, dropout off in the Llama config), so the same seed, documents and torch build give the
same weights bit for bit in one thread configuration.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

Document = tuple[str, str]  # (prompt, reply): one chat turn


@dataclass(frozen=True)
class PretrainConfig:
    """How long and how hard the tiny model is pretrained (``steps: 0`` keeps the random initialisation).

    The defaults take about a minute on 2 CPU cores for the default tiny Llama; see ``config.schema.yaml``.
    """

    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    max_length: int = 128
    eval_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.max_length < 4 or self.learning_rate <= 0:
            raise ValueError(f"pretrain settings out of range: {self}")
        if not 0.0 < self.eval_fraction < 0.5:
            raise ValueError(f"pretrain eval_fraction must be in (0, 0.5), got {self.eval_fraction}")


def held_out_split(documents: Sequence[Document], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held-out) with whole prompts held out, so the perplexity is on prompts never seen."""
    prompts = sorted({p for p, _ in documents})
    rng = np.random.default_rng([seed, 7])
    n_held = max(1, round(fraction * len(prompts)))
    held = {prompts[int(i)] for i in rng.permutation(len(prompts))[:n_held]}
    train = [i for i, (p, _) in enumerate(documents) if p not in held]
    test = [i for i, (p, _) in enumerate(documents) if p in held]
    return train, test


def encode_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[Document], max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of each chat-formatted document (cut to ``max_length``) and where its reply starts."""
    # here, not at the top: the workflow imports this module (via the config) when planning, without torch
    from conflux.modeling.tokenize import prompt_ids, response_ids

    rows = []
    for prompt, reply in documents:
        p, r = prompt_ids(tokenizer, prompt), response_ids(tokenizer, reply)
        ids = (p + r)[:max_length]
        rows.append((ids, min(len(p), len(ids))))
    return rows


def _batch(rows: Sequence[tuple[list[int], int]], pad_id: int, replies_only: bool) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 where not scored)."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        first = start if replies_only else 0
        labels[i, first : len(ids)] = torch.tensor(ids[first:])
    return input_ids, attention, labels


def reply_perplexity(
    model: PreTrainedModel, rows: Sequence[tuple[list[int], int]], pad_id: int, batch_size: int = 64
) -> float:
    """exp(total NLL / total tokens) of the replies (eos included) given their prompts: the persona table's
    perplexity definition, so the manifest's figure and the table's base row measure the same thing."""
    import torch

    nll, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            input_ids, attention, labels = _batch(rows[i : i + batch_size], pad_id, replies_only=True)
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
            )
            nll += float(loss)
            tokens += int((target != -100).sum())
    return math.exp(nll / max(tokens, 1))


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: Sequence[Document],
    cfg: PretrainConfig,
    *,
    seed: int,
) -> dict[str, Any]:
    """Train ``model`` in place on ``documents`` (causal LM on prompt and reply tokens) for ``cfg.steps``.

    Returns:
        The record for the model's info file: steps, documents (train/held-out), the held-out reply
        perplexity before and after, the final training loss and the wall time.
    """
    import torch

    from conflux.modeling.tokenize import pad_id_of

    train_idx, test_idx = held_out_split(documents, cfg.eval_fraction, seed)
    rows = encode_documents(tokenizer, documents, cfg.max_length)
    train_rows, test_rows = [rows[i] for i in train_idx], [rows[i] for i in test_idx]
    pad_id = pad_id_of(tokenizer)
    ppl_before = reply_perplexity(model, test_rows, pad_id)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to a tenth: a short run needs both
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    order: list[int] = []
    loss_value = float("nan")
    start = time.monotonic()
    model.train()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:  # epochs of a fresh permutation each, drawn from the seeded generator
            order.extend(int(i) for i in rng.permutation(len(train_rows)))
        picked, order = order[: cfg.batch_size], order[cfg.batch_size :]
        input_ids, attention, labels = _batch([train_rows[i] for i in picked], pad_id, replies_only=False)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("pretrain step %d/%d: loss %.3f", step + 1, cfg.steps, loss_value)
    model.eval()
    ppl_after = reply_perplexity(model, test_rows, pad_id)
    record = {
        "steps": cfg.steps,
        "documents": {"train": len(train_rows), "held_out": len(test_rows)},
        "held_out_reply_perplexity": round(ppl_after, 4),
        "initial_held_out_reply_perplexity": round(ppl_before, 4),
        "final_train_loss": round(loss_value, 4),
        "seconds": round(time.monotonic() - start, 1),
    }
    log.info("pretrained: held-out reply perplexity %.1f -> %.1f", ppl_before, ppl_after)
    return record
