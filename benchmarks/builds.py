"""What a new process's build costs when its client training and server finalizer are traced once and shared
(:func:`fedlab.rounds.array_training.client_training`, :func:`~fedlab.rounds.array_training.server_finalizer`)
against tracing them anew for every process, side by side in one process.

    python benchmarks/builds.py [--repeats 3]

A sequence of two-round runs that each need a process of their own, as a sweep over aggregators and server
optimizers (or the combination matrix of ``tests/test_combinations.py``) builds them: digits, logistic
regression, 6 clients, 3 a round, 2 local steps; FedAvg, FedAvgM, FedAdam, FedYogi, fixed and adaptive DP at the
server, 8- and 4-bit compression, the clipped mean, FedProx. Each repeat runs the sequence both ways, in
alternating order, every built process and traced computation forgotten first (``clear_process_cache``); "anew"
also forgets the traced client trainings and finalizers before each run (``clear_traced``) and runs Grappler on
every TensorFlow computation of every process (TFF's own ``optimize_tensorflow_comp``, not
:func:`fedlab.core.tff_speedups._patch_optimize_once`'s), as fedlab built them before. Prints one JSON line: the
median seconds of each way, their ratio, and whether every run's final weights are the same to the bit both ways.
Writes nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = (dict(), dict(algorithm="fedavgm"), dict(algorithm="fedadam", server_lr=0.05), dict(algorithm="fedyogi"),
        dict(dp="fixed", noise_multiplier=0.3, clip_norm=0.5), dict(dp="adaptive", noise_multiplier=0.3),
        dict(quantization_bits=8), dict(quantization_bits=4), dict(robust="clip", clip_norm=0.5),
        dict(algorithm="fedprox", mu=0.1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import numpy as np

    import fedlab as fl
    from fedlab.experiment import processes
    from fedlab.rounds.array_training import clear_traced

    fl.setup()
    configs = [fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, local_steps=2, rounds=2,
                                   **changes) for changes in RUNS]

    from tensorflow_federated.python.core.environments.tensorflow_backend import (
        compiled_computation_transformations as transformations)

    once = transformations.optimize_tensorflow_comp  # fedlab.core.runtime's: Grappler once per computation

    def sequence(anew: bool) -> tuple[float, list]:
        processes.clear_process_cache()
        transformations.optimize_tensorflow_comp = once.fedlab_original if anew else once
        weights, start = [], time.perf_counter()
        try:
            for config in configs:
                if anew:
                    clear_traced()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    weights.append(fl.run_experiment(config, progress=False).attrs["final_weights"].value)
        finally:
            transformations.optimize_tensorflow_comp = once
        return time.perf_counter() - start, weights

    sequence(False)  # the first conversions and TFF's own first traces, which neither way repeats
    seconds = {"shared": [], "anew": []}
    same = True
    for repeat in range(args.repeats):
        results = {}
        for way in (("anew", "shared") if repeat % 2 == 0 else ("shared", "anew")):
            seconds[way].append((results.setdefault(way, sequence(way == "anew")))[0])
        same &= all(len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
                    for a, b in zip(results["anew"][1], results["shared"][1]))
    median = {way: statistics.median(s) for way, s in seconds.items()}
    print(json.dumps({"runs": len(configs), "repeats": args.repeats,
                      "seconds": {way: [round(s, 2) for s in values] for way, values in seconds.items()},
                      "median_anew": round(median["anew"], 2), "median_shared": round(median["shared"], 2),
                      "shared_over_anew": round(median["shared"] / median["anew"], 3),
                      "same_weights": bool(same)}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
