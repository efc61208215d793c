"""Streamed safetensors I/O: read a model one tensor at a time, write one shard at a time.

The weight analysis must run on 7-8B models on machines that cannot hold two of them, so nothing here ever
loads a whole model: :class:`WeightFiles` knows every tensor's name, shape, dtype and file from the headers
alone, and :meth:`WeightFiles.get` reads one tensor. Files are opened with safetensors' ``pread`` backend:
the default ``mmap`` backend returns tensors that are views of a memory map, and every page a read has
touched stays resident (and counts in the process's RSS) while the file is open, so reading a whole shard
through one handle grows the process by the shard's size. With ``pread`` each tensor is copied into memory
the caller owns (and may modify in place) and freed with it; a handle holds only a file descriptor.

:class:`conflux.analysis.sharded_writer.ShardedWriter` is the other half: it writes one shard at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import shutil
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from conflux.errors import ConfluxError, DataError
from conflux.modeling.adapter_files import ADAPTER_WEIGHTS

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors' dtype codes -> torch dtypes (the ones a checkpoint holds in practice).
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# config.json keys that must agree for two checkpoints to share a base (a fine-tune never changes them).
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


class ScratchBuffer:
    """A flat buffer grown to the largest size asked for and then reused.

    A fresh multi-megabyte allocation is page-faulted in on first touch, which costs more than the arithmetic
    done on it; streaming code that needs a temporary per tensor takes it from here instead.
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self._buf = torch.empty(0, dtype=dtype)

    def take(self, numel: int) -> torch.Tensor:
        """A flat view of ``numel`` entries (contents undefined; valid until the next ``take``)."""
        if self._buf.numel() < numel:
            self._buf = torch.empty(numel, dtype=self._buf.dtype)
        return self._buf[:numel]


_thread_buffers = threading.local()


def thread_buffer(key: str, dtype: torch.dtype) -> ScratchBuffer:
    """The calling thread's :class:`ScratchBuffer` named ``key``, kept for the life of the thread.

    For chunk-sized temporaries of streaming passes (bounded by a chunk size, not by the model): every pass
    after a thread's first reuses memory that is already faulted in.
    """
    buffers = _thread_buffers.__dict__
    if key not in buffers:
        buffers[key] = ScratchBuffer(dtype)
    return buffers[key]


def chunk_entries(numel: int, largest: int) -> int:
    """Entries per step of a chunked pass over a tensor of ``numel`` entries.

    ``largest`` for big tensors: fewer Python-level calls per entry, each long enough that worker threads
    seldom wait on each other for the GIL. A quarter of the tensor (at least 2^16 entries) for small ones,
    so per-step buffers stay a fraction of the largest tensor's size whatever ``largest`` is.
    """
    return min(largest, max(numel // 4, 1 << 16))


class WeightFiles:
    """The tensors of a checkpoint: a directory (sharded with an index, one file, a PEFT adapter) or a file.

    Only headers are read at construction; :meth:`get` reads one tensor.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file_of: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        self._handles: dict[Path, Any] = {}
        self._data: dict[Path, tuple[int, int]] = {}  # file -> (descriptor, where the data section starts)
        self._offsets: dict[tuple[Path, str], int] = {}  # (file, tensor) -> offset in the data section
        self._opening = threading.Lock()  # readers in several threads open each file once
        for file, expected in self._files().items():
            if not file.is_file():
                raise DataError("shard named in the index is missing", file=file, row="all", field="file")
            try:
                with safe_open(file, framework="pt", backend="pread") as handle:
                    names = handle.keys()
                    for name in names:
                        view = handle.get_slice(name)
                        self._meta[name] = (tuple(view.get_shape()), view.get_dtype())
                        self._file_of[name] = file
            except (OSError, SafetensorError) as exc:
                msg = f"not a readable safetensors file: {exc}"
                raise DataError(msg, file=file, row="all", field="header") from exc
            missing = sorted(set(expected) - set(names))
            if missing:
                msg = f"the index maps {len(missing)} tensor(s) to this file that it does not hold"
                raise DataError(msg, file=file, row=missing[0], field="tensor")

    def _files(self) -> dict[Path, list[str]]:
        """Weight file -> tensor names the index promises in it (empty list: no index, take what is there)."""
        if self.path.is_file():
            return {self.path: []}
        if not self.path.is_dir():
            raise ConfluxError(f"{self.path}: no such checkpoint (file or directory)")
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                msg = f"cannot read the weight map: {exc}"
                raise DataError(msg, file=index, row="all", field="weight_map") from exc
            files: dict[Path, list[str]] = {}
            for name, shard in weight_map.items():
                files.setdefault(self.path / shard, []).append(name)
            return files
        for name in (SINGLE_FILE, ADAPTER_WEIGHTS):
            if (self.path / name).is_file():
                return {self.path / name: []}
        raise ConfluxError(
            f"{self.path}: no {SINGLE_FILE}, {INDEX_FILE} or {ADAPTER_WEIGHTS}; "
            "conflux reads safetensors only"
        )

    @property
    def names(self) -> list[str]:
        """Tensor names shard by shard, each shard's sorted (as safetensors stores them)."""
        return list(self._meta)

    def __contains__(self, name: str) -> bool:
        return name in self._meta

    def file(self, name: str) -> Path:
        self._check(name)
        return self._file_of[name]

    def shape(self, name: str) -> tuple[int, ...]:
        self._check(name)
        return self._meta[name][0]

    def dtype(self, name: str) -> torch.dtype:
        self._check(name)
        code = self._meta[name][1]
        if code not in DTYPES:
            raise DataError(f"unsupported dtype {code}", file=self._file_of[name], row=name, field="dtype")
        return DTYPES[code]

    def nbytes(self, name: str) -> int:
        return math.prod(self.shape(name)) * self.dtype(name).itemsize

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor, in its stored dtype, into memory the caller owns."""
        self._check(name)
        file = self._file_of[name]
        try:
            with self._opening:
                if file not in self._handles:
                    self._handles[file] = safe_open(file, framework="pt", backend="pread")
            return self._handles[file].get_tensor(name)
        except (OSError, SafetensorError) as exc:  # e.g. a shard deleted or truncated since the headers
            raise DataError(f"cannot read the tensor: {exc}", file=file, row=name, field="tensor") from exc

    def read_into(self, name: str, start: int, out: torch.Tensor) -> torch.Tensor:
        """Read the flat entries [start, start + out.numel()) of one tensor into ``out`` and return it.

        ``out`` is a contiguous tensor of the stored dtype. Streaming code reads chunks into buffers it
        reuses: a fresh tensor per read (what :meth:`get` returns) costs a page fault per 4 KiB on first
        touch, more than the copy itself for tensors above the allocator's mmap threshold. One ``pread`` per
        chunk, with the GIL released, so reads overlap with other threads' computation.
        """
        file, dtype = self.file(name), self.dtype(name)
        if out.dtype != dtype or not out.is_contiguous():
            raise ConfluxError(f"{name}: read_into needs a contiguous {dtype} buffer, got {out.dtype}")
        if not 0 <= start <= start + out.numel() <= math.prod(self.shape(name)):
            raise ConfluxError(f"{name}: entries [{start}, {start + out.numel()}) are out of range")
        try:
            fd, offset = self._locate(file, name)
            offset += start * dtype.itemsize
            view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    raise OSError("unexpected end of file")
                done += got
        except OSError as exc:
            raise DataError(f"cannot read the tensor: {exc}", file=file, row=name, field="tensor") from exc
        return out

    @contextlib.contextmanager
    def mapped(self, name: str) -> Iterator[torch.Tensor]:
        """One tensor's stored bytes as a flat tensor of its dtype, mapped from the file, for one read pass.

        Nothing is copied: a pass reads the page cache directly, where :meth:`read_into` copies every byte
        into a buffer that the pass then reads back (a third of a bf16 pass's memory traffic). The pages
        count in RSS only until the block ends and the range is unmapped, so memory stays bounded by the
        tensors being read, as with ``pread``. The tensor must not outlive the block.
        """
        file, dtype, numel = self.file(name), self.dtype(name), math.prod(self.shape(name))
        nbytes = numel * dtype.itemsize
        if numel == 0:  # nothing to map (and mmap refuses length 0)
            yield torch.empty(0, dtype=dtype)
            return
        try:
            fd, start = self._locate(file, name)
            if os.fstat(fd).st_size < start + nbytes:  # pages past the end would be a SIGBUS, not an error
                raise OSError("unexpected end of file")
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            # Private and writable only so that torch takes the buffer without a warning; nothing writes.
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            region = mmap.mmap(fd, start - aligned + nbytes, mmap.MAP_PRIVATE, prot, offset=aligned)
        except OSError as exc:
            raise DataError(f"cannot read the tensor: {exc}", file=file, row=name, field="tensor") from exc
        view = torch.frombuffer(region, dtype=dtype, offset=start - aligned, count=numel)
        try:
            yield view
        finally:
            del view  # the buffer export must end before the mapping can close
            region.close()

    def _locate(self, file: Path, name: str) -> tuple[int, int]:
        """(descriptor, offset in the file) of one tensor's bytes (for :meth:`read_into`, :meth:`mapped`)."""
        with self._opening:
            fd, data_start = self._data.get(file) or self._open_data(file)
        return fd, data_start + self._offsets[file, name]

    def _open_data(self, file: Path) -> tuple[int, int]:
        """Open ``file`` for :meth:`read_into` and learn where each tensor's bytes are (safetensors' header:
        an 8-byte little-endian length, then JSON with ``data_offsets`` relative to the end of the header)."""
        fd = os.open(file, os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
            header = json.loads(os.pread(fd, length, 8))
        except (struct.error, ValueError) as exc:
            os.close(fd)
            raise OSError(f"unreadable safetensors header: {exc}") from exc
        for key, entry in header.items():
            if key != "__metadata__":
                self._offsets[file, key] = entry["data_offsets"][0]
        self._data[file] = (fd, 8 + length)
        return self._data[file]

    def close(self) -> None:
        """Close the open files (they are also closed when this object is garbage-collected)."""
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()
        for fd, _ in self._data.values():
            os.close(fd)
        self._data.clear()

    def __del__(self) -> None:
        for fd, _ in getattr(self, "_data", {}).values():  # descriptors of read_into; safe_open's close alone
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, name: str) -> None:
        if name not in self._meta:
            where = self.path / INDEX_FILE if (self.path / INDEX_FILE).is_file() else self.path
            raise DataError("no such tensor in the checkpoint", file=where, row=name, field="tensor")


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a model directory as a dict."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the model config: {exc}", file=path, row="all", field="config") from exc


def check_same_base(model_dir: str | Path, base_dir: str | Path) -> None:
    """Raise :class:`DataError` when two model directories' configs disagree on the architecture.

    A task vector between checkpoints of different bases is meaningless even where shapes happen to agree.
    """
    model, base = read_config(model_dir), read_config(base_dir)
    for key in ARCHITECTURE_KEYS:
        if model.get(key) != base.get(key):
            raise DataError(
                f"{key} is {model.get(key)!r} here but {base.get(key)!r} in the base {base_dir}",
                file=Path(model_dir) / "config.json",
                row="all",
                field=key,
            )


def check_same_tensors(model: WeightFiles, base: WeightFiles) -> None:
    """Raise :class:`DataError` naming the file and tensor unless both hold the same names and shapes."""
    extra = [n for n in model.names if n not in base]
    if extra:
        msg = f"tensor is not in the base {base.path}"
        raise DataError(msg, file=model.file(extra[0]), row=extra[0], field="tensor")
    missing = [n for n in base.names if n not in model]
    if missing:
        msg = f"tensor of the base {base.path} is missing here"
        raise DataError(msg, file=model.path, row=missing[0], field="tensor")
    for name in base.names:
        if model.shape(name) != base.shape(name):
            msg = f"shape {model.shape(name)} differs from the base's {base.shape(name)} ({base.file(name)})"
            raise DataError(msg, file=model.file(name), row=name, field="shape")


def copy_side_files(src_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copy the config, generation config and tokenizer files (every top-level file but weights)."""
    copied = []
    for path in sorted(Path(src_dir).iterdir()):
        weights = path.suffix in {".safetensors", ".bin", ".pt", ".pth"} or path.name == INDEX_FILE
        if path.is_file() and not weights:
            shutil.copy2(path, Path(out_dir) / path.name)
            copied.append(path.name)
    return copied
