"""Where a fedlab round's time goes on the Python side (cProfile), on the benchmark workload.

    .venv/bin/python benchmarks/profile_rounds.py K [--rounds 4] [--top 40]

Builds and warms the process with a 2-round run, then profiles a run of --rounds rounds with K clients per
round and prints the functions with the largest cumulative time. Time inside TFF's execution shows as
``computation_impl.__call__`` (the C++ runtime; see benchmarks/profile_worker.py for what it does).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("clients_per_round", type=int)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    import fedlab
    import workload

    fedlab.setup()
    fedlab.run_experiment(workload.config(args.clients_per_round, 2), progress=False)
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    history = fedlab.run_experiment(workload.config(args.clients_per_round, args.rounds), progress=False)
    profile.disable()
    print(f"K = {args.clients_per_round}: {args.rounds} rounds in {time.perf_counter() - t0:.2f} s; "
          f"training seconds per round {[round(s, 3) for s in history.seconds]}")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.top)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
