"""Notebook 05's SecAgg cost measurement in one process, spread over the cores, and spread with a few clients
timed, side by side in one run (issue #38: the cell that measures SecAgg at 10, 100 and 1,000 clients was the
slowest of `make figures`).

    python benchmarks/secagg_cost_speed.py [--clients 10 100 400] [--seeds 2]
                                           [--out results/benchmarks/secagg_cost_speed.csv]

Runs ``fedlab.secagg_cost`` (both protocols, dropout rates 0, 0.1 and 0.3, vectors of 7,850 24-bit values, as the
notebook does) over the seeds with every client timed, first with ``processes=1`` and then ``processes=None`` (one
per core), and then spread with ``timed_clients=10`` (the default since 2026-12-07: ten clients of each group
timed, the others computed together), checks that all three give the same table apart from the seconds columns,
and prints the wall time of each, its ratio to the first, and the mean client and server seconds each measured.
The notebook uses 1,000 clients; the default here stops at 400 to keep the run to a few minutes (a protocol's cost
grows with the square of the clients).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 400])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "results" / "benchmarks" / "secagg_cost_speed.csv")
    args = parser.parse_args(argv)

    import pandas as pd

    from fedlab.protection.secagg import measure_cost

    kw = dict(clients=args.clients, dropout_rates=(0.0, 0.1, 0.3), vector_length=7850, modulus_bits=24,
              seeds=list(range(args.seeds)))
    tables, rows = {}, []
    settings = (("one process", 1, None), ("spread over the cores", None, None),
                ("spread, 10 clients of each group timed", None, 10))
    for name, processes, timed in settings:
        t0 = time.perf_counter()
        tables[name] = measure_cost(**kw, processes=processes, timed_clients=timed)
        seconds = time.perf_counter() - t0
        rows.append({"setting": name, "seconds": seconds,
                     "mean_client_seconds": tables[name].client_seconds.mean(),
                     "mean_server_seconds": tables[name].server_seconds.mean()})
        print(f"{name}: {seconds:.1f} s", flush=True)
    fixed = [c for c in tables["one process"].columns if not c.endswith("_seconds")]
    if not all(tables["one process"][fixed].equals(table[fixed]) for table in tables.values()):
        raise SystemExit("the tables differ in more than their seconds")
    table = pd.DataFrame(rows)
    table["ratio_to_one_process"] = table.seconds / table.seconds[0]
    table["clients"] = " ".join(map(str, args.clients))
    table["seeds"] = args.seeds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False, float_format="%.6g")
    partial.replace(args.out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"the same table but for the seconds columns; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
