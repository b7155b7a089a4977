"""What a stalled test was waiting for, read from the processes themselves instead of guessed.

``report(pid)`` gives, for a process and every process it started (a Jupyter kernel, a CLI run, TFF's C++
worker), its command line and the stack of every thread: Python stacks from ``py-spy dump`` (a test dependency),
native stacks of TFF's worker from ``gdb`` where it is installed, and each thread's kernel wait channel from /proc
otherwise. ``Watchdog`` runs beside every test (tests/conftest.py): past the test's limit it writes that report to
build/test-artifacts/stalls/, stops the processes the test started (which ends most waits on them) and fails the
test with the report; a test whose own thread is stuck in Python gets the failure raised in it by a signal.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from fedlab.core.runtime import descendants, process_table

ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "build" / "test-artifacts" / "stalls"
PY_SPY = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
GDB = shutil.which("gdb")
TOOL_TIMEOUT_S = 60


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(a.decode(errors="replace") for a in f.read().split(b"\0") if a)[:300]
    except OSError:
        return "?"


def _is_python(pid: int) -> bool:
    try:
        return "python" in os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False


def _run(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"({args[0]} did not answer within {TOOL_TIMEOUT_S} s)"
    except OSError as err:
        return f"({args[0]}: {err})"
    return (out.stdout + ("\n" + out.stderr if out.returncode else "")).strip()


def wait_channels(pid: int) -> str:
    """Each thread's name, state and the kernel function it sleeps in (no tool needed)."""
    lines = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:  # the process has ended
        return f"  (process {pid} has ended)"
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                name, rest = f.read().split("(", 1)[1].rsplit(")", 1)
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                wchan = f.read().strip() or "-"
        except OSError:
            continue
        lines.append(f"  thread {tid} ({name}) state {rest.split()[0]} waiting in {wchan}")
    return "\n".join(lines)


def stacks(pid: int) -> str:
    """The stacks of every thread of ``pid``: Python's for a Python process, native ones for the rest."""
    if _is_python(pid) and PY_SPY:
        return _run([PY_SPY, "dump", "--pid", str(pid)])
    if GDB and not _is_python(pid):
        out = _run([GDB, "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt 25"])
        # gdb's own chatter (symbols being read, the attach banner) before the first thread
        return out[out.find("\nThread ") + 1:] if "\nThread " in out else out
    return wait_channels(pid)


def report(root: int, *, include_root: bool = True) -> str:
    """Command line and thread stacks of ``root`` and of every process it started: the Python processes it started
    first (a Jupyter kernel, a CLI run: what a stalled test waits for, so that a log cut in the middle keeps them),
    then ``root``, then the native ones (TFF's C++ worker, whose stacks are long)."""
    table = process_table()
    python = {pid: _is_python(pid) for pid in sorted(descendants(root, table))}  # once: a child may exec or end
    pids = ([p for p, py in python.items() if py] + ([root] if include_root else [])
            + [p for p, py in python.items() if not py])
    parts = []
    for pid in pids:
        if pid == os.getpid():
            parts.append(f"== process {pid} (this test process)\n{this_process()}")
            continue
        parts.append(f"== process {pid}: {_command_line(pid)}\n{stacks(pid)}")
    return "\n\n".join(parts) if parts else f"(process {root} has no children)"


def this_process() -> str:
    """This process's Python threads, from the interpreter itself."""
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for ident, frame in sys._current_frames().items():
        out.append(f"Thread {ident} ({names.get(ident, '?')}):\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(out)


def save(name: str, text: str) -> pathlib.Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name)[-150:] + ".txt")
    path.write_text(text)
    return path


class Stalled(Exception):
    """Raised in a test's thread by its watchdog (through SIGUSR2) once the report is written."""


_pending = threading.Event()  # a watchdog fired and wants the main thread interrupted


def _on_signal(signum, frame):
    if _pending.is_set():  # a late signal after the test ended is ignored
        _pending.clear()
        raise Stalled("the test's watchdog fired (the report follows)")


class Watchdog:
    """Fires once, ``limit`` seconds after ``start()`` unless ``cancel()`` came first.

    On firing: the report of this process and its children is written, the children are stopped (SIGKILL),
    and ``Stalled`` is raised in the main thread. ``message`` then holds what the test waited for.
    """

    def __init__(self, limit: float, name: str):
        self.limit, self.name = limit, name
        self.message = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watchdog {name}", daemon=True)

    def start(self) -> "Watchdog":
        self._interrupt = threading.current_thread() is threading.main_thread()
        if self._interrupt and signal.getsignal(signal.SIGUSR2) is not _on_signal:
            signal.signal(signal.SIGUSR2, _on_signal)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._done.set()
        self._thread.join(timeout=TOOL_TIMEOUT_S * 4)
        _pending.clear()

    def _watch(self) -> None:
        if self._done.wait(self.limit):
            return
        text = report(os.getpid())
        path = save(self.name, text)
        self.message = (f"{self.name} still ran after {self.limit:.0f} s (its limit); the stacks of this process "
                        f"and of every process it started, saved in {path}:\n{text}")
        print(f"\n*** stalled: {self.message}", file=sys.stderr, flush=True)
        for pid in descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._interrupt and not self._done.is_set():
            _pending.set()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)
