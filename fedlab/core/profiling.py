"""Where a run spends its time, by phase: what ``benchmarks/figures_profile.py`` adds up over ``make figures``.

Off unless ``$FEDLAB_PROFILE`` names a file. Then every :func:`fedlab.run_experiment` in this process appends
one JSON line to it when it ends: the notebook cell that started it (IPython's execution count, else None),
whether a sweep's worker process ran it, a few config fields, its result-cache key and whether it came from the
cache, its wall time, and the seconds spent in each of :data:`PHASES`; ``other`` is the rest of its wall time
(the privacy accounting, a checkpoint read, stopping TFF's worker once it holds more than
``$FEDLAB_WORKER_MEMORY_MB``, the round loop's own Python).
Off, :func:`phase` costs one context-variable lookup.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import time
from typing import Iterator, Optional

ENV = "FEDLAB_PROFILE"
PHASES = (
    "cache",        # reading a finished run back, or storing one
    "data",         # loading the data set, partitioning it, the clients' arrays
    "build",        # TFF processes and their tracing, the evaluator, the initial state
    "inputs",       # each round's client inputs (sampling, batch orders, packing for TFF)
    "round",        # TFF's call: the clients' work, aggregation, the server step
    "evaluate",     # the global model's (and each client's) scores
    "bookkeeping",  # the history, checkpoints, callbacks, TensorBoard
)

_current: contextvars.ContextVar[Optional["RunTimer"]] = contextvars.ContextVar("fedlab_profile", default=None)


class RunTimer:
    """Seconds per phase of one run."""

    def __init__(self, fields: dict) -> None:
        self.fields = dict(fields)  # what the run's line says of it besides its seconds
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"phase: must be one of {', '.join(PHASES)}, got {name!r}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


_cell: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("fedlab_profile_cell", default=None)
_in_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("fedlab_profile_worker", default=False)


def current_cell() -> Optional[int]:
    """The execution count of the notebook cell running now (papermill numbers the cells it runs 1, 2, ...), or
    the one :func:`in_cell` names (a sweep's worker process runs the cell's runs)."""
    given = _cell.get()
    if given is not None:
        return given
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "execution_count", None)


@contextlib.contextmanager
def in_cell(cell: Optional[int], *, worker: bool = False) -> Iterator[None]:
    """Runs in the block count as started by notebook cell ``cell`` (``worker``: in a sweep's worker process)."""
    token, worker_token = _cell.set(cell), _in_worker.set(worker)
    try:
        yield
    finally:
        _cell.reset(token)
        _in_worker.reset(worker_token)


@contextlib.contextmanager
def run(**fields) -> Iterator[Optional[RunTimer]]:
    """Times one run when ``$FEDLAB_PROFILE`` is set (yields None, and records nothing, when it is not).

    ``fields`` go into the run's line; the caller may add to ``timer.fields`` before the block ends (``from_cache``).
    """
    path = os.environ.get(ENV)
    if not path or _current.get() is not None:  # a run inside a run (a study's helper) is counted by the outer one
        yield None
        return
    timer = RunTimer(fields)
    token = _current.set(timer)
    cell = current_cell()
    try:
        yield timer
    finally:
        _current.reset(token)
        wall = time.perf_counter() - timer.start
        line = {"cell": cell, "worker": _in_worker.get(), **timer.fields, "wall": wall, **timer.seconds,
                "other": wall - sum(timer.seconds.values())}
        with open(path, "a", encoding="utf-8") as f:  # one short line, appended in one write
            f.write(json.dumps(line, default=str) + "\n")


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Counts the block's seconds in ``name`` (one of :data:`PHASES`) for the run being timed, if any."""
    timer = _current.get()
    if timer is None:
        yield
        return
    with timer.phase(name):
        yield


def note(**fields) -> None:
    """Adds ``fields`` to the line of the run being timed, if any."""
    timer = _current.get()
    if timer is not None:
        timer.fields.update(fields)
