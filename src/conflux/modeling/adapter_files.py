"""A PEFT adapter directory as conflux accepts it, checked without importing PEFT or transformers.

Its own module because the weight analyses read adapters as plain safetensors: importing
:mod:`conflux.modeling.policy` (PEFT, transformers: ~2.5 s of CPU) only to check a directory made those jobs
twice as long as their work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conflux.errors import DataError
from conflux.modeling.base_model import check_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path: str | Path) -> dict[str, Any]:
    """The adapter config of ``path``; :class:`DataError` unless it is a PEFT adapter conflux will load: a
    readable ``adapter_config.json`` and complete safetensors weights. Pickled weights
    (``adapter_model.bin``) are refused here, with conflux's reason, before PEFT or torch would open them."""
    d = Path(path)
    config = d / ADAPTER_CONFIG
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read the adapter config ({exc})", file=config, row="all", field="json"
        ) from None
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (d / "adapter_model.bin").is_file()
        reason = (
            "adapter_model.bin is a pickle, which can run code when loaded; conflux loads safetensors only "
            "(`PeftModel.save_pretrained` writes adapter_model.safetensors)"
            if pickled
            else "the adapter has no adapter_model.safetensors"
        )
        file = d / ("adapter_model.bin" if pickled else ADAPTER_WEIGHTS)
        raise DataError(reason, file=file, row="all", field="weights")
    check_safetensors(weights)
    return parsed
