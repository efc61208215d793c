"""Sequence log-probabilities log π(y|x): the sum of response-token log-probs given the prompt.

Both responses of a pair go through the model in one forward pass as a [a_0..a_{B-1}; b_0..b_{B-1}] batch
(2B rows, :class:`~conflux.modeling.tokenize.PairBatch`), as TRL's DPO trainer concatenates chosen and
rejected: one pass is cheaper than two, and the two halves see identical numerics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedModel

from conflux.modeling.tokenize import PairBatch, Row, collate_rows, length_sorted_batches
from conflux.progress import with_progress


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, in float32.

    gather − logsumexp avoids materialising a second [N, T, V] log-softmax tensor, which dominates memory for
    large vocabularies; float32 because bf16 log-probs summed over a thousand tokens lose the DPO margin.
    """
    logits = logits.float()
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: PreTrainedModel, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_a|x), log π(y_b|x)), each [B], from one forward pass over the concatenated batch.

    Position t's logits predict token t+1, so labels are the inputs shifted left and the mask is the loss mask
    shifted the same way: the first response token is scored from the last prompt position.

    Only the scored positions (response tokens, not prompt or padding) go through the LM head
    (:func:`scored_positions`): the head and the log-softmax over the vocabulary dominate a small model's
    step, and in a padded pair batch a third or more of the positions are never scored.
    """
    device = next(model.parameters()).device
    batch = batch.to(device)
    scored = batch.loss_mask[:, 1:].bool()  # hidden state t is scored when token t+1 is a response token
    with scored_positions(model, scored):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    if logits.dim() == 3:  # a model that computes its logits without calling its output-embedding module
        logits = logits[:, :-1][scored]
    per_token = token_logps(logits, batch.input_ids[:, 1:][scored])
    rows = scored.nonzero()[:, 0]  # row-major, as boolean indexing orders the scored positions
    logps = per_token.new_zeros(scored.shape[0]).index_add(0, rows, per_token)
    return logps[: batch.n_pairs], logps[batch.n_pairs :]


@contextmanager
def scored_positions(model: torch.nn.Module, scored: torch.Tensor) -> Iterator[None]:
    """Inside the block the model's LM head sees only the hidden states of the ``scored`` positions.

    ``scored`` [N, T-1] marks the positions whose next token is scored. A forward pre-hook on the output
    embeddings replaces the head's [N, T, H] input by its scored rows [M, H], so the forward returns logits
    [M, V]: the LM head projects only what is scored, as TRL's fused head does on GPUs (on a CPU TRL projects
    every position). A hook rather than calling the backbone and the head ourselves, so the forward still goes
    through DDP/FSDP wrappers and PEFT; the decoder layers and gradient checkpointing are untouched.
    """
    head = getattr(model, "module", model).get_output_embeddings()  # DDP keeps the model in .module
    handle = head.register_forward_pre_hook(lambda _head, args: (args[0][:, :-1][scored], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def score_rows(
    model: PreTrainedModel,
    rows_a: Sequence[Row],
    rows_b: Sequence[Row],
    pad_id: int,
    *,
    batch_size: int,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sequence log-probs of every pair's rows, in their order, in length-sorted batches (float64)."""
    logp_a = np.zeros(len(rows_a), dtype=np.float64)
    logp_b = np.zeros(len(rows_b), dtype=np.float64)
    lengths = [len(p) + max(len(ra), len(rb)) for (p, ra), (_, rb) in zip(rows_a, rows_b, strict=True)]
    batches = length_sorted_batches(lengths, batch_size)
    for idx in with_progress(batches, desc=desc, unit="batch") if desc else batches:
        batch = collate_rows([rows_a[i] for i in idx], [rows_b[i] for i in idx], pad_id)
        a, b = sequence_logps(model, batch)
        logp_a[idx] = a.double().cpu().numpy()
        logp_b[idx] = b.double().cpu().numpy()
    return logp_a, logp_b
