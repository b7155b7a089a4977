"""TFF's C++ worker memory and a DP run's time under three policies, side by side in one process.

    python tools/worker_memory.py [--runs 8] [--rounds 50]

Each policy starts from a fresh worker and trains ``--runs`` user-level DP runs (logistic regression on mnist5k,
100 clients, 20 a round, Poisson-sampled, so most rounds bring a new number of clients):

- ``stopped``: the worker stopped after every run (``FEDLAB_WORKER_MEMORY_MB=0``; what fedlab did after DP runs),
  so its memory after a run reads 0;
- ``kept``: the worker kept (no limit here; fedlab's default stops it once it holds 2000 MB);
- ``kept, evicted closed``: kept, and each executor TFF's cache evicts (one per number of clients in a call, ten
  kept) closed on the worker, which TFF 0.87 does not do.

Prints each run's seconds and the worker's resident MB after it, and each policy's median seconds of the runs
after its first (the first imports, loads and builds).
"""
import argparse
import os
import statistics
import time

from fedlab import ExperimentConfig, run_experiment
from fedlab.core import runtime


def worker_mb() -> float:
    return sum(runtime.resident_mb(pid) for pid, cmd in runtime._children() if cmd.endswith("worker_binary"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    base = ExperimentConfig(dataset="mnist5k", model="logreg", num_clients=100, clients_per_round=20,
                            rounds=args.rounds, local_epochs=1, batch_size=10, client_lr=0.1, eval_every=args.rounds,
                            dp="fixed", noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
    run_experiment(base.replace(rounds=1), progress=False)  # imports, data, the process built
    from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks as stacks

    factory = stacks.ResourceManagingExecutorFactory
    tffs = factory.create_executor

    def closing(self, cardinalities):
        cache = self._executors
        if stacks._get_hashable_key(cardinalities) not in cache and len(cache) >= cache.maxsize:
            cache.popitem()[1].close()  # the least recently used, which the cache would drop
        return tffs(self, cardinalities)

    policies = (("stopped", "0", tffs), ("kept", "1e9", tffs), ("kept, evicted closed", "1e9", closing))
    for policy, limit, create in policies:
        runtime.stop_large_local_workers(0)
        factory.create_executor = create
        os.environ["FEDLAB_WORKER_MEMORY_MB"] = limit
        seconds = []
        for seed in range(args.runs):
            start = time.perf_counter()
            run_experiment(base.replace(seed=seed), progress=False)
            seconds.append(time.perf_counter() - start)
            print(f"{policy}: run {seed} {seconds[-1]:.2f} s, worker {worker_mb():.0f} MB", flush=True)
        print(f"{policy}: median {statistics.median(seconds[1:]):.2f} s a run after the first", flush=True)
    factory.create_executor = tffs


if __name__ == "__main__":
    main()
