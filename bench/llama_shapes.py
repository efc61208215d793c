"""The Llama-shaped checkpoints the weight-analysis benches write: one config rule, shapes without weights."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def add_pair_args(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`write_pair` and of the repeated, threaded measurement around it."""
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--shard-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)


def write_pair(root: Path, args: argparse.Namespace) -> tuple[Path, Path, int]:
    """base/ and ft/ (base + noise) with the tensor names and shapes of a LlamaConfig (``args``: hidden,
    layers, vocab, dtype, shard_mb), and the largest tensor's size in bytes."""
    from conflux.analysis.sharded_writer import ShardedWriter

    config = llama_config(args.hidden, args.layers, args.vocab)
    shapes = param_shapes(config)
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    writers = {}
    for name in ("base", "ft"):
        (root / name).mkdir()
        config.save_pretrained(root / name)
        writers[name] = ShardedWriter(root / name, max_shard_bytes=args.shard_mb * 2**20)
    for name, shape in shapes.items():
        base = torch.randn(shape, generator=gen) * 0.02
        writers["base"].add(name, base.to(dtype))
        writers["ft"].add(name, (base + torch.randn(shape, generator=gen) * 1e-3).to(dtype))
    for writer in writers.values():
        writer.close()
    largest = max(torch.Size(s).numel() for s in shapes.values()) * dtype.itemsize
    return root / "ft", root / "base", largest
