"""Worker processes started fresh (spawn) without importing this program's ``__main__``.

multiprocessing's spawn re-imports the parent's main module in every child; a script without an
``if __name__ == "__main__"`` guard would then run again in each. :data:`WITHOUT_MAIN` is a spawn context whose
children are given a stand-in ``__main__``: what they run is fedlab's. Used by a sweep's worker processes
(:mod:`fedlab.experiment.pool`) and the SecAgg cost measurement (:func:`fedlab.protection.secagg.measure_cost`).
"""

from __future__ import annotations

import multiprocessing.context
import sys
import threading
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
