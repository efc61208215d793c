"""Task-vector dump throughput against a raw safetensors read, its size on disk, and DuckDB over it.

    .venv/bin/python bench/dumps.py [--hidden 1024 --layers 8 --vocab 16000] [--dtype bfloat16|float32]
                                    [--repeat 3] [--threads 1]

Writes a random Llama-shaped base and a "fine-tune" (base + noise) as sharded safetensors
(bench/llama_shapes.py), then times, each in a fresh child process after one warm-up read (warm page cache):

- raw: ``safe_open`` + ``get_tensor`` of every tensor of both checkpoints with the ``pread`` backend conflux
  reads with (the floor: a dump reads the same bytes the same way);
- dump trimmed / dump full: ``dump_task_vectors`` of ``FullTaskVectors`` at density 0.2, float32 values, as
  the rules write them (``analysis.dumps``);
- stats: ``task_vector_stats``, the workflow's per-parameter L2 (and the rest of its table);
- duckdb: the per-layer, per-module L2 over the full dump with SQL (``GROUP BY layer, module``), as a user
  would query it, against the stats pass that computes the same norms from the checkpoints.

Where the machine allows it (root: /proc/sys/vm/drop_caches), the raw read and the trimmed dump are also
timed cold, with the page cache dropped before each run: a dump job on a cluster reads checkpoints that
another node wrote, so the cold ratio is the one its users meet; the warm one bounds the dump's own cost.

Prints seconds and GB/s of checkpoint bytes per kind, dump / raw throughput ratios (goal for trimmed >= 0.5),
each dump's size on disk in bytes per parameter, and the DuckDB query time next to the stats pass.
``--threads`` sets torch, OpenMP and DuckDB threads in every child alike (a dump job with two cores works
on two parameters at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from llama_shapes import add_pair_args, write_pair

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, shutil, sys, time
from pathlib import Path
import torch
kind, ft, base, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[5])
threads = int(sys.argv[4])
torch.set_num_threads(threads)
from safetensors import safe_open
from conflux.analysis.dumps import dump_task_vectors
from conflux.analysis.stats import task_vector_stats
from conflux.analysis.task_vectors import FullTaskVectors
import duckdb

shutil.rmtree(out, ignore_errors=True)
start = time.perf_counter()
if kind == "raw":
    for d in (ft, base):
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, framework="pt", backend="pread") as h:
                for k in h.keys():
                    h.get_tensor(k)
elif kind.startswith("dump_"):
    dump_task_vectors({"ft": FullTaskVectors(ft, base)}, out, mode=kind[5:], dtype="float32", density=0.2)
elif kind == "stats":
    task_vector_stats(FullTaskVectors(ft, base), density=0.2)
elif kind == "duckdb":
    con = duckdb.connect(config={"threads": threads})
    con.sql(
        "SELECT layer, module, sqrt(sum(value::DOUBLE * value::DOUBLE)) AS l2 "
        f"FROM read_parquet('{out.parent / 'dump_full'}/**/*.parquet', hive_partitioning=true) GROUP BY ALL"
    ).fetchall()
seconds = time.perf_counter() - start
size = sum(f.stat().st_size for f in out.rglob("*.parquet")) if out.exists() else 0
print(json.dumps({"seconds": seconds, "bytes": size}))
"""


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); False where the machine does not allow it."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def measure(kind: str, ft: Path, base: Path, threads: int, scratch: Path) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT / "src"),
    }
    cold = kind.endswith("_cold")
    if cold and not drop_page_cache():
        return {}
    kind = kind.removesuffix("_cold")
    out = scratch / kind if kind.startswith("dump_") else scratch / "scratch"
    argv = [sys.executable, "-c", CHILD, kind, str(ft), str(base), str(threads), str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_pair_args(parser)
    args = parser.parse_args()
    kinds = ("raw", "dump_trimmed", "dump_full", "stats", "duckdb", "raw_cold", "dump_trimmed_cold")
    with tempfile.TemporaryDirectory(prefix="conflux-bench-dumps-") as tmp:
        ft, base, _ = write_pair(Path(tmp), args)
        nbytes = sum(f.stat().st_size for d in (ft, base) for f in d.glob("*.safetensors"))
        measure("raw", ft, base, args.threads, Path(tmp))  # warm the page cache
        best: dict[str, dict] = {}
        for _ in range(args.repeat):  # interleaved, best of n: the machine may be shared
            for kind in kinds:
                result = measure(kind, ft, base, args.threads, Path(tmp))
                if result and (kind not in best or result["seconds"] < best[kind]["seconds"]):
                    best[kind] = result
    n_params = nbytes // 2 // getattr(torch, args.dtype).itemsize
    print(f"checkpoints: 2 x {n_params / 1e6:.0f}M parameters ({args.dtype}), {nbytes / 1e9:.2f} GB read")
    for kind in (k for k in kinds if k in best):
        r = best[kind]
        size = f"  {r['bytes'] / n_params:5.2f} bytes/parameter on disk" if kind.startswith("dump_") else ""
        print(f"{kind:>17}: {r['seconds']:7.2f} s  {nbytes / r['seconds'] / 1e9:6.2f} GB/s{size}")
    for dump, raw, goal in (
        ("dump_trimmed", "raw", " (goal >= 0.5)"),
        ("dump_full", "raw", ""),
        ("dump_trimmed_cold", "raw_cold", " (goal >= 0.5; what a cluster job meets)"),
    ):
        if dump in best and raw in best:
            ratio = best[raw]["seconds"] / best[dump]["seconds"]
            print(f"{dump} throughput / {raw} read throughput = {ratio:.2f}{goal}")
    if "raw_cold" not in best:
        print("cold read: not measured (dropping the page cache needs root)")
    print(
        f"per-layer L2: DuckDB over the full dump {best['duckdb']['seconds']:.2f} s, "
        f"the stats pass over the checkpoints {best['stats']['seconds']:.2f} s; threads: {args.threads}"
    )


if __name__ == "__main__":
    main()
