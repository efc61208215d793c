"""Split throughput and peak memory on 1M synthetic pairs, against a raw Parquet read of the same file.

    .venv/bin/python bench/split_throughput.py [--pairs 1000000] [--k 5]

Each measurement runs in a fresh child process, which reports its own peak RSS (VmHWM, bench/peak.py;
``ru_maxrss`` would carry this bench's own over exec). The peer is a plain
``pyarrow.parquet.read_table`` of the input: the split must read the file too, so the ratio says how much of
the split's time is spent beyond I/O.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from peak import own_peak_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def make_input(path: Path, n: int, k: int, seed: int = 0) -> None:
    from conflux.data.pairs import make_pair_table, write_pairs

    rng = np.random.default_rng(seed)
    prompts = [f"prompt number {i // 2} about topic {i % 97}" for i in range(n)]
    responses_a = [f"response a {i} " + "word " * (i % 13) for i in range(n)]
    responses_b = [f"response b {i} " + "text " * (i % 11) for i in range(n)]
    scores_a = rng.integers(0, 5, size=(n, k)).astype(np.float32)
    scores_b = rng.integers(0, 5, size=(n, k)).astype(np.float32)
    pairs = make_pair_table(
        pair_id=[f"bench-{i:08d}" for i in range(n)],
        prompt=prompts,
        response_a=responses_a,
        response_b=responses_b,
        scores_a=scores_a,
        scores_b=scores_b,
        dims=[f"dim{i}" for i in range(k)],
        source="bench",
    )
    write_pairs(path, pairs)


def measure(kind: str, path: Path, out_dir: Path) -> dict:
    start = time.perf_counter()
    if kind == "raw_read":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).num_rows
    else:
        from conflux.data.split import SPLIT_NAMES, SplitConfig, split_pairs_job

        outputs = {name: out_dir / f"{name}.parquet" for name in SPLIT_NAMES}
        stats = split_pairs_job(path, outputs, out_dir / "stats.json", SplitConfig())
        rows = stats["input_pairs"]
    seconds = time.perf_counter() - start
    peak_mib = own_peak_bytes() / 2**20
    return {"kind": kind, "rows": rows, "seconds": seconds, "peak_rss_mib": peak_mib}


def run_child(kind: str, path: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--input", str(path), "--out", str(out_dir)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--child", choices=["raw_read", "split"])
    parser.add_argument("--input", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.input, args.out)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.parquet"
        make_input(path, args.pairs, args.k)
        size_mib = path.stat().st_size / 2**20
        raw = run_child("raw_read", path, Path(tmp))
        split = run_child("split", path, Path(tmp))
    print(f"input: {args.pairs:,} pairs, k={args.k}, {size_mib:.1f} MiB Parquet")
    for result in (raw, split):
        rate = result["rows"] / result["seconds"]
        print(
            f"{result['kind']:>9}: {result['seconds']:.2f} s, {rate:,.0f} pairs/s, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB"
        )
    print(f"split throughput / raw read throughput: {raw['seconds'] / split['seconds']:.3f}")


if __name__ == "__main__":
    main()
