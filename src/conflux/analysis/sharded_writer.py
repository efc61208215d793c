"""Write tensors as ``save_pretrained``-style safetensors shards: streamed when the layout is known upfront.

The layout is what ``save_pretrained`` writes: ``model.safetensors``, or ``model-0000i-of-0000n.safetensors``
plus ``model.safetensors.index.json`` when the output is larger than one shard; the read side is
:class:`conflux.analysis.tensor_io.WeightFiles`. Given a plan (every tensor's name, shape and dtype, in the
order they will come, as a merge knows from its base), each tensor is written to its shard the moment it is
added and nothing is kept: memory holds no shard at all, and the caller may reuse the tensor's buffer. Without
a plan, tensors are kept until a shard is full. Files are written directly from the tensors' memory (the
format is an 8-byte header length, a JSON header, the raw bytes): ``safetensors.torch.save_file`` first
copies every tensor into a bytes object, which made it ~5x slower.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

from conflux.analysis.tensor_io import DTYPES, INDEX_FILE, SINGLE_FILE
from conflux.errors import ConfluxError

DEFAULT_SHARD_BYTES = 2 * 1024**3
CODES = {dtype: code for code, dtype in DTYPES.items()}  # torch dtype -> safetensors' dtype code

Entry = tuple[str, tuple[int, ...], torch.dtype]  # a planned tensor: name, shape, dtype


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * dtype.itemsize


def _header(entries: Sequence[Entry]) -> bytes:
    """The length prefix and JSON header of a safetensors file holding ``entries`` in this order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        end = offset + _nbytes(shape, dtype)
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


def _write_bytes(out: BinaryIO, tensor: torch.Tensor) -> None:
    out.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """One safetensors file of ``tensors`` (names sorted), written from their memory."""
    names = sorted(tensors)
    with open(path, "wb") as out:
        out.write(_header([(n, tuple(tensors[n].shape), tensors[n].dtype) for n in names]))
        for name in names:
            _write_bytes(out, tensors[name])


class ShardedWriter:
    """Write tensors as ``save_pretrained``-style safetensors shards into ``out_dir`` (see the module).

    Args:
        out_dir: Directory of the shards; write into an :func:`conflux.atomic.atomic_path` directory so a
            failure leaves nothing.
        max_shard_bytes: A shard ends before the tensor that would take it past this size.
        plan: Every tensor's (name, shape, dtype) in the order :meth:`add` will get them: streamed writing.
            Without it, shards are written as ``.part-<i>.safetensors`` while their count is unknown and
            renamed by :meth:`close`.
    """

    def __init__(
        self,
        out_dir: str | Path,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        plan: Sequence[Entry] | None = None,
    ) -> None:
        if max_shard_bytes <= 0:
            raise ConfluxError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_size = 0
        self._plan: list[list[Entry]] | None = None
        self._entries: list[Entry] = []  # planned tensors in order, and the shard of each
        self._shard_of: list[int] = []
        self._next = 0  # planned tensors written so far
        self._file: BinaryIO | None = None
        if plan is not None:
            self._plan = self._split(plan)
            self._entries = [entry for shard in self._plan for entry in shard]
            self._shard_of = [i for i, shard in enumerate(self._plan) for _ in shard]
            n = len(self._plan)
            for i, entries in enumerate(self._plan, start=1):
                name = SINGLE_FILE if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
                self._shards.append((self.out_dir / name, [e[0] for e in entries]))

    def _split(self, plan: Sequence[Entry]) -> list[list[Entry]]:
        """The planned tensors in shards, by the rule :meth:`add` applies to tensors as they come."""
        shards: list[list[Entry]] = [[]]
        size = 0
        for entry in plan:
            nbytes = _nbytes(entry[1], entry[2])
            if shards[-1] and size + nbytes > self.max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += nbytes
        return shards

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write (with a plan) or keep (without) one tensor; with a plan, the caller may reuse it at once."""
        if self._plan is not None:
            self._write_planned(name, tensor)
            return
        if name in self._buffer or any(name in names for _, names in self._shards):
            raise ConfluxError(f"tensor {name} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffered += size
        self.total_size += size

    def _write_planned(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._entries) or self._entries[self._next] != (
            name,
            tuple(tensor.shape),
            tensor.dtype,
        ):
            expected = self._entries[self._next] if self._next < len(self._entries) else "nothing more"
            raise ConfluxError(
                f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} is not the planned {expected}"
            )
        shard = self._shard_of[self._next]
        if self._file is None or self._shard_of[self._next - 1] != shard:  # the shard's first tensor
            if self._file is not None:
                self._file.close()
            self._file = open(self._shards[shard][0], "wb")  # noqa: SIM115 (closed with the shard)
            self._file.write(_header((self._plan or [])[shard]))
        _write_bytes(self._file, tensor)
        self.total_size += tensor.numel() * tensor.element_size()
        self._next += 1

    def _flush(self) -> None:
        path = self.out_dir / f".part-{len(self._shards)}.safetensors"
        write_safetensors(path, self._buffer)
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffered = {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names (and the index); return the files."""
        if self._plan is not None:
            if self._next != len(self._entries):
                raise ConfluxError(f"{self._next} of the {len(self._entries)} planned tensors were written")
            if self._file is not None:
                self._file.close()
                self._file = None
            elif not self._entries:  # nothing planned: a file with only a header, as save_file writes
                self._shards[0][0].write_bytes(_header([]))
            if len(self._shards) == 1:
                return [self._shards[0][0]]
            return self._write_index([path for path, _ in self._shards])
        if self._buffer or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            final = self.out_dir / SINGLE_FILE
            self._shards[0][0].rename(final)
            return [final]
        files = []
        for i, (path, _) in enumerate(self._shards, start=1):
            final = self.out_dir / f"model-{i:05d}-of-{n:05d}.safetensors"
            path.rename(final)
            files.append(final)
        return self._write_index(files)

    def _write_index(self, files: list[Path]) -> list[Path]:
        weight_map: dict[str, str] = {}
        for final, (_, names) in zip(files, self._shards, strict=True):
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return files
