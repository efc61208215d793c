"""Sequence log-probabilities log π(y|x): the sum of response-token log-probs given the prompt.

Both responses of a pair go through the model in one forward pass as a [a_0..a_{B-1}; b_0..b_{B-1}] batch
(2B rows, :class:`~conflux.modeling.tokenize.PairBatch`), as TRL's DPO trainer concatenates chosen and
rejected: one pass is cheaper than two, and the two halves see identical numerics.
"""

from __future__ import annotations

from collections.abc import Sequence

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

    Only positions from the earliest response start on get logits (``logits_to_keep``): the LM head and
    log-softmax over the vocabulary dominate a small model's step, and prompt positions are never scored.
    """
    device = next(model.parameters()).device
    batch = batch.to(device)
    width = batch.input_ids.shape[1]
    has_response = batch.loss_mask.any(dim=1)
    first = int(batch.loss_mask.float().argmax(dim=1)[has_response].min()) if bool(has_response.any()) else 1
    keep = width - max(first, 1) + 1  # logits of positions first-1 .. width-1
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, logits_to_keep=keep
    ).logits
    start = width - keep
    per_token = token_logps(logits[:, :-1], batch.input_ids[:, start + 1 :])
    # masked_fill, not a product: a pad position's logits may be non-finite and NaN·0 is still NaN.
    logps = per_token.masked_fill(batch.loss_mask[:, start + 1 :] == 0, 0.0).sum(dim=-1)
    return logps[: batch.n_pairs], logps[batch.n_pairs :]


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
