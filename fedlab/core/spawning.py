"""Worker processes started fresh (spawn) without importing this program's ``__main__``.

multiprocessing's spawn re-imports the parent's main module in every child; a script without an
``if __name__ == "__main__"`` guard would then run again in each. :data:`WITHOUT_MAIN` is a spawn context whose
children are given a stand-in ``__main__``: what they run is fedlab's. Used by a sweep's worker processes
(:mod:`fedlab.experiment.pool`) and the SecAgg cost measurement (:func:`fedlab.protection.secagg.measure_cost`).
"""

from __future__ import annotations

import multiprocessing.context
import os
import signal
import sys
import threading
import time
import types
from multiprocessing import popen_spawn_posix


class _PopenWithoutMain(popen_spawn_posix.Popen):
    """Spawns a worker process that does not import this program's ``__main__``: what it runs is fedlab's, and a
    script without an ``if __name__ == "__main__"`` guard would otherwise run again in every worker."""

    def _launch(self, process_obj):
        with _MAIN_SWAP:  # two threads starting workers must not keep each other's stand-in
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")  # multiprocessing reads it while it pickles
            try:
                super()._launch(process_obj)
            finally:
                sys.modules["__main__"] = main


_MAIN_SWAP = threading.Lock()


class _ProcessWithoutMain(multiprocessing.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        return _PopenWithoutMain(process_obj)


class _SpawnWithoutMain(multiprocessing.context.SpawnContext):
    Process = _ProcessWithoutMain


WITHOUT_MAIN = _SpawnWithoutMain()


# In a worker process -----------------------------------------------------------------------------------------


def exit_with_parent() -> None:
    """Ends this worker process when the process that started it is gone (killed): mid-task or not."""
    parent = os.getppid()

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True, name="fedlab-worker-orphaned").start()


def quiet_worker() -> None:
    """A pool's worker initializer: exits with its parent, and ignores SIGINT, which a notebook's interrupt sends
    to the whole process group (the parent stops its workers itself; a traceback from each would be noise)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()


# In the parent ------------------------------------------------------------------------------------------------


def stop_pool(pool, *, kill: bool, limit: float) -> str:
    """Shuts ``pool`` (a ``ProcessPoolExecutor``) down: its idle workers exit, and with ``kill`` the busy ones are
    killed; waits at most ``limit`` seconds for its processes and its manager thread to end. Returns what still
    ran after that ("" if nothing)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # CPython's: no public way to stop them
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if kill:
        for process in processes:
            process.kill()
    deadline = time.monotonic() + limit
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(timeout=5.0)
    if manager is not None:
        manager.join(timeout=max(1.0, deadline - time.monotonic()))
    return ", ".join(map(str, [p.pid for p in processes if p.is_alive()]
                          + (["its manager thread"] if manager is not None and manager.is_alive() else [])))
