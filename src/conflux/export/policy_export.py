"""Export π(w) for serving: one plain PEFT LoRA adapter and one merged model per preference weight w.

A serving stack (vLLM, TGI, transformers) takes one LoRA adapter per request, or a plain model; it knows
nothing of k+1 adapters weighted at w. By linearity shared + Σ_i w_i dim_i is itself one LoRA
(:meth:`PreferencePolicy.lora_factors`: the factors concatenated along the rank). Modules can hold different
ranks (AdaLoRA prunes per matrix), so each is zero-padded to the largest, and one ``LoraConfig`` with
r = lora_alpha = that rank (scaling 1) describes the adapter exactly: zero rows add nothing.

The merged model streams the base's safetensors tensor by tensor (:class:`WeightFiles`), adds B'A' to each
adapted weight in float32 and writes it in the base's dtype with the base's config and tokenizer, so the job
holds the policy and one output shard, never a second model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from conflux.analysis.sharded_writer import ShardedWriter
from conflux.analysis.tensor_io import WeightFiles, copy_side_files
from conflux.atomic import atomic_path, write_json
from conflux.errors import ConfigError
from conflux.export.weights import check_weights, weight_tag
from conflux.modeling.adapter_files import ADAPTER_WEIGHTS
from conflux.modeling.base_model import base_model_dir, load_base_model, read_manifest
from conflux.modeling.policy import PreferencePolicy, load_method_policy

log = logging.getLogger(__name__)
RECORD = "export.json"


def write_adapter(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]], out_dir: Path, base_name: str
) -> int:
    """One PEFT LoRA adapter directory from per-module factors; returns its (padded) rank."""
    from peft import LoraConfig

    rank = max(a.shape[0] for a, _ in factors.values())
    tensors = {}
    for module, (a, b) in factors.items():
        pad = rank - a.shape[0]
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.nn.functional.pad(a, (0, 0, 0, pad))
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.nn.functional.pad(b, (0, pad))
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # scaling 1: the factors carry w and each adapter's own scaling
        target_modules=sorted({m.rsplit(".", 1)[-1] for m in factors}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_name,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})  # fmt: skip
    return rank


def write_merged(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]], base_dir: Path, out_dir: Path, tokenizer: Any
) -> None:
    """The base's weights with B'A' added to each adapted module's weight, in the base's dtype, and the
    tokenizer as conflux prompts it (its chat template set from the model's ``prompt_format``)."""
    base = WeightFiles(base_dir)
    deltas = {f"{module}.weight": ab for module, ab in factors.items()}
    missing = sorted(set(deltas) - set(base.names))
    if missing:
        found = f"not in {base_dir}: {missing[:3]}"
        raise ConfigError("export", "adapted modules present in the base", found)
    out_dir.mkdir(parents=True, exist_ok=True)
    # every output tensor has the base's name, shape and dtype: the shards are planned, each tensor streamed
    writer = ShardedWriter(out_dir, plan=[(n, base.shape(n), base.dtype(n)) for n in base.names])
    for name in base.names:
        theta = base.get(name)
        if name in deltas:
            a, b = deltas[name]
            theta = (theta.float() + b @ a).to(theta.dtype)
        writer.add(name, theta)
    writer.close()
    copy_side_files(base_dir, out_dir)
    tokenizer.save_pretrained(str(out_dir))
    config_path = out_dir / "config.json"  # a served model caches keys and values
    write_json(config_path, {**json.loads(config_path.read_text(encoding="utf-8")), "use_cache": True})


def export_policy(
    policy: PreferencePolicy,
    tokenizer: Any,
    weights: Sequence[Sequence[float]],
    base_dir: Path,
    out: Path,
    label: str,
    base_name: str,
) -> dict[str, Any]:
    """``out/<w tag>/adapter/`` and ``out/<w tag>/merged/`` per w, and ``out/export.json``, atomically."""
    record: dict[str, Any] = {"variant": label, "k": policy.k, "base": str(base_dir), "weights": []}
    with atomic_path(out, directory=True) as tmp:
        for w in weights:
            tag = weight_tag(w)
            factors = policy.lora_factors(w)
            rank = write_adapter(factors, tmp / tag / "adapter", base_name)
            write_merged(factors, base_dir, tmp / tag / "merged", tokenizer)
            record["weights"].append({"w": list(w), "dir": tag, "adapter_rank": rank})
            log.info("%s at w=%s: adapter rank %d, merged model written", label, list(w), rank)
        write_json(tmp / RECORD, record)
    return record


def export_policy_job(
    manifest: str | Path,
    run_dirs: Sequence[str | Path],
    weights: Sequence[Sequence[float]],
    out: str | Path,
    *,
    variant: str,
    key: str = "export.weights",
) -> dict[str, Any]:
    """The ``export_policy`` rule: the trained policy of one variant (a curriculum stage, Panacea, the
    DPO-Soup members together) exported at each configured w."""
    m = read_manifest(manifest)
    model, tokenizer = load_base_model(m)  # the factors are float32 whatever the base's dtype
    policy = load_method_policy(model, run_dirs)
    checked = check_weights(weights, policy.k, key)
    base_name = m.get("hub_id") or m["load_path"]  # what a server resolves the adapter's base by
    return export_policy(policy, tokenizer, checked, base_model_dir(manifest), Path(out), variant, base_name)
