"""Fused C kernels (statistics: ``tau_stats.c``, TIES: ``ties_merge.c``), compiled on first use by cc.

Why compiled: the statistics of a bf16 task vector must keep up with reading it (~0.4 ns an entry), and
numpy or torch spend 0.1-0.2 ns an entry on *each* of the ~12 passes the statistics need; one C loop does
them all (see ``tau_stats.c``). ``torch.compile`` could fuse the reductions too, but it cannot append the
trim's candidate band, and its first compile takes tens of seconds in every job.

``ties_merge.c`` does the same for the TIES merge's ~14 torch passes (:mod:`conflux.analysis.merge_kernels`),
bitwise equal to them. The library is built once per source version with the system's ``cc`` (or ``$CC``) into
``$CONFLUX_CACHE`` (default ``$XDG_CACHE_HOME/conflux``, else ``~/.cache/conflux``), written atomically so
concurrent jobs may race; a build takes about a second. Without a compiler (or with ``CONFLUX_NATIVE=0``)
:func:`load` returns ``None`` and :mod:`conflux.analysis.stats` and :mod:`conflux.analysis.merge_kernels` take
their numpy/torch paths: the same values, ~3x slower.
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

SOURCES = [Path(__file__).with_name(name) for name in ("tau_stats.c", "ties_merge.c")]
KINDS = {torch.float32: 1, torch.bfloat16: 2}  # the stored dtypes the kernel reads (tau_stats.c's KIND_*)
SPILL = 16  # entries a band needs beyond its capacity: the kernel stores whole vectors of up to 16 lanes


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


_P, _I64, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {  # the C functions' (return type, argument types)
    "conflux_tau_stats": (
        ctypes.c_int,
        [_P, ctypes.c_int, _P, ctypes.c_int, _I64, _F, _F, _F, _P, _I64, _P, _P],
    ),
    "conflux_ties_merge": (ctypes.c_int, [_P, ctypes.c_int, _P, _P, _I64, _F, _P]),
    "conflux_zero_ties_after": (None, [_P, _I64, _F, _I64]),
}
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
        # -ffp-contract=off: no fused multiply-adds, whose rounding would differ from torch's steps.
        argv = [compiler, "-O3", "-std=gnu11", "-ffp-contract=off", "-fPIC", "-shared", "-Wno-psabi"]
        argv += ["-o", str(out), *map(str, SOURCES)]
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
            source = b"".join(path.read_bytes() for path in SOURCES)
            key = hashlib.sha256(source + f"{platform.machine()} {sys.platform}".encode()).hexdigest()[:16]
            target = _cache_dir() / f"kernels-{key}.so"
            try:
                if not target.is_file():
                    _build(target)
                lib = ctypes.CDLL(str(target))  # CDLL releases the GIL during calls: threads overlap
                for name, (restype, argtypes) in _SIGNATURES.items():
                    getattr(lib, name).restype = restype
                    getattr(lib, name).argtypes = argtypes
            except OSError as exc:
                log.warning("fused kernels unavailable, using numpy and torch (about 3x slower): %s", exc)
                lib = None
        _loaded.append(lib)
        return lib


def tau_pass(
    a: torch.Tensor,
    b: torch.Tensor | None,
    *,
    shift: float,
    lo: float,
    hi: float,
    band: torch.Tensor,
    out: torch.Tensor | None = None,
) -> TauSums:
    """One pass over τ = a − b (τ = a without b): see :class:`TauSums`.

    ``a`` and ``b`` are flat, contiguous, of a dtype in :data:`KINDS`; entries with lo <= |τ| <= hi are
    written to the float32 ``band``, at most ``band.numel() - SPILL`` of them (the kernel stores a whole
    vector at a time); ``TauSums.band`` counts them all, so a larger count means the band was too small.
    """
    lib = load()
    if lib is None:
        raise RuntimeError("the fused statistics kernel is not available")
    if not a.is_contiguous() or (b is not None and not b.is_contiguous()):
        raise ValueError("a and b must be contiguous")
    if b is not None and b.numel() != a.numel():
        raise ValueError(f"τ = a − b needs equal sizes, got {a.numel()} and {b.numel()}")
    if out is not None and (out.dtype != torch.float32 or not out.is_contiguous() or out.numel() < a.numel()):
        raise ValueError("out must be a contiguous float32 tensor with room for τ")
    if band.dtype != torch.float32 or band.numel() < SPILL:
        raise ValueError(f"band must be a float32 tensor of at least {SPILL} entries")
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
        band.numel() - SPILL,
        None if out is None else out.data_ptr(),
        ctypes.byref(sums),
    )
    if rc != 0:
        raise ValueError(f"unsupported dtypes {a.dtype}, {None if b is None else b.dtype}")
    return sums


def ties_merge(
    rows: torch.Tensor, weights: list[float], thresholds: list[float], lam: float, out: torch.Tensor
) -> torch.Tensor:
    """λ · TIES disjoint mean of the [n, numel] float32 ``rows`` (n <= 4) trimmed at ``thresholds`` (keep
    |τ| >= t; -inf keeps all), written to the float32 ``out``: bitwise merge_kernels' torch steps."""
    lib = load()
    n, numel = rows.shape
    if lib is None or not 1 <= n <= 4 or not rows.is_contiguous() or out.numel() < numel:
        raise ValueError(f"the TIES kernel takes 1 to 4 contiguous rows and room for {numel} entries")
    w = (ctypes.c_float * n)(*weights)
    t = (ctypes.c_float * n)(*thresholds)
    lib.conflux_ties_merge(rows.data_ptr(), n, w, t, numel, lam, out.data_ptr())
    return out[:numel]


def zero_ties_after(row: torch.Tensor, threshold: float, keep: int) -> None:
    """Keep the first ``keep`` entries of the flat float32 ``row`` with |τ| == threshold; zero the rest."""
    lib = load()
    if lib is None or row.dtype != torch.float32 or not row.is_contiguous():
        raise ValueError("zero_ties_after takes a contiguous float32 row and the compiled kernels")
    lib.conflux_zero_ties_after(row.data_ptr(), row.numel(), threshold, keep)
