"""TensorFlow Federated's runtime: quiet import, notebook setup, worker clean-up.

TFF's local runtime is a C++ worker binary started as a child process. TFF
only stops it when a Python object is garbage collected, which does not
reliably happen at exit, and a surviving worker keeps its parent's pipes
open (a ``subprocess.run`` of our CLI would then hang). We stop it at exit.
"""

from __future__ import annotations

import atexit
import os
import signal

_TFF = None


def tff():
    """Imports TensorFlow Federated once (about 15 s), with TF's C++ logs quiet."""
    global _TFF
    if _TFF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        import tensorflow_federated

        tf.get_logger().setLevel("ERROR")
        atexit.register(stop_local_workers)
        _TFF = tensorflow_federated
    return _TFF


def setup(*, quiet: bool = True) -> None:
    """One call at the top of a notebook: lets TFF's event loop run inside Jupyter."""
    import nest_asyncio

    nest_asyncio.apply()
    if quiet:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow")
    tff()


def _children() -> list[tuple[int, str]]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append((int(entry), cmd))
    return found


def stop_local_workers() -> None:
    """Stops the TFF worker binaries this process started (SIGINT, as TFF itself does)."""
    if not os.path.isdir("/proc"):
        return
    for pid, cmd in _children():
        if cmd.endswith("worker_binary"):
            try:
                os.kill(pid, signal.SIGINT)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def current_context():
    """The TFF execution context of this thread (TFF's context stack is thread-local)."""
    return tff().framework.get_context_stack().current


def run_in_context(context, fn, *args, **kwargs):
    """Calls ``fn`` with ``context`` installed: how a worker thread uses the main thread's runtime."""
    with tff().framework.get_context_stack().install(context):
        return fn(*args, **kwargs)
