"""Base model specs and manifests: where a base model's files are, resolved once.

A model in the config is ``embedded`` (the tiny Llama built by the ``build_tiny_model`` rule), ``local`` (a
directory with ``config.json`` and safetensors weights) or ``hub`` (a hub id, downloaded only when online).
The ``base_model_manifest`` rule resolves it to a local ``load_path`` and checks it, so a missing directory
or a hub id in an offline run fails in seconds at the first rule, not hours later inside training. Every
later rule loads the base model through :func:`load_base_model` from that manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.atomic import write_json
from conflux.errors import ConfluxError, DataError
from conflux.hub import HubUnavailable, hub_snapshot
from conflux.modeling.tiny_model import INFO_FILE, TinyModelConfig

log = logging.getLogger(__name__)

SOURCES = ("embedded", "local", "hub")
# What a download needs: config, tokenizer files and safetensors weights, never *.bin or other formats.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class BaseModelSpec:
    """One entry of ``models:`` in the config; ``path`` is the directory (local) or the hub id (hub)."""

    name: str
    source: str
    path: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    tiny: TinyModelConfig | None = None
    prompt_format: str = "auto"


# How a prompt is put to each model: as it was fine-tuned to see it. The format becomes the tokenizer's chat
# template when the model is loaded, so training, scoring, generation and every saved tokenizer agree.
# auto: the tokenizer's own template if it has one, else the raw prompt; chat: its own template (required);
# plain: the raw prompt; safe_rlhf: the template of PKU-Alignment's safe-rlhf (their Alpaca SFT models).
PROMPT_TEMPLATES: dict[str, str | None] = {
    "plain": None,
    "safe_rlhf": (
        "{{ bos_token }}BEGINNING OF CONVERSATION: "
        "{% for message in messages %}{% if message['role'] == 'user' %}USER: {{ message['content'] }} "
        "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    ),
}
PROMPT_FORMATS = ("auto", "chat", *PROMPT_TEMPLATES)


def apply_prompt_format(tokenizer: Any, prompt_format: str, *, model: str = "") -> Any:
    """Set ``tokenizer``'s chat template to the model's prompt format (see :data:`PROMPT_TEMPLATES`)."""
    if prompt_format == "auto":
        return tokenizer
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfluxError(
                f"model '{model}': prompt_format chat, but its tokenizer has no chat template; set "
                f"prompt_format to one of {list(PROMPT_TEMPLATES)} in models.{model}"
            )
        return tokenizer
    if prompt_format not in PROMPT_TEMPLATES:
        raise ConfluxError(
            f"model '{model}': prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}"
        )
    tokenizer.chat_template = PROMPT_TEMPLATES[prompt_format]
    return tokenizer


INDEX_FILE = "model.safetensors.index.json"


def check_safetensors(file: Path) -> None:
    """Raise :class:`DataError` unless ``file`` is a complete safetensors file: its header parses and its
    data covers every tensor the header declares (a truncated download or copy fails here, not in a job
    hours later with the library's message)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise DataError(
            f"not a complete safetensors file ({exc}); download or save it again",
            file=file,
            row="header",
            field="safetensors",
        ) from None


def weight_files(model_dir: str | Path) -> list[Path]:
    """Check a model directory and its safetensors files (headers and sizes); return the files, sorted.

    Weights load from safetensors only: a pickle (``*.bin``) can run code when loaded, and the analysis
    rules stream tensors from safetensors shards. A sharded model's index must name existing shards.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise DataError(
            "the model directory does not exist (or is not a directory)", file=d, row="all", field="path"
        )
    if not (d / "config.json").is_file():
        msg = "the model directory has no config.json; is it a Hugging Face model directory?"
        raise DataError(msg, file=d / "config.json", row="all", field="config.json")
    index = d / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({d / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"cannot read the weight map ({exc})", file=index, row="all", field="weight_map"
            ) from None
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise DataError(
                "the index names a shard that is not there", file=index, row=missing[0], field="weight_map"
            )
        files = shards
    else:
        files = sorted(d.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in d.glob("*.bin")) or ["no weight files"]
        raise DataError(
            f"no *.safetensors weights (found: {', '.join(found)}); conflux loads safetensors only. Convert "
            "once with `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)`, or download the "
            "safetensors files of the model.",
            file=d,
            row="all",
            field="weights",
        )
    for file in files:
        check_safetensors(file)
    return files


def _resolve_hub(spec: BaseModelSpec, offline: bool) -> str:
    """A hub model's config, tokenizer and safetensors, downloaded or (offline) from the hub cache."""
    log.info("%s (revision %s): hub snapshot", spec.path, spec.revision or "main")
    try:
        path = hub_snapshot(spec.path, revision=spec.revision, allow_patterns=HUB_PATTERNS, offline=offline)
    except HubUnavailable as err:
        raise ConfluxError(
            f"model '{spec.name}': {err} Or download it yourself, e.g. `huggingface-cli download {spec.path} "
            f"--local-dir /data/models/{spec.name}` (`hf download` in recent versions), and set "
            f"`source: local` and `path: /data/models/{spec.name}` for this model."
        ) from None
    return str(path)


def base_model_manifest_job(
    spec: BaseModelSpec, out: str | Path, *, built_dir: str | Path | None = None, offline: bool = True
) -> dict[str, Any]:
    """Resolve ``spec`` to a checked local directory and write its manifest JSON atomically to ``out``.

    Args:
        spec: the model's config entry.
        out: manifest path (``results/models/<name>/manifest.json``).
        built_dir: the built directory of an ``embedded`` model (the ``build_tiny_model`` output).
        offline: the config's ``offline``; a ``hub`` model then fails at once instead of trying the network.

    Returns:
        The manifest: name, source, load_path (an embedded model's is relative to the workflow directory, the
        working directory of every job, so ``results/`` can be moved as a whole), revision,
        trust_remote_code, dtype, and for directories on disk the weight files and their total size in bytes.
    """
    if spec.source not in SOURCES:
        raise ConfluxError(f"model '{spec.name}': source '{spec.source}' is not one of {SOURCES}")
    if spec.source == "embedded":
        if built_dir is None:
            raise ConfluxError(f"model '{spec.name}' is embedded but no built directory was given")
        load_path = str(built_dir)
        info = Path(built_dir) / INFO_FILE
        # how the embedded model was pretrained (held-out reply perplexity), for the manifest's readers
        pretrain_record = (
            json.loads(info.read_text(encoding="utf-8")).get("pretrain") if info.is_file() else None
        )
    elif spec.path is None:
        raise ConfluxError(f"model '{spec.name}' (source {spec.source}) needs `path:`")
    elif spec.source == "local":
        load_path = spec.path
    else:
        load_path = _resolve_hub(spec, offline)
    manifest: dict[str, Any] = {
        "name": spec.name,
        "source": spec.source,
        "load_path": load_path,
        "hub_id": spec.path if spec.source == "hub" else None,
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "dtype": spec.dtype,
        "prompt_format": spec.prompt_format,
    }
    files = weight_files(load_path)  # a hub download is checked too: a repo may hold no safetensors at all
    if spec.source == "embedded":
        manifest["pretrain"] = pretrain_record
    if spec.source != "hub":
        manifest["weight_files"] = [f.name for f in files]
        manifest["weight_bytes"] = sum(f.stat().st_size for f in files)
    write_json(out, manifest)
    log.info("model '%s' (%s) -> %s", spec.name, spec.source, load_path)
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read a manifest written by :func:`base_model_manifest_job`."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfluxError(f"cannot read model manifest {p}: {exc}") from exc


def base_model_dir(manifest: str | Path) -> Path:
    """The base model's weights directory, from the manifest every job loads the base through."""
    return Path(read_manifest(manifest)["load_path"])


def load_base_model(manifest: dict[str, Any] | str | Path, *, dtype: str | None = None) -> tuple[Any, Any]:
    """Load the base model and tokenizer a manifest points at.

    Args:
        manifest: the manifest dict or its path.
        dtype: overrides the manifest's dtype (``auto``, ``float32``, ``bfloat16``, ``float16``).

    Returns:
        ``(model, tokenizer)``; the model in eval mode, the tokenizer with a pad token (eos when it had none,
        since batching needs one and padded positions are masked anyway).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    weight_files(m["load_path"])  # a clear error naming the file, before transformers reads it
    name = dtype or m.get("dtype", "auto")
    torch_dtype = name if name == "auto" else getattr(torch, name)
    model = AutoModelForCausalLM.from_pretrained(
        m["load_path"], dtype=torch_dtype, use_safetensors=True, trust_remote_code=m["trust_remote_code"]
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(m["load_path"], trust_remote_code=m["trust_remote_code"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, apply_prompt_format(tokenizer, m.get("prompt_format", "auto"), model=m.get("name", ""))


def working_dtype() -> str | None:
    """Weights dtype for jobs that score or train: float32 on CPU (bf16 sums of a thousand token log-probs
    lose the DPO margin, and CPUs gain little from bf16); on a GPU the manifest's dtype (None)."""
    import torch

    return None if torch.cuda.is_available() else "float32"


def to_work_device(model: Any) -> Any:
    """The model on the GPU when there is one (jobs that run outside the Trainer place it themselves)."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model
