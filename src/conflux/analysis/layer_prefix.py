"""Reuse of the decoder layers a revert target leaves alone, when the revert sweep scores the held-out pairs.

Scoring is teacher-forced: every target puts the same token batches to the model. A target whose reverted
parameters all lie in layers >= i leaves layers 0..i-1, the embeddings and so the input of layer i exactly as
the fine-tune has them. The sweep keeps the fine-tune's input of every layer from its own scoring pass
(:meth:`LayerPrefix.recording`), and a target's scoring pass starts at layer i from them
(:meth:`LayerPrefix.starting_at`): for a layer or cell target, on average half of the decoder's work is
the fine-tune's and is not done again. Generation gets no such reuse: its inputs are the model's own tokens,
which a revert changes.

Why by hand: transformers runs a decoder's layers in one loop with no entry point in the middle. The decoder's
layer list is swapped for its tail and a pre-hook hands layer i the kept hidden states, so the decoder's own
forward still builds the attention mask and rotary embeddings. Only decoders known to run their layers this
way (one positional ``hidden_states``, nothing per layer but the layer itself) are supported; any other model
is scored whole, as are sweeps whose kept states would pass ``budget_bytes``. The states are kept in host
memory (a GPU job's memory plan does not change) and moved to the device one layer's batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from conflux.analysis.param_names import parse_param_name
from conflux.errors import ConfluxError

SUPPORTED = ("llama", "mistral", "qwen2")  # model types whose decoder loop passes hidden_states positionally
DEFAULT_BUDGET = (
    1 << 30
)  # bytes of kept hidden states (152 rows x 100 tokens x 576 x 30 layers float32 ≈ 1 GB)


def first_layer(names: Sequence[str]) -> int:
    """The earliest layer a revert of ``names`` changes; 0 when one of them is outside the layers (the
    embeddings change every layer's input; a final norm or head is not worth a special case)."""
    layers = [parse_param_name(n)[0] for n in names]
    return 0 if not layers or any(layer is None for layer in layers) else min(layers)  # type: ignore[type-var]


class LayerPrefix:
    """The fine-tune's input hidden states of every decoder layer, per scoring batch, and passes that start
    at a later layer from them."""

    def __init__(self, model: Any, budget_bytes: int = DEFAULT_BUDGET) -> None:
        inner = getattr(model, "model", None)
        supported = getattr(model.config, "model_type", None) in SUPPORTED
        self.decoder = (
            inner if supported and isinstance(getattr(inner, "layers", None), torch.nn.ModuleList) else None
        )
        self.all_layers = self.decoder.layers if self.decoder is not None else torch.nn.ModuleList()
        self.layers = list(self.all_layers)
        self.budget = budget_bytes
        self.kept: list[list[torch.Tensor]] = []

    @property
    def ready(self) -> bool:
        return bool(self.kept) and bool(self.kept[0])

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Keep every layer's input of the forward passes inside the block (the fine-tune's scoring)."""
        self.kept = [[] for _ in self.layers]
        used = 0

        def keep(i: int, args: tuple) -> None:
            nonlocal used
            if not self.kept:
                return  # over budget: recording was given up
            if not args:
                raise ConfluxError(
                    "the decoder passed hidden_states by keyword; its layers cannot be resumed"
                )
            used += args[0].nbytes
            if used > self.budget:
                self.kept = []
                return
            self.kept[i].append(args[0].detach().to("cpu"))  # host memory: the GPU plan is unchanged

        handles = [
            layer.register_forward_pre_hook(lambda _m, args, i=i: keep(i, args))
            for i, layer in enumerate(self.layers)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def starting_at(self, layer: int) -> Iterator[None]:
        """Inside the block forward passes run only layers ``layer``.. on the kept inputs, batch by batch in
        the order they were recorded; layer 0, or nothing kept, runs the whole model."""
        if layer == 0 or not self.ready or self.decoder is None:
            yield
            return
        batches = iter(self.kept[layer])

        def kept_input(_module: torch.nn.Module, args: tuple) -> tuple:
            hidden = next(batches, None)
            if hidden is None or hidden.shape[:2] != args[0].shape[:2]:
                raise ConfluxError("scoring batches differ from the recorded ones; cannot resume a layer")
            return (hidden.to(args[0].device), *args[1:])

        handle = self.layers[layer].register_forward_pre_hook(kept_input)
        self.decoder.layers = torch.nn.ModuleList(self.layers[layer:])
        try:
            yield
        finally:
            self.decoder.layers = self.all_layers
            handle.remove()
