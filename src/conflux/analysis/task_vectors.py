"""Task vectors τ = θ_ft − θ_base, one parameter at a time, from full fine-tunes and from LoRA adapters.

Every source answers the same three questions, so statistics, conflict tables and merges do not care where a
task vector came from: which parameters it changes (``names``, in the *base* model's naming), the shape of
each, and ``tau(name)``, the float32 task vector of one parameter. A full fine-tune changes every parameter;
a LoRA adapter changes only its target modules (every other τ is 0).

τ is always float32 whatever the stored dtype: the difference of two bf16 weights is exact in float32 (both
are float32 values), whereas rounding it back to bf16 loses the small updates that are the whole point of a
task vector. Full-model task vectors are read with :class:`conflux.analysis.tensor_io.WeightFiles` in chunks
(never a whole stored tensor in memory, only τ); LoRA matrices are small and read per module.

LoRA: PEFT stores A [r, in] and B [out, r] per target module under
``base_model.model.<module>.lora_A.weight``; the merged update is ΔW = s·B·A with s = α/r (α/√r with
``use_rslora``), exactly what ``merge_and_unload`` adds to the base weight (PEFT's ``get_delta_weight``).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from conflux.analysis.tensor_io import (
    ScratchBuffer,
    WeightFiles,
    check_same_base,
    check_same_tensors,
    chunk_entries,
    thread_buffer,
)
from conflux.errors import ConfluxError, DataError
from conflux.modeling.adapter_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_dir

PEFT_PREFIX = "base_model.model."
READ_CHUNK = 1 << 18  # entries of one stored tensor read (and subtracted) at a time
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B|embedding_A|embedding_B)\.weight$")


class TaskVectors(Protocol):
    """A source of per-parameter task vectors, keyed by the base model's parameter names."""

    label: str

    @property
    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 τ of one parameter: a fresh tensor, or written into the flat float32 buffer ``out``
        (at least numel entries) and returned as a view of it with the parameter's shape. Safe to call
        from several threads at once (with different ``out``)."""
        ...


class FullTaskVectors:
    """τ = θ_ft − θ_base of a full fine-tune, read tensor by tensor from two safetensors checkpoints.

    The constructor checks that both directories describe the same architecture (``config.json``) and hold
    the same tensor names and shapes, so a wrong base fails at once with the file and tensor named.
    """

    def __init__(self, model_dir: str | Path, base_dir: str | Path, label: str | None = None) -> None:
        self.model_dir, self.base_dir = Path(model_dir), Path(base_dir)
        self.label = label or self.model_dir.name
        if (self.model_dir / "config.json").is_file() and (self.base_dir / "config.json").is_file():
            check_same_base(self.model_dir, self.base_dir)
        self.model, self.base = WeightFiles(self.model_dir), WeightFiles(self.base_dir)
        check_same_tensors(self.model, self.base)

    @property
    def names(self) -> list[str]:
        return self.base.names

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 θ_ft − θ_base of one parameter (see :class:`TaskVectors` for ``out``).

        Read and subtracted in chunks (up to ``READ_CHUNK`` entries), so both stored chunks are still in cache
        when they are widened and subtracted, and no buffer of the stored tensors' size is ever needed.
        """
        shape = self.shape(name)
        numel = math.prod(shape)
        flat = torch.empty(numel) if out is None else out[:numel]
        theta_chunk, base_chunk = thread_buffer("theta", torch.uint8), thread_buffer("base", torch.uint8)
        step = chunk_entries(numel, READ_CHUNK)
        for start in range(0, numel, step):
            count = min(step, numel - start)
            theta = self._read(self.model, name, start, count, theta_chunk)
            base = self._read(self.base, name, start, count, base_chunk)
            dst = flat[start : start + count]
            if theta.dtype == base.dtype == torch.float32:
                torch.sub(theta, base, out=dst)
            else:  # widening a cache-resident chunk, then a mixed-dtype sub_, beats two widening copies
                dst.copy_(theta).sub_(base)
        return flat.view(shape)

    @contextlib.contextmanager
    def stored(self, name: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """θ_ft and θ_base of one parameter, flat and in their stored dtypes, mapped from the files for the
        duration of the block (:meth:`conflux.analysis.tensor_io.WeightFiles.mapped`).

        For a fused pass that widens and subtracts as it goes (:mod:`conflux.analysis.stats`): τ is never
        written out as float32 and the stored bytes are never copied, so each is read from memory once.
        """
        with self.model.mapped(name) as theta, self.base.mapped(name) as base:
            yield theta, base

    @staticmethod
    def _read(files: WeightFiles, name: str, start: int, count: int, scratch: ScratchBuffer) -> torch.Tensor:
        dtype = files.dtype(name)
        return files.read_into(name, start, scratch.take(count * dtype.itemsize).view(dtype))


def lora_scale(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    """(r, s) of one target module: s = α/r (α/√r with rsLoRA), rank/alpha patterns resolved as PEFT does."""
    # Imported here: importing peft takes seconds, and full fine-tunes never need it.
    from peft.utils.other import get_pattern_key

    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), config["r"])
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
    return int(r), (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


class LoraTaskVectors:
    """ΔW = s·B·A of every target module of one PEFT LoRA adapter directory, times a weight.

    Args:
        adapter_dir: Directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
        base_dir: Optional base model directory; when given, every target must exist there with the shape
            of ΔW (a mismatch is a :class:`DataError` naming the adapter file and tensor).
        weight: Multiplies ΔW (the adapter's w_i in a policy); 1 gives the adapter's own merged update.
    """

    def __init__(
        self,
        adapter_dir: str | Path,
        base_dir: str | Path | None = None,
        *,
        weight: float = 1.0,
        label: str | None = None,
    ) -> None:
        self.adapter_dir = Path(adapter_dir)
        self.label = label or self.adapter_dir.name
        self.weight = float(weight)
        self.config = _lora_config(self.adapter_dir)
        self.files = WeightFiles(self.adapter_dir / ADAPTER_WEIGHTS)
        self.file = self.adapter_dir / ADAPTER_WEIGHTS
        self._modules = self._parse_keys()
        self._shapes = {name: self._delta_shape(name) for name in self._modules}
        if base_dir is not None:
            self.check_base(WeightFiles(base_dir))

    def _parse_keys(self) -> dict[str, tuple[str, str, str]]:
        """base parameter name -> (module path, A key, B key)."""
        found: dict[str, dict[str, str]] = {}
        for key in self.files.names:
            match = _LORA_KEY.match(key)
            if match is None:
                raise DataError(
                    "not a LoRA A/B matrix (conflux reads plain LoRA: no DoRA, bias or modules_to_save)",
                    file=self.file,
                    row=key,
                    field="tensor",
                )
            module = match["module"].removeprefix(PEFT_PREFIX)
            found.setdefault(module, {})[match["part"].removeprefix("embedding_")] = key
        modules = {}
        for module, parts in found.items():
            if set(parts) != {"A", "B"}:
                lacking = "B" if "A" in parts else "A"
                raise DataError(
                    f"lora_{lacking} is missing",
                    file=self.file,
                    row=next(iter(parts.values())),
                    field="tensor",
                )
            modules[f"{module}.weight"] = (module, parts["A"], parts["B"])
        return modules

    def _delta_shape(self, name: str) -> tuple[int, ...]:
        module, key_a, key_b = self._modules[name]
        shape_a, shape_b = self.files.shape(key_a), self.files.shape(key_b)
        r, _ = lora_scale(self.config, module)
        if len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != r or shape_b[1] != r:
            raise DataError(
                f"A {shape_a} and B {shape_b} do not have rank r={r} of adapter_config.json",
                file=self.file,
                row=key_a,
                field="shape",
            )
        if "embedding" in key_a:  # PEFT's Embedding LoRA: ΔW = (B·A)ᵀ, shape [num_embeddings, dim]
            return (shape_a[1], shape_b[0])
        if self.config.get("fan_in_fan_out"):
            return (shape_a[1], shape_b[0])
        return (shape_b[0], shape_a[1])

    def check_base(self, base: WeightFiles) -> None:
        """Raise :class:`DataError` unless every target is a base parameter with the shape of ΔW."""
        for name, (_, key_a, _) in self._modules.items():
            if name not in base:
                raise DataError(
                    f"target {name} is not a parameter of the base {base.path}",
                    file=self.file,
                    row=key_a,
                    field="tensor",
                )
            if base.shape(name) != self._shapes[name]:
                raise DataError(
                    f"ΔW of {name} is {self._shapes[name]}, the base {base.path} has {base.shape(name)}",
                    file=self.file,
                    row=key_a,
                    field="shape",
                )

    @property
    def names(self) -> list[str]:
        return list(self._modules)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            raise DataError("not a target of this adapter", file=self.file, row=name, field="tensor")
        return self._shapes[name]

    def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 weight · s · B·A of one target parameter (see :class:`TaskVectors` for ``out``)."""
        if name not in self._modules:
            raise DataError("not a target of this adapter", file=self.file, row=name, field="tensor")
        module, key_a, key_b = self._modules[name]
        a = self.files.get(key_a).to(torch.float32)
        b = self.files.get(key_b).to(torch.float32)
        _, scale = lora_scale(self.config, module)
        # Same order as PEFT's get_delta_weight (product, then scale); at weight w PEFT's scale is w·α/r.
        delta = (b @ a).mul_(scale * self.weight)
        if "embedding" in key_a or self.config.get("fan_in_fan_out"):
            delta = delta.T
        if out is None:
            return delta.contiguous()
        return out[: delta.numel()].view(delta.shape).copy_(delta)


class SumTaskVectors:
    """Σ_i τ_i of several sources, e.g. the policy at weight w: Δ_shared + Σ_i w_i Δ_i (LoRA is linear)."""

    def __init__(self, parts: Sequence[TaskVectors], label: str) -> None:
        if not parts:
            raise ConfluxError("a sum of task vectors needs at least one part")
        self.parts, self.label = list(parts), label
        self._part_names = [frozenset(part.names) for part in self.parts]
        self._shapes: dict[str, tuple[int, ...]] = {}
        for part in self.parts:
            for name in part.names:
                shape = part.shape(name)
                if self._shapes.setdefault(name, shape) != shape:
                    raise ConfluxError(
                        f"{part.label}: {name} has shape {shape}, another part has {self._shapes[name]}"
                    )

    @property
    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def tau(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        for part, names in zip(self.parts, self._part_names, strict=True):
            if name in names:
                total = part.tau(name, out) if total is None else total.add_(part.tau(name))
        if total is None:
            raise ConfluxError(f"{self.label}: no part changes {name}")
        return total


def policy_task_vectors(
    adapters_dir: str | Path,
    w: Sequence[float],
    base_dir: str | Path | None = None,
    *,
    label: str | None = None,
) -> SumTaskVectors:
    """Task vector of a multi-adapter policy at preference weight w: ΔW_shared + Σ_i w_i ΔW_dim<i>.

    ``adapters_dir`` is the layout :meth:`conflux.modeling.policy.PreferencePolicy.save` writes: ``shared/``
    (optional) and ``dim0/ .. dim{k-1}/``, each a PEFT adapter directory. A DPO-Soup set has no ``shared``.
    """
    root = Path(adapters_dir)
    dims = sorted((p for p in root.glob("dim*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:]))
    if not dims:
        raise ConfluxError(f"{root}: no dim<i>/ adapter directories")
    if [p.name for p in dims] != [f"dim{i}" for i in range(len(dims))] or len(w) != len(dims):
        raise ConfluxError(f"{root}: adapters {[p.name for p in dims]} do not match w of length {len(w)}")
    parts: list[TaskVectors] = []
    if (root / "shared").is_dir():
        parts.append(LoraTaskVectors(root / "shared", base_dir))
    parts += [LoraTaskVectors(p, base_dir, weight=wi) for p, wi in zip(dims, w, strict=True) if wi != 0.0]
    if not parts:  # w = 0 and no shared adapter: the policy is the base; keep the targets, all zero
        parts = [LoraTaskVectors(dims[0], base_dir, weight=0.0)]
    return SumTaskVectors(parts, label or f"{root.name}@w={','.join(f'{x:g}' for x in w)}")


def adapter_set(adapters_dir: str | Path, base_dir: str | Path | None = None) -> dict[str, LoraTaskVectors]:
    """Every adapter of a saved policy or DPO-Soup (``shared/``, ``dim0/``, ...) as its own task vector.

    Keyed and labelled by adapter name, in the order shared, dim0, dim1, ...: the input of the dim_i vs dim_j
    conflict tables and of per-adapter statistics.
    """
    root = Path(adapters_dir)
    dims = sorted((p for p in root.glob("dim*") if p.name[3:].isdigit()), key=lambda p: int(p.name[3:]))
    dirs = ([root / "shared"] if (root / "shared" / ADAPTER_CONFIG).is_file() else []) + dims
    if not dirs:
        raise ConfluxError(f"{root}: no shared/ or dim<i>/ adapter directories")
    return {d.name: LoraTaskVectors(d, base_dir, label=d.name) for d in dirs}


def open_task_vectors(path: str | Path, base_dir: str | Path, label: str | None = None) -> TaskVectors:
    """A full fine-tune or a LoRA adapter directory (it has ``adapter_config.json``) against the base."""
    p = Path(path)
    if (p / ADAPTER_CONFIG).is_file():
        return LoraTaskVectors(p, base_dir, label=label)
    return FullTaskVectors(p, base_dir, label=label)


def _lora_config(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's config, checked as the policy loader checks it (safetensors only, a readable config),
    then for what plain LoRA needs."""
    config = check_adapter_dir(adapter_dir)
    path = adapter_dir / ADAPTER_CONFIG
    if config.get("peft_type", "LORA") != "LORA":
        raise DataError(
            f"peft_type {config.get('peft_type')!r} is not LORA", file=path, row="all", field="peft_type"
        )
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), int | float) or config[key] <= 0:
            raise DataError(
                f"{key} must be a positive number, got {config.get(key)!r}", file=path, row="all", field=key
            )
    if config.get("use_dora"):
        raise DataError("DoRA adapters are not supported", file=path, row="all", field="use_dora")
    return config
