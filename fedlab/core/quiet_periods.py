"""Quiet periods: a wall-clock measurement that the training of other fedlab processes does not share the cores with.

``make figures`` runs two notebooks at a time. Some of what a notebook reports is wall-clock time (SecAgg's and
CKKS's costs, round times, site processes against the simulation): measured beside another notebook's training, it
would be that notebook's load as much as its own. With ``FEDLAB_QUIET_DIR`` naming a folder (``python -m fedlab
reproduce`` sets one for its notebooks), :func:`measuring_time` makes a quiet period: every fedlab run of every
process that shares the folder pauses at the end of its current round (a run about to start waits before it
loads its data), and the measurement starts once each has paused or ended; they go on when it ends. Without the
variable both sides do nothing.

Two ``flock(2)`` locks on files in the folder. ``gate``: a measurement holds it exclusively; a run passes it
(shared, for an instant) before it starts and whenever it finds it closed at a round's end. ``busy``: each run holds
it shared from passing the gate to its next pause or its end; a measurement takes it exclusively once it holds the
gate, that is once no run is between two pauses. Both are taken in that order, so neither side can hold what the
other waits for while waiting. A process that dies releases its locks with it. Every wait has a bound
(:func:`fedlab.core.runtime.wait_limit`) and says what it waited for. A measurement's own runs (any run its process
starts meanwhile, in any thread), and the processes it starts, do not pause (:data:`HELD_VARIABLE`). A run's last
round does not pause: the run ends, and the next waits at the gate. Each measurement appends a line to
``measurements.log`` in the folder (start and end as Unix times, the seconds from asking to starting: another
measurement ending, then the runs pausing; process; what it measured).

What pauses is the rounds of fedlab runs (:func:`run_slot`) and a sweep's worker process importing TFF (it
holds a slot meanwhile, as a run does). The rest of a notebook beside a measurement does not: its
kernel's start, plots and tables, baselines trained with Keras alone, worker or site processes it starts itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Optional

from .runtime import WAIT_LIMIT_VARIABLE, wait_limit

QUIET_DIR_VARIABLE = "FEDLAB_QUIET_DIR"
HELD_VARIABLE = "FEDLAB_QUIET_HELD"  # "1" in a process started during a measurement: it belongs to it
GATE, BUSY, WHAT, LOG = "gate", "busy", "gate.what", "measurements.log"
POLL_S = 0.05

_lock = threading.Lock()
_measuring = 0  # measurements going on in this process
_held_before: Optional[str] = None  # HELD_VARIABLE's value before this process's first measurement began
_open_fds: set[int] = set()  # lock files this process has open (closed in a forked child, which never uses them)
_slots: dict[int, int] = {}  # slots open (locks and all) by thread


def folder() -> Optional[pathlib.Path]:
    """The folder named by ``FEDLAB_QUIET_DIR``, or None (no quiet periods)."""
    raw = os.environ.get(QUIET_DIR_VARIABLE, "").strip()
    return pathlib.Path(raw) if raw else None


def _exempt() -> bool:
    return _measuring > 0 or os.environ.get(HELD_VARIABLE) == "1"


def _open(where: pathlib.Path, name: str) -> int:
    where.mkdir(parents=True, exist_ok=True)
    fd = os.open(where / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with _lock:
        _open_fds.add(fd)
    return fd


def _close(fd: int) -> None:
    """Unlocks first: a forked child may still hold a copy of the descriptor, which would otherwise keep the lock."""
    with _lock:
        _open_fds.discard(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _after_fork_in_child() -> None:
    """A forked child never uses its parent's lock files: their copies are closed (the parent's keep their locks).
    A child forked during a measurement belongs to it (``_measuring`` is kept)."""
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    _slots.clear()  # the parent's threads are not the child's
    for fd in list(_open_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _open_fds.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _measured_now(where: pathlib.Path) -> str:
    """What the measurement that holds the gate measures (its own words), for a waiting run's message."""
    try:
        said = (where / WHAT).read_text(errors="replace").strip()
    except OSError:
        said = ""
    return said or "a measurement of wall-clock time"


def _say_what(where: pathlib.Path, what: Optional[str]) -> None:
    """The gate's holder says what it measures (written whole: a file of its own replaced at once); None: removed."""
    if what is None:
        (where / WHAT).unlink(missing_ok=True)
        return
    partial = where / f"{WHAT}.{os.getpid()}.partial"
    partial.write_text(what)
    os.replace(partial, where / WHAT)


def _take(fd: int, mode: int, limit: float, waited_for: Callable[[], str],
          given_up: Callable[[], bool] = lambda: False) -> bool:
    """``flock(fd, mode)``, polling, for at most ``limit`` seconds (then TimeoutError saying what it waited for);
    False, untaken, as soon as ``given_up()``."""
    deadline = time.monotonic() + limit
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if given_up():
                return False
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fedlab waited {limit:g} s for {waited_for()} ({WAIT_LIMIT_VARIABLE})") from None
            time.sleep(POLL_S)


def _waiting_for(where: pathlib.Path) -> Callable[[], str]:
    return lambda: (f"{_measured_now(where)} in another process to end (the quiet period of "
                    f"{QUIET_DIR_VARIABLE}={where})")


class RunSlot:
    """One run's place among the runs that a measurement pauses: :func:`run_slot` gives it, already past the gate;
    :meth:`pause_point` at the end of each round; :meth:`close` when the run ends (also on an error)."""

    def __init__(self, where: Optional[pathlib.Path], stop: Optional[threading.Event] = None) -> None:
        self._where, self._gate, self._busy, self._owner, self._holding = where, None, None, None, False
        if where is None:
            return
        try:
            self._gate = _open(where, GATE)
            self._busy = _open(where, BUSY)
            self._holding = self._pass(lambda: stop is not None and stop.is_set())
            self._owner = threading.get_ident()
            with _lock:
                _slots[self._owner] = _slots.get(self._owner, 0) + 1
        except BaseException:
            self.close()
            raise

    @property
    def stopped(self) -> bool:
        """Whether the slot gave up waiting because its run was asked to stop (it then holds nothing)."""
        return self._gate is not None and not self._holding

    def _pass(self, given_up: Callable[[], bool]) -> bool:
        where, limit = self._where, wait_limit()
        if not _take(self._gate, fcntl.LOCK_SH, limit, _waiting_for(where), given_up):
            return False
        try:
            return _take(self._busy, fcntl.LOCK_SH, limit,
                         lambda: f"the quiet period of {QUIET_DIR_VARIABLE}={where}", given_up)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def pause_point(self, stop: Optional[threading.Event] = None) -> None:
        """Between two rounds: if a measurement has closed the gate, this run stops holding ``busy`` and waits for it
        to end (at most :func:`wait_limit` seconds), or until ``stop`` is set (then it holds nothing: the caller
        stops the run)."""
        if self._gate is None:
            return
        if self._holding:
            try:
                fcntl.flock(self._gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                fcntl.flock(self._busy, fcntl.LOCK_UN)
                self._holding = False
            else:
                fcntl.flock(self._gate, fcntl.LOCK_UN)
                return
        self._holding = self._pass(lambda: stop is not None and stop.is_set())

    def close(self) -> None:
        """Lets go of everything, the count of the thread that opened it included, from any thread; twice: no-op."""
        if self._owner is not None:
            with _lock:
                left = _slots.get(self._owner, 0) - 1
                if left > 0:
                    _slots[self._owner] = left
                else:
                    _slots.pop(self._owner, None)
        for fd in (self._busy, self._gate):
            if fd is not None:
                _close(fd)
        self._gate = self._busy = self._owner = None
        self._holding = False


def run_slot(stop: Optional[threading.Event] = None) -> RunSlot:
    """What a run holds while it trains (:class:`RunSlot`): past the gate now (or, if ``stop`` is set while it
    waits there, :attr:`~RunSlot.stopped`), pausing at each :meth:`~RunSlot.pause_point` while a measurement goes
    on elsewhere. Nothing to do (and nothing waited for) without ``FEDLAB_QUIET_DIR``, within a measurement of this
    process's, or within a run of this thread (a run started in another's callback: the outer run's slot stands for
    both). Whether a run is exempt is decided here, once: a run that begins during its process's own measurement
    never pauses."""
    return RunSlot(None if _exempt() or _slots.get(threading.get_ident()) else folder(), stop)


@contextlib.contextmanager
def measuring_time(what: str) -> Iterator[None]:
    """Within the block, the fedlab runs of every other process sharing ``FEDLAB_QUIET_DIR`` are paused between
    rounds: the block's wall-clock time is this process's own. ``what``: what is measured, in a few words (a paused
    run's message names it). Waits (at most :func:`wait_limit` seconds each) for another process's measurement to
    end, then for every run elsewhere to reach the end of its round. Without the variable, or within another
    measurement of this process, the block just runs. Within a run of this thread (its callback) it is refused: the
    run could not pause."""
    where = folder()
    if where is None or _exempt():
        with _counted():
            yield
        return
    if _slots.get(threading.get_ident()):
        raise RuntimeError(f"measuring {what}: a quiet period cannot begin within a run of the same thread (its "
                           f"callback): the run could not pause for it ({QUIET_DIR_VARIABLE} is set)")
    limit, asked = wait_limit(), time.time()
    gate = _open(where, GATE)
    try:
        _take(gate, fcntl.LOCK_EX, limit, lambda: f"{_measured_now(where)} in another process to end")
        try:
            _say_what(where, f"{what} (process {os.getpid()})")
            busy = _open(where, BUSY)
            try:
                _take(busy, fcntl.LOCK_EX, limit,
                      lambda: f"the runs of other processes to reach the end of a round before measuring {what}")
                start = time.time()
                try:
                    with _counted():
                        yield
                finally:
                    end = time.time()
                    _log(where, f"{start!r} {end!r} waited {start - asked:.3f} s, process {os.getpid()}: {what}\n")
            finally:
                _close(busy)
        finally:
            _say_what(where, None)
    finally:
        _close(gate)


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    """This process is measuring: its own runs do not pause, nor do the processes it starts meanwhile."""
    global _measuring, _held_before
    with _lock:
        if _measuring == 0:
            _held_before = os.environ.get(HELD_VARIABLE)
        _measuring += 1
        os.environ[HELD_VARIABLE] = "1"
    try:
        yield
    finally:
        with _lock:
            _measuring -= 1
            if _measuring == 0:
                if _held_before is None:
                    os.environ.pop(HELD_VARIABLE, None)
                else:
                    os.environ[HELD_VARIABLE] = _held_before


def _log(where: pathlib.Path, line: str) -> None:
    """One line appended whole (a single ``write`` with ``O_APPEND``)."""
    fd = os.open(where / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def measures_time(what: str) -> Callable:
    """A decorator: the function runs within :func:`measuring_time` (``what``), which its ``measures_time``
    attribute says."""
    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def measured(*args, **kwargs):
            with measuring_time(what):
                return function(*args, **kwargs)
        measured.measures_time = what
        return measured
    return decorate
