"""Model variants of the persona study as one (model, tokenizer): the base, a full model, a LoRA adapter.

SFT and DPO write either full weights or a PEFT adapter (``<run>/model/``); merging and layer reverting
write full safetensors models. Evaluation treats them alike through :func:`load_variant`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conflux.errors import ConfluxError
from conflux.modeling.adapter_files import check_adapter_dir
from conflux.modeling.base_model import apply_prompt_format, load_base_model, read_manifest, weight_files


def resolve_model_dir(model_dir: str | Path) -> Path:
    """The directory holding the weights: ``model_dir`` itself, or its ``model/`` (a TRL training output)."""
    d = Path(model_dir)
    if (d / "adapter_config.json").is_file() or (d / "config.json").is_file():
        return d
    if (d / "model").is_dir():
        return resolve_model_dir(d / "model")
    raise ConfluxError(f"{d}: neither a model directory (config.json), a PEFT adapter nor a training output")


def base_tokenizer(manifest: dict[str, Any]) -> Any:
    """The base model's tokenizer as :func:`load_base_model` gives it: eos as pad when it has none, and the
    model's prompt format as its chat template, so a full fine-tune is prompted as its base was."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        manifest["load_path"], trust_remote_code=manifest["trust_remote_code"]
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompt_format = manifest.get("prompt_format", "auto")
    return apply_prompt_format(tokenizer, prompt_format, model=manifest.get("name", ""))


def load_variant(
    manifest: str | Path | dict[str, Any], model_dir: str | Path | None, *, dtype: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) of a variant: the base (``model_dir=None``), a full model or a LoRA adapter.

    The tokenizer is always the base model's (fine-tuning and merging do not change it). A PEFT adapter is
    merged into the base weights after loading, so generation runs at the speed of a plain model; a full
    model is loaded alone (the base weights are not needed, and at 8B would double the memory).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    if model_dir is None:
        return load_base_model(m, dtype=dtype)
    d = resolve_model_dir(model_dir)
    if (d / "adapter_config.json").is_file():
        check_adapter_dir(d)
        base, tokenizer = load_base_model(m, dtype=dtype)
        return PeftModel.from_pretrained(base, str(d)).merge_and_unload().eval(), tokenizer
    weight_files(d)  # safetensors only, with a clear error otherwise
    name = dtype or m.get("dtype", "auto")
    model = AutoModelForCausalLM.from_pretrained(
        d,
        dtype=name if name == "auto" else getattr(torch, name),
        use_safetensors=True,
        trust_remote_code=m["trust_remote_code"],
    )
    return model.eval(), base_tokenizer(m)
