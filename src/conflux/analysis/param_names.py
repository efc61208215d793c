"""Parameter names parsed into (layer, module type): the rows and columns of every layer × module table.

Hugging Face decoder checkpoints name parameters ``model.layers.<i>.<block>.<proj>.weight``; the layer index
is the number after ``layers.`` (``h.`` / ``blocks.`` in other families), the module type is the projection
(q/k/v/o/gate/up/down), ``embed`` / ``lm_head`` / ``norm`` for the rest, and ``other`` for anything else.
Non-layer parameters (embeddings, the final norm, the head) have layer ``None``.
"""

from __future__ import annotations

import re

MODULES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "embed_tokens": "embed",
    "lm_head": "lm_head",
}
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "norm", "lm_head", "other")
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def parse_param_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, module type) of a name such as ``model.layers.3.mlp.up_proj.weight``."""
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    parts = name.split(".")
    for part in reversed(parts):
        if part in MODULES:
            return layer, MODULES[part]
    if any("norm" in part for part in parts):
        return layer, "norm"
    return layer, "other"
