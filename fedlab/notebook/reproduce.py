"""Runs every notebook top to bottom with papermill: what `make figures` calls.

Each notebook has a ``parameters`` cell. Its defaults are the full setting;
``fast=True`` injects the notebook's ``FAST`` parameters so the test suite
finishes in minutes. ``figures_dir`` and ``results_dir`` tell the notebook
where its last cells save figures and tables; ``cache_dir`` holds finished
runs, so an interrupted reproduce picks up where it stopped.

Notebooks run ``jobs`` at a time (two where the machine has two cores or
more), each in a process of its own, the longest first (:data:`LONGEST_FIRST`).
``jobs=1`` runs every notebook in this process, in turn. A notebook leaves
cores idle between its sweeps (plots, its own serial work, a sweep's last run
training alone), which a second notebook fills; the cores are shared out
between the notebooks' sweeps (``FEDLAB_SWEEP_PROCESSES``: one process each
on two cores, :func:`notebook_environment`). What a notebook computes does
not depend on what runs beside it (every run is seeded, and a sweep's runs
give the same bits in any process). What a notebook reports in wall-clock time
(the results' timing columns) it measures in a quiet period
(:mod:`fedlab.core.quiet_periods`): the notebooks' processes share a folder,
``FEDLAB_QUIET_DIR``, and the other notebook's runs pause between rounds until
the measurement ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from ..core.quiet_periods import QUIET_DIR_VARIABLE
from ..core.runtime import SWEEP_PROCESSES_VARIABLE, sweep_processes_setting, usable_cores

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
        kernel_manager_class=kernel_dying_with_parent(),
    )
    return out


@functools.lru_cache(maxsize=1)
def kernel_dying_with_parent() -> type:
    """jupyter_client's kernel manager (nbclient's default), its kernel started through
    :func:`fedlab.core.runtime.dying_with_parent`: the kernel gets SIGTERM when the thread that started it ends, so
    a process running notebooks that is killed outright (SIGKILL: no papermill shutdown) leaves no kernel behind,
    nor the TFF workers and sweep processes that end with the kernel."""
    import signal

    from jupyter_client import AsyncKernelManager

    from ..core.runtime import dying_with_parent

    class KernelDyingWithParent(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
            return dying_with_parent(super().format_kernel_cmd(extra_arguments), signum=signal.SIGTERM)

    return KernelDyingWithParent


# The order notebooks start in, two at a time: the longest first, so that the short ones fill the end (a notebook's
# seconds beside another in the clean-clone `make check-figures` of c8eccd4: 05 1,302, 01 996, 02 681, 07 602,
# 04 339, 03 307, 08 60, 06 58). Notebooks not named here start last, in their order.
LONGEST_FIRST = ("05", "01", "02", "07", "04", "03", "08", "06")

# Where the notebooks' processes meet for quiet periods (fedlab.core.quiet_periods), under the output folder.
QUIET_FOLDER = "quiet"


def default_jobs() -> int:
    """Notebooks run at a time when not asked: two where there are two cores or more (a second notebook fills what
    the first leaves idle between its sweeps; the cores are shared out between their sweeps,
    :func:`notebook_environment`), else one."""
    return 2 if usable_cores() >= 2 else 1


class NotebookFailed(RuntimeError):
    """A notebook run in a process of its own failed, went silent, or was stopped (reproduce interrupted); the
    message names it, its log and what ended it."""


def reproduce(*, fast: bool = False, only: Optional[Sequence[str]] = None,
              figures_dir: pathlib.Path = ROOT / "figures", results_dir: pathlib.Path = ROOT / "results",
              output_dir: pathlib.Path = ROOT / "build" / "notebooks",
              cache_dir: pathlib.Path = ROOT / "build" / "cache", jobs: Optional[int] = None) -> list[pathlib.Path]:
    """Runs the notebooks (``only``: those whose name starts with one of these prefixes); ``jobs``: at most this
    many at a time, each in a process of its own (None: :func:`default_jobs`; 1: every notebook in this process, one
    after the other, with papermill's progress bar), in the order of :data:`LONGEST_FIRST`; their processes share
    ``FEDLAB_QUIET_DIR`` (``output_dir/quiet``) for the wall-clock times they measure. Returns the executed
    notebooks, in notebook order."""
    if jobs is None:
        jobs = default_jobs()
    _check_jobs(jobs)
    chosen = sweep_processes_setting()  # a bad FEDLAB_SWEEP_PROCESSES of the caller's said before any notebook starts
    paths = notebooks(only)
    dirs = dict(figures_dir=pathlib.Path(figures_dir).resolve(), results_dir=pathlib.Path(results_dir).resolve(),
                output_dir=pathlib.Path(output_dir).resolve(), cache_dir=pathlib.Path(cache_dir).resolve())
    if jobs == 1:
        def execute(path: pathlib.Path, stop) -> pathlib.Path:
            return run_notebook(path, fast=fast, progress=True, **dirs)
    else:
        environ = notebook_environment(max(1, min(jobs, len(paths))), dirs["output_dir"])  # one notebook: every core
        processes = chosen or int(environ[SWEEP_PROCESSES_VARIABLE])
        print(f"[reproduce] up to {jobs} notebooks at a time, each in a process of its own, its sweeps on {processes} "
              f"process{'es' if processes > 1 else ''} ({SWEEP_PROCESSES_VARIABLE}); a notebook's progress: "
              f"{dirs['output_dir'] / '<notebook>.log'}", flush=True)

        def execute(path: pathlib.Path, stop) -> pathlib.Path:
            return run_notebook_process(path, fast=fast, stop=stop, environ=environ, **dirs)

    def run(path: pathlib.Path, stop) -> pathlib.Path:
        """A notebook, and, once its full-setting results are written, their numerics (a later failure leaves
        every finished notebook's record true)."""
        done = execute(path, stop)
        if not fast:
            try:
                record_numerics(dirs["results_dir"], [path.name[:2]])
            except (OSError, ValueError) as err:  # TimeoutError is an OSError
                raise RuntimeError(f"{path.name}: its results are written, but not the numerics that made them "
                                   f"({err})") from None
        return done
    return schedule(paths, jobs, run, setting="fast" if fast else "full")


def _check_jobs(jobs) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: a whole number of notebooks run at a time, at least 1 (got {jobs!r})")


def notebook_environment(jobs: int, output_dir: pathlib.Path) -> dict[str, str]:
    """What each notebook's process gets besides this process's environment when ``jobs`` notebooks run at a time:
    the folder where they meet for quiet periods (``FEDLAB_QUIET_DIR``), and the processes each one's sweeps may use
    (``FEDLAB_SWEEP_PROCESSES``): the cores shared out between the notebooks, at least one (on two cores, one: every
    sweep trains in its notebook's process). A sweep spread over a worker process per core beside another notebook
    doing the same ran four TFF processes on two cores: two such sweeps side by side took a third longer than with one
    process each, their worker processes' start included (``benchmarks/sweeps_side_by_side.py``). The share is fixed
    when a notebook starts: the last notebook, alone at the end, keeps it. A ``FEDLAB_SWEEP_PROCESSES`` of the
    caller's own is kept (checked: ValueError in one line naming it)."""
    _check_jobs(jobs)
    environ = {QUIET_DIR_VARIABLE: str(pathlib.Path(output_dir) / QUIET_FOLDER)}
    if sweep_processes_setting() is None:
        environ[SWEEP_PROCESSES_VARIABLE] = str(max(1, usable_cores() // jobs))
    return environ


def starting_order(paths: Sequence[pathlib.Path]) -> list[pathlib.Path]:
    """``paths`` in the order they start: :data:`LONGEST_FIRST`'s, then the others in theirs."""
    rank = {prefix: i for i, prefix in enumerate(LONGEST_FIRST)}
    return sorted(paths, key=lambda p: rank.get(p.name[:2], len(rank)))  # sorted is stable: the others keep theirs


def schedule(paths: Sequence[pathlib.Path], jobs: int, run: Callable, *, setting: str = "full",
             say: Callable[[str], None] = lambda line: print(line, flush=True)) -> list[pathlib.Path]:
    """``run(path, stop)`` for every notebook, at most ``jobs`` at a time in :func:`starting_order` (on daemon
    threads); a line as each starts (naming those beside it) and ends. ``stop``: a ``threading.Event`` set when
    the notebooks running should stop (``run`` then raises soon). A failure is said at once and stops new starts;
    the notebooks running then finish (each is bounded: :func:`run_notebook_process`), and the first failure is
    raised. An interruption here (Ctrl-C) sets ``stop`` and waits at most :data:`STOP_LIMIT_S` for the running
    ones to end. Returns ``run``'s results in the order of ``paths``."""
    import threading

    order = starting_order(paths)
    results: dict[pathlib.Path, pathlib.Path] = {}
    running: list[str] = []
    started: set[str] = set()
    errors: list[BaseException] = []  # in the order they happened
    lock = threading.Lock()
    failed, stop = threading.Event(), threading.Event()

    def begin(path: pathlib.Path) -> bool:
        """With ``lock`` held: the notebook starts (its line said now, so the lines come in the order they start),
        unless a failure or a stop forbids it."""
        if failed.is_set() or stop.is_set():
            return False
        beside = list(running)
        running.append(path.name)
        try:
            say(f"[reproduce] {path.name} ({setting})" + (f", beside {', '.join(beside)}" if beside else "") + " ...")
        except BaseException:
            running.remove(path.name)
            raise
        started.add(path.name)
        return True

    def one(path: pathlib.Path, begun: bool = False) -> None:
        if not begun:
            with lock:
                if not begin(path):
                    return
        start = time.time()
        try:
            results[path] = run(path, stop)
        except BaseException as err:
            with lock:
                failed.set()
                errors.append(err)
                running.remove(path.name)
                others = list(running)
                left = [p.name for p in order if p.name not in started]
            reason = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err) or type(err).__name__
            say(f"[reproduce] {path.name} FAILED after {time.time() - start:.0f} s: {reason}"
                + (f"; {'stopping' if stop.is_set() else 'waiting for'} {', '.join(others)}" if others else "")
                + (f"; not starting {', '.join(left)}" if left else ""))
            raise
        with lock:
            running.remove(path.name)
        say(f"[reproduce] {path.name} done in {time.time() - start:.0f} s")

    if jobs == 1 or len(order) <= 1:
        for path in order:
            one(path)
        return [results[p] for p in paths]
    queue = list(order)

    def lane() -> None:
        while True:
            try:
                with lock:
                    if not queue or not begin(path := queue.pop(0)):
                        return
                one(path, begun=True)
            except BaseException as err:  # noqa: BLE001 - raised by the main thread
                with lock:
                    failed.set()
                    if all(err is not known for known in errors):  # one's "done" line could not be said
                        errors.append(err)
                return

    lanes = [threading.Thread(target=lane, name=f"reproduce-{i}", daemon=True) for i in range(jobs)]
    try:
        for thread in lanes:
            thread.start()
        while alive := [thread for thread in lanes if thread.is_alive()]:  # each notebook is bounded
            alive[0].join(timeout=1.0)
    except BaseException:  # interrupted here: the running notebooks are stopped, none starts
        failed.set()
        stop.set()
        _wait_for_none(running, lock, STOP_LIMIT_S, say)
        raise
    if errors:
        raise errors[0]
    missing = [p.name for p in paths if p not in results]
    if missing:  # cannot happen without an error above; said rather than a KeyError
        raise RuntimeError(f"reproduce: no result for {', '.join(missing)}")
    return [results[p] for p in paths]


STOP_LIMIT_S = 180.0  # a notebook's process ends within two minutes of being stopped (_end)


def _wait_for_none(running: list, lock, limit: float, say: Callable[[str], None]) -> None:
    """Waits until ``running`` is empty, at most ``limit`` seconds; says which notebooks were still running then."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with lock:
            if not running:
                return
        time.sleep(0.1)
    with lock:
        left = list(running)
    if left:
        say(f"[reproduce] still running {limit:g} s after being stopped: {', '.join(left)}")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_notebook_process(path: pathlib.Path, *, fast: bool, figures_dir: pathlib.Path, results_dir: pathlib.Path,
                         output_dir: pathlib.Path, cache_dir: pathlib.Path, timeout: int = 3600,
                         stop=None, silence_slack: float = 600.0, retries: int = 1,
                         environ: Optional[Mapping[str, str]] = None) -> pathlib.Path:
    """:func:`run_notebook` in a Python process of its own (``python -m fedlab.notebook.reproduce``), its output in
    ``output_dir/<notebook>.log``; :class:`NotebookFailed` with the log's last line if it fails.

    Bounded by silence: papermill saves the executed notebook as each cell starts and ends and a cell may take at
    most ``timeout`` seconds (papermill's limit), so a process whose log and executed notebook have not changed for
    ``timeout + silence_slack`` seconds is stopped. ``stop`` (an event) set: stopped at once. The process gets SIGTERM
    should the thread that started it end (this process killed); it runs in a session of its own and shuts its
    kernel down on SIGTERM. A kernel that never started a cell (two kernels started together can race for a port)
    is started again, ``retries`` times, its output appended to the same log. ``environ``: variables set in its
    environment besides this process's."""
    import json
    import signal

    from ..core.runtime import dying_with_parent

    output_dir.mkdir(parents=True, exist_ok=True)
    log, executed = output_dir / f"{path.stem}.log", output_dir / path.name
    request = json.dumps({"path": str(path), "fast": fast, "figures_dir": str(figures_dir),
                          "results_dir": str(results_dir), "output_dir": str(output_dir),
                          "cache_dir": str(cache_dir), "timeout": timeout})
    limit = timeout + silence_slack
    for attempt in range(retries + 1):
        executed.unlink(missing_ok=True)
        with open(log, "wb" if attempt == 0 else "ab") as out:
            if attempt:
                out.write(f"\n[reproduce] started again (attempt {attempt + 1})\n".encode())
                out.flush()
            process = subprocess.Popen(dying_with_parent(_child_command(request), signum=signal.SIGTERM),
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                       env=dict(os.environ, **(environ or {}), PYTHONUNBUFFERED="1"),
                                       start_new_session=True)
            try:
                code = _wait_while_alive(process, [log, executed], limit, stop)
            except BaseException as err:  # interrupted: SIGTERM, and its kernel is shut down
                try:
                    _end(process, path)
                except NotebookFailed as stuck:
                    err.add_note(str(stuck))
                raise
            _end(process, path)  # silent or stopped: the same
        if code == "silent":
            raise NotebookFailed(f"{path.name}: nothing written to its log or executed notebook for {limit:g} s (a "
                                 f"cell may take {timeout} s); stopped. Its output: {log}")
        if code == "stopped":
            raise NotebookFailed(f"{path.name}: stopped (reproduce was interrupted). Its output: {log}")
        if code == 0:
            return executed
        if attempt < retries and not _ran_a_cell(executed):
            print(f"[reproduce] {path.name}: its kernel ran no cell (exit code {code}); starting it again "
                  f"(its output: {log})", flush=True)
            continue
        break
    lines = [ANSI.sub("", line) for line in log.read_text(errors="replace").splitlines() if line.strip()]
    raise NotebookFailed(f"{path.name} failed (exit code {code}; its output: {log}): "
                         f"{lines[-1] if lines else 'no output'}")


def _child_command(request: str) -> list[str]:
    return [sys.executable, "-m", "fedlab.notebook.reproduce", request]


def _wait_while_alive(process: subprocess.Popen, watched: Sequence[pathlib.Path], limit: float, stop):
    """The process's exit code; "silent" once none of ``watched`` has changed for ``limit`` seconds; "stopped" once
    ``stop`` is set (also if it has just ended)."""
    last = time.time()
    while True:
        try:
            code = process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            code = None
        if stop is not None and stop.is_set():
            return "stopped"
        if code is not None:
            return code
        for path in watched:
            try:
                last = max(last, path.stat().st_mtime)
            except OSError:
                pass
        if time.time() - last > limit:
            return "silent"


def _end(process: subprocess.Popen, path: pathlib.Path) -> None:
    """SIGTERM to a notebook's process still running (it shuts its kernel down), SIGKILL a minute later; waits at
    most another minute for it to go."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=60)
        return
    except subprocess.TimeoutExpired:
        process.kill()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise NotebookFailed(f"{path.name}: its process {process.pid} did not end within 60 s of SIGKILL") from None


def _ran_a_cell(executed: pathlib.Path) -> bool:
    """Whether papermill's executed notebook shows a cell that started (its ``start_time``, set only as a cell
    starts; papermill marks every cell "completed" when it ends, even if its kernel never started). False if there
    is no such notebook."""
    import nbformat

    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except Exception:  # noqa: BLE001 - absent or half-written: no cell is known to have run
        return False
    return any(cell.get("metadata", {}).get("papermill", {}).get("start_time") for cell in cells)


# wall-clock columns: never the same twice (sim_*: compared)
TIMING = re.compile(r"^(seconds|seconds_.*|ms_per_.*|client_seconds|server_seconds)$")
# figures that plot wall-clock time: not compared
TIMING_FIGURES = {"06_round_time.png", "05_secagg_cost.png", "05_he_cost.png"}


def file_difference(kind: str, committed: pathlib.Path, fresh: pathlib.Path) -> Optional[str]:
    """None if two ``kind`` ("results" or "figures") files agree, else what differs: tables by
    :func:`compare_tables`, figures by their bytes (a figure of :data:`TIMING_FIGURES` always agrees)."""
    if kind != "figures":
        return compare_tables(committed, fresh)
    if committed.name in TIMING_FIGURES or committed.read_bytes() == fresh.read_bytes():
        return None
    return "differs (bytes)"


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

    ``onednn``: TensorFlow's oneDNN kernels (else Eigen's): on unless ``TF_ENABLE_ONEDNN_OPTS`` turns them off
    (fedlab turns them on where TF 2.14's default would not: :func:`fedlab.core.runtime.onednn_on`). ``isa``:
    the widest vector instructions oneDNN's kernels use, chosen when they run (``avx512``, ``avx2``;
    ``ONEDNN_MAX_CPU_ISA`` lowers it); None with oneDNN off.
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
    from ..core.runtime import onednn_on, worker_environment

    environ = dict(os.environ if environ is None else environ)
    flags = cpu_flags() if flags is None else frozenset(flags)
    if cores is None:
        from ..core.runtime import usable_cores

        cores = usable_cores()
    onednn = onednn_on(environ)
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


NUMERICS_LOCK_S = 60.0  # how long a record waits for another process's to be written


def record_numerics(results_dir: pathlib.Path, prefixes: Sequence[str]) -> None:
    """Writes this machine's :class:`Numerics` beside the results it made, for the notebooks ``prefixes`` ("01",
    ...) it ran, keeping what the file says of the others (whole or not at all): results made on two machines
    (``--only`` on another) each say which arithmetic made them. The read and the write hold a lock on the folder
    (``flock``, at most :data:`NUMERICS_LOCK_S`), so that notebooks finishing at once, in threads or processes,
    each keep their record. A damaged record is said in one line and replaced by these notebooks' only."""
    import json

    from ..core.storage import atomic_write

    folder = pathlib.Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NUMERICS_FILE
    here = numerics()
    with _folder_locked(folder, NUMERICS_LOCK_S, f"the record of numerics in {folder}"):
        try:
            table = recorded_numerics(folder) or {}
        except UnreadableRecord:
            raise  # it may hold other notebooks' records: not overwritten
        except ValueError as err:
            print(f"[reproduce] {err}; it now records {', '.join(prefixes)} only", flush=True)
            table = {}
        table.update({prefix: here for prefix in prefixes})
        atomic_write(path, json.dumps({prefix: dataclasses.asdict(value) for prefix, value in sorted(table.items())},
                                      indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _folder_locked(folder: pathlib.Path, limit: float, what: str):
    """An exclusive ``flock`` on ``folder`` for the block; TimeoutError naming ``what`` if another holder keeps it
    past ``limit`` seconds."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        deadline = time.monotonic() + limit
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what}: waited {limit:g} s for its lock, held by another thread or "
                                       "process") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


class UnreadableRecord(ValueError):
    """The record of numerics exists but cannot be read (permissions, a folder in its place, the disk): what it
    says is unknown, not wrong, so it is not overwritten."""


def recorded_numerics(results_dir: pathlib.Path = RESULTS) -> Optional[dict[str, Numerics]]:
    """The :class:`Numerics` each notebook's results in ``results_dir`` were made with, by notebook number ("01");
    None where nothing is recorded. A record of the older form, one :class:`Numerics` for every notebook, is read
    as that for each. ValueError naming the file when it cannot be read as either."""
    import json

    path = pathlib.Path(results_dir) / NUMERICS_FILE
    fields = {f.name for f in dataclasses.fields(Numerics)}

    def entry(value) -> Numerics:
        if not (isinstance(value, dict) and set(value) == fields and isinstance(value["onednn"], bool)
                and (value["isa"] is None if not value["onednn"] else value["isa"] in ISA_ORDER)
                and type(value["threads"]) is int and value["threads"] >= 1):
            raise ValueError(f"not a record of numerics: {str(value)[:60]}")
        return Numerics(**value)

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UnreadableRecord(f"{path.name}: cannot be read ({type(err).__name__}: {err.strerror})") from None
    try:
        data = json.loads(raw.decode())
        if isinstance(data, dict) and set(data) == fields:  # the older form: one machine made every notebook's
            made = entry(data)
            return {p.name[:2]: made for p in notebooks()}
        if not isinstance(data, dict) or not all(re.fullmatch(r"[0-9]{2}", str(k)) for k in data):
            raise ValueError("not a record of notebooks' numerics")
        return {str(prefix): entry(value) for prefix, value in data.items()}
    except (ValueError, RecursionError) as err:  # not text (UnicodeDecodeError), not JSON, not numerics
        raise ValueError(f"{path.name}: damaged, not read ({type(err).__name__}: "
                         f"{(str(err).splitlines() or [''])[0][:80]})") from None


def _numerics_against_record(here: Numerics, prefixes: Sequence[str]) -> tuple[str, bool]:
    """What :func:`check`'s first line says of the committed results' numerics for notebooks ``prefixes``, and
    whether every one of them was made with ``here``'s."""
    try:
        then = recorded_numerics()
    except ValueError as err:
        return f"the committed results' record: {err}", False
    if then is None:
        return "the committed results do not record theirs", False
    groups: dict[Optional[Numerics], list[str]] = {}
    for prefix in prefixes:
        groups.setdefault(then.get(prefix), []).append(prefix)
    if set(groups) == {here}:
        return f"the committed results': {here.describe()} (the same)", True
    parts = [f"{', '.join(members)}: " + ("not recorded" if made is None else made.describe() + (
        " (the same)" if made == here else " -- NOT the same")) for made, members in groups.items()]
    return "the committed results' -- " + "; ".join(parts), False


def check(*, only: Optional[Sequence[str]] = None, scratch: pathlib.Path = ROOT / "build" / "check",
          jobs: Optional[int] = None) -> int:
    """Reruns notebooks in their full setting from an empty cache and compares every results/ CSV (timing columns
    excepted) and figure (timing figures excepted) with the committed one; prints one line per file; returns 1
    if anything differs or is missing.

    The comparison is exact. Its first line names this machine's :class:`Numerics` beside those the committed
    results of each notebook checked recorded (``results/numerics.json``); where they differ, a trained model's
    numbers can differ here for that reason alone, and the last line says so.
    """
    import shutil

    sweep_processes_setting()  # a bad FEDLAB_SWEEP_PROCESSES said before the last check's output is removed
    here = numerics()
    prefixes = [p.name[:2] for p in notebooks(only)]
    made, same = _numerics_against_record(here, prefixes)
    print(f"[check] TensorFlow's arithmetic here: {here.describe()}; {made}", flush=True)
    scratch = pathlib.Path(scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    reproduce(only=only, figures_dir=scratch / "figures", results_dir=scratch / "results",
              output_dir=scratch / "notebooks", cache_dir=scratch / "cache", jobs=jobs)
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
            else:
                problem = file_difference(kind, committed[name], fresh[name])
                verdict = "identical" if problem is None else problem
                status |= problem is not None
            print(f"[check] {kind}/{name}: {verdict}", flush=True)
    ending = "every file identical" if status == 0 else "DIFFERENCES FOUND" + (
        "" if same else " (TensorFlow's arithmetic here is not known to be the committed results': what a trained "
                        "model gives can differ for that alone; README, Reproducibility)")
    print(f"[check] {ending}", flush=True)
    return status


if __name__ == "__main__":  # one notebook, for run_notebook_process
    import json
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # papermill then shuts the kernel down as it stops
    _request = json.loads(sys.argv[1])
    run_notebook(pathlib.Path(_request["path"]), fast=_request["fast"], timeout=_request["timeout"], progress=True,
                 **{k: pathlib.Path(_request[k]) for k in ("figures_dir", "results_dir", "output_dir", "cache_dir")})
