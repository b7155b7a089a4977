"""Runs every notebook top to bottom with papermill: what `make figures` calls.

Each notebook has a ``parameters`` cell. Its defaults are the full setting;
``fast=True`` injects the notebook's ``FAST`` parameters so the test suite
finishes in minutes. ``figures_dir`` and ``results_dir`` tell the notebook
where its last cells save figures and tables; ``cache_dir`` holds finished
runs, so an interrupted reproduce picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import time
from typing import Mapping, Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
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


# Result files whose name does not start with the number of the notebook that writes them: the names issues and
# the README use for them.
RESULT_OWNERS = {"heart_disease_benchmark.csv": "04", "04_tcga_reproduction.csv": "08"}


def owner(name: str) -> str:
    """The number of the notebook that writes results/ or figures/ file ``name``."""
    return RESULT_OWNERS.get(name, name[:2])


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
    if not fast:
        record_numerics(pathlib.Path(results_dir))
    return written


# wall-clock columns: never the same twice (sim_*: compared)
TIMING = re.compile(r"^(seconds|seconds_.*|ms_per_.*|client_seconds|server_seconds)$")
# figures that plot wall-clock time: not compared
TIMING_FIGURES = {"06_round_time.png", "05_secagg_cost.png", "05_he_cost.png"}


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


@dataclasses.dataclass(frozen=True)
class Numerics:
    """What the order of TensorFlow's float arithmetic depends on, besides fedlab's code and the library builds.

    ``onednn``: TensorFlow's oneDNN kernels (else Eigen's). On Linux, TF 2.14 turns them on by default only on
    CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (``DefaultOneDnnPolicy`` in TF's ``util.cc``);
    ``TF_ENABLE_ONEDNN_OPTS`` overrides. ``isa``: the widest vector instructions oneDNN's kernels use, chosen
    when they run (``avx512``, ``avx2``; ``ONEDNN_MAX_CPU_ISA`` lowers it); None with oneDNN off.
    ``threads``: intra-op threads of TFF's worker (fedlab's default: one; TensorFlow's: one per core), which split
    large matrix products. Two machines that differ in any of these can train a model to different last bits; two
    that agree still can (kernels pick their block sizes from the CPU's caches), so this names the likely cause of a
    difference, not a guarantee of none.
    """

    onednn: bool
    isa: Optional[str]
    threads: int

    def describe(self) -> str:
        kernels = f"oneDNN kernels with {self.isa.upper()}" if self.onednn else "Eigen kernels (oneDNN off)"
        return f"{kernels}, {self.threads} intra-op thread{'s' if self.threads != 1 else ''}"


NUMERICS_FILE = "numerics.json"  # beside the results: the numerics of the machine that made them

# TF 2.14's DefaultOneDnnPolicy on Linux: oneDNN on by default where the CPU has one of these (/proc/cpuinfo names)
ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"})
AVX512_CORE_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
ISA_ORDER = ("sse41", "avx", "avx2", "avx512")  # oneDNN's x86 vector ISAs, narrowest first (ONEDNN_MAX_CPU_ISA)


def cpu_flags() -> frozenset:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def numerics(environ: Optional[Mapping[str, str]] = None, flags: Optional[frozenset] = None,
             cores: Optional[int] = None) -> Numerics:
    """This machine's :class:`Numerics`, from its CPU flags and the environment notebooks run with."""
    from ..core.runtime import worker_environment

    environ = dict(os.environ if environ is None else environ)
    flags = cpu_flags() if flags is None else frozenset(flags)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    onednn = bool(flags & ONEDNN_DEFAULT_FLAGS)
    setting = environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower()
    if setting in ("0", "false", "1", "true"):
        onednn = setting in ("1", "true")
    isa = None
    if onednn:
        isa = "avx512" if AVX512_CORE_FLAGS <= flags else "avx2" if "avx2" in flags else "avx"
        limit = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "").strip().lower()
        capped = next((name for name in reversed(ISA_ORDER) if limit.startswith(name)), None)
        if capped is not None and ISA_ORDER.index(capped) < ISA_ORDER.index(isa):
            isa = capped
    value = worker_environment(environ).get("TF_NUM_INTRAOP_THREADS", "").strip()  # what TFF's worker gets
    threads = int(value) if re.fullmatch(r"[0-9]+", value) and int(value) > 0 else cores
    return Numerics(onednn=onednn, isa=isa, threads=threads)


def record_numerics(results_dir: pathlib.Path) -> None:
    """Writes this machine's :class:`Numerics` beside the results it made (whole or not at all)."""
    import json

    path = pathlib.Path(results_dir) / NUMERICS_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(dataclasses.asdict(numerics()), indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def recorded_numerics(results_dir: pathlib.Path = RESULTS) -> Optional[Numerics]:
    """The :class:`Numerics` the results in ``results_dir`` were made with, if they recorded them."""
    import json

    path = pathlib.Path(results_dir) / NUMERICS_FILE
    try:
        return Numerics(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def check(*, only: Optional[Sequence[str]] = None, scratch: pathlib.Path = ROOT / "build" / "check") -> int:
    """Reruns notebooks in their full setting from an empty cache and compares every results/ CSV (timing columns
    excepted) and figure (timing figures excepted) with the committed one; prints one line per file; returns 1
    if anything differs or is missing.

    The comparison is exact. Its first line names this machine's :class:`Numerics` beside those the committed
    results recorded (``results/numerics.json``); where they differ, a trained model's numbers can differ here
    for that reason alone, and the last line says so.
    """
    import shutil

    here, then = numerics(), recorded_numerics()
    same = then is not None and here == then
    made = ("the committed results do not record theirs" if then is None else
            f"the committed results': {then.describe()}" + (" (the same)" if same else " -- NOT the same"))
    print(f"[check] TensorFlow's arithmetic here: {here.describe()}; {made}", flush=True)
    scratch = pathlib.Path(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    reproduce(only=only, figures_dir=scratch / "figures", results_dir=scratch / "results",
              output_dir=scratch / "notebooks", cache_dir=scratch / "cache")
    prefixes = [p.name[:2] for p in notebooks(only)]
    status = 0
    for kind, folder, pattern in (("results", RESULTS, "*.csv"), ("figures", FIGURES, "*.png")):
        committed = {p.name: p for p in sorted(folder.glob(pattern)) if owner(p.name) in prefixes}
        fresh = {p.name: p for p in sorted((scratch / kind).glob(pattern))}
        for name in sorted(set(committed) | set(fresh)):
            if name not in fresh:
                verdict, status = "missing from the rerun", 1
            elif name not in committed:
                verdict, status = "new (not committed)", 1
            elif kind == "figures" and name in TIMING_FIGURES:
                verdict = "plots wall-clock time: not compared"
            elif kind == "figures":
                identical = committed[name].read_bytes() == fresh[name].read_bytes()
                verdict = "identical" if identical else "differs (bytes)"
                status |= not identical
            else:
                problem = compare_tables(committed[name], fresh[name])
                verdict = "identical" if problem is None else problem
                status |= problem is not None
            print(f"[check] {kind}/{name}: {verdict}", flush=True)
    ending = "every file identical" if status == 0 else "DIFFERENCES FOUND" + (
        "" if same else " (TensorFlow's arithmetic here is not known to be the committed results': what a trained "
                        "model gives can differ for that alone; README, Reproducibility)")
    print(f"[check] {ending}", flush=True)
    return status
