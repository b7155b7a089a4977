"""Round times measured alone, beside another process's training in a quiet period, and beside it without one,
side by side in one run (what ``make figures`` relies on since notebooks 04, 05 and 06 stopped running alone).

    python benchmarks/quiet_periods.py [--repeats 3] [--out results/benchmarks/quiet_periods.csv]

The measurement is ``fedlab.round_times`` on notebook 06's base configuration at K = 10 and K = 100 (mnist5k, the
2NN, 100 clients, 12 rounds, the median round after the first), in a fresh process. Beside it, in another process, a
sweep of notebook 01's FedAvg setting trains (ten seeds, 100 rounds; a notebook's sweep, which moves to worker
processes once its pace shows it worth it) from 40 s before the measurement begins to after it ends (checked). Three
settings, interleaved ``--repeats`` times: alone; beside the sweep, both processes sharing a ``FEDLAB_QUIET_DIR``
(the sweep's runs pause between rounds while ``round_times`` measures); beside the sweep without it. Prints the
median seconds a round of each and the ratio to alone; writes every measurement to OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pandas as pd

from process_groups import wait_until_gone

ROOT = pathlib.Path(__file__).resolve().parents[1]

MEASURE = """
import json, sys
import fedlab as fl
fl.setup()
base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=12,
                           client_lr=0.05, batch_size=10, eval_every=12)
table = fl.round_times(base, [10, 100], {"this process": ()})
print(json.dumps(dict(zip(map(int, table.clients_per_round), map(float, table.seconds_per_round)))))
"""

BESIDE = """
import sys
import fedlab as fl
fl.setup()
base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=100,
                           client_lr=0.1, partition="shards", shards_per_client=2, local_epochs=5, batch_size=10)
print("training", flush=True)
fl.run_sweep(fl.grid(base, seed=list(range(10))), results_cache=sys.argv[1], progress=False)
"""


def measure(env: dict, beside: bool) -> dict:
    """``round_times``' seconds a round by K, with the sweep training beside it (from before to after) or not."""
    with tempfile.TemporaryDirectory(prefix="fedlab-quiet-bench-") as scratch:
        sweep = None
        if beside:
            sweep = subprocess.Popen([sys.executable, "-c", BESIDE, scratch], stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=env, start_new_session=True)
        try:
            if sweep is not None:
                if sweep.stdout.readline() != "training\n":
                    raise SystemExit("the sweep beside the measurement did not start")
                time.sleep(40.0)  # its first seed's build and rounds, then its worker processes' start
            out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, cwd=ROOT, env=env,
                                 check=False, timeout=1800)
        finally:
            if sweep is not None:
                alive = sweep.poll() is None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sweep.pid, 9)
                sweep.wait(timeout=60)
                wait_until_gone(sweep.pid, "the killed sweep's processes")  # its workers too, before the next setting
                if not alive:
                    raise SystemExit("the sweep beside the measurement ended before it: make it longer")
    if out.returncode != 0:
        raise SystemExit(f"measurement failed ({beside=}):\n{out.stderr[-3000:]}")
    return {int(k): seconds for k, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "quiet_periods.csv")
    args = parser.parse_args(argv)
    drop = ("FEDLAB_QUIET_DIR", "FEDLAB_QUIET_HELD", "FEDLAB_SPREAD_AFTER_S", "FEDLAB_SWEEP_PROCESSES")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedlab-quiet-folder-") as folder:
        settings = {"alone": (env, False),
                    "beside a sweep, in a quiet period": ({**env, "FEDLAB_QUIET_DIR": folder}, True),
                    "beside a sweep, no quiet period": (env, True)}
        for repeat in range(args.repeats):
            for name, (where, beside) in settings.items():
                for k, seconds in measure(where, beside).items():
                    rows.append({"setting": name, "repeat": repeat, "clients_per_round": k,
                                 "seconds_per_round": seconds})
                    print(f"{name} (repeat {repeat + 1}), K = {k}: {seconds:.4f} s a round", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(args.out)
    medians = table.groupby(["clients_per_round", "setting"], sort=False)["seconds_per_round"].median()
    for (k, name), seconds in medians.items():
        print(f"K = {k:>4}, {name:>34}: {seconds:.4f} s a round ({seconds / medians[(k, 'alone')]:.2f}x alone)")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
