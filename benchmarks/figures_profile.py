"""Where `make figures` spends its time: every notebook run as `make figures` runs it, each of its cells timed,
and each run inside a cell split by phase (:mod:`fedlab.core.profiling`).

    python benchmarks/figures_profile.py [--fast] [--only 01 02] [--out results/benchmarks/figures_profile.csv]
                                         [--scratch build/profile]

The notebooks write their figures, tables and cache into SCRATCH, emptied first (every run is trained: none is in
the cache at the start), never into figures/ or results/. One CSV row per notebook cell that took at least a
second, then one row per notebook (``cell`` = "all"): the cell's wall seconds (papermill's), its first line of
code, the runs it trained and those it read from the cache (a run a sweep's worker process trained and this
process then read back counts once, as trained), their rounds, ``in_runs``: the seconds this process spent inside
runs, ``in_workers``: the seconds runs took in a sweep's worker processes (side by side: they add up to more than
the wall time), the seconds of all those runs in each phase (``cache``, ``data``, ``build``, ``inputs``,
``round``, ``evaluate``, ``bookkeeping``, ``other``), and ``outside_runs``: the cell's seconds outside any run in
this process (plots, tables, statistics, a study's own work, waiting for worker processes). A notebook's row adds
``kernel``: its wall time outside its cells (kernel start, papermill). Prints the notebook totals.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlab.core.profiling import ENV, PHASES  # noqa: E402
from fedlab.notebook.reproduce import notebooks, run_notebook  # noqa: E402

SECONDS = (*PHASES, "other")


def cell_rows(executed: pathlib.Path, runs: pd.DataFrame) -> list[dict]:
    """One row per code cell of an executed notebook, with the phases of the runs it started."""
    nb = json.loads(executed.read_text())
    if len(runs):  # a run a worker trained for a cell, then read back by the cell: counted once, as trained
        trained = set(zip(*runs.loc[runs["worker"] & ~runs["from_cache"], ["cell", "key"]].to_numpy().T)) \
            if (runs["worker"] & ~runs["from_cache"]).any() else set()
        read_back = [(c, k) in trained for c, k in zip(runs["cell"], runs["key"])]
        runs = runs[~(runs["from_cache"] & ~runs["worker"] & pd.Series(read_back, index=runs.index))]
    rows = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or cell.get("execution_count") is None:
            continue
        count = cell["execution_count"]
        mine = runs[runs["cell"] == count] if len(runs) else pd.DataFrame(columns=["from_cache", "worker", "wall",
                                                                                   "rounds", *SECONDS])
        source = "".join(cell["source"]).strip().splitlines()
        here = mine[~mine["worker"].astype(bool)]
        row = {"cell": count, "step": (source[0] if source else "")[:80],
               "seconds": float(cell["metadata"]["papermill"]["duration"] or 0.0),
               "runs_trained": int((~mine["from_cache"].astype(bool)).sum()),
               "runs_cached": int(mine["from_cache"].astype(bool).sum()),
               "rounds_trained": int(mine.loc[~mine["from_cache"].astype(bool), "rounds"].sum()),
               "in_runs": float(here["wall"].sum()),
               "in_workers": float(mine.loc[mine["worker"].astype(bool), "wall"].sum())}
        row.update({s: float(mine[s].sum()) for s in SECONDS})
        row["outside_runs"] = row["seconds"] - row["in_runs"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the notebooks' test setting (default: full)")
    parser.add_argument("--only", nargs="*", help="notebooks whose names start with these (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "figures_profile.csv")
    parser.add_argument("--scratch", type=pathlib.Path, default=ROOT / "build" / "profile")
    args = parser.parse_args(argv)

    paths = notebooks(args.only)  # a bad --only says so before anything runs
    scratch = args.scratch.resolve()
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    frames = []
    for path in paths:
        log = scratch / f"{path.stem}.jsonl"
        os.environ[ENV] = str(log)  # the notebook's kernel inherits it
        print(f"[profile] {path.name} ({'fast' if args.fast else 'full'}) ...", flush=True)
        t0 = time.perf_counter()
        executed = run_notebook(path, fast=args.fast, figures_dir=scratch / "figures",
                                results_dir=scratch / "results", output_dir=scratch / "notebooks",
                                cache_dir=scratch / "cache")
        wall = time.perf_counter() - t0
        runs = pd.read_json(log, lines=True) if log.exists() and log.stat().st_size else pd.DataFrame()
        if len(runs):  # a run that raised wrote its line without from_cache (or key)
            runs["from_cache"] = runs.get("from_cache", pd.Series(False, index=runs.index)).fillna(False).astype(bool)
            runs["worker"] = runs["worker"].astype(bool)
            runs["key"] = runs.get("key", pd.Series("", index=runs.index)).fillna("")
        cells = pd.DataFrame(cell_rows(executed, runs))
        total = {"cell": "all", "step": "(the whole notebook)", "seconds": wall,
                 **{c: cells[c].sum() for c in cells.columns if c not in ("cell", "step", "seconds")},
                 "kernel": wall - cells["seconds"].sum()}
        frame = pd.concat([cells[cells["seconds"] >= 1.0], pd.DataFrame([total])], ignore_index=True)
        frame.insert(0, "notebook", path.stem)
        frames.append(frame)
        print(f"[profile] {path.name} done in {wall:.0f} s: in runs {total['in_runs']:.0f} s (round "
              f"{total['round']:.0f}, evaluate {total['evaluate']:.0f}, build {total['build']:.0f}, data "
              f"{total['data']:.0f}, inputs {total['inputs']:.0f}), outside runs {total['outside_runs']:.0f} s, "
              f"{total['runs_trained']} runs trained", flush=True)
    os.environ.pop(ENV, None)
    table = pd.concat(frames, ignore_index=True)
    numeric = table.select_dtypes("float").columns
    table[numeric] = table[numeric].round(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(args.out)  # whole or not at all
    totals = table[table["cell"] == "all"]
    print(totals[["notebook", "seconds", "in_runs", "in_workers", "round", "evaluate", "build", "data", "inputs",
                  "other", "outside_runs", "runs_trained"]].to_string(index=False))
    print(f"all notebooks: {totals['seconds'].sum():.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
