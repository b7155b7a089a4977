"""How many of this machine's cores one run keeps busy, and whether two processes slow each other by themselves
(issue #38: spreading a sweep's runs over two worker processes gains far less than 2x).

    python benchmarks/cores_busy.py [--rounds 100]

1. Two copies of a single-threaded NumPy and Python workload (a 400x400 matrix product, a pass over 16 MB, a
   Python loop), alone and then side by side, twice: if the cores were shared (hyperthreads of one core, or a
   host that does not give the second core), side by side each would take longer than alone.
2. One seed of notebook 01's FedAvg setting (mnist5k, the 2NN, 100 clients with two label shards each, K = 10,
   E = 5, B = 10), after a two-round run has built and warmed the process and TFF's worker: its wall time and the
   CPU seconds of fedlab's process and of TFF's worker (its child process), from ``psutil``. Their sum over the
   wall time is the cores the run keeps busy on average; a sweep's runs side by side cannot go faster than the
   cores over that.

Prints both as JSON lines; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORKLOAD = r"""
import time, numpy as np
a = np.random.default_rng(0).random((400, 400)); b = a.copy()
x = np.random.default_rng(1).random(2_000_000)
t = time.perf_counter()
for _ in range(60): a @ b
matmul = time.perf_counter() - t
t = time.perf_counter()
for _ in range(60): (x * 1.0001).sum()
memory = time.perf_counter() - t
t = time.perf_counter()
s = 0
for i in range(3_000_000): s += i
python = time.perf_counter() - t
print(f"{matmul} {memory} {python}")
"""


def side_by_side(copies: int) -> list[list[float]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKLOAD], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    try:
        return [[round(float(v), 3) for v in p.communicate(timeout=600)[0].split()] for p in procs]
    finally:
        for p in procs:
            p.kill()  # after a timeout, the copies still running; a copy that ended is not touched
            p.wait()


def one_run(rounds: int) -> dict:
    import psutil

    import fedlab as fl

    fl.setup()
    base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=rounds,
                               client_lr=0.1, partition="shards", shards_per_client=2, local_epochs=5, batch_size=10)
    me = psutil.Process()
    fl.run_experiment(base.replace(rounds=2), progress=False)  # builds and warms the process and the worker

    def cpu(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    before = cpu(me), {child.pid: cpu(child) for child in me.children(recursive=True)}
    start = time.perf_counter()
    fl.run_experiment(base.replace(seed=1), progress=False)
    wall = time.perf_counter() - start
    children = me.children(recursive=True)
    own = cpu(me) - before[0]
    worker = sum(cpu(child) - before[1].get(child.pid, 0.0) for child in children)
    return {"measure": "one run", "rounds": rounds, "wall_s": round(wall, 2), "fedlab_cpu_s": round(own, 2),
            "worker_cpu_s": round(worker, 2), "cores_busy": round((own + worker) / wall, 2),
            "worker_threads": [child.num_threads() for child in children]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args(argv)
    for repeat in range(2):
        for copies in (1, 2):
            print(json.dumps({"measure": "matmul, memory, python seconds", "repeat": repeat, "copies": copies,
                              "seconds": side_by_side(copies)}), flush=True)
    print(json.dumps(one_run(args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
