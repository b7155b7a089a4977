"""Two sweeps side by side, as two notebooks of `make figures` run, with a process budget each (issue #38).

    python benchmarks/sweeps_side_by_side.py [--runs 6] [--repeats 2] [--settings workers one one-interop]
                                             [--out results/benchmarks/sweeps_side_by_side.csv]

Each measurement starts two Python processes at once; each runs ``fl.run_sweep`` over ``--runs`` seeds of notebook
01's FedAvg setting (mnist5k, 2NN, 100 clients with two label shards, K = 10, E = 5, B = 10, 100 rounds) into an
empty cache of its own (different seeds in the two, so nothing is shared). The wall seconds until both have
returned, and the CPU seconds the whole machine spent meanwhile (``/proc/stat``; run it with nothing else running:
TFF's worker binaries outlive the processes that start them, so no process's own accounting holds all of it), for
each setting:

* ``workers``: each sweep may use a worker process per core (``$FEDLAB_SWEEP_PROCESSES`` unset; fedlab's default
  for one sweep on its own);
* ``one``: each sweep trains its runs in its own process (``FEDLAB_SWEEP_PROCESSES=1``): the two sweeps together
  use as many processes as the machine has cores;
* ``one-interop``: as ``one``, and TensorFlow's inter-op pool of one thread (``TF_NUM_INTEROP_THREADS=1``) in both
  processes and their TFF workers.

The settings take turns within every repeat, each first in turn, so drift hits them alike. With fewer than about
four runs a sweep never spreads (the runs left must be worth 30 s), and ``workers`` measures what ``one`` does. Every
run's final accuracy must be the same in every setting and repeat (the script checks and says so). Writes one row per
measurement to OUT.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from process_groups import wait_until_gone

ROOT = pathlib.Path(__file__).resolve().parents[1]

ONE_SWEEP = r"""
import json, sys, time
import fedlab as fl
cache, first, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fl.setup()
base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=100,
                           client_lr=0.1, shards_per_client=2, local_epochs=5, batch_size=10)
start = time.perf_counter()
history = fl.run_sweep(fl.grid(base, seed=list(range(first, first + runs))), results_cache=cache)
wall = time.perf_counter() - start
final = history.sort_values("round").groupby("seed").last()["eval_accuracy"]
print("RESULT " + json.dumps({"wall": wall, "final": {int(k): float(v) for k, v in final.items()}}))
"""

SETTINGS = {
    "workers": {},
    "one": {"FEDLAB_SWEEP_PROCESSES": "1"},
    "one-interop": {"FEDLAB_SWEEP_PROCESSES": "1", "TF_NUM_INTEROP_THREADS": "1"},
}


def machine_cpu_seconds() -> float:
    """CPU seconds this machine's cores have spent running anything since it started (``/proc/stat``: user, nice,
    system, irq and softirq; not idle, I/O wait, or steal, time the hypervisor gave elsewhere). In a container
    limited to fewer cores than its host, this is the host's."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")


def side_by_side(setting: str, runs: int, scratch: pathlib.Path) -> dict:
    """Both sweeps started at once; the wall seconds until both returned, their CPU seconds, final accuracies."""
    drop = ("FEDLAB_SWEEP_PROCESSES", "TF_NUM_INTEROP_THREADS", "FEDLAB_SPREAD_AFTER_S", "FEDLAB_QUIET_DIR",
            "FEDLAB_QUIET_HELD")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(SETTINGS[setting], PYTHONWARNINGS="ignore")
    shutil.rmtree(scratch, ignore_errors=True)
    processes, outputs = [], []
    start, cpu = time.perf_counter(), machine_cpu_seconds()
    for first in (0, runs):
        out = tempfile.TemporaryFile(mode="w+")
        outputs.append(out)
        processes.append(subprocess.Popen([sys.executable, "-c", ONE_SWEEP, str(scratch / f"cache{first}"), str(first),
                                           str(runs)], stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                          cwd=ROOT, start_new_session=True))
    for process in processes:
        process.wait(timeout=3600)
    wall, cpu = time.perf_counter() - start, machine_cpu_seconds() - cpu
    for process in processes:
        wait_until_gone(process.pid, "a finished sweep's processes")  # its TFF worker too, before the next
    results = []
    for process, out in zip(processes, outputs):
        out.seek(0)
        text = out.read()
        if process.returncode != 0 or "RESULT " not in text:
            raise SystemExit(f"{setting}: a sweep failed:\n{text[-3000:]}")
        results.append(json.loads(text.split("RESULT ", 1)[1].splitlines()[0]))
    final = {seed: acc for r in results for seed, acc in r["final"].items()}
    return {"setting": setting, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "cores_busy": round(cpu / wall, 2), "sweep_seconds": " ".join(f"{r['wall']:.1f}" for r in results),
            "final": final}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--scratch", type=pathlib.Path, default=ROOT / "build" / "sweeps_side_by_side")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "sweeps_side_by_side.csv")
    args = parser.parse_args(argv)
    rows = []
    for repeat in range(args.repeats):
        turn = repeat % len(args.settings)
        for setting in args.settings[turn:] + args.settings[:turn]:  # each setting first in turn
            row = side_by_side(setting, args.runs, args.scratch)
            row["repeat"] = repeat
            print(json.dumps({k: v for k, v in row.items() if k != "final"}), flush=True)
            rows.append(row)
    finals = {json.dumps(r["final"], sort_keys=True) for r in rows}
    same = len(finals) == 1
    print(f"final accuracies the same in every setting and repeat: {same}")
    for setting in args.settings:
        seconds = [r["seconds"] for r in rows if r["setting"] == setting]
        print(f"{setting}: median {statistics.median(seconds):.1f} s over {len(seconds)} repeats")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["setting", "repeat", "runs_per_sweep", "seconds", "cpu_seconds", "cores_busy", "sweep_seconds",
              "same_final"]
    partial = args.out.with_name(args.out.name + ".partial")  # written whole, or the old table stays
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: r[k] for k in ("setting", "repeat", "seconds", "cpu_seconds", "cores_busy",
                                                  "sweep_seconds")},
                             "runs_per_sweep": args.runs, "same_final": same})
    partial.replace(args.out)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
