"""Where a fedlab round's time goes inside TFF's C++ worker (perf, Linux).

    .venv/bin/python benchmarks/profile_worker.py [--clients-per-round 100] [--seconds 8]

Runs the benchmark workload, attaches `perf record` to TFF's worker binary after the first rounds, and
prints the functions with the largest inclusive share of samples. Needs `perf` (Debian's linux-perf)
and permission to trace (root, or kernel.perf_event_paranoid <= 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
    import fedlab
    import workload
    from fedlab.core.runtime import _children

    data = os.path.join(tempfile.mkdtemp(prefix="fedlab-perf-"), "perf.data")
    recorder = {}

    def attach(row, history):
        if row["round"] == 2 and not recorder:
            pid = next(p for p, cmd in _children() if cmd.endswith("worker_binary"))
            recorder["p"] = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-o", data, "-p", str(pid),
                                              "--", "sleep", str(args.seconds)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    rounds = 2 + int(args.seconds / max(0.01, 0.015 * args.clients_per_round)) + 2
    fedlab.run_experiment(workload.config(args.clients_per_round, rounds), progress=False, callback=attach)
    recorder["p"].wait()
    report = subprocess.run(["perf", "report", "-i", data, "--children", "--sort", "symbol", "--stdio", "-g", "none"],
                            capture_output=True, text=True).stdout
    lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
    print(f"perf samples of TFF's worker, K = {args.clients_per_round}, inclusive share (children), top {args.top}:")
    print("\n".join(line[:160] for line in lines[:args.top]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
