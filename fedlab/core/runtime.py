"""TensorFlow Federated's runtime: quiet import, notebook setup, worker clean-up.

TFF's local runtime is a C++ worker binary started as a child process. TFF
only stops it when a Python object is garbage collected, which does not
reliably happen at exit, and a surviving worker keeps its parent's pipes
open (a ``subprocess.run`` of our CLI would then hang). We stop it at exit,
and start it so that the kernel delivers SIGKILL to it when its parent dies
(a run killed with SIGKILL leaves no orphaned worker behind), on a port no
outgoing connection can take, and wait for it to listen (:mod:`fedlab.core.ports`).

Nothing here waits forever: a TFF call, the worker's start and its channel, a
signalled worker's exit and a lock each have a bound (:func:`wait_limit`), and
past it the caller gets one line saying what was waited for and where the
waiting thread stood (:func:`where`).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from . import ports
from . import tff_speedups

_TFF = None


def _find_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up once here: a child between fork and exec of a threaded parent should not load libraries.
_PRCTL = _find_prctl()
PR_SET_PDEATHSIG = 1
SWEEP_PROCESSES_VARIABLE = "FEDLAB_SWEEP_PROCESSES"  # processes a sweep may use (fedlab.experiment.pool)


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child before exec (Linux): receive ``signum`` when the parent thread exits."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


# Sets PR_SET_PDEATHSIG (SIGKILL) and execs the real program: the worker keeps the setting across exec.
# A trampoline rather than ``preexec_fn``: with ``preexec_fn`` Python must fork() a process full of gRPC
# threads, and gRPC's fork handlers then log "Other threads are currently calling into gRPC" into notebooks.
def _trampoline(signum: int) -> str:
    """The trampoline's code for a child of this process: if this process ended before the child set the signal
    (the signal is then tied to its new parent), the child exits instead of running the program."""
    return ("import ctypes, os, sys\n"
            f"try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, {int(signum)}, 0, 0, 0)\n"
            "except (OSError, AttributeError):\n    pass\n"
            f"if os.getppid() != {os.getpid()}:\n    os._exit(1)\n"
            "os.execvp(sys.argv[1], sys.argv[1:])")


def dying_with_parent(args, signum: int = signal.SIGKILL) -> list[str]:
    """``args`` (a program, a path or a name looked up on the ``PATH``, and its arguments) started through the
    trampoline: the program gets ``signum`` when the thread that started it exits, and no fork() of this process
    runs (Linux; elsewhere ``args`` unchanged). The trampoline's Python is isolated (``-I -S``: no current folder,
    user site or ``PYTHON*`` variables); the program gets the environment as it is."""
    args = [str(a) for a in args]
    return [sys.executable, "-I", "-S", "-c", _trampoline(signum), *args] if sys.platform.startswith("linux") else args


def sweep_processes_setting() -> int | None:
    """``$FEDLAB_SWEEP_PROCESSES``, the processes a sweep may use, as a number; None where it is unset or empty.
    Anything but a whole number >= 1 is a ValueError in one line naming the variable."""
    raw = os.environ.get(SWEEP_PROCESSES_VARIABLE, "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]+", raw, flags=re.ASCII) or int(raw) < 1:
        raise ValueError(f"{SWEEP_PROCESSES_VARIABLE}: must be a whole number of processes >= 1, got {raw!r}")
    return int(raw)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


WAIT_LIMIT_VARIABLE = "FEDLAB_WAIT_LIMIT_S"
DEFAULT_WAIT_LIMIT_S = 1800.0


def wait_limit() -> float:
    """Seconds fedlab waits for any one thing (a TFF call, a panel's next round, a lock) before it stops waiting
    and says what it waited for: ``FEDLAB_WAIT_LIMIT_S``, default 1800 (a round of the largest workload in
    ``make bench`` takes seconds)."""
    return seconds_setting(WAIT_LIMIT_VARIABLE, DEFAULT_WAIT_LIMIT_S, zero="never")


def seconds_setting(variable: str, default: float, *, zero: str, unit: str = "seconds") -> float:
    """A finite number of ``unit`` (seconds unless said) from the environment variable ``variable`` (unset or blank:
    ``default``). ``zero``: what 0 means there, or "never" when it must be > 0. Anything else is refused in one line."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if zero == "never" and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{variable}: must be a finite number of {unit} > 0, got {raw!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{variable}: must be a number of {unit} >= 0 ({zero}), got {raw!r}")
    return value


def where(thread: "threading.Thread | int | None") -> str:
    """One line: where ``thread`` stands now: its innermost frame and, when that is in a library, the innermost
    frame of fedlab's or the user's own code below it."""
    ident = thread.ident if isinstance(thread, threading.Thread) else thread
    frame = sys._current_frames().get(ident) if ident is not None else None
    if frame is None:
        return "nowhere (the thread has ended)"
    import sysconfig

    libraries = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})

    def own(path: str) -> bool:
        return f"{os.sep}fedlab{os.sep}" in path or not path.startswith(libraries)

    def at(f) -> str:
        path = f.f_code.co_filename
        cut = path.rfind(f"{os.sep}fedlab{os.sep}")
        return f"{path[cut + 1:] if cut >= 0 else os.path.basename(path)}:{f.f_lineno} in {f.f_code.co_name}"

    inner, caller = at(frame), None
    f = frame if not own(frame.f_code.co_filename) else None
    while f is not None and caller is None:
        if own(f.f_code.co_filename):
            caller = at(f)
        f = f.f_back
    return inner + (f", called from {caller}" if caller else "")


@contextlib.contextmanager
def held(lock, what: str):
    """``with lock``, but waiting at most :func:`wait_limit` seconds for it (``TimeoutError`` names ``what``)."""
    limit = wait_limit()
    if not lock.acquire(timeout=limit):
        raise TimeoutError(f"fedlab waited {limit:g} s for {what} ({WAIT_LIMIT_VARIABLE}); another thread holds it")
    try:
        yield
    finally:
        lock.release()


WORKER_THREADS_VARIABLE = "FEDLAB_WORKER_INTRAOP_THREADS"
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_VALUES = ("0", "1", "false", "true")  # what TensorFlow reads (ReadBoolFromEnvVar, lower-cased)


def onednn_on(environ=None) -> bool:
    """Whether TensorFlow runs its oneDNN kernels, in fedlab's process and TFF's worker, under ``environ``.

    TensorFlow 2.14 on Linux turns them on by default only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or
    AMX, and uses Eigen's kernels elsewhere, which sum a product in another order: the same code and seeds gave
    other last bits on an AVX-512 CPU without VNNI than on one with it (notebook 08's tables, README
    "Reproducibility"). So importing fedlab sets ``TF_ENABLE_ONEDNN_OPTS=1`` where the caller has not set it
    (``fedlab/__init__.py``): oneDNN on every CPU, its kernels then depending on the vector width only. The
    caller's own value is kept; it must be one TensorFlow reads (0, 1, false, true, any case, no spaces), else
    ValueError naming the variable (TensorFlow would warn, in a line fedlab's log level hides, and fall back to its
    CPU-dependent default). TensorFlow reads the variable once, when it is imported: a process that imported it
    before fedlab keeps TensorFlow's choice (fedlab warns at its import), which this function cannot see.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ONEDNN_VARIABLE, "") or "1"  # unset or empty: fedlab's default
    if value.lower() not in ONEDNN_VALUES:
        raise ValueError(f"{ONEDNN_VARIABLE}: must be 0, 1, false or true (TensorFlow reads nothing else), got "
                         f"{value!r}")
    return value.lower() in ("1", "true")


def worker_environment(environ=None) -> dict:
    """The environment TFF's worker binary starts with: this process's, oneDNN's kernels on unless it says
    otherwise (:func:`onednn_on`), and one intra-op thread for the worker
    (``TF_NUM_INTRAOP_THREADS=1``) and for it alone; ``FEDLAB_WORKER_INTRAOP_THREADS`` sets another number (0:
    TensorFlow's default, a thread per core). A ``TF_NUM_INTRAOP_THREADS`` of this process's own is kept when
    ``FEDLAB_WORKER_INTRAOP_THREADS`` is not set. fedlab's variable must be a whole number >= 0; the caller's own
    one a whole number TensorFlow reads (a sign allowed; 0 or below: TensorFlow's default). Either is passed on as
    the number it means ("01" -> "1", "-1" -> "0": the same count, the same result-cache key); anything else is a
    ValueError naming the variable.

    The worker runs the clients' computations side by side on its inter-op
    pool; with TensorFlow's default intra-op pool as well, each client's small
    per-batch operations are handed between threads (``perf``: 27 % of the
    worker's samples in system calls, most futex waits). One intra-op thread
    made ``make bench``'s rounds 1.3 to 1.4 times faster, and a sweep's runs,
    one worker process per core, no longer compete for each other's cores.
    A matrix product large enough to be split between threads (full-batch
    FedSGD on 400 examples) sums in another order with another setting, so the
    committed results hold for this one (``results/numerics.json``).
    """
    environ = dict(os.environ if environ is None else environ)
    environ[ONEDNN_VARIABLE] = "1" if onednn_on(environ) else "0"  # checked, and fedlab's default where unset
    threads = environ.get(WORKER_THREADS_VARIABLE, "").strip()
    if threads:
        if not re.fullmatch(r"[0-9]{1,9}", threads, flags=re.ASCII):
            raise ValueError(f"{WORKER_THREADS_VARIABLE}: must be a whole number of threads >= 0 (0: TensorFlow's "
                             f"default), got {threads!r}")
    else:  # the caller's own, for TensorFlow, which reads a 32-bit integer and takes 0 or below for its default
        threads = environ.get("TF_NUM_INTRAOP_THREADS", "").strip() or "1"
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", threads, flags=re.ASCII):
            raise ValueError(f"TF_NUM_INTRAOP_THREADS: must be a whole number of threads (0 or below: TensorFlow's "
                             f"default), got {threads!r}; or set {WORKER_THREADS_VARIABLE}, which takes its place")
    environ["TF_NUM_INTRAOP_THREADS"] = str(max(int(threads), 0))
    return environ


WORKER_START_TIMEOUT_S = 120.0


class _PopenDyingWithParent(subprocess.Popen):
    """TFF's Popen of its worker binary, started through a trampoline that makes it die with this process,
    in :func:`worker_environment`; it returns once the worker listens.

    TFF then waits, without a limit, for its channel to the worker to be ready: a worker that exits
    at start (its port taken, :mod:`fedlab.core.ports`) would leave the caller waiting forever. Here that is
    an error naming the port and the worker's exit status, and so is a worker that does not listen
    within ``WORKER_START_TIMEOUT_S``.
    """

    def __init__(self, args, *rest, **kwargs):
        if sys.platform.startswith("linux") and isinstance(args, (list, tuple)):
            args = dying_with_parent(args)
        kwargs["env"] = worker_environment(kwargs.get("env"))
        super().__init__(args, *rest, **kwargs)
        port = next((int(a.split("=", 1)[1]) for a in map(str, args) if a.startswith("--port=")), None)
        if port is not None and ports.can_tell_listening():
            self._wait_listening(port)

    def _wait_listening(self, port: int) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not ports.listening_addresses(port):
            if self.poll() is not None:
                raise RuntimeError(f"TFF's local worker exited with status {self.returncode} before listening on "
                                   f"port {port} (taken by another program?); run the call again")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"TFF's local worker did not listen on port {port} within "
                                   f"{WORKER_START_TIMEOUT_S:g} s; stopped it")
            time.sleep(0.01)


class _SubprocessForTff:
    """What TFF's executor factory sees as ``subprocess``: the real module, but its Popen sets PDEATHSIG.

    TFF starts the worker from its long-lived event-loop thread, so the signal
    comes when the process ends, not when a caller's thread does.
    """

    Popen = _PopenDyingWithParent

    def __getattr__(self, name):
        return getattr(subprocess, name)


class _OsForTff:
    """What TFF's executor factory sees as ``os``: the real module, but ``kill`` signals only a child of this
    process and ignores one that is gone.

    After a worker that could not start (:class:`_PopenDyingWithParent` raised), TFF's service manager still
    holds the worker before it, which it has already waited for; its next call would ``kill`` that pid again:
    ``ProcessLookupError`` on every later call, or, had the pid been reused, a signal to another program.
    TFF follows its SIGINT with an unbounded ``wait()``; a worker that ignores SIGINT (a Jupyter kernel ignores
    it between cells, and its children inherit that) gets SIGKILL after :data:`STOP_GRACE_S`.
    """

    @staticmethod
    def kill(pid: int, signum: int) -> None:
        if os.path.isdir("/proc"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                return  # gone (and waited for)
            if parent != os.getpid():
                return
        if signum == signal.SIGINT:
            stop_child(pid)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def __getattr__(self, name):
        return getattr(os, name)


class _PortsForTff:
    """What TFF's executor factory sees as ``portpicker``: its worker's port from :func:`fedlab.core.ports.free_port`,
    below the ephemeral range that any outgoing connection can take a released port from."""

    @staticmethod
    def pick_unused_port(*_, **__) -> int:
        return ports.free_port()


def _ready_within_start_limit(stub_class):
    """TFF's gRPC stub class, whose ``is_ready`` gives up on a channel that never was ready.

    TFF's service manager polls ``is_ready`` without a limit after it starts a worker. Once
    :data:`WORKER_START_TIMEOUT_S` has passed without the channel ever being ready, the poll raises (one line
    naming the worker's address), and later polls say "not ready", so that TFF's next call starts a new worker.
    """

    class StubReadyWithinLimit(stub_class):
        def __init__(self, channel, *args, **kwargs):
            super().__init__(channel, *args, **kwargs)
            self._fedlab_started = time.monotonic()
            self._fedlab_ready_once = self._fedlab_gave_up = False

        @property
        def is_ready(self) -> bool:
            ready = super().is_ready
            self._fedlab_ready_once |= ready
            if ready or self._fedlab_ready_once or self._fedlab_gave_up:
                return ready
            if time.monotonic() - self._fedlab_started > WORKER_START_TIMEOUT_S:
                self._fedlab_gave_up = True
                raise RuntimeError(f"TFF's local worker listens, but its gRPC channel was not ready within "
                                   f"{WORKER_START_TIMEOUT_S:g} s; run the call again (a new worker starts)")
            return False

    return StubReadyWithinLimit


def _bounded_run_coro_and_return_result(self, coro):
    """TFF's ``AsyncThreadRunner.run_coro_and_return_result`` (every synchronous TFF call goes through it),
    waiting at most :func:`wait_limit` seconds instead of forever.

    Past the limit the call is cancelled, TFF's local worker is stopped (its next call starts a new one), and a
    ``TimeoutError`` says where TFF's event-loop thread stood.
    """
    import asyncio

    limit = wait_limit()
    future = asyncio.run_coroutine_threadsafe(coro, self._event_loop)
    try:
        return future.result(timeout=limit)
    except TimeoutError:
        if future.done():
            raise  # the computation's own TimeoutError
        stuck = where(self._thread)
        future.cancel()
        stop_local_workers()
        raise TimeoutError(f"a TFF call had no answer within {limit:g} s ({WAIT_LIMIT_VARIABLE}); TFF's event loop "
                           f"was at {stuck}; the call is cancelled and TFF's local worker stopped (the next call "
                           f"starts a new one)") from None


def _patch_worker_start() -> None:
    """TFF's local worker: started dying with this process, on a port from :mod:`fedlab.core.ports`, waited for with a
    bound; every TFF call waits with a bound."""
    from tensorflow_federated.python.common_libs import async_utils
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

    executor_factory.subprocess = _SubprocessForTff()
    executor_factory.os = _OsForTff()
    executor_factory.portpicker = _PortsForTff()
    stub = executor_factory.remote_executor_grpc_stub
    if not hasattr(stub, "fedlab_original"):
        executor_factory.remote_executor_grpc_stub = _StubModule(stub)
    async_utils.AsyncThreadRunner.run_coro_and_return_result = _bounded_run_coro_and_return_result
    _patch_mergeable_order()


def _patch_mergeable_order() -> None:
    """Each worker its own clients, and the workers' results in the workers' order.

    TFF 0.87's mergeable context (``workers=``: the clients split among workers in order) has two bugs that a
    computation returning each client's value (a split round's updates) meets:

    - it merges the workers' partial aggregates, and concatenates the clients-placed results, in the order the
      workers finish (``_run_in_async_context_pool`` takes ``asyncio.wait(FIRST_COMPLETED)``): the results came
      back permuted, and two runs could sum in different orders. Here every worker's result is kept with its
      index, then merged, or concatenated, in index order;
    - it splits an argument struct by the counters of its last element (``_partition_value``), so with a
      clients-placed argument before a server-placed one every worker was given the first worker's clients.
      Here the counters come from the element that was split, wherever it sits."""
    import asyncio

    from tensorflow_federated.python.common_libs import structure
    from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context as m
    from tensorflow_federated.python.core.impl.types import computation_types

    if getattr(m, "fedlab_in_order", False):
        return
    split_one = m._partition_value

    def partition_value(val, type_signature):
        if not isinstance(type_signature, computation_types.StructType):
            return split_one(val, type_signature)
        parts = [(name, partition_value(m._PartitioningValue(element, val.num_remaining_clients,
                                                              val.num_remaining_partitions, val.last_client_index),
                                        element_type))
                 for (_, element), (name, element_type) in zip(
                     structure.iter_elements(structure.from_container(val.payload)),
                     structure.iter_elements(type_signature))]
        if not parts:
            raise ValueError(f"Expected the value to not be empty, found {val}.")
        split = [part for _, part in parts if part.num_remaining_partitions != val.num_remaining_partitions]
        counters = split[0] if split else parts[-1][1]
        return m._PartitioningValue(structure.Struct([(name, part.payload) for name, part in parts]),
                                    counters.num_remaining_clients, counters.num_remaining_partitions,
                                    counters.last_client_index)

    async def indexed_results(run, arg_list, execution_contexts) -> tuple[list, object]:
        def task_fn(item, context):
            index, arg = item

            async def task():
                return index, await run(arg, context)

            return asyncio.create_task(task())

        async def keep(results, indexed, context):
            del context
            return {**results, indexed[0]: indexed[1]}

        results, context = await m._run_in_async_context_pool(task_fn, list(enumerate(arg_list)),
                                                               execution_contexts, {}, keep)
        return [results[i] for i in sorted(results)], context

    async def invoke_merge(comp, arg_list, execution_contexts):
        partials, context = await indexed_results(
            lambda arg, ctx: m._invoke_up_to_merge_and_return_context(comp, arg, ctx), arg_list, execution_contexts)
        merged = partials[0]
        for partial in partials[1:]:
            merged = await m._merge_results(comp, merged, partial, context)
        return merged, context

    async def invoke_after_merge(comp, merge_result, arg_list, execution_contexts):
        results, _ = await indexed_results(
            lambda arg, ctx: m._compute_after_merged(comp, arg, merge_result, ctx), arg_list, execution_contexts)
        return results

    m._partition_value = partition_value
    m._invoke_merge_in_async_pool = invoke_merge
    m._invoke_after_merge_in_async_pool = invoke_after_merge
    m.fedlab_in_order = True


class _StubModule:
    """What TFF's executor factory sees as ``remote_executor_grpc_stub``: the real module, but its stub class
    gives up on a channel that never became ready (:func:`_ready_within_start_limit`)."""

    def __init__(self, module):
        self.fedlab_original = module
        self.RemoteExecutorGrpcStub = _ready_within_start_limit(module.RemoteExecutorGrpcStub)

    def __getattr__(self, name):
        return getattr(self.fedlab_original, name)


def tff():
    """Imports TensorFlow Federated once (about 15 s), with TF's C++ logs quiet, fedlab's worker start and
    :mod:`fedlab.core.tff_speedups` installed."""
    global _TFF
    if _TFF is None:
        worker_environment()  # a bad FEDLAB_WORKER_INTRAOP_THREADS is said here, before the 15 s import
        worker_memory_limit_mb()  # and a bad FEDLAB_WORKER_MEMORY_MB
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import logging

        import tensorflow as tf
        import tensorflow_federated

        tf.get_logger().setLevel("ERROR")
        tf.get_logger().addFilter(_quiet_unused_bound_check)
        logging.getLogger().addFilter(_quiet_library_notes)
        _patch_worker_start()
        tff_speedups.install()
        atexit.register(_at_exit)
        _TFF = tensorflow_federated
    return _TFF


def _quiet_unused_bound_check(record) -> bool:
    """Drops TF's "Object was never used" error for the bound check of TFF's secure sum.

    ``tff.aggregators.SecureSumFactory`` (secure aggregation without
    quantization_bits) shifts each client value with
    ``primitives._client_tensor_shift_for_secure_sum``, which calls
    ``tf.debugging.assert_less_equal(lower_bound, upper_bound)`` in a graph
    TFF builds in TF1 mode and never uses the op; TF logs 8 lines per op
    when it is garbage-collected (48 lines a run). The check never runs in
    TFF either; the bounds are fedlab's own (-clip_norm < clip_norm).
    """
    text = str(record.msg)
    return not ("Object was never used" in text and "<tf.Operation 'assert_less_equal" in text
                and "/Assert/AssertGuard/Identity'" in text)


def _quiet_library_notes(record) -> bool:
    """Drops the root-logger notes TFF's dependencies print once per call (tensor_encoding's memory note)."""
    return not str(record.msg).startswith("This code path can temporarily allocate extra memory")


def setup(*, quiet: bool = True, fast: bool = False) -> None:
    """One call at the top of a notebook: lets TFF's event loop run inside Jupyter, sets fedlab's figure style,
    and, with ``fast=True``, shows a banner saying that the numbers below are the test suite's quick setting."""
    import nest_asyncio

    from .validation import one_line_warnings

    nest_asyncio.apply()
    one_line_warnings()
    if fast:
        _fast_banner()
    from ..reporting.plots import apply_style

    apply_style()
    if quiet:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow")
    tff()


def _fast_banner() -> None:
    text = ("FAST SETTING: small, short runs for the test suite. The numbers and figures below are not the "
            "full setting's that the text describes; `make figures` runs the full setting.")
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None:
            display(HTML(f"<div style='background:#fff3cd;border:2px solid #e0a800;padding:8px;"
                         f"font-weight:bold'>{text}</div>"))
            return
    except ImportError:
        pass
    print(text)


def process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, program, resident bytes) of every process, from /proc (empty where there is none)."""
    table: dict[int, tuple[int, str, int]] = {}
    if not os.path.isdir("/proc"):
        return table
    page = os.sysconf("SC_PAGE_SIZE")
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
        table[int(entry)] = (int(fields[1]), cmd, int(fields[21]) * page)
    return table


def descendants(pid: int, table: dict | None = None) -> list[int]:
    """Children, grandchildren, ... of ``pid``."""
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _children() -> list[tuple[int, str]]:
    me = os.getpid()
    return [(pid, cmd) for pid, (parent, cmd, _) in process_table().items() if parent == me]


def stop_local_workers() -> None:
    """Stops the TFF worker binaries this process started (SIGINT, as TFF itself does).

    The worker is left as a zombie, not reaped, so that TFF's own clean-up
    (``os.kill`` then ``wait``), if it runs later, still finds it.
    """
    _stop_workers(lambda pid: True)


def _stop_workers(chosen: Callable[[int], bool]) -> list[int]:
    """Stops the TFF worker binaries this process started that ``chosen`` picks by pid; returns them."""
    _forget_stopped_service_managers()
    if not os.path.isdir("/proc"):
        return []
    pids = [pid for pid, cmd in _children() if cmd.endswith("worker_binary") and chosen(pid)]
    for pid in pids:
        stop_child(pid)
    return pids


def worker_memory_limit_mb() -> float:
    """``$FEDLAB_WORKER_MEMORY_MB``: the resident memory above which TFF's local worker is stopped after a run
    (default 2000; 0 stops it after every run). Anything but a number >= 0 is refused in one line."""
    return seconds_setting("FEDLAB_WORKER_MEMORY_MB", 2000.0, zero="0: stop TFF's worker after every run",
                           unit="megabytes")


def resident_mb(pid: int) -> float:
    """The resident memory of process ``pid`` in MB (0 when it is gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stop_large_local_workers(limit_mb: "float | None" = None) -> list[int]:
    """Stops the TFF worker binaries this process started that hold more than ``limit_mb`` of resident memory
    (default :func:`worker_memory_limit_mb`); TFF's service manager starts a fresh one on the next call. Returns the
    ones stopped.

    TFF's C++ worker grows from run to run: its execution context keeps an executor per number of clients in a
    call (an LRU cache of 10) and drops the ones it evicts without closing them, which leaves them on the worker;
    with Poisson-sampled clients (user-level DP) most rounds bring a new number: about 40 MB a DP run of 50 rounds
    at 20 clients a round (``tools/worker_memory.py``). Stopping the worker after every DP run, as fedlab did,
    cost each such run a worker start and its computations compiled again (4.57 s a run against 2.80 s with the
    worker kept, medians); closing each evicted executor (TFF's ``close``) slowed the growth but took 3.45 s a
    run, the worker disposing of them. A worker stopped once it holds ``limit_mb`` pays a start once in many runs.
    The limit is per process: a sweep's worker processes each have their own TFF worker.
    """
    limit = worker_memory_limit_mb() if limit_mb is None else limit_mb
    return _stop_workers(lambda pid: resident_mb(pid) > limit)


STOP_GRACE_S = 2.0


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL to ``process`` and every process under it (a TFF worker it started), then reaps it: a machine that
    crashed."""
    for pid in descendants(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.kill()
    process.wait()


def stop_child(pid: int) -> None:
    """SIGINT to a child, then SIGKILL if it has not exited within :data:`STOP_GRACE_S`; returns once it has
    exited (or another :data:`STOP_GRACE_S` has passed); it is not reaped.

    SIGINT can be ignored: a process started with ``cmd &`` from a script, or by a Jupyter kernel between
    cells, passes SIG_IGN on to the worker; a stopped process (SIGSTOP) keeps it pending.
    """
    for signum in (signal.SIGINT, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        if _exited_within(pid, STOP_GRACE_S):
            return


def _exited_within(pid: int, seconds: float) -> bool:
    """Whether the child ``pid`` is a zombie (or gone) within ``seconds``: it has released what it held."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def run_coroutine(coro):
    """Runs a coroutine (TFF's release managers are async) from plain code, in Jupyter too, for at most
    :func:`wait_limit` seconds."""
    import asyncio

    bounded = asyncio.wait_for(coro, wait_limit())
    try:
        loop = asyncio.get_event_loop()  # Jupyter's loop (nest_asyncio lets it nest)
    except RuntimeError:  # a worker thread without a loop, e.g. the widget's
        return asyncio.run(bounded)
    return loop.run_until_complete(bounded)


def _forget_stopped_service_managers() -> None:
    """At exit, TFF's ServiceManager.__del__ would stop the worker again with module globals already gone
    ("Exception ignored ... 'NoneType' object has no attribute 'Popen'"); fedlab stops it instead."""
    if _TFF is None or not _exiting:
        return
    import gc

    for obj in gc.get_objects():
        if type(obj).__name__ == "ServiceManager" and hasattr(obj, "_process"):
            type(obj).__del__ = _stopped_already  # its check reads module globals that are gone by then


_exiting = False


def _stopped_already(self) -> None:
    """TFF's ServiceManager.__del__ at exit, after :func:`stop_local_workers` has stopped its worker."""


def _at_exit() -> None:
    global _exiting
    _exiting = True
    stop_local_workers()


def current_context():
    """The TFF execution context of this thread (TFF's context stack is thread-local)."""
    return tff().framework.get_context_stack().current


def run_in_context(context, fn, *args, **kwargs):
    """Calls ``fn`` with ``context`` installed: how a worker thread uses the main thread's runtime."""
    with tff().framework.get_context_stack().install(context):
        return fn(*args, **kwargs)


_SECURE_CONTEXT = None


@contextlib.contextmanager
def simulated_secure_sums(enabled: bool = True):
    """Runs TFF's secure-sum intrinsics as their plain bodies while ``enabled``.

    TFF's C++ runtime does not implement ``federated_secure_sum_bitwidth`` and
    friends; its test backend replaces each with the same clipping,
    quantisation and (modular) summation done in the clear. That is what a
    simulation needs: the numbers of secure aggregation, not its cryptography.
    """
    global _SECURE_CONTEXT
    if not enabled:
        yield
        return
    t = tff()
    if _SECURE_CONTEXT is None:
        _SECURE_CONTEXT = t.backends.test.create_sync_test_cpp_execution_context()
    with t.framework.get_context_stack().install(_SECURE_CONTEXT):
        yield


@contextlib.contextmanager
def real_stdio():
    """Gives TFF a stdout/stderr with a file descriptor while it (re)starts its worker.

    TFF starts the worker with ``Popen(stdout=sys.stdout)``; in a Jupyter kernel's
    background thread ``sys.stdout`` has no ``fileno`` and the restart fails
    (seen when a run in a panel's thread followed one after which fedlab had stopped the worker).
    """
    import io
    import sys

    try:
        sys.stdout.fileno(), sys.stderr.fileno()
        usable = True
    except (AttributeError, io.UnsupportedOperation, ValueError):
        usable = False
    if usable or sys.__stdout__ is None:
        yield
        return
    with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
        yield
