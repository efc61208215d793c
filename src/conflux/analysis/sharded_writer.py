"""Write tensors as ``save_pretrained``-style safetensors shards, one shard in memory at a time.

The layout is what ``save_pretrained`` writes: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors``
plus ``model.safetensors.index.json`` when the output is larger than one shard. Memory is bounded by one
shard's buffer; the read side is :class:`conflux.analysis.tensor_io.WeightFiles`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from conflux.analysis.tensor_io import INDEX_FILE, SINGLE_FILE
from conflux.errors import ConfluxError

DEFAULT_SHARD_BYTES = 2 * 1024**3


class ShardedWriter:
    """Collect tensors and write them as ``save_pretrained``-style safetensors shards into ``out_dir``.

    Shards are written as ``.part-<i>.safetensors`` while their total count is unknown and renamed by
    :meth:`close`; write into an :func:`conflux.atomic.atomic_path` directory so a failure leaves nothing.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        if max_shard_bytes <= 0:
            raise ConfluxError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ConfluxError(f"tensor {name} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffered += size
        self.total_size += size

    def _flush(self) -> None:
        path = self.out_dir / f".part-{len(self._shards)}.safetensors"
        save_file(self._buffer, path, metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffered = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names (and the index); return the files."""
        if self._buffer or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            final = self.out_dir / SINGLE_FILE
            self._shards[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        files = []
        for i, (path, names) in enumerate(self._shards, start=1):
            final = self.out_dir / f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return files
