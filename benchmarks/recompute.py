"""End-to-end throughput of offline recomputation against plain pyarrow reading and writing the same files.

    .venv/bin/python benchmarks/recompute.py [--tokens 20e6] [--shards 8] [--rounds 3] [--dir DIR]

Generates a dataset in the trajectory standard (Parquet shards of RLVR-like rollouts: responses
of 4k to 12k tokens with token ids, a mask, behaviour log-probs, critic values and an outcome
reward) and times, in interleaved rounds over every shard, medians reported:
- floor: `pyarrow.parquet.read_table` of the shard, then `pyarrow.parquet.write_table` of the same
  table with pyarrow's defaults: the I/O any tool must at least do;
- floor + checksums: the same, with page checksums written and verified (as sae-rl's files have);
- floor + outputs: the same read, then a write of the output table (the inputs plus advantages,
  returns and boundaries, computed beforehand): the bytes our job writes, with pyarrow's defaults;
- recompute: `sae_core.tools.recompute.recompute_file` with the sae estimator on the numba backend:
  streaming read, validation (checksums verified), the estimator, and the atomic write of inputs
  plus outputs (checksums written, the input's fingerprint recorded).
Target: recompute within 1.5x of the floor (pyarrow's defaults, without checksums: the stricter).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sae_core import trajectory as tj
from sae_core.tools import recompute as rc


def make_dataset(root: Path, tokens: float, shards: int, seed: int = 0) -> list[Path]:
    """Shards of about tokens / shards tokens each; returns their paths."""
    rng = np.random.default_rng(seed)
    per_shard = int(tokens) // shards
    paths = []
    for s in range(shards):
        lengths = []
        while sum(lengths) < per_shard:
            lengths.append(int(rng.integers(4096, 12289)))
        lengths = np.array(lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        n, b = int(offsets[-1]), len(lengths)
        mask = np.ones(n, dtype=bool)
        mask[offsets[1:] - 1 - rng.integers(0, 64, size=b)] = False  # a little trailing padding
        # behaviour log-probs: most tokens near-certain, about 5% below log(0.2)
        logprobs = np.where(rng.random(n) < 0.05, np.log(rng.uniform(0.01, 0.2, n)),
                            np.log(rng.uniform(0.5, 1.0, n))).astype(np.float32)
        table = tj.from_ragged(offsets, {
            "response_ids": rng.integers(0, 150_000, size=n, dtype=np.int32),
            "response_mask": mask,
            "logprobs": logprobs,
            "values": rng.uniform(0.0, 1.0, size=n).astype(np.float32)},
            {"trajectory_id": [f"shard{s}-{i}" for i in range(b)], "group_id": [f"p{s}-{i // 8}" for i in range(b)],
             "step": np.full(b, 100, dtype=np.int64), "reward": rng.integers(0, 2, size=b).astype(np.float32)})
        paths.append(tj.write_table(table, root / f"shard-{s:03d}.parquet"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=float, default=20e6, help="tokens in the dataset (default 20M)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024, help="rows per batch of the recompute job")
    parser.add_argument("--dir", default=None, help="where to put the dataset (default: a temporary directory)")
    args = parser.parse_args()

    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sae-bench-"))
    inputs, outputs = root / "in", root / "out"
    try:
        t0 = time.perf_counter()
        paths = make_dataset(inputs, args.tokens, args.shards)
        tokens = sum(tj.validate_file(p).tokens for p in paths)
        size = sum(p.stat().st_size for p in paths)
        print(f"dataset: {len(paths)} shards, {tokens:,} tokens, {size / 2**20:.0f} MiB on disk "
              f"(made in {time.perf_counter() - t0:.0f} s) in {root}")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores; pyarrow {pa.__version__}")
        runs = rc.plan_runs(["sae"])
        outputs.mkdir(parents=True, exist_ok=True)
        with_outputs = {p: tj.compute(pq.read_table(p), estimator="sae") for p in paths}

        def floor():
            for p in paths:
                pq.write_table(pq.read_table(p), outputs / "floor.parquet")

        def floor_checksums():
            for p in paths:
                table = pq.read_table(p, page_checksum_verification=True)
                pq.write_table(table, outputs / "floor-crc.parquet", write_page_checksum=True)

        def floor_outputs():
            for p in paths:
                pq.read_table(p)
                pq.write_table(with_outputs[p], outputs / "floor-out.parquet")

        def recompute():
            for p in paths:
                rc.recompute_file(p, outputs / p.name, runs, batch_size=args.batch_size, overwrite=True)

        recompute()  # warm-up: numba's compiled kernels load from its cache
        candidates = {"floor": floor, "floor + checksums": floor_checksums, "floor + outputs": floor_outputs,
                      "recompute": recompute}
        times = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, fn in candidates.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        print(f"\n{'':>18} {'seconds':>8} {'M tokens/s':>11} {'vs floor':>9}")
        for name, s in med.items():
            print(f"{name:>18} {s:8.2f} {tokens / s / 1e6:11.1f} {s / med['floor']:8.2f}x")
        ratio = med["recompute"] / med["floor"]
        print(f"\nrecompute / floor = {ratio:.2f}x (target: at most 1.5x) -> {'met' if ratio <= 1.5 else 'NOT met'}"
              f"; recompute / (floor + checksums) = {med['recompute'] / med['floor + checksums']:.2f}x")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
