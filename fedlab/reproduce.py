"""Runs every notebook top to bottom with papermill: what `make figures` calls.

Each notebook has a ``parameters`` cell. Its defaults are the full setting;
``fast=True`` injects the notebook's ``FAST`` parameters so the test suite
finishes in minutes. ``figures_dir`` and ``results_dir`` tell the notebook
where its last cells save figures and tables; ``cache_dir`` holds finished
runs, so an interrupted reproduce picks up where it stopped.
"""

from __future__ import annotations

import pathlib
import re
import time
from typing import Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "results"
FIGURES = ROOT / "figures"


def notebooks(only: Optional[Sequence[str]] = None) -> list[pathlib.Path]:
    """Notebooks in order; ``only`` keeps those whose name starts with one of its prefixes."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
        if not found:
            raise ValueError(f"only: no notebook matches {', '.join(only)}")
    return found


def run_notebook(path: pathlib.Path, *, fast: bool, figures_dir: pathlib.Path, results_dir: pathlib.Path,
                 output_dir: pathlib.Path, cache_dir: pathlib.Path = ROOT / "build" / "cache",
                 timeout: int = 3600, progress: bool = False) -> pathlib.Path:
    """Executes ``path`` into ``output_dir`` (the committed notebook stays without outputs)."""
    import papermill

    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    papermill.execute_notebook(
        str(path), str(out),
        parameters={"fast": fast, "figures_dir": str(figures_dir), "results_dir": str(results_dir),
                    "cache_dir": str(cache_dir)},
        cwd=str(path.parent), kernel_name="python3", progress_bar=progress, execution_timeout=timeout,
    )
    return out


def reproduce(*, fast: bool = False, only: Optional[Sequence[str]] = None,
              figures_dir: pathlib.Path = ROOT / "figures", results_dir: pathlib.Path = ROOT / "results",
              output_dir: pathlib.Path = ROOT / "build" / "notebooks",
              cache_dir: pathlib.Path = ROOT / "build" / "cache") -> list[pathlib.Path]:
    written = []
    for path in notebooks(only):
        t0 = time.time()
        print(f"[reproduce] {path.name} ({'fast' if fast else 'full'}) ...", flush=True)
        written.append(run_notebook(path, fast=fast, figures_dir=pathlib.Path(figures_dir).resolve(),
                                    results_dir=pathlib.Path(results_dir).resolve(),
                                    output_dir=pathlib.Path(output_dir).resolve(),
                                    cache_dir=pathlib.Path(cache_dir).resolve(), progress=True))
        print(f"[reproduce] {path.name} done in {time.time() - t0:.0f} s", flush=True)
    return written


# wall-clock columns: never the same twice (sim_*: compared)
TIMING = re.compile(r"^(seconds|seconds_.*|ms_per_.*|client_seconds|server_seconds)$")
TIMING_FIGURES = {"06_round_time.png", "05_secagg_cost.png"}  # figures that plot wall-clock time: not compared


def compare_tables(committed: pathlib.Path, fresh: pathlib.Path) -> Optional[str]:
    """None if the two CSVs hold the same values (timing columns excepted), else what differs."""
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(committed, float_precision="round_trip"), pd.read_csv(fresh, float_precision="round_trip")
    a = a[[c for c in a.columns if not TIMING.search(c)]]
    b = b[[c for c in b.columns if not TIMING.search(c)]]
    if list(a.columns) != list(b.columns):
        return f"columns differ: {sorted(set(a.columns) ^ set(b.columns))}"
    if a.shape != b.shape:
        return f"shape {a.shape} against {b.shape}"
    worst, where = 0.0, None
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            x, y = x.to_numpy(float), y.to_numpy(float)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                gaps = np.abs(x[~same] - y[~same])
                gap = float(np.inf if np.isnan(gaps).any() else gaps.max())  # NaN against a number: infinite
                if where is None or gap > worst:
                    worst, where = gap, column
        elif not x.astype(str).equals(y.astype(str)):
            return f"column {column} differs"
    return None if where is None else f"largest difference {worst:.3g} in {where}"


def check(*, only: Optional[Sequence[str]] = None, scratch: pathlib.Path = ROOT / "build" / "check") -> int:
    """Reruns notebooks in their full setting from an empty cache and compares every results/ CSV (timing columns
    excepted) and figure (timing figures excepted) with the committed one; prints one line per file; returns 1
    if anything differs or is missing."""
    import shutil

    scratch = pathlib.Path(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    reproduce(only=only, figures_dir=scratch / "figures", results_dir=scratch / "results",
              output_dir=scratch / "notebooks", cache_dir=scratch / "cache")
    prefixes = [p.name[:2] for p in notebooks(only)]
    status = 0
    for kind, folder, pattern in (("results", RESULTS, "*.csv"), ("figures", FIGURES, "*.png")):
        committed = {p.name: p for p in sorted(folder.glob(pattern)) if p.name[:2] in prefixes
                     or (kind == "results" and p.name == "heart_disease_benchmark.csv" and "04" in prefixes)}
        fresh = {p.name: p for p in sorted((scratch / kind).glob(pattern))}
        for name in sorted(set(committed) | set(fresh)):
            if name not in fresh:
                verdict, status = "missing from the rerun", 1
            elif name not in committed:
                verdict, status = "new (not committed)", 1
            elif kind == "figures" and name in TIMING_FIGURES:
                verdict = "plots wall-clock time: not compared"
            elif kind == "figures":
                same = committed[name].read_bytes() == fresh[name].read_bytes()
                verdict = "identical" if same else "differs (bytes)"
                status |= not same
            else:
                problem = compare_tables(committed[name], fresh[name])
                verdict = "identical" if problem is None else problem
                status |= problem is not None
            print(f"[check] {kind}/{name}: {verdict}", flush=True)
    print(f"[check] {'every file identical' if status == 0 else 'DIFFERENCES FOUND'}", flush=True)
    return status
