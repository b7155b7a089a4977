"""Round time on a plain worker and on a mutual-TLS worker (TFF's worker behind fedlab.workers.tls_proxy).

    .venv/bin/python benchmarks/tls_overhead.py [--clients-per-round 10] [--rounds 6] [--repeats 3]

Starts one local plain worker and one TLS worker (certificates from fedlab.workers.certs in a temporary folder),
runs the benchmark workload (benchmarks/workload.py: 2NN on mnist5k, K clients per round) on each,
interleaved, ``--repeats`` times, after one warm-up run each (TFF compiles once per worker). Prints the
median seconds per round of each run (round 1 left out) and the ratio TLS / plain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def seconds_per_round(config) -> float:
    """Median wall time (s) of rounds 2.. of one run."""
    from fedlab import run_experiment

    stamps = []
    run_experiment(config, progress=False, callback=lambda row, history: stamps.append(time.perf_counter()))
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import workload

    from fedlab.workers.certs import make_certs
    from fedlab.workers.distributed import LocalWorkers, WorkerTLS, use_worker_tls

    certs = make_certs(tempfile.mkdtemp(prefix="fedlab-tls-bench-"))
    server = WorkerTLS.load(certs["server.pem"], certs["server-key.pem"], certs["ca.pem"])
    client = WorkerTLS.load(certs["client.pem"], certs["client-key.pem"], certs["ca.pem"])
    # eval only at the end: the rounds measured are training rounds
    config = workload.config(args.clients_per_round, args.rounds, eval_every=args.rounds)
    times = {"plain": [], "tls": []}
    with LocalWorkers(1) as plain, LocalWorkers(1, tls=server) as tls:
        on = {"plain": (config.replace(workers=plain.addresses), None),
              "tls": (config.replace(workers=tls.addresses), client)}
        for repeat in range(args.repeats + 1):
            for name in (("plain", "tls") if repeat % 2 == 0 else ("tls", "plain")):
                cfg, credentials = on[name]
                use_worker_tls(credentials)
                took = seconds_per_round(cfg)
                if repeat > 0:  # repeat 0 is the warm-up: TFF compiles on each worker's first run
                    times[name].append(took)
                    print(f"repeat {repeat} {name:5s}: {took:.3f} s/round", flush=True)
    use_worker_tls(None)
    plain_s, tls_s = statistics.median(times["plain"]), statistics.median(times["tls"])
    print(f"K={args.clients_per_round}, {args.rounds} rounds, {args.repeats} repeats (median of repeats): "
          f"plain {plain_s:.3f} s/round, TLS {tls_s:.3f} s/round, ratio {tls_s / plain_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
