"""Greedy answers of a causal LM to a list of prompts, in the prompt format the model was trained with.

Prompt format. Every job builds prompt tokens with :func:`conflux.modeling.tokenize.prompt_ids`, which follows
the base model's ``prompt_format`` (``models.<name>.prompt_format``, set on the tokenizer when it loads): the
persona SFT and DPO rows, the persona metrics, the revert sweep, the generated general replies and the
preference study alike, so a model is asked a question the way it was trained on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from conflux.modeling.tokenize import length_sorted_batches, pad_id_of, prompt_ids
from conflux.progress import with_progress


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated: greedy by default (sampling only with ``greedy=False``, seeded)."""

    max_new_tokens: int = 64
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16


# ---- generation --------------------------------------------------------------------------------------------


def encode_prompts(
    tokenizer, prompts: Sequence[str], gen: GenerationSettings, *, max_length: int
) -> list[list[int]]:
    """Prompt tokens as :func:`generate_ids` takes them: cut from the start to leave room for
    ``max_new_tokens`` within ``max_length``. Kept apart so a caller that generates from the same prompts
    with many weight settings (the revert sweep) encodes them once."""
    keep = max(max_length - gen.max_new_tokens, 1)
    return [prompt_ids(tokenizer, p)[-keep:] for p in prompts]


def generate(
    model, tokenizer, prompts: Sequence[str], gen: GenerationSettings, *, max_length: int
) -> list[tuple[str, int]]:
    """(decoded answer, number of new tokens) per prompt, answers cut at the first eos."""
    return generate_ids(model, tokenizer, encode_prompts(tokenizer, prompts, gen, max_length=max_length), gen)


@torch.no_grad()
def generate_ids(
    model, tokenizer, encoded: Sequence[Sequence[int]], gen: GenerationSettings
) -> list[tuple[str, int]]:
    """(decoded answer, number of new tokens) per encoded prompt (:func:`encode_prompts`), cut at eos.

    Prompts are left-padded in length-sorted batches (a decoder continues from the last position).
    """
    from transformers import GenerationConfig

    pad, eos = pad_id_of(tokenizer), tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=gen.max_new_tokens,
        do_sample=not gen.greedy,
        temperature=gen.temperature if not gen.greedy else None,
        top_p=None,
        top_k=None,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    device = next(model.parameters()).device
    model.eval()
    out: list[tuple[str, int]] = [("", 0)] * len(encoded)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(gen.seed)
        batches = length_sorted_batches([len(e) for e in encoded], gen.batch_size)
        for idx in with_progress(batches, desc=f"generate {len(encoded)} answers", unit="batch"):
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            new = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
            )[:, width:].cpu()
            for row, i in enumerate(idx):
                tokens = new[row].tolist()
                n = tokens.index(eos) + 1 if eos in tokens else len(tokens)
                out[i] = (tokenizer.decode(tokens[:n], skip_special_tokens=True), n)
    return out
