"""Where a fedlab round's time goes, process by process, on the benchmark workload.

    FEDLAB_WORKER_INTRAOP_THREADS=1 .venv/bin/python benchmarks/round_split.py [--ks 10,100,1000] [--rounds 6]

For each K, the medians over the rounds after the first two of: wall seconds a round; CPU seconds of this
process (fedlab's Python and TFF's Python side: the clients' inputs, TFF serialising them for its runtime,
reading the results back), of which building the clients' inputs (``Clients.inputs``); and CPU seconds of TFF's
worker (the clients' training and the aggregation in TFF's C++ runtime). The two processes take turns: TFF
serialises all of a round's client values before the worker starts, so with the worker on one intra-op thread
(as ``make bench`` runs fedlab) wall is about the sum of the two. Run it alone: CPU seconds grow when another
process shares the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if not os.path.isdir("/proc"):
        raise SystemExit("round_split: needs Linux's /proc")
    import fedlab
    import workload
    from fedlab.experiment import clients
    from fedlab.core import runtime

    fedlab.setup()
    spent = [0.0]
    inputs = clients.Clients.inputs

    def timed_inputs(self, *a, **kw):
        t0 = time.process_time()
        try:
            return inputs(self, *a, **kw)
        finally:
            spent[0] += time.process_time() - t0

    clients.Clients.inputs = timed_inputs

    found_worker = [0]  # scanning /proc takes milliseconds: once, and again only if the worker was restarted

    def worker() -> int:
        if found_worker[0] and os.path.exists(f"/proc/{found_worker[0]}"):
            return found_worker[0]
        table = runtime.process_table()
        found = [pid for pid in runtime.descendants(os.getpid(), table) if "worker_binary" in table[pid][1]]
        if len(found) != 1:
            raise SystemExit(f"round_split: expected one local TFF worker, found {len(found)}")
        found_worker[0] = found[0]
        return found[0]

    print("K  wall_s  main_cpu_s  of_which_inputs_s  worker_cpu_s  (per round, medians)")
    for k in (int(v) for v in args.ks.split(",")):
        stamps = []

        def callback(row, history):
            stamps.append((time.perf_counter(), time.process_time(), spent[0], cpu_seconds(worker())))

        fedlab.run_experiment(workload.config(k, args.rounds), progress=False, callback=callback)
        per_round = np.diff(np.array(stamps), axis=0)[1:]  # the first rounds trace and compile
        wall, main_cpu, inputs_cpu, worker_cpu = np.median(per_round, axis=0)
        print(f"{k}  {wall:.3f}  {main_cpu:.3f}  {inputs_cpu:.3f}  {worker_cpu:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
