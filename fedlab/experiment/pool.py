"""A sweep's runs spread over this machine's cores.

One run of a small model keeps about one core busy (fedlab's process and TFF's worker together), so a sweep run
one config after the other leaves the rest of the machine idle. :func:`spread` trains the configs that are not
in the results cache in worker processes, one run at a time each, into the cache; the caller then reads every run
back from it, in order, as if it had run them itself. A run's numbers do not depend on where it ran: a worker
process starts from the same environment and library build, and a result-cache entry is what the run in this
process would have stored (``tests/test_pool.py`` checks the weights are bit-identical).

Runs stay in this process when they could not run elsewhere or when spreading them gains nothing: a component
registered after fedlab was imported (a notebook's own data set or algorithm: a worker process does not have
it), ``workers=...`` (the TFF workers serve one driver), an encryption key that is not in a file, fewer than
two runs to train, or one process allowed (``processes=1``, ``$FEDLAB_SWEEP_PROCESSES=1``).

The worker processes live as long as this one and are reused by the next sweep (their TFF processes stay built);
they are started again when the environment changes. Nothing waits forever: when no run makes a round's
progress for :func:`fedlab.core.runtime.wait_limit` seconds, the sweep stops, says which runs were going, and
stops the worker processes. A run that fails in a worker process raises its error here; fedlab's own
warnings raised there are raised again here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import pathlib
import pickle
import tempfile
import threading
import time
import warnings
from typing import Callable, Iterator, Optional, Sequence

import pandas as pd

from ..aggregators.aggregation import builders_in_use
from ..algorithms.algorithms import ALGORITHMS
from ..core import encryption, profiling
from ..core.registry import Entry
from ..core.runtime import wait_limit
from ..core.storage import ResultCache, cache_key
from ..core.validation import FedlabWarning
from ..data.data import DATASETS
from ..data.partition import PARTITIONERS
from ..data.tasks import LOSSES, METRICS, TASKS
from ..models.models import MODELS
from ..rounds.attacks import ATTACKS, is_update_attack
from ..systems.asynchronous import STALENESS
from ..systems.systems import DEVICE_PROFILES
from .config import ExperimentConfig
from .runner import component_digests, run_experiment

PROCESSES_VARIABLE = "FEDLAB_SWEEP_PROCESSES"


def sweep_processes(processes: Optional[int] = None) -> int:
    """How many worker processes a sweep may use: ``processes`` if given, else ``$FEDLAB_SWEEP_PROCESSES``, else
    the cores this process may run on."""
    if processes is None:
        raw = os.environ.get(PROCESSES_VARIABLE, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"{PROCESSES_VARIABLE}: must be a whole number of processes >= 1, got {raw!r}")
            return int(raw)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes: must be a whole number >= 1 (1: every run in this process), got {processes!r}")
    return processes


def entries_of(config: ExperimentConfig) -> list[Entry]:
    """The registered components ``config`` uses."""
    dataset = DATASETS.entry(config.dataset)
    task = TASKS.entry(dataset.component.task)
    used = [dataset, task, PARTITIONERS.entry(config.partition), ALGORITHMS.entry(config.algorithm),
            DEVICE_PROFILES.entry(config.device_profile), MODELS.entry(config.model),
            LOSSES.entry(task.component.loss), *(METRICS.entry(m) for m in task.component.metrics)]
    if is_update_attack(config):
        used.append(ATTACKS.entry(config.attack))
    used += [_entry_of(b) for b in builders_in_use(config)]
    if config.async_concurrency:
        used.append(STALENESS.entry(config.async_staleness))
    return used


def _entry_of(builder) -> Entry:
    from ..aggregators.aggregation import AGGREGATORS

    return next(e for e in AGGREGATORS.entries() if e.component is builder)


def why_here(config: ExperimentConfig) -> Optional[str]:
    """Why ``config`` must run in this process (None: a worker process can run it)."""
    if config.workers:
        return "it runs on TFF workers (workers=...)"
    key = encryption.current()
    if key is not None and key.path is None:
        return "the encryption key in use is not in a file"
    for entry in entries_of(config):
        if not entry.at_import:
            return f"{entry.name!r} was registered in this process"
    return None


class SweepStalled(RuntimeError):
    """No run of a sweep made progress within the wait limit."""


def run_all(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
            processes: Optional[int] = None, tensorboard_dir=None, desc: str = "runs") -> list[pd.DataFrame]:
    """Every config's history, in order, as :func:`fedlab.run_experiment` gives it (``from_cache`` True only for
    runs read from ``results_cache``), the runs to train spread over ``processes`` worker processes first
    (:func:`spread`). One progress bar counts the runs and shows the time remaining."""
    from tqdm.auto import tqdm

    configs = list(configs)
    with tqdm(total=len(configs), desc=desc, unit="run", disable=not progress) as bar, \
            spread(configs, results_cache, processes=processes, on_done=lambda i: bar.update(1)) as done:
        histories = []
        for i, config in enumerate(configs):
            history = run_experiment(config, results_cache=done.cache, progress=False, tensorboard_dir=tensorboard_dir)
            if i in done.trained:
                history.attrs["from_cache"] = False  # trained by this call, in a worker process
            else:
                bar.update(1)
            histories.append(history)
        return histories


@dataclasses.dataclass(frozen=True)
class Spread:
    """What :func:`spread` did: the results-cache folder to read the runs from, and the configs it trained."""

    cache: Optional[str]
    trained: frozenset


@contextlib.contextmanager
def spread(configs: Sequence[ExperimentConfig], results_cache=None, *, processes: Optional[int] = None,
           progress: bool = True, on_done: Optional[Callable[[int], None]] = None) -> Iterator[Spread]:
    """Trains the runs of ``configs`` that a worker process can train (:func:`spreadable`) side by side in
    ``processes`` of them, into ``results_cache``; the block then reads every run from ``Spread.cache`` with
    :func:`fedlab.run_experiment`, as if it had run them itself, in any order. Without ``results_cache`` the runs
    pass through a temporary folder, removed when the block ends. Nothing is spread when fewer than two runs
    would be, or with one process. ``on_done(i)``: called as run ``i`` is stored (else a progress bar)."""
    from tqdm.auto import tqdm

    configs = list(configs)
    processes = sweep_processes(processes)
    todo = spreadable(configs, results_cache) if processes > 1 else []
    if len(todo) < 2:
        yield Spread(None if results_cache is None else str(results_cache), frozenset())
        return
    with contextlib.ExitStack() as stack:
        cache = str(results_cache) if results_cache is not None else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fedlab-sweep-cache-"))
        if on_done is None:
            bar = stack.enter_context(tqdm(total=len(todo), desc="runs side by side", unit="run",
                                           disable=not progress))
            on_done = lambda i: bar.update(1)  # noqa: E731
        _train_all(configs, todo, cache, min(processes, len(todo)), on_done)
        yield Spread(cache, frozenset(todo))


def spreadable(configs: Sequence[ExperimentConfig], cache_dir) -> list[int]:
    """The indices of ``configs`` a worker process would train: not in the cache ``cache_dir`` (None: no cache),
    none of the reasons of :func:`why_here`, each config once."""
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    todo, seen = [], set()
    for i, config in enumerate(configs):
        if why_here(config) is not None:
            continue
        key = cache_key(config, component_digests(config))
        if key in seen or (cache is not None and cache.path(key).exists()):
            continue
        seen.add(key)
        todo.append(i)
    return todo


def _train_all(configs: Sequence[ExperimentConfig], todo: list[int], cache_dir: str, processes: int,
               on_done: Callable[[int], None]) -> None:
    key = encryption.current()
    key_file = str(key.path) if key is not None else None
    cell = profiling.current_cell()
    with tempfile.TemporaryDirectory(prefix="fedlab-sweep-") as beats:
        executor = _executor(processes)
        futures = {executor.submit(_train, configs[i], str(pathlib.Path(cache_dir).resolve()), key_file, cell,
                                   os.path.join(beats, str(i))): i for i in todo}
        try:
            _collect(futures, configs, beats, on_done)
        except BaseException:
            for future in futures:
                future.cancel()
            if not all(f.done() for f in futures):
                _stop_executor()
            raise


def _collect(futures: dict, configs, beats: str, on_done) -> None:
    pending = set(futures)
    last = time.monotonic()
    limit = wait_limit()
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=min(limit, 5.0),
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            i = futures[future]
            error, caught = future.result()
            for warning in caught:
                warnings.warn(warning)
            if error is not None:
                raise error
            if on_done is not None:
                on_done(i)
        beat = max([last] + [_mtime(os.path.join(beats, str(futures[f]))) for f in pending])
        if done:
            last = time.monotonic()
        elif time.monotonic() - max(last, beat) > limit:
            going = sorted(futures[f] for f in pending if os.path.exists(os.path.join(beats, str(futures[f]))))
            raise SweepStalled(
                f"no run of the sweep finished a round within {limit:g} s (FEDLAB_WAIT_LIMIT_S); going: "
                + ("; ".join(f"run {i + 1} of {len(configs)} ({configs[i].algorithm}, seed {configs[i].seed})"
                             for i in going) or "none yet (the worker processes were starting)")
                + "; stopped the worker processes")


def _mtime(path: str) -> float:
    """When the run writing heartbeats to ``path`` last finished a round, on this process's monotonic clock."""
    try:
        return time.monotonic() - (time.time() - os.stat(path).st_mtime)
    except OSError:
        return float("-inf")


# The worker processes, kept for the next sweep while the environment is the same ------------------------------

_LOCK = threading.Lock()
_EXECUTOR: Optional[concurrent.futures.ProcessPoolExecutor] = None
_EXECUTOR_KEY: Optional[tuple] = None


def _executor(processes: int) -> concurrent.futures.ProcessPoolExecutor:
    global _EXECUTOR, _EXECUTOR_KEY
    key = (processes, tuple(sorted(os.environ.items())))
    with _LOCK:
        broken = _EXECUTOR is not None and getattr(_EXECUTOR, "_broken", False)
        if _EXECUTOR is None or _EXECUTOR_KEY != key or broken:
            old, _EXECUTOR = _EXECUTOR, None
            if old is not None:
                old.shutdown(wait=False, cancel_futures=True)
            _EXECUTOR = concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker)
            _EXECUTOR_KEY = key
        return _EXECUTOR


def _stop_executor() -> None:
    """Stops the worker processes now (a stalled or interrupted sweep): their runs are abandoned."""
    global _EXECUTOR, _EXECUTOR_KEY
    with _LOCK:
        executor, _EXECUTOR, _EXECUTOR_KEY = _EXECUTOR, None, None
    if executor is None:
        return
    processes = list(getattr(executor, "_processes", {}).values())  # CPython's; no public way to stop a busy pool
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.kill()
    for process in processes:
        process.join(timeout=wait_limit())


def shutdown() -> None:
    """Stops the worker processes (they stop by themselves when this process ends)."""
    global _EXECUTOR, _EXECUTOR_KEY
    with _LOCK:
        executor, _EXECUTOR, _EXECUTOR_KEY = _EXECUTOR, None, None
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)


# In a worker process ------------------------------------------------------------------------------------------


def _start_worker() -> None:
    from ..core.runtime import tff

    parent = os.getppid()

    def orphaned() -> None:  # the sweep's process is gone (killed): this one goes too, mid-run or not
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True, name="fedlab-sweep-orphaned").start()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow")
    tff()


def _train(config: ExperimentConfig, cache_dir: str, key_file: Optional[str], cell: Optional[int], beat: str):
    """Runs ``config`` into the cache; returns (the error or None, fedlab's warnings), both picklable."""
    encryption.use_encryption(key_file)
    pathlib.Path(beat).touch()

    def heartbeat(row, history) -> None:
        pathlib.Path(beat).touch()

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FedlabWarning)
        try:
            with profiling.in_cell(cell):
                run_experiment(config, results_cache=cache_dir, progress=False, callback=heartbeat)
        except Exception as err:  # raised again in the sweep's process
            error = err
    mine = [w.message for w in caught if isinstance(w.message, FedlabWarning)]
    return _picklable(error), [w for w in mine if _picklable(w) is w]


def _picklable(value):
    """``value`` if it survives pickling, else a RuntimeError with its type and message."""
    if value is None:
        return None
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:
        return RuntimeError(f"{type(value).__name__}: {value}")
