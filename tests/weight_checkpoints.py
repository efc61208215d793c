"""Hand-made checkpoints for the weight-analysis tests: model directories, a tiny Llama, in-memory τ."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4, "vocab_size": 8}


def save_checkpoint(
    path: Path, tensors: dict[str, torch.Tensor], shards: int = 1, config: dict | None = None
) -> Path:
    """A hand-made model directory: config.json and one safetensors file, or ``shards`` files + index."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or CONFIG))
    if shards == 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return path
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i::shards]}
        save_file(part, path / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, hidden-16 random Llama (mergekit's tests use the same idea)."""
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def perturbed(model: LlamaForCausalLM, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """A synthetic fine-tune: every parameter plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


class TensorTaskVectors:
    """In-memory task vectors with the :class:`conflux.analysis.task_vectors.TaskVectors` interface."""

    def __init__(self, label: str, taus: dict[str, torch.Tensor]) -> None:
        self.label, self._taus = label, taus

    @property
    def names(self) -> list[str]:
        return list(self._taus)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._taus[name].shape)

    def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        tau = self._taus[name].to(torch.float32)
        return tau.clone() if out is None else out[: tau.numel()].view(tau.shape).copy_(tau)
