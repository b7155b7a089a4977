"""Notebooks one after the other against two at a time, side by side in one run (issue #38: `make figures` in under
30 minutes).

    python benchmarks/notebooks_side_by_side.py [--only 03 07 08] [--fast] [--jobs 1 2] [--scratch build/side_by_side]
                                                [--out results/benchmarks/notebooks_side_by_side.csv]

Runs ``reproduce`` twice on the same notebooks, each time in a fresh Python process, from an empty cache, into a
scratch folder of its own (``--jobs``: the modes, one or two): with ``jobs=1`` (every notebook in turn, its sweeps
over every core) and ``jobs=2`` (two at a time, each one's sweeps on its share of the cores, wall-clock measurements in
quiet periods; until 2026-12-07 the notebooks that report wall-clock time, 04, 05 and 06, ran alone). For each: the
wall seconds, the CPU seconds of the process and everything it started and waited for (``RUSAGE_CHILDREN``: not TFF's
worker binaries, which outlive the processes that start them), and from them the cores busy on average. Then
compares every results CSV (timing columns excepted) and figure (timing figures excepted) of the two runs: they must
be identical, since what a notebook computes does not depend on what runs beside it. Prints a JSON line per mode and
the comparison; writes the CSV.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ONE_MODE = r"""
import json, resource, sys, time, pathlib
from fedlab.notebook import reproduce
scratch, only, fast, jobs = pathlib.Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "1", int(sys.argv[4])
start = time.perf_counter()
reproduce.reproduce(fast=fast, only=only, jobs=jobs, figures_dir=scratch / "figures", results_dir=scratch / "results",
                    output_dir=scratch / "notebooks", cache_dir=scratch / "cache")
wall = time.perf_counter() - start
me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
print("RESULT " + json.dumps({"wall": wall, "cpu": cpu}))
"""


def one_mode(scratch: pathlib.Path, only: list[str], fast: bool, jobs: int) -> dict:
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "FEDLAB_SWEEP_PROCESSES"}  # each mode's own share of the cores
    done = subprocess.run([sys.executable, "-c", ONE_MODE, str(scratch), ",".join(only), "1" if fast else "0",
                           str(jobs)], capture_output=True, text=True, timeout=4 * 3600, env=env)
    if done.returncode != 0:
        raise SystemExit(f"jobs={jobs} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    print(done.stdout.split("RESULT ", 1)[0].strip(), flush=True)
    return {"jobs": jobs, "notebooks": " ".join(only), "setting": "fast" if fast else "full",
            "seconds": round(result["wall"], 1), "cpu_seconds": round(result["cpu"], 1),
            "cores_busy": round(result["cpu"] / result["wall"], 2),
            "process_seconds": round(time.perf_counter() - started, 1)}


def compare(a: pathlib.Path, b: pathlib.Path) -> list[str]:
    from fedlab.notebook.reproduce import file_difference

    differences = []
    for kind, pattern in (("results", "*.csv"), ("figures", "*.png")):
        left = {p.name: p for p in (a / kind).glob(pattern)}
        right = {p.name: p for p in (b / kind).glob(pattern)}
        for name in sorted(set(left) | set(right)):
            if name not in left or name not in right:
                differences.append(f"{kind}/{name}: made by one run only")
            elif problem := file_difference(kind, left[name], right[name]):
                differences.append(f"{kind}/{name}: {problem}")
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=["03", "07", "08"], help="notebook prefixes (default: 03 07 08)")
    parser.add_argument("--fast", action="store_true", help="the test suite's fast setting")
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2],
                        help="the modes, in this order (default: 1 2); with one mode nothing is compared")
    parser.add_argument("--scratch", type=pathlib.Path, default=ROOT / "build" / "side_by_side")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="the CSV (default with two modes: results/benchmarks/notebooks_side_by_side.csv; "
                             "required with one)")
    args = parser.parse_args()
    if not 1 <= len(args.jobs) <= 2 or min(args.jobs) < 1:
        parser.error("--jobs: one or two modes, each at least 1")
    if args.out is None:
        if len(args.jobs) == 1:
            parser.error("--out: required with one mode (the default CSV holds a side-by-side run of two)")
        args.out = ROOT / "results" / "benchmarks" / "notebooks_side_by_side.csv"
    import pandas as pd

    rows = []
    folders = [args.scratch / f"mode{i}-jobs{jobs}" for i, jobs in enumerate(args.jobs)]
    for folder, jobs in zip(folders, args.jobs):
        rows.append(one_mode(folder, args.only, args.fast, jobs))
        print(json.dumps(rows[-1]), flush=True)
    differences = []
    if len(rows) == 2:
        differences = compare(*folders)
        ratio = rows[0]["seconds"] / rows[1]["seconds"]
        for row in rows:
            row["identical_results"] = not differences
        print(json.dumps({f"jobs {args.jobs[0]} over jobs {args.jobs[1]}": round(ratio, 3),
                          "differences": differences}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial")
    pd.DataFrame(rows).to_csv(partial, index=False)
    partial.replace(args.out)
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
