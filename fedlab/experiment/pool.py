"""A sweep's runs spread over this machine's cores.

One run of a small model keeps about one core busy (fedlab's process and TFF's worker together), so a sweep run
one config after the other leaves the rest of the machine idle. :func:`spread` trains the configs that are not
in the results cache into the cache, in this process and, once the runs left are worth it, in worker processes,
one run at a time each; the caller then reads every run back from it, in order, as if it had run them itself. A
run's numbers do not depend on where it ran: a worker process starts from the same environment and library build,
and a result-cache entry is what the run in this process would have stored (``tests/test_pool.py`` checks the
weights are bit-identical).

A component registered after fedlab was imported (a notebook's own data set, model, algorithm, device profile or
any other kind) goes with the runs: a worker process does not have it, so it is pickled with cloudpickle, which
sends what a notebook cell defined by value (its code, with the globals it reads as the sweep starts) and what a
module defines by reference (the worker imports the module), and is registered there before the run, whose config
goes by cloudpickle too (an algorithm's parameters of a notebook's class). The run is stored under the key this
process computed (:func:`fedlab.experiment.runner.digests_sent`). A worker process keeps what it received for the
sweep's later runs (the same bytes: its TFF processes and data sets are reused). A run whose component or config
a worker process cannot unpickle (a module it cannot import), or whose component looks up another by name that
was not sent (only the components a run uses go), is trained here after the others, and a warning says why.

Runs stay in this process when they could not run elsewhere or when spreading them gains nothing: a component
registered here that cannot be pickled (one holding a lock or an open file), ``workers=...`` (the TFF workers
serve one driver), an encryption key that is not in a file, fewer than two runs to train, or one process allowed
(``processes=1``, ``$FEDLAB_SWEEP_PROCESSES=1``; ``make figures`` sets the variable to each notebook's share of the
cores, one on two cores, as its notebooks run two at a time). A worker process does not import the program's
``__main__`` (a script without an ``if __name__ == "__main__"`` guard is safe).

Short sweeps stay here too. A worker process costs about ten seconds to start (it imports TensorFlow and TFF)
and builds its own TFF processes again, where this process may have built them already; a sweep of small runs
(the test suite's fast setting: a few tenths of a second a run) is then several times slower spread than run
here. So :func:`spread` trains the runs here, one after the other, and measures their pace
(:func:`round_pace`: seconds a round, after the first round, in rounds where a client trained). As soon as the
runs left would take more than :func:`spread_after` seconds here at the fastest pace measured so far
(``$FEDLAB_SPREAD_AFTER_S``, 30 by default; 0 spreads every run from the start), they all go to worker
processes, the run training here included: it stops after that round and is trained again there (its build and
the rounds it trained lost, two as a rule, where training it on beside the workers would run one process more than
the cores; a run is stopped only while the runs after it, less the rounds it would lose, are still worth
spreading, and never after its last round: otherwise it finishes here and the runs after it spread before the next
starts). A sweep of long runs thus spreads from its first run's second round. The pace leaves out building
TFF's processes and evaluating, so the runs left are underestimated, never overestimated by a first run's tracing;
a run of one round gives no pace, so a sweep of one-round runs stays here.

The worker processes live for one sweep (they start when it spreads, about ten seconds, and build their TFF
processes once for all the runs they train). Nothing waits forever: when a run finishes no round for
:func:`fedlab.core.runtime.wait_limit` seconds, or no run starts or finishes for as long, the sweep stops, says
which runs were going, and stops its worker processes. A run that fails in a worker process raises its error
here (with the worker's traceback as a note, unless it is a :class:`ConfigError`); the warnings raised there are
raised again here, once per message and place as Python's default shows them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import pathlib
import pickle
import sys
import tempfile
import time
import traceback
import warnings
from typing import Callable, Iterator, Optional, Sequence

import cloudpickle
import pandas as pd

from ..aggregators.aggregation import AGGREGATORS, builders_in_use
from ..algorithms.algorithms import ALGORITHMS
from ..core import encryption, profiling
from ..core.spawning import WITHOUT_MAIN, quiet_worker, stop_pool
from ..core.registry import Entry, Registry, UnknownComponent
from ..core.runtime import SWEEP_PROCESSES_VARIABLE, seconds_setting, sweep_processes_setting, usable_cores, wait_limit
from ..core.storage import ResultCache, cache_key, remove_dead_partials
from ..core.validation import ConfigError
from ..data.data import DATASETS
from ..data.partition import PARTITIONERS
from ..data.tasks import LOSSES, METRICS, TASKS
from ..models.models import MODELS
from ..rounds.attacks import ATTACKS
from ..systems.asynchronous import STALENESS
from ..systems.systems import DEVICE_PROFILES
from .config import ExperimentConfig
from .runner import after_every_round, component_digests, digests_sent, run_experiment

PROCESSES_VARIABLE = SWEEP_PROCESSES_VARIABLE
SPREAD_VARIABLE = "FEDLAB_SPREAD_AFTER_S"
SPREAD_AFTER_S = 30.0  # about three times a worker process's start: spreading less than this gains nothing


def sweep_processes(processes: Optional[int] = None) -> int:
    """How many worker processes a sweep may use: ``processes`` if given, else ``$FEDLAB_SWEEP_PROCESSES``, else
    the cores this process may run on."""
    if processes is None:
        chosen = sweep_processes_setting()
        return usable_cores() if chosen is None else chosen
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes: must be a whole number >= 1 (1: every run in this process), got {processes!r}")
    return processes


def spread_after() -> float:
    """Seconds of runs left, expected here, from which a sweep spreads them: ``$FEDLAB_SPREAD_AFTER_S`` if set,
    else :data:`SPREAD_AFTER_S` (0: spread every run from the start)."""
    return seconds_setting(SPREAD_VARIABLE, SPREAD_AFTER_S, zero="0: spread every run")


def worth_spreading(pace: Optional[float], rounds: int, runs: int, limit: float) -> bool:
    """Whether ``runs`` runs of ``rounds`` rounds in all are expected to take longer than ``limit`` seconds here at
    ``pace`` seconds a round (:func:`round_pace`; None: not measured yet). ``limit`` 0: always; no run: never."""
    if runs < 1:
        return False
    if limit <= 0:
        return True
    return pace is not None and pace * rounds > limit


def round_pace(history: pd.DataFrame) -> Optional[float]:
    """Seconds a round of this run takes here: the median of its rounds after the first (which also traces TFF's
    computations) in which a client trained (a round where none did costs next to nothing); None before there is
    one. Building the processes and evaluating are left out, so a run's rounds at this pace underestimate it."""
    if "seconds" not in history or len(history) < 2:
        return None
    later = history.iloc[1:]
    if "clients_this_round" in later:
        later = later[later["clients_this_round"] > 0]
    seconds = later["seconds"].dropna()
    return float(seconds.median()) if len(seconds) else None


REGISTRIES: dict[str, Registry] = {r.kind: r for r in (DATASETS, TASKS, PARTITIONERS, ALGORITHMS, DEVICE_PROFILES,
                                                        MODELS, LOSSES, METRICS, ATTACKS, AGGREGATORS, STALENESS)}


def _used(config: ExperimentConfig) -> list[tuple[Registry, Entry]]:
    """The registered components ``config`` uses, with their registries."""
    dataset = DATASETS.entry(config.dataset)
    task = TASKS.entry(dataset.component.task)
    used = [(DATASETS, dataset), (TASKS, task), (PARTITIONERS, PARTITIONERS.entry(config.partition)),
            (ALGORITHMS, ALGORITHMS.entry(config.algorithm)),
            (DEVICE_PROFILES, DEVICE_PROFILES.entry(config.device_profile)), (MODELS, MODELS.entry(config.model)),
            (LOSSES, LOSSES.entry(task.component.loss)), *((METRICS, METRICS.entry(m)) for m in task.component.metrics),
            # named by every config, and looked up by name in a run whether it attacks or is asynchronous or not
            (ATTACKS, ATTACKS.entry(config.attack)), (STALENESS, STALENESS.entry(config.async_staleness))]
    used += [(AGGREGATORS, _entry_of(b)) for b in builders_in_use(config)]
    return used


def _entry_of(builder) -> Entry:
    return next(e for e in AGGREGATORS.entries() if e.component is builder)


def why_here(config: ExperimentConfig) -> Optional[str]:
    """Why ``config`` must run in this process (None: a worker process can run it)."""
    if config.workers:
        return "it runs on TFF workers (workers=...)"
    key = encryption.current()
    if key is not None and key.path is None:
        return "the encryption key in use is not in a file"
    try:
        sent_components(config)
    except _Unsendable as err:
        return str(err)
    return None


class _Unsendable(Exception):
    """A component registered in this process that cannot be pickled for a worker process."""


def sent_components(config: ExperimentConfig) -> list[tuple[str, bytes]]:
    """The components ``config`` uses that were registered in this process after fedlab's import, each pickled
    for a worker process: (registry kind, the pickled entry); empty if it uses only fedlab's own.
    :class:`_Unsendable`, naming the component, when one cannot be pickled. (One that finds another by name, a
    notebook's data set loading another, fails to find it in the worker process: the run comes back here.)"""
    sent = {}
    for registry, entry in _used(config):
        if not entry.at_import and (registry.kind, entry.name) not in sent:
            sent[registry.kind, entry.name] = _pickled(entry)
    return [(kind, blob) for (kind, _), blob in sent.items()]


_PICKLED: dict[int, tuple[Entry, object]] = {}  # id(entry) -> (the entry, kept so that its id stays its own;
# its pickle, or the _Unsendable it raised)


def _pickled(entry: Entry) -> bytes:
    """``entry`` pickled, once per entry in a sweep (:func:`spread` empties the memo as it starts and ends: a cell
    edited between two sweeps, a helper or a global the component reads, is sent as it is now). cloudpickle
    pickles what a notebook defined by value (its code, the globals it reads) and what a module defines by
    reference (the worker process imports the module)."""
    known = _PICKLED.get(id(entry))
    if known is None or known[0] is not entry:
        try:
            known = (entry, cloudpickle.dumps(entry))
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            known = (entry, _Unsendable(f"{entry.name!r} was registered in this process and cannot be pickled for "
                                        f"a worker process ({type(err).__name__}: {reason})"))
        _PICKLED[id(entry)] = known
    if isinstance(known[1], _Unsendable):
        raise known[1]
    return known[1]


class SweepStalled(RuntimeError):
    """No run of a sweep made progress within the wait limit."""


def run_all(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
            processes: Optional[int] = None, tensorboard_dir=None, desc: str = "runs") -> list[pd.DataFrame]:
    """Every config's history, in order, as :func:`fedlab.run_experiment` gives it (``from_cache`` True only for
    runs read from ``results_cache``), the runs to train trained first by :func:`spread` (here, and over
    ``processes`` worker processes once that is worth it). One progress bar counts the runs and shows the time
    remaining."""
    from tqdm.auto import tqdm

    configs = list(configs)
    with tqdm(total=len(configs), desc=desc, unit="run", disable=not progress) as bar, \
            spread(configs, results_cache, processes=processes, on_done=lambda i: bar.update(1)) as done:
        histories = []
        for i, config in enumerate(configs):
            history = run_experiment(config, results_cache=done.cache, progress=False, tensorboard_dir=tensorboard_dir)
            if i not in done.trained:
                bar.update(1)  # the spread ones were counted as they were stored
            if i in done.trained or results_cache is None:
                history.attrs["from_cache"] = False  # trained by this call (spread, or a config twice)
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
    """Trains the runs of ``configs`` that a worker process can train (:func:`spreadable`) into
    ``results_cache``: here, one after the other, until the runs left are worth spreading (see the module
    docstring), then those side by side in ``processes`` worker processes. The block then reads every run from
    ``Spread.cache`` with :func:`fedlab.run_experiment`, as if it had run them itself, in any order. Without
    ``results_cache`` the runs pass through a temporary folder, removed when the block ends. With fewer than two
    such runs, or one process, nothing is trained before the block. ``on_done(i)``: called as run ``i`` is stored
    (else a progress bar)."""
    from tqdm.auto import tqdm

    configs = list(configs)
    processes = sweep_processes(processes)
    _PICKLED.clear()
    try:
        todo = spreadable(configs, results_cache) if processes > 1 else []
    except BaseException:
        _PICKLED.clear()
        raise
    if len(todo) < 2:
        _PICKLED.clear()
        yield Spread(None if results_cache is None else str(results_cache), frozenset())
        return
    with contextlib.ExitStack() as stack:
        stack.callback(_PICKLED.clear)
        cache = str(results_cache) if results_cache is not None else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fedlab-sweep-cache-"))
        if on_done is None:
            bar = stack.enter_context(tqdm(total=len(todo), desc="runs", unit="run",
                                           disable=not progress))
            on_done = lambda i: bar.update(1)  # noqa: E731
        lanes = stack.enter_context(_Lanes(configs, cache, processes, on_done))
        _train_here(configs, todo, cache, on_done, lanes)
        lanes.finish()
        yield Spread(cache, frozenset(todo) - lanes.back_here)


class _WorthSpreading(Exception):
    """Raised from a run's callback: the runs left, that run included, are worth spreading."""


def _train_here(configs: Sequence[ExperimentConfig], todo: list[int], cache_dir: str,
                on_done: Callable[[int], None], lanes: "_Lanes") -> None:
    """Trains the runs of ``todo`` in this process, in order, until the runs left are worth spreading
    (:func:`worth_spreading` at the fastest pace measured here: before a run, the runs trained so far; during one,
    from its second round on too); ``lanes`` then takes them all. A run found worth spreading mid-way stops after
    that round and is trained again in a worker process (see the module docstring). Every data set is loaded
    first: one that cannot be had says so before any run, and a worker process finds it on disk."""
    _load_data_here(configs[i] for i in todo)
    limit, paces = spread_after(), []

    def rounds(indices) -> int:
        return sum(configs[j].rounds for j in indices)

    for n, i in enumerate(todo):
        left = todo[n:]
        if len(left) < 2:
            callback = None
        elif worth_spreading(min(paces, default=None), rounds(left), len(left), limit):
            lanes.start(left)
            return
        else:
            def callback(row, history, left=left, total=configs[i].rounds) -> None:
                done = len(history)
                pace = round_pace(history)
                known = [*paces, *([] if pace is None else [pace])]
                # the runs after this one, less the rounds it would lose, must still be worth spreading: this one
                # then trains from its start in a worker process
                if done < total and known and worth_spreading(
                        min(known), rounds(left) - total - done, len(left) - 1, limit):
                    profiling.note(from_cache=False, stopped_to_spread=True, rounds=done)
                    raise _WorthSpreading()
        stopped = False
        try:
            history = run_experiment(configs[i], results_cache=cache_dir, progress=False, callback=callback)
        except _WorthSpreading:
            stopped = True
        if stopped:
            lanes.start(left)
            return
        on_done(i)
        pace = round_pace(history)
        if pace is not None:
            paces.append(pace)


class _Lanes:
    """The worker processes of one sweep, started at most once (:meth:`start`) with the runs they are to train and
    waited for by :meth:`finish`. Leaving the block stops them; after an error (here or in a worker) the runs still
    going are abandoned and their half-written entries removed."""

    def __init__(self, configs: Sequence[ExperimentConfig], cache_dir: str, processes: int,
                 on_done: Callable[[int], None]) -> None:
        self.configs, self.processes, self.on_done = configs, processes, on_done
        self.cache_dir = str(pathlib.Path(cache_dir).resolve())
        self.futures: Optional[dict] = None
        self.stored: set = set()
        self.back_here: set = set()  # runs a worker process could not take (its component did not unpickle there)
        self.said = False  # a broken pool, said and cleaned up by finish()
        self.todo: list[int] = []
        self._stack = contextlib.ExitStack()

    @property
    def started(self) -> bool:
        return self.futures is not None

    def start(self, todo: list[int]) -> None:
        key = encryption.current()
        key_file = str(pathlib.Path(key.path).resolve()) if key is not None else None
        cell = profiling.current_cell()
        self.beats = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="fedlab-sweep-"))
        self.executor = self._stack.enter_context(_executor(self.processes))
        self.todo, self.futures = list(todo), {}
        for i in todo:
            config = self.configs[i]
            sent = sent_components(config)
            digests = component_digests(config) if sent else None
            config_pickle = cloudpickle.dumps(config)  # its algorithm parameters may be of a notebook's class
            self.futures[self.executor.submit(_train, config_pickle, self.cache_dir, key_file, cell,
                                              os.path.join(self.beats, str(i)), sent, digests)] = i

    def finish(self) -> None:
        """Waits for the worker processes' runs (none started: nothing to wait for), then stops the processes: the
        sweep's block runs on without a pool's threads (a fork() beside them can abort in the child)."""
        from concurrent.futures.process import BrokenProcessPool

        if not self.futures:
            return
        configs, futures, todo, stored = self.configs, self.futures, self.todo, self.stored
        try:
            _collect(futures, configs, self.beats, lambda i: (stored.add(i), self.on_done(i)), self.back_here.add)
            self._stack.close()
        except BrokenProcessPool:
            alive = self.executor.stop(warn=False)  # the workers still alive are writing: stopped before their
            # partial entries go
            stored.update(futures[f] for f in futures if _stored(f))  # finished before the break, not yet collected
            going = [i for i in todo if i not in stored and _beat_age(self.beats, i) is not None]
            _remove_partial(self.cache_dir, [configs[i] for i in todo if i not in stored])
            self.said = True
            raise RuntimeError(f"a worker process of the sweep ended abruptly (killed, out of memory, or it could not "
                               f"start: its standard error says why); going: {_runs(going, configs)}; the runs not "
                               "stored are trained again next time"
                               + (f"; still running after {wait_limit():g} s: {alive}" if alive else "")) from None

    def __enter__(self) -> "_Lanes":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is not None and self.started and not self.said:
                for future in self.futures:
                    future.cancel()
                if len(self.futures) < len(self.todo) or not all(f.done() for f in self.futures):
                    self.executor.stop()  # runs still going (or one submitted and not yet known): abandoned
                _remove_partial(self.cache_dir, [self.configs[i] for i in self.todo if i not in self.stored])
        finally:
            self._stack.close()


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


def _stored(future) -> bool:
    """Whether ``future``'s run ended without an error (its cache entry is whole)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    error, _ = future.result()
    return error is None


def _load_data_here(configs) -> None:
    """Each data set once in this process before the workers start: a missing file is downloaded once (the
    workers would race), and a data set that cannot be had says so here, in one line."""
    from .clients import dataset_for

    seen = set()
    for config in configs:
        if config.dataset not in seen:
            seen.add(config.dataset)
            dataset_for(config)


def _remove_partial(cache_dir: str, configs) -> None:
    """The temporary folders a killed run's cache entry was being written in (``storage.write_folder``), but another
    live process's (two notebooks of ``reproduce`` may train the same run at once)."""
    for config in configs:
        remove_dead_partials(pathlib.Path(cache_dir), cache_key(config, component_digests(config)))


def _collect(futures: dict, configs, beats: str, on_done, back_here: Callable[[int], None] = lambda i: None) -> None:
    pending = set(futures)
    limit = wait_limit()
    last = time.monotonic()  # when a run last started or finished
    while pending:
        done, pending = concurrent.futures.wait(pending, timeout=min(limit, 2.0),
                                                return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            i = futures[future]
            error, caught = future.result()  # BrokenProcessPool: said by _Lanes.finish
            for message, category, filename, lineno, module in caught:
                warnings.warn_explicit(message, category, filename, lineno, module=module,
                                       registry=_WARNED.setdefault(module or filename, {}))
            if isinstance(error, _NotReceived):
                warnings.warn(f"{_runs([i], configs)}: {error}; trained in the sweep's process", RuntimeWarning,
                              stacklevel=2)
                back_here(i)
            elif error is not None:
                raise error
            else:
                on_done(i)
            last = time.monotonic()
        ages = {futures[f]: _beat_age(beats, futures[f]) for f in pending}
        started = {i: age for i, age in ages.items() if age is not None}
        last = max([last] + [time.monotonic() - age for age in started.values()])
        stuck = sorted(i for i, age in started.items() if age > limit)
        if stuck or (pending and time.monotonic() - last > limit):
            raise SweepStalled(f"no round finished within {limit:g} s (FEDLAB_WAIT_LIMIT_S) in "
                               + (_runs(stuck, configs) if stuck else "the sweep (no run started: the worker "
                                  "processes were starting)") + "; stopped the worker processes")


def _runs(indices, configs) -> str:
    return "; ".join(f"run {i + 1} of {len(configs)} ({configs[i].algorithm}, seed {configs[i].seed})"
                     for i in indices) or "none"


def _beat_age(beats: str, i: int) -> Optional[float]:
    """Seconds since run ``i`` last finished a round (or started), None if it has not started."""
    try:
        return max(0.0, time.time() - os.stat(os.path.join(beats, str(i))).st_mtime)
    except OSError:
        return None


_WARNED: dict = {}  # per module, the warnings raised again here: once per message and place, as Python's "default"


# The worker processes: started for one sweep and stopped at its end ----------------------------------------------
# (a pool kept for the next sweep would keep its threads in this process, and a later fork() of a process with
# Python threads running, such as subprocess's preexec_fn, can abort in the child)


class _Executor:
    """The process pool of one sweep."""

    def __init__(self, processes: int) -> None:
        self.pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=WITHOUT_MAIN,
                                                           initializer=_start_worker)

    def submit(self, *args):
        return self.pool.submit(*args)

    def stop(self, warn: bool = True) -> str:
        """Stops the worker processes now (a stalled or interrupted sweep): their runs are abandoned. Returns what
        still ran after the wait (warned of unless ``warn`` is False)."""
        return _close(self.pool, kill=True, warn=warn)

    def __enter__(self) -> "_Executor":
        return self

    def __exit__(self, *exc) -> None:
        _close(self.pool, kill=False)


def _executor(processes: int) -> _Executor:
    return _Executor(processes)


def _close(pool: concurrent.futures.ProcessPoolExecutor, *, kill: bool, warn: bool = True) -> str:
    """Shuts ``pool`` down (its idle workers exit; ``kill``: busy ones too) and waits, within the wait limit, for
    its processes and its manager thread to end. Returns what still ran after that ("" if nothing), and warns of
    it unless ``warn`` is False."""
    alive = stop_pool(pool, kill=kill, limit=wait_limit())
    if alive and warn:  # said, not waited for: nothing of a sweep should outlive it
        warnings.warn(f"the sweep's worker processes did not all end within {wait_limit():g} s "
                      f"(FEDLAB_WAIT_LIMIT_S): still running: {alive}", RuntimeWarning, stacklevel=2)
    return alive


# In a worker process ------------------------------------------------------------------------------------------


def _start_worker() -> None:
    from ..core.quiet_periods import run_slot
    from ..core.runtime import tff

    quiet_worker()  # the sweep's process gone: this one goes too; a notebook's interrupt is the sweep's to handle
    slot = run_slot()  # importing TFF keeps a core busy for seconds: not beside another process's measurement
    try:
        tff()
    finally:
        slot.close()


def _train(config, cache_dir: str, key_file: Optional[str], cell: Optional[int], beat: str,
           sent: Sequence[tuple[str, bytes]] = (), digests: Optional[list[str]] = None):
    """Runs ``config`` into the cache; returns (the error or None, the warnings raised), both picklable.
    ``sent``: the components registered in the sweep's process (:func:`sent_components`), registered here first;
    ``config``: the config, or its cloudpickle, read after them; ``digests``: the digests of its components in
    the sweep's process, under which the run is stored. A component or a config that does not unpickle here
    returns :class:`_NotReceived` as the error."""
    encryption.use_encryption(key_file)
    try:
        _receive(sent)
        if isinstance(config, bytes):
            config = pickle.loads(config)  # a notebook's class in it is the one just received (cloudpickle)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return _NotReceived(f"its config or a component registered in the sweep's process did not unpickle in "
                            f"its worker process ({type(err).__name__}: {reason})"), []
    pathlib.Path(beat).touch()
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with digests_sent(config, digests) if sent else contextlib.nullcontext(), \
                    profiling.in_cell(cell, worker=True), after_every_round(pathlib.Path(beat).touch):
                run_experiment(config, results_cache=cache_dir, progress=False)
        except UnknownComponent as err:  # a component sent here found another by name, not sent: come back
            error = _NotReceived(f"a component registered in the sweep's process looked up another that was not "
                                 f"sent ({err})") if sent else err
        except Exception as err:  # raised again in the sweep's process
            if not isinstance(err, ConfigError):  # a user's mistake says so in one line; anything else, where
                err.add_note("in a sweep's worker process:\n" + traceback.format_exc().rstrip())
            error = _picklable(err)
    seen = []
    for w in caught:
        message = w.message if _picklable(w.message) is w.message else str(w.message)
        if _picklable(w.category) is w.category:
            seen.append((message, w.category, w.filename, w.lineno, _module_of(w.filename)))
    return error, seen


class _NotReceived(Exception):
    """A run's component did not unpickle in a worker process: the sweep's process trains the run."""


_RECEIVED: dict[bytes, Entry] = {}  # in a worker process: the entries received, by their pickle


def _receive(sent: Sequence[tuple[str, bytes]]) -> None:
    """Registers the components sent from the sweep's process, replacing any of the same name from an earlier
    run. The same bytes again (the sweep's next run) give the same objects: the TFF processes and the data sets
    this process keeps for them are found again. The worker process lives for one sweep."""
    for kind, blob in sent:
        entry = _RECEIVED.get(blob)
        if entry is None:
            entry = _RECEIVED[blob] = pickle.loads(blob)
        REGISTRIES[kind].restore(entry)


def _module_of(filename: str) -> Optional[str]:
    """The name of the loaded module whose file is ``filename`` (what warning filters match), None if none is."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return None


def _picklable(value):
    """``value`` if it survives pickling, else a RuntimeError with its type, message and notes."""
    if value is None:
        return None
    try:
        pickle.loads(pickle.dumps(value))
        return value
    except Exception:
        if not isinstance(value, BaseException):
            return None
        copy = RuntimeError(f"{type(value).__name__}: {value}")
        for note in getattr(value, "__notes__", ()):
            copy.add_note(note)
        return copy
