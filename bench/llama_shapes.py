"""The Llama-shaped checkpoints the weight-analysis benches write: one config rule, shapes without weights."""

from __future__ import annotations

import torch


def llama_config(hidden: int, layers: int, vocab: int, **extra):
    """A Llama config with the usual proportions: MLP ≈ 8/3 · hidden, 64-wide heads, 4 heads per KV head."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        **extra,
    )


def param_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the model, built on the meta device (no memory, no init time)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
