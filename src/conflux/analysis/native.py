"""The fused task-vector statistics kernel (``tau_stats.c``), compiled on first use where a C compiler exists.

Why compiled: the statistics of a bf16 task vector must keep up with reading it (~0.4 ns an entry), and
numpy or torch spend 0.1-0.2 ns an entry on *each* of the ~12 passes the statistics need; one C loop does
them all (see ``tau_stats.c``). ``torch.compile`` could fuse the reductions too, but it cannot append the
trim's candidate band, and its first compile takes tens of seconds in every job.

The shared library is built once per source version with the system's ``cc`` (or ``$CC``) into
``$CONFLUX_CACHE`` (default ``$XDG_CACHE_HOME/conflux``, else ``~/.cache/conflux``), written atomically so
concurrent jobs may race; a build takes about a second. Without a compiler (or with ``CONFLUX_NATIVE=0``)
:func:`load` returns ``None`` and :mod:`conflux.analysis.stats` takes its numpy path: the same values, ~3x
slower on bf16.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("tau_stats.c")
KINDS = {torch.float32: 1, torch.bfloat16: 2}  # the stored dtypes the kernel reads (tau_stats.c's KIND_*)


class TauSums(ctypes.Structure):
    """``tau_sums`` of tau_stats.c: the sums, counts and maximum of one pass over τ."""

    _fields_ = [
        ("sum", ctypes.c_double),
        ("sum_squares", ctypes.c_double),
        ("above_squares", ctypes.c_double),
        ("max_abs", ctypes.c_double),
        ("positive", ctypes.c_int64),
        ("zero", ctypes.c_int64),
        ("above", ctypes.c_int64),
        ("band", ctypes.c_int64),
    ]


_lock = threading.Lock()
_loaded: list[ctypes.CDLL | None] = []  # empty until the first load(): then the library, or None


def _cache_dir() -> Path:
    if os.environ.get("CONFLUX_CACHE"):
        return Path(os.environ["CONFLUX_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "conflux"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or next(filter(None, map(shutil.which, ("cc", "gcc", "clang"))), None)
    if compiler is None:
        raise OSError("no C compiler (cc, gcc, clang or $CC) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out = Path(tmp) / target.name
        # No -march=native: the cache may be shared by cluster nodes of different CPUs (target_clones picks).
        argv = [compiler, "-O3", "-std=gnu11", "-fPIC", "-shared", "-Wno-psabi", "-o", str(out), str(SOURCE)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(out, target)  # atomic: a concurrent job sees no library or a whole one


def load() -> ctypes.CDLL | None:
    """The compiled kernel (built on first use), or ``None`` where it cannot be built or is switched off."""
    with _lock:
        if _loaded:
            return _loaded[0]
        lib = None
        if os.environ.get("CONFLUX_NATIVE", "1") != "0":
            source = SOURCE.read_bytes()
            key = hashlib.sha256(source + f"{platform.machine()} {sys.platform}".encode()).hexdigest()[:16]
            target = _cache_dir() / f"tau_stats-{key}.so"
            try:
                if not target.is_file():
                    _build(target)
                lib = ctypes.CDLL(str(target))  # CDLL releases the GIL during calls: threads overlap
                fn = lib.conflux_tau_stats
                fn.restype = ctypes.c_int
                fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
                fn.argtypes += [ctypes.c_float] * 3 + [
                    ctypes.c_void_p,
                    ctypes.c_int64,
                    ctypes.POINTER(TauSums),
                ]
            except OSError as exc:
                log.warning("fused statistics kernel unavailable, using numpy (about 3x slower): %s", exc)
                lib = None
        _loaded.append(lib)
        return lib


def tau_pass(
    a: torch.Tensor, b: torch.Tensor | None, *, shift: float, lo: float, hi: float, band: torch.Tensor
) -> TauSums:
    """One pass over τ = a − b (τ = a without b): see :class:`TauSums`.

    ``a`` and ``b`` are flat, contiguous, of a dtype in :data:`KINDS`; entries with lo <= |τ| <= hi are
    written to the float32 ``band``, at most ``band.numel() - 8`` of them (the kernel stores 8 lanes at a
    time); ``TauSums.band`` counts them all, so a larger count means the band was too small.
    """
    lib = load()
    if lib is None:
        raise RuntimeError("the fused statistics kernel is not available")
    if not a.is_contiguous() or (b is not None and not b.is_contiguous()):
        raise ValueError("a and b must be contiguous")
    if b is not None and b.numel() != a.numel():
        raise ValueError(f"τ = a − b needs equal sizes, got {a.numel()} and {b.numel()}")
    if band.dtype != torch.float32 or band.numel() < 8:
        raise ValueError("band must be a float32 tensor of at least 8 entries")
    sums = TauSums()
    rc = lib.conflux_tau_stats(
        a.data_ptr(),
        KINDS[a.dtype],
        None if b is None else b.data_ptr(),
        0 if b is None else KINDS[b.dtype],
        a.numel(),
        shift,
        lo,
        hi,
        band.data_ptr(),
        band.numel() - 8,
        ctypes.byref(sums),
    )
    if rc != 0:
        raise ValueError(f"unsupported dtypes {a.dtype}, {None if b is None else b.dtype}")
    return sums
