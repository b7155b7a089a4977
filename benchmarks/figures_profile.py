"""Where `make figures` spends its time: every notebook run as `python -m fedlab reproduce --jobs 1` runs it (one
after the other; `make figures` runs two at a time), each of its cells timed, and each run inside a cell split by
phase (:mod:`fedlab.core.profiling`).

    python benchmarks/figures_profile.py [--fast] [--only 01 02] [--out results/benchmarks/figures_profile.csv]
                                         [--scratch build/profile] [--tabulate]

The notebooks write their figures, tables and cache into SCRATCH, emptied first (every run is trained: none is in
the cache at the start), never into figures/ or results/. One CSV row per notebook cell that took at least a
second, then one row per notebook (``cell`` = "all"): the cell's wall seconds (papermill's), its first line of
code, the runs it trained and those it read from the cache (a run a sweep trained, in a worker process or in
this one, and this process then read back counts once, as trained), their rounds, ``in_runs``: the seconds this
process spent inside runs, ``in_workers``: the seconds runs took in a sweep's worker processes (side by side:
they add up to more than the wall time), the seconds of all those runs in each phase (``cache``, ``data``,
``build``, ``inputs``, ``round``, ``evaluate``, ``bookkeeping``, ``other``), and ``outside_runs``: the cell's
seconds outside any run in this process (plots, tables, statistics, a study's own work, waiting for worker
processes), and ``runs_stopped``: runs a sweep stopped mid-way to spread them (their seconds and rounds count in
the cell's, and a worker process then trained them again). A notebook's row adds
``kernel``: its wall time outside its cells (kernel start, papermill), and ``complete``: whether every cell ran.
``--tabulate`` runs nothing and tables what an earlier, or interrupted, profile left in SCRATCH (a notebook's
seconds are then its cells' sum, ``kernel`` unknown). Prints the notebook totals.
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
CELL_COLUMNS = ("cell", "step", "seconds", "runs_trained", "runs_cached", "runs_stopped", "rounds_trained", "in_runs",
                "in_workers",
                *SECONDS, "outside_runs")


def cell_rows(executed: pathlib.Path, runs: pd.DataFrame) -> list[dict]:
    """One row per code cell of an executed notebook, with the phases of the runs it started."""
    nb = json.loads(executed.read_text())
    if len(runs):  # a run a sweep trained for a cell (in a worker or here), then read back by the cell: counted
        # once, as trained
        trained = set(zip(*runs.loc[~runs["from_cache"], ["cell", "key"]].to_numpy().T)) \
            if (~runs["from_cache"]).any() else set()
        read_back = [(c, k) in trained for c, k in zip(runs["cell"], runs["key"])]
        runs = runs[~(runs["from_cache"] & ~runs["worker"] & pd.Series(read_back, index=runs.index))]
    rows = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or cell.get("execution_count") is None:
            continue
        count = cell["execution_count"]
        mine = runs[runs["cell"] == count] if len(runs) else pd.DataFrame(
            columns=["from_cache", "worker", "stopped_to_spread", "wall", "rounds", *SECONDS])
        source = "".join(cell["source"]).strip().splitlines()
        here = mine[~mine["worker"].astype(bool)]
        row = {"cell": count, "step": (source[0] if source else "")[:80],
               "seconds": float(cell["metadata"]["papermill"]["duration"] or 0.0),
               "runs_trained": int((~mine["from_cache"].astype(bool) & ~mine["stopped_to_spread"]).sum()),
               "runs_cached": int(mine["from_cache"].astype(bool).sum()),
               "runs_stopped": int(mine["stopped_to_spread"].sum()),
               "rounds_trained": int(mine.loc[~mine["from_cache"].astype(bool), "rounds"].sum()),
               "in_runs": float(here["wall"].sum()),
               "in_workers": float(mine.loc[mine["worker"].astype(bool), "wall"].sum())}
        row.update({s: float(mine[s].sum()) for s in SECONDS})
        row["outside_runs"] = row["seconds"] - row["in_runs"]
        rows.append(row)
    return rows


def read_runs(log: pathlib.Path) -> pd.DataFrame:
    """The run lines a notebook's runs wrote (columns a profile made before they existed filled in)."""
    runs = pd.read_json(log, lines=True) if log.exists() and log.stat().st_size else pd.DataFrame()
    if len(runs):  # a run that raised wrote its line without from_cache (or key)
        for column, default in (("from_cache", False), ("worker", False), ("key", ""), ("stopped_to_spread", False)):
            runs[column] = runs[column].fillna(default) if column in runs else default
        for column in ("from_cache", "worker", "stopped_to_spread"):
            runs[column] = runs[column].astype(bool)
    return runs


def notebook_frame(path: pathlib.Path, executed: pathlib.Path, log: pathlib.Path, wall) -> tuple:
    """The rows of one notebook (its cells of a second or more, then its total) and the total alone. ``wall``:
    the notebook's wall seconds (None when tabulating afterwards: the cells' sum, ``kernel`` unknown)."""
    rows = cell_rows(executed, read_runs(log))
    assert all(set(row) == set(CELL_COLUMNS) for row in rows), "CELL_COLUMNS: not what cell_rows gives"
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))  # no rows: a notebook stopped before its first cell ended
    code = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    complete = all(c.get("execution_count") is not None and c["metadata"].get("papermill", {}).get("duration")
                   is not None for c in code)
    total = {"cell": "all", "step": "(the whole notebook)",
             "seconds": float(cells["seconds"].sum()) if wall is None else wall,
             **{c: cells[c].sum() for c in cells.columns if c not in ("cell", "step", "seconds")},
             "kernel": float("nan") if wall is None else wall - cells["seconds"].sum(), "complete": complete}
    long = cells[cells["seconds"] >= 1.0]
    frame = pd.concat([long, pd.DataFrame([total])] if len(long) else [pd.DataFrame([total])], ignore_index=True)
    frame.insert(0, "notebook", path.stem)
    return frame, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the notebooks' test setting (default: full)")
    parser.add_argument("--only", nargs="*", help="notebooks whose names start with these (default: all)")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "figures_profile.csv")
    parser.add_argument("--scratch", type=pathlib.Path, default=ROOT / "build" / "profile")
    parser.add_argument("--tabulate", action="store_true",
                        help="run nothing: tabulate what an earlier (or interrupted) profile left in SCRATCH")
    args = parser.parse_args(argv)

    paths = notebooks(args.only)  # a bad --only says so before anything runs
    scratch = args.scratch.resolve()
    if not args.tabulate:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    frames = []
    for path in paths:
        log, executed = scratch / f"{path.stem}.jsonl", scratch / "notebooks" / path.name
        wall = None
        if not args.tabulate:
            os.environ[ENV] = str(log)  # the notebook's kernel inherits it
            print(f"[profile] {path.name} ({'fast' if args.fast else 'full'}) ...", flush=True)
            t0 = time.perf_counter()
            run_notebook(path, fast=args.fast, figures_dir=scratch / "figures", results_dir=scratch / "results",
                         output_dir=scratch / "notebooks", cache_dir=scratch / "cache")
            wall = time.perf_counter() - t0
        elif not executed.exists():
            continue
        frame, total = notebook_frame(path, executed, log, wall)
        frames.append(frame)
        print(f"[profile] {path.name} {'done' if total['complete'] else 'stopped'} after {total['seconds']:.0f} s: "
              f"in runs {total['in_runs']:.0f} s (round {total['round']:.0f}, evaluate {total['evaluate']:.0f}, "
              f"build {total['build']:.0f}, data {total['data']:.0f}, inputs {total['inputs']:.0f}), outside runs "
              f"{total['outside_runs']:.0f} s, {total['runs_trained']} runs trained, "
              f"{total['runs_stopped']} stopped to spread", flush=True)
    os.environ.pop(ENV, None)
    if not frames:
        raise SystemExit(f"--tabulate: no executed notebook in {scratch / 'notebooks'}")
    table = pd.concat(frames, ignore_index=True)
    numeric = table.select_dtypes("float").columns
    table[numeric] = table[numeric].round(2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False)
    partial.replace(args.out)  # whole or not at all
    totals = table[table["cell"] == "all"]
    print(totals[["notebook", "seconds", "in_runs", "in_workers", "round", "evaluate", "build", "data", "inputs",
                  "other", "outside_runs", "runs_trained", "runs_stopped"]].to_string(index=False))
    print(f"all notebooks: {totals['seconds'].sum():.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
