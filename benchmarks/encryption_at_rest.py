"""What encryption at rest costs a run: the benchmark workload with and without it, interleaved.

    FEDLAB_WORKER_INTRAOP_THREADS=1 .venv/bin/python benchmarks/encryption_at_rest.py [--ks 10,100] [--rounds 8]
        [--repeats 3] [--out results/benchmarks]

With encryption on, clients' arrays are sent to TFF's worker inline every round instead of as the paths of files
written once (:mod:`fedlab.core.array_files`), and every checkpoint is encrypted. For each K: seconds of TFF's round
call (the history's ``seconds``, median over rounds 3..R) and wall seconds per round of the whole run (checkpoint
saved every round, evaluation at the last), plain then encrypted, ``--repeats`` times after one warm-up pair (which
builds both processes); the ratio is encrypted / plain, median over the pairs with their range. Run it alone.

Besides what it prints, it writes OUT/encryption_at_rest.csv (default results/benchmarks/), one row per K, rewritten
whole (a temporary file, then a rename) after each K: clients_per_round, pairs, ratio_median, ratio_min, ratio_max
(TFF's round call, encrypted / plain, over the pairs), plain_seconds and encrypted_seconds (the round call's seconds,
median over the pairs). The wall-time ratios are printed only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["clients_per_round", "pairs", "ratio_median", "ratio_min", "ratio_max", "plain_seconds",
           "encrypted_seconds"]
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def one(config, encrypted: bool, key_file: str) -> tuple[float, float, float]:
    import fedlab

    fedlab.use_encryption(key_file if encrypted else None)
    try:
        with tempfile.TemporaryDirectory() as folder:
            t0 = time.perf_counter()
            history = fedlab.run_experiment(config, checkpoint_dir=os.path.join(folder, "ckpt"), progress=False)
            wall = (time.perf_counter() - t0) / config.rounds
            disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    finally:
        fedlab.use_encryption(None)
    return float(np.median(history["seconds"].to_numpy()[2:])), wall, float(disk)


def write_table(path: str, rows: list[dict]) -> None:
    """The rows as a CSV, written whole: a half-written table is never left at ``path``."""
    import io

    import pandas as pd

    from fedlab.core.storage import atomic_write

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=COLUMNS).to_csv(buffer, index=False)
    atomic_write(path, buffer.getvalue())
    os.chmod(path, 0o644)  # a published table (atomic_write's temporary file is 0600)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", default="10,100")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "results", "benchmarks"),
                        help="folder of encryption_at_rest.csv (default: results/benchmarks)")
    args = parser.parse_args()
    table_path, table = os.path.join(args.out, "encryption_at_rest.csv"), []
    import fedlab
    import workload
    from fedlab.core.encryption import new_key

    fedlab.setup()
    key_file = os.path.join(tempfile.mkdtemp(), "bench.key")
    new_key(key_file)
    print("K,mode,repeat,round_call_s,wall_s_per_round,checkpoint_bytes")
    for k in [int(v) for v in args.ks.split(",")]:
        config = workload.config(k, args.rounds)
        ratios = {"round": [], "wall": []}
        seconds = {"plain": [], "encrypted": []}
        for repeat in range(args.repeats + 1):
            measured = {}
            for mode in ("plain", "encrypted"):
                measured[mode] = one(config, mode == "encrypted", key_file)
                if repeat:
                    print(f"{k},{mode},{repeat},{measured[mode][0]:.4f},{measured[mode][1]:.4f},"
                          f"{measured[mode][2]:.0f}", flush=True)
            if repeat:
                seconds["plain"].append(measured["plain"][0])
                seconds["encrypted"].append(measured["encrypted"][0])
                ratios["round"].append(measured["encrypted"][0] / measured["plain"][0])
                ratios["wall"].append(measured["encrypted"][1] / measured["plain"][1])
        for what, values in ratios.items():
            print(f"# K={k} {what}: encrypted/plain median {np.median(values):.3f} "
                  f"(range {min(values):.3f}-{max(values):.3f}, {len(values)} pairs)", flush=True)
        if ratios["round"]:
            values = ratios["round"]
            table.append({"clients_per_round": k, "pairs": len(values), "ratio_median": float(np.median(values)),
                          "ratio_min": float(min(values)), "ratio_max": float(max(values)),
                          "plain_seconds": float(np.median(seconds["plain"])),
                          "encrypted_seconds": float(np.median(seconds["encrypted"]))})
            write_table(table_path, table)
    print(f"# wrote {table_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
