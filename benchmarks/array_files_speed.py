"""Clients' array files in memory (``/dev/shm``) against on the disk, side by side in one run
(``fedlab.core.array_files.default_root``).

    python benchmarks/array_files_speed.py [--repeats 3] [--rounds 60] [--out results/benchmarks/array_files_speed.csv]

Each measurement is a fresh Python process that trains ``make bench``'s workload at K = 10
(``benchmarks/workload.py``: 1,000 clients, so most of a round's ten clients train for the first time and have
their files written) and notebook 01's FedAvg setting (100 clients, K = 10, E = 5, B = 10), each for ``--rounds``
rounds after a three-round warm-up of its own data set, with no evaluation but the last round's; "disk" sets
``TMPDIR`` to ``/tmp`` (this machine's ext4 disk), "memory" leaves it unset. The two settings take turns, each
first in every other repeat. For each run: wall milliseconds a round, and CPU milliseconds a round of the process
and of its children (TFF's worker), from /proc. Prints the medians; writes every run to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = """
import json, os, sys, time
sys.path.insert(0, os.path.join(sys.argv[2], "benchmarks"))
import fedlab as fl
import workload
from tff_tracing import cpu_seconds
from fedlab.core import array_files
fl.setup()
rounds = int(sys.argv[1])
settings = {"make bench, K = 10": workload.config(10, rounds),
            "notebook 01": fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10,
                                               rounds=rounds, client_lr=0.1, partition="shards", shards_per_client=2,
                                               local_epochs=5, batch_size=10, eval_every=rounds)}
for setting, config in settings.items():
    fl.run_experiment(config.replace(rounds=3, eval_every=3), progress=False)
    before, start = cpu_seconds(), time.perf_counter()
    history = fl.run_experiment(config, progress=False)
    after, wall = cpu_seconds(), time.perf_counter() - start
    me, children = os.getpid(), [p for p in after if p in before and p != os.getpid()]
    print(json.dumps({"setting": setting, "folder": str(array_files.FILES.directory.parent),
                      "wall_ms": 1000 * wall / rounds, "fedlab_cpu_ms": 1000 * (after[me] - before[me]) / rounds,
                      "worker_cpu_ms": 1000 * sum(after[p] - before[p] for p in children) / rounds,
                      "final_train_loss": float(history["train_loss"].iloc[-1])}), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "array_files_speed.csv")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    rows = []
    for repeat in range(args.repeats):
        for where in (("memory", "disk") if repeat % 2 == 0 else ("disk", "memory")):
            env = dict(base, **({"TMPDIR": "/tmp"} if where == "disk" else {}))
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.rounds), str(ROOT)], capture_output=True,
                                 text=True, cwd=ROOT, env=env, timeout=3600, check=False)
            if out.returncode != 0:
                raise SystemExit(f"measurement failed ({where}):\n{out.stderr[-3000:]}")
            for line in out.stdout.strip().splitlines():
                rows.append({"repeat": repeat, "files": where, "rounds": args.rounds, **json.loads(line)})
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")  # the table whole or not at all
    table.to_csv(partial, index=False)
    partial.replace(args.out)
    same = table.groupby("setting").final_train_loss.nunique().eq(1).all()
    print(f"\nthe same final training loss with the files in memory and on the disk in every run of a setting: {same}")
    print(table.groupby(["setting", "files"])[["wall_ms", "fedlab_cpu_ms", "worker_cpu_ms"]].median().round(2)
          .to_string())
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
