"""A decoder's architecture facts and the exact byte counts of its weights, gradients and AdamW state.

The memory plan must work on a laptop without the weights (and, for hub models, without network), so the
counts come from the few numbers of ``config.json``: they equal the sizes of the real tensors of a Llama,
Mistral or Qwen2 decoder (tests/test_plan.py checks them against a tiny and a ~100M model, after a real
backward pass and AdamW step). Where the facts come from: ``models.<name>.arch`` in the config, else the
model's ``config.json`` (a local directory, the hub cache, the embedded model once built), else the
embedded model's size settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from conflux.errors import ConfigError
from conflux.modeling.base_model import BaseModelSpec
from conflux.modeling.lora import ALL_PROJECTIONS

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# The layouts counted here: per layer q, k, v, o, gate, up, down and two RMSNorms, no biases but Qwen2's on
# q, k and v. A config of another model_type gets no plan rather than a wrong one.
LAYOUTS = ("llama", "mistral", "qwen2")
ADAM_STATES = 2  # exp_avg and exp_avg_sq, each shaped like its parameter
ADAM_STEP_BYTES = 4  # torch's AdamW keeps `step` as a float32 scalar tensor per parameter


@dataclass(frozen=True)
class Arch:
    """What the plan needs of a decoder (``config.json``'s keys)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    model_type: str = "llama"
    dtype: str | None = None  # the checkpoint's dtype, what a model configured with dtype: auto loads in

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Arch:
        """From a ``config.json`` or a config's ``arch`` entry; ``where`` names it in errors."""
        model_type = raw.get("model_type", "llama")
        if model_type not in LAYOUTS:
            raise ConfigError(where, f"model_type in {list(LAYOUTS)}", f"no memory plan for '{model_type}'")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values.setdefault("num_key_value_heads", raw.get("num_attention_heads"))
        stored = raw.get("dtype") or raw.get("torch_dtype")
        values["dtype"] = stored if stored in DTYPE_BYTES else None
        missing = sorted(
            k
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "vocab_size",
            )
            if k not in values
        )
        if missing:
            raise ConfigError(where, "architecture facts", f"missing {', '.join(missing)}")
        return cls(**values)

    @property
    def head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection of one layer."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_attention_heads * self.head,
            self.kv_dim,
            self.intermediate_size,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def layer_numel(self) -> int:
        biases = self.num_attention_heads * self.head + 2 * self.kv_dim if self.model_type == "qwen2" else 0
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden_size + biases

    def numel(self) -> int:
        """Parameters of the whole model."""
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        return embed + head + self.hidden_size + self.num_hidden_layers * self.layer_numel()

    def tensors(self) -> int:
        """Parameter tensors (AdamW keeps one step counter for each)."""
        per_layer = 9 + (3 if self.model_type == "qwen2" else 0)
        return per_layer * self.num_hidden_layers + 2 + (0 if self.tie_word_embeddings else 1)

    def largest_numel(self) -> int:
        """The largest tensor (the embedding of any modern vocabulary): what the streamed analyses hold."""
        return max(self.vocab_size * self.hidden_size, *(a * b for a, b in self.linears().values()))

    def lora_numel(self, r: int, targets: tuple[str, ...] = ALL_PROJECTIONS) -> tuple[int, int]:
        """(parameters, tensors) of one LoRA adapter of rank ``r``: A [r, in] and B [out, r] per target."""
        per_layer = sum(r * (a + b) for name, (a, b) in self.linears().items() if name in targets)
        count = sum(1 for name in self.linears() if name in targets)
        return per_layer * self.num_hidden_layers, 2 * count * self.num_hidden_layers


def parameter_bytes(numel: int, dtype: str) -> int:
    return numel * DTYPE_BYTES[dtype]


def adamw_bytes(numel: int, tensors: int, dtype: str) -> int:
    """torch AdamW's state: two moments in the parameters' dtype and a float32 step per tensor."""
    return ADAM_STATES * numel * DTYPE_BYTES[dtype] + ADAM_STEP_BYTES * tensors


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_config(spec: BaseModelSpec, results: Path) -> tuple[dict[str, Any] | None, str]:
    """The model's ``config.json`` (and where it was found), without network: a local directory, the hub
    cache (what ``snakemake download`` filled), the embedded model once built."""
    if spec.source == "local" and spec.path:
        return _read(Path(spec.path) / "config.json"), f"{spec.path}/config.json"
    if spec.source == "hub" and spec.path:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
        if isinstance(cached, str):
            return _read(Path(cached)), f"hub cache of {spec.path}"
        return None, f"hub cache of {spec.path}"
    built = results / "models" / spec.name / "hf" / "config.json"
    return _read(built), str(built)


def model_arch(spec: BaseModelSpec, arch: dict[str, Any] | None, results: Path) -> tuple[Arch | None, str]:
    """(facts, source) of a model; (None, why) when nothing here says what it is."""
    if arch:
        return Arch.from_dict(arch, f"models.{spec.name}.arch"), "config arch"
    found, where = find_config(spec, results)
    if found is not None:
        return Arch.from_dict(found, where), where
    if spec.tiny is not None:  # not built yet: the tokenizer's target size bounds the real vocabulary
        keys = spec.tiny.config_keys(spec.tiny.vocab_size)
        return Arch.from_dict(keys, f"models.{spec.name}.tiny"), "tiny settings (vocabulary at most)"
    return None, f"no config.json in the {where} and no models.{spec.name}.arch"
