"""A sweep over seeds against one seed, side by side in one run (issue #38's target: 10 seeds in at most 2x the
wall time of one).

    python benchmarks/sweep_speed.py [--seeds 10] [--rounds 100] [--repeats 2] [--out results/benchmarks/sweep_speed.csv]

The configuration is notebook 01's FedAvg setting (mnist5k, the 2NN, 100 clients with two label shards each,
K = 10, E = 5, B = 10, η = 0.1). Each measurement is a fresh Python process with an empty results cache that
imports fedlab, then times ``fedlab.run_sweep`` over the seeds: one seed; every seed one after the other
(``processes=1``); the default (``fedlab.experiment.pool``: the first seed starts in the sweep's process and, once
its pace shows the sweep worth spreading, every seed goes to worker processes, that one trained again); every seed
in a worker process from the start (``FEDLAB_SPREAD_AFTER_S=0``, the default before sweeps started their runs in
their own process). The four are interleaved ``--repeats`` times; the caller's ``FEDLAB_SPREAD_AFTER_S`` and
``FEDLAB_SWEEP_PROCESSES`` are not passed on.
Prints the median seconds of each and the ratios to one seed; writes every measurement to OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
import fedlab as fl
fl.setup()
seeds, rounds, processes, cache = json.loads(sys.argv[1])
base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=rounds,
                           client_lr=0.1, partition="shards", shards_per_client=2, local_epochs=5, batch_size=10)
t0 = time.perf_counter()
history = fl.run_sweep(fl.grid(base, seed=seeds), results_cache=cache, progress=False, processes=processes)
seconds = time.perf_counter() - t0
last = history[history["round"] == rounds]
print(json.dumps({"seconds": seconds, "accuracy": dict(zip(map(int, last.seed), map(float, last.eval_accuracy)))}))
"""


def measure(seeds: list[int], rounds: int, processes, env) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedlab-sweep-bench-") as cache:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([seeds, rounds, processes, cache])],
                             capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=7200)
    if out.returncode != 0:
        raise SystemExit(f"measurement failed ({seeds=}, {processes=}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "sweep_speed.csv")
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("FEDLAB_SPREAD_AFTER_S", "FEDLAB_SWEEP_PROCESSES")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    every = list(range(args.seeds))
    settings = {"one seed": ([0], 1, {}), f"{args.seeds} seeds, one process": (every, 1, {}),
                f"{args.seeds} seeds, spread": (every, None, {}),
                f"{args.seeds} seeds, spread from the start": (every, None, {"FEDLAB_SPREAD_AFTER_S": "0"})}
    from fedlab.notebook.reproduce import numerics

    threads = numerics(env).threads  # TFF's worker's intra-op threads, as the caller's environment sets them
    rows, accuracy = [], {}
    for repeat in range(args.repeats):
        for name, (seeds, processes, extra) in settings.items():
            result = measure(seeds, args.rounds, processes, {**env, **extra})
            rows.append({"setting": name, "repeat": repeat, "seeds": len(seeds), "seconds": result["seconds"],
                         "worker_threads": threads})
            print(f"{name} (repeat {repeat + 1}): {result['seconds']:.1f} s", flush=True)
            for seed, value in result["accuracy"].items():
                if accuracy.setdefault(seed, value) != value:  # same config and seed: the same numbers
                    raise SystemExit(f"seed {seed}: final accuracy {value} here, {accuracy[seed]} before")
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(args.out)
    medians = table.groupby("setting", sort=False)["seconds"].median()
    one = medians["one seed"]
    for name, seconds in medians.items():
        print(f"{name:>40}: {seconds:7.1f} s  ({seconds / one:.2f}x one seed)")
    print(f"TFF's worker on {threads} intra-op thread(s); final accuracies equal across settings and repeats ({len(accuracy)} seeds); written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
