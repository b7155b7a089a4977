"""Where TFF 0.87's own client path repeats work, fedlab does it once: the same computations on the same values,
the same numbers (``tests/test_kept_computations.py`` and ``tests/test_untraced.py`` compare a run with TFF's own
path bit for bit; for Grappler's kept output, ``tests/test_traced_once.py`` checks it runs once per computation and
``benchmarks/builds.py`` compares the final weights with Grappler run anew).

* :func:`_patch_optimize_once`: Grappler's output kept per TensorFlow computation, not recomputed for every
  federated computation that holds it;
* :func:`_patch_untraced`: the remote executor's calls, its gRPC request and value (de)serialisation called
  without TFF's tracing spans;
* :func:`_patch_keep_computations`: a computation created on TFF's worker once per executor, not once per call;
* :func:`_patch_keep_results`: a value TFF's worker computed and Python fetched is not sent back to it: the next
  call that takes it gets the worker's own (``tests/test_kept_results.py`` compares a run with TFF's own path bit
  for bit).

:func:`install` applies them, in that order, once TFF is imported (:func:`fedlab.core.runtime.tff`).
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import inspect
import itertools
import threading

from . import recent


def install() -> None:
    """All four, in the order they need: the kept computations wrap ``RemoteExecutor.create_value`` after its
    tracing wrapper is gone, and keep the plain function as ``fedlab_original``."""
    _patch_optimize_once()
    _patch_untraced()
    _patch_keep_computations()
    _patch_keep_results()


OPTIMIZED_KEPT = 64  # TensorFlow computations whose Grappler output _patch_optimize_once keeps
_OPTIMIZED: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()


def clear_optimized() -> None:
    """Forget the Grappler outputs kept by :func:`_patch_optimize_once` (with the built processes:
    ``fedlab.experiment.processes.clear_process_cache``)."""
    _OPTIMIZED.clear()


# Where TFF's client path calls traced functions. ``core.framework`` re-exports two of them by name
# (``tff.framework.serialize_value``, ``deserialize_value``), so its names are replaced too.
UNTRACED_MODULES = ("tensorflow_federated.python.core.impl.executors.remote_executor",
                    "tensorflow_federated.python.core.impl.executors.remote_executor_grpc_stub",
                    "tensorflow_federated.python.core.impl.executors.value_serialization",
                    "tensorflow_federated.python.core.framework")


@functools.lru_cache(maxsize=1)
def _traced_codes() -> frozenset:
    """The code objects of ``tracing.trace``'s two wrappers (sync and async): every traced function shares one."""
    from tensorflow_federated.python.common_libs import tracing

    async def probe():
        pass

    return frozenset({tracing.trace(lambda: None).__code__, tracing.trace(probe).__code__})


def _is_traced(fn) -> bool:
    """Whether ``fn`` is a function wrapped by TFF's ``tracing.trace`` (sync or async)."""
    return getattr(fn, "__code__", None) in _traced_codes() and callable(getattr(fn, "__wrapped__", None))


def untraced_owners() -> list:
    """The modules of :data:`UNTRACED_MODULES` and the classes each defines: where :func:`_patch_untraced` looks."""
    import importlib

    owners = []
    for name in UNTRACED_MODULES:
        module = importlib.import_module(name)
        owners += [module] + [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name]
    return owners


def _patch_untraced() -> None:
    """TFF's client side without most of its tracing spans: the functions of :data:`UNTRACED_MODULES` that TFF wraps
    in ``tracing.trace`` (the remote executor's calls, its gRPC stub's request, value (de)serialisation, which
    recurses through a struct's elements) are called unwrapped. One span per created value remains: TFF's
    ``RemoteExecutor.create_value`` traces a function it defines inside itself.

    TFF's only tracing provider logs each span's start and end at DEBUG level, and a span costs a generator, a nonce
    and a context manager setting the task's (or thread's) span list per call: 1.0-2.7 of fedlab's 19 CPU ms a
    round in notebook 01's 2NN setting (``benchmarks/tff_tracing.py``; README, "Performance"). The wrappers only
    make spans (TFF's code): a run gives the same numbers (``tests/test_untraced.py``). Whoever turns absl's DEBUG
    logging on, or adds a tracing provider of their own, no longer sees these functions' spans. TFF's providers are
    left as they are (TFF asserts in every span that their number has not changed since the thread's first span).
    TFF's wrapped function stays as the plain one's ``fedlab_traced``; a fedlab wrapper's ``fedlab_original`` is
    unwrapped too."""
    for owner in untraced_owners():
        for attr, fn in list(vars(owner).items()):
            if not inspect.isfunction(fn):  # never probe a module proxy or a lazy loader
                continue
            if _is_traced(getattr(fn, "fedlab_original", None)):  # a fedlab wrapper made before this ran
                fn.fedlab_original.__wrapped__.fedlab_traced = fn.fedlab_original
                fn.fedlab_original = fn.fedlab_original.__wrapped__
            if _is_traced(fn):
                fn.__wrapped__.fedlab_traced = fn
                setattr(owner, attr, fn.__wrapped__)


COMPUTATIONS_KEPT = 16  # computations each TFF executor keeps on its worker (_patch_keep_computations)


def _patch_keep_computations() -> None:
    """A computation sent to TFF's worker once per executor, not once per call; its hash computed once.

    TFF 0.87 calls a computation by creating it as a value on the worker, then a call of it (``_invoke`` in
    ``async_execution_context``): every round copies the whole computation proto into a request (a round's is 90-160
    kB for logistic regression and the 2NN), serialises it, and the worker parses it and builds the function value
    again, disposed of after the round. And its compiler cache hashes the whole serialised computation on every
    call (``ConcreteComputation.__hash__``). Here each ``RemoteExecutor`` (one per worker executor: a number of
    clients, on one worker) keeps the function values of the last ``COMPUTATIONS_KEPT`` computations it created
    (:func:`_kept_computation`); the worker computes the same functions on the same arguments: the same numbers.
    ``ConcreteComputation``'s hash is kept on the object (nothing changes its proto once it is made). TFF's functions
    are ``create_value.fedlab_original`` (without its tracing wrapper, :func:`_patch_untraced`; with it,
    ``create_value.fedlab_original.fedlab_traced``) and ``__hash__.fedlab_original``."""
    from tensorflow_federated.python.core.impl.computation import computation_impl
    from tensorflow_federated.python.core.impl.executors import remote_executor

    computation = computation_impl.ConcreteComputation
    if not hasattr(computation.__hash__, "fedlab_original"):
        def kept_hash(self) -> int:
            value = self.__dict__.get("_fedlab_hash")
            if value is None:
                value = self.__dict__["_fedlab_hash"] = kept_hash.fedlab_original(self)
            return value

        kept_hash.fedlab_original = computation.__hash__
        computation.__hash__ = kept_hash

    executor = remote_executor.RemoteExecutor
    if hasattr(executor.create_value, "fedlab_original"):
        return

    async def create_value(self, value, type_spec=None):
        if isinstance(value, computation):
            return _kept_computation(self, value, type_spec)
        return await create_value.fedlab_original(self, value, type_spec)

    create_value.fedlab_original = executor.create_value
    executor.create_value = create_value


def _kept_computation(executor, value, type_spec):
    """The function value of computation ``value`` on ``executor``'s worker executor: created there the first time
    (TFF's request, as its ``create_value`` makes it), then the same one, for as long as ``executor`` has the same
    worker executor (TFF replaces an executor after an error, ``set_cardinalities`` asks for a new one) and is asked
    for the same type. Kept by identity (TFF's compiler cache returns the same compiled object each call), at most
    :data:`COMPUTATIONS_KEPT` per executor: the one that leaves is disposed of on the worker, as TFF disposes of a
    value. What is returned has no finalizer (TFF's ``RemoteValue`` disposes of its value when collected, which
    would remove the kept function after the round, and its finalizer would keep the executor alive): the executor
    and what it keeps are collected together."""
    from tensorflow_federated.proto.v0 import executor_pb2
    from tensorflow_federated.python.core.impl.executors import value_serialization

    executor._check_has_executor_id()
    kept = executor.__dict__.setdefault("_fedlab_computations", collections.OrderedDict())
    entry = recent.recall(kept, id(value))
    if entry is not None and entry[0] is value and entry[1] == executor._executor_id and entry[2] == type_spec:
        return entry[3]
    value_proto, value_type = value_serialization.serialize_value(value, type_spec)
    response = executor._stub.create_value(executor_pb2.CreateValueRequest(executor=executor._executor_id,
                                                                           value=value_proto))
    made = _kept_remote_value_class()(response.value_ref, value_type, executor)
    kept[id(value)] = (value, executor._executor_id, type_spec, made)
    gone = [] if entry is None else [entry]  # another object, executor or type under this id: its value goes
    while len(kept) > COMPUTATIONS_KEPT:
        try:
            gone.append(kept.popitem(last=False)[1])
        except KeyError:  # emptied meanwhile
            break
    for _, executor_id, _, old in gone:
        _dispose_quietly(executor, old.reference, executor_id)
    return made


def _dispose_quietly(executor, value_ref, executor_id) -> None:
    """TFF's disposal of a value on the worker (batched; skipped if that executor is gone). A worker that cannot be
    reached loses nothing by it (its executor's values go with it): the error is TFF's finalizers' to ignore too,
    not the call's that made a new value."""
    import grpc
    from tensorflow_federated.python.core.impl.executors import executors_errors

    try:
        executor._dispose(value_ref, executor_id)
    except (grpc.RpcError, executors_errors.RetryableError):
        pass


@functools.lru_cache(maxsize=1)
def _kept_remote_value_class() -> type:
    from tensorflow_federated.python.core.impl.executors import remote_executor

    class KeptRemoteValue(remote_executor.RemoteValue):
        """TFF's ``RemoteValue`` without its finalizer (:func:`_kept_computation`)."""

        def __init__(self, value_ref, type_spec, executor):  # no super().__init__: no weakref.finalize
            self._value_ref, self._type_signature, self._executor = value_ref, type_spec, executor

    return KeptRemoteValue


def _patch_optimize_once() -> None:
    """Grappler once per TensorFlow computation, not once per federated computation that holds it.

    TFF compiles a federated computation the first time it is called (``desugar_and_transform_to_native``), and
    runs Grappler on each TensorFlow computation in it (``optimize_tensorflow_comp``), about a tenth of a second
    for a client's training loop. Processes that share a traced client training or server finalizer
    (:func:`fedlab.rounds.array_training.client_training`) hold the same TensorFlow computations, which were
    optimised again for each process. Here Grappler's output is kept, keyed by the SHA-256 of the computation's
    serialised proto and Grappler's configuration (the last ``OPTIMIZED_KEPT``): the same graph in, the same graph
    out. TFF's own function is ``optimize_tensorflow_comp.fedlab_original``."""
    import hashlib

    from tensorflow_federated.python.core.environments.tensorflow_backend import (
        compiled_computation_transformations as transformations)

    if getattr(transformations, "fedlab_optimize_once", False):
        return

    def optimize_once(tf_computation, config_proto):
        key = (hashlib.sha256(tf_computation.proto.SerializeToString(deterministic=True)).digest(),
               hashlib.sha256(config_proto.SerializeToString(deterministic=True)).digest())
        optimized = recent.recall(_OPTIMIZED, key)
        if optimized is None:
            optimized = recent.keep(_OPTIMIZED, key, optimize_once.fedlab_original(tf_computation, config_proto),
                                    OPTIMIZED_KEPT)
        return optimized

    optimize_once.fedlab_original = transformations.optimize_tensorflow_comp
    transformations.optimize_tensorflow_comp = optimize_once
    transformations.fedlab_optimize_once = True


RESULTS_KEPT = 2  # the calls whose results each event loop's thread keeps on TFF's workers (_patch_keep_results)
_KEPT_BY_THREAD: "dict[int, collections.OrderedDict[int, tuple]]" = {}  # thread id -> its kept results
_KEPT_ORDER = itertools.count()  # the order in which results were kept, across threads


def _kept_results() -> "collections.OrderedDict[int, tuple]":
    """This thread's kept results, oldest first: (executor, its worker executor's id, the value, its elements, the
    order kept in). One context's event loop runs on one thread, so no other context evicts a result between a
    match and its use. A thread's results are disposed of once it has ended (:func:`_forget_ended_threads`)."""
    ident = threading.get_ident()
    results = _KEPT_BY_THREAD.get(ident)
    if results is None:
        results = _KEPT_BY_THREAD.setdefault(ident, collections.OrderedDict())
    return results


def _forget_ended_threads() -> None:
    """The results kept by threads that have ended, disposed of (they would stay until a thread got their id)."""
    alive = {thread.ident for thread in threading.enumerate()}
    for ident in [i for i in list(_KEPT_BY_THREAD) if i not in alive]:
        for entry in _KEPT_BY_THREAD.pop(ident, {}).values():
            _dispose_now(*entry[:3])


def _patch_keep_results() -> None:
    """What TFF's worker computed, Python does not send back to it.

    TFF 0.87 fetches a call's result into Python and disposes of it on the worker (``_invoke`` in
    ``async_execution_context``); the next call that takes it, the next round taking the state this one returned,
    creates it on the worker anew: serialised, sent and parsed (the 2NN's state, 800 kB, about 3 ms of fedlab's
    process a round; a split round's server step took every client's update back the same way). Here each event
    loop's thread keeps on TFF's workers the results of its last ``RESULTS_KEPT`` calls (of any executor) of a computation whose
    result is a structure, each element whose leaves are all NumPy arrays (read-only, as TFF fetches them: views of
    the response's bytes) or scalars; an argument, or an element of one, made of exactly those objects, in the same
    containers with the same keys in the same order and of the very type the computation takes, is that element selected
    on the worker (:func:`_kept_element`): the same values, so the same numbers. A result leaves the worker when a
    newer one takes its place, at once (TFF disposes of values in batches of 20, which an executor TFF drops from
    its cache never sends). Two results, because a split round (:mod:`fedlab.rounds.split_rounds`) alternates two
    calls, each taking the other's last result; its clients' updates then stay on the worker until the next round's
    training call returns (at K clients of the 2NN, K x 0.8 MB of the worker's memory during that call). TFF's
    functions are ``fedlab_original_ingest`` and ``fedlab_original_invoke`` of its module."""
    from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context as context

    if hasattr(context, "fedlab_original_invoke"):
        return
    context.fedlab_original_ingest, context.fedlab_original_invoke = context._ingest, context._invoke

    async def ingest(executor, val, type_spec):
        kept = _kept_element(executor, val, type_spec)
        if kept is not None:
            source, index = kept
            return await executor.create_selection(source, index)
        return await context.fedlab_original_ingest(executor, val, type_spec)

    async def invoke(executor, comp, arg, result_type):
        from tensorflow_federated.python.core.impl.types import computation_types

        if not (_is_remote(executor) and isinstance(comp.type_signature.result, computation_types.StructType)):
            return await context.fedlab_original_invoke(executor, comp, arg, result_type)
        return await _invoke_keeping(executor, comp, arg, result_type)

    context._ingest, context._invoke = ingest, invoke


def _is_remote(executor) -> bool:
    from tensorflow_federated.python.core.impl.executors import remote_executor

    return isinstance(executor, remote_executor.RemoteExecutor)


def _flattened(value):
    """(shape, leaves) of ``value``: its leaves in order and, for each container on the way, its type and its keys
    in their order (a mapping's, an attrs class's fields) or its length; None unless every leaf is a NumPy array
    that cannot be written to or a NumPy scalar."""
    import numpy as np

    shape, leaves = [], []

    def walk(v) -> bool:
        if isinstance(v, np.ndarray):
            leaves.append(v)
            return not v.flags.writeable
        if isinstance(v, np.generic):
            leaves.append(v)
            return True
        if isinstance(v, collections.abc.Mapping):
            keys = tuple(v)
            shape.append((type(v), keys))
            return all(walk(v[k]) for k in keys)
        fields = getattr(type(v), "__attrs_attrs__", None)  # an attrs class (TFF's states and outputs)
        if fields is not None:
            names = tuple(f.name for f in fields)
            shape.append((type(v), names))
            return all(walk(getattr(v, n)) for n in names)
        if isinstance(v, (list, tuple)):
            shape.append((type(v), len(v)))
            return all(walk(e) for e in v)
        return False

    return (tuple(shape), leaves) if walk(value) and leaves else None


async def _invoke_keeping(executor, comp, arg, result_type):
    """TFF's ``_invoke`` (create the computation, call it, fetch the result), the result kept on the worker."""
    from tensorflow_federated.proto.v0 import executor_pb2
    from tensorflow_federated.python.common_libs import structure
    from tensorflow_federated.python.core.impl.types import type_conversions

    function = await executor.create_value(comp, comp.type_signature)
    executor._check_has_executor_id()
    response = executor._stub.create_call(executor_pb2.CreateCallRequest(
        executor=executor._executor_id, function_ref=function.reference,
        argument_ref=arg.reference if arg is not None else None))
    made = (executor, executor._executor_id, _kept_remote_value_class()(response.value_ref,
                                                                        comp.type_signature.result, executor))
    try:
        fetched = type_conversions.type_to_py_container(await made[2].compute(), result_type)
    except BaseException:
        _dispose_now(*made)
        raise
    elements = []
    for index, (name, element_type) in enumerate(structure.to_elements(comp.type_signature.result)):
        element = _element_of(fetched, index, name)
        flat = None if element is None else _flattened(element)
        if flat is not None:
            elements.append((index, element_type, flat))
    if not elements:
        _dispose_now(*made)
        return fetched
    kept = _kept_results()
    if len(kept) == 0:  # a thread keeping results for the first time (or again): the ended ones' go
        _forget_ended_threads()
    kept[id(made[2])] = (*made, elements, next(_KEPT_ORDER))
    while len(kept) > RESULTS_KEPT:
        _dispose_now(*kept.popitem(last=False)[1][:3])
    return fetched


DISPOSE_TIMEOUT_S = 10.0  # how long _dispose_now waits for a worker's answer (it gives up the value, not the run)


def _dispose_now(executor, executor_id, value) -> None:
    """``value`` disposed of on its worker now, if the executor that made it is still there, waiting at most
    :data:`DISPOSE_TIMEOUT_S` for the answer (TFF's stub sets no deadline; a worker that does not answer, or a port
    now another program's, would hold TFF's event loop until the call's wait limit). A worker that cannot be reached
    loses nothing by it (its values go with it); its error is the next call's to say."""
    from tensorflow_federated.proto.v0 import executor_pb2

    if executor_id is None or executor._executor_id != executor_id:
        return  # that worker executor was disposed of, its values with it
    request = executor_pb2.DisposeRequest(executor=executor_id, value_ref=[value.reference])
    grpc_stub = getattr(executor._stub, "_stub", None)  # TFF's RemoteExecutorGrpcStub: the generated gRPC stub
    try:
        if grpc_stub is not None and hasattr(grpc_stub, "Dispose"):
            grpc_stub.Dispose(request, timeout=DISPOSE_TIMEOUT_S)
        else:
            executor._stub.dispose(request)
    except Exception:  # noqa: BLE001 (gRPC's errors, a deadline passed, TFF's retryable ones: all the same here)
        pass


def _element_of(fetched, index: int, name):
    """Element ``index`` (named ``name``) of a fetched result, whatever container TFF made of it."""
    try:
        if name is not None and hasattr(fetched, name):
            return getattr(fetched, name)
        if isinstance(fetched, dict):
            return fetched[name] if name is not None else None
        return fetched[index]
    except (KeyError, IndexError, TypeError):
        return None


def _kept_element(executor, value, type_spec):
    """(kept result, index) on ``executor``'s worker executor of which ``value`` is an element: the same objects
    (:func:`_flattened`), of ``type_spec`` (equivalent, not only assignable: TFF refuses to send an all-equal
    value where one per client is asked for); else None."""
    kept = _kept_results()
    if not kept or not _is_remote(executor):
        return None
    flat = _flattened(value)
    if flat is None:
        return None
    shape, leaves = flat
    for made_by, executor_id, result, elements, _ in reversed(list(kept.values())):
        if made_by is not executor or executor_id != executor._executor_id:
            continue
        for index, element_type, (element_shape, element_leaves) in elements:
            if (element_shape == shape and len(element_leaves) == len(leaves)
                    and all(a is b for a, b in zip(element_leaves, leaves))
                    and type_spec.is_equivalent_to(element_type)):
                return result, index
    return None
