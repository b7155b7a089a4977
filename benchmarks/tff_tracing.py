"""TFF's client side with and without its tracing spans, side by side in one process
(``fedlab.core.tff_speedups._patch_untraced``).

    python benchmarks/tff_tracing.py [--pairs 4] [--rounds 150] [--out results/benchmarks/tff_tracing.csv]

Two settings: notebook 01's FedAvg setting (mnist5k, the 2NN, 100 clients with two label shards each, K = 10,
E = 5, B = 10) and ``make bench``'s workload at K = 10 (``benchmarks/workload.py``). After one warm-up run of each,
every pair runs each setting twice in a row, once with TFF's traced functions put back (``fedlab_traced``) and
once with fedlab's plain ones, the order alternating from pair to pair; no evaluation but the last round's. For
each run: wall milliseconds a round, and CPU milliseconds a round of this process and of its children (TFF's
worker), from /proc. Prints the medians and each pair's difference; writes every run to OUT. The machine's speed
may drift during the script, so the paired differences are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def tracing_switch():
    """``switch(traced)``: puts TFF's traced functions back (True) or fedlab's plain ones (False)."""
    from tensorflow_federated.python.core.impl.executors import remote_executor

    from fedlab.core import tff_speedups

    slots = [(owner, attr, fn, fn.fedlab_traced) for owner in tff_speedups.untraced_owners()
             for attr, fn in list(vars(owner).items()) if hasattr(fn, "fedlab_traced")]
    kept = remote_executor.RemoteExecutor.create_value
    plain_create = kept.fedlab_original

    def switch(traced: bool) -> None:
        for owner, attr, plain, wrapped in slots:
            setattr(owner, attr, wrapped if traced else plain)
        kept.fedlab_original = plain_create.fedlab_traced if traced else plain_create

    return switch


def cpu_seconds() -> dict[int, float]:
    """User + system CPU seconds of this process and each of its descendants, from /proc."""
    from fedlab.core.runtime import descendants, process_table

    found = {}
    for pid in [os.getpid()] + descendants(os.getpid(), process_table()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def side_by_side(switch, column: str, out: pathlib.Path, pairs: int, rounds: int, what: str) -> int:
    """Runs the two settings ``pairs`` times with ``switch(True)`` (TFF's own functions) and ``switch(False)``
    (fedlab's), the order alternating from pair to pair; ``column`` says which in each row of OUT."""
    import fedlab as fl
    import workload

    settings = {"notebook 01": fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100,
                                                    clients_per_round=10, rounds=rounds, client_lr=0.1,
                                                    partition="shards", shards_per_client=2, local_epochs=5,
                                                    batch_size=10, eval_every=rounds),
                "make bench, K = 10": workload.config(10, rounds)}
    for config in settings.values():
        fl.run_experiment(config.replace(rounds=3, eval_every=3), progress=False)
    rows = []
    for pair in range(pairs):
        for setting, config in settings.items():
            for own in ((True, False) if pair % 2 == 0 else (False, True)):
                switch(own)
                before, start = cpu_seconds(), time.perf_counter()
                history = fl.run_experiment(config, progress=False)
                after, wall = cpu_seconds(), time.perf_counter() - start
                me, children = os.getpid(), [p for p in after if p in before and p != os.getpid()]
                rows.append({"pair": pair, "setting": setting, column: own, "rounds": config.rounds,
                             "wall_ms": 1000 * wall / config.rounds,
                             "fedlab_cpu_ms": 1000 * (after[me] - before[me]) / config.rounds,
                             "worker_cpu_ms": 1000 * sum(after[p] - before[p] for p in children) / config.rounds,
                             "final_train_loss": float(history["train_loss"].iloc[-1])})
                print(json.dumps(rows[-1]), flush=True)
    switch(False)
    table = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # the table whole or not at all
    table.to_csv(partial, index=False)
    partial.replace(out)
    same = table.groupby("setting").final_train_loss.nunique().eq(1).all()
    print(f"\nthe same final training loss {what} in every run of a setting: {same}")
    print(table.groupby(["setting", column])[["wall_ms", "fedlab_cpu_ms", "worker_cpu_ms"]].median()
          .round(2).to_string())
    paired = table.pivot_table(index=["setting", "pair"], columns=column, values=["wall_ms", "fedlab_cpu_ms"])
    for metric in ("wall_ms", "fedlab_cpu_ms"):
        paired[f"{metric} saved"] = paired[(metric, True)] - paired[(metric, False)]
    print("\nper pair, TFF's own minus fedlab's (positive: fedlab's took less)")
    print(paired[["wall_ms saved", "fedlab_cpu_ms saved"]].round(2).to_string())
    return 0 if same else 1


def side_by_side_main(make_switch, column: str, csv_name: str, what: str) -> int:
    """A side-by-side benchmark's command line (--pairs, --rounds, --out): fedlab set up, then ``make_switch()``'s
    switch run by :func:`side_by_side`, written to results/benchmarks/``csv_name`` unless --out says otherwise."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / csv_name)
    args = parser.parse_args()
    import fedlab as fl

    fl.setup()
    return side_by_side(make_switch(), column, args.out, args.pairs, args.rounds, what)


def main() -> int:
    return side_by_side_main(tracing_switch, "tff_tracing", "tff_tracing.csv", "with and without the spans")


if __name__ == "__main__":
    sys.exit(main())
