"""What TFF's worker computed stays there for the next call that takes it (``tff_speedups._patch_keep_results``):
a run gives the numbers of TFF's own path, the state is created on the worker once, not once a round, and only
the very arrays fetched (read-only) in their own structure and type are taken for the kept value."""

import collections
import threading

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.core import runtime, tff_speedups

t = runtime.tff()  # installs the patch

from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context  # noqa: E402
from tensorflow_federated.proto.v0 import executor_pb2  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor  # noqa: E402
from test_kept_computations import Stub  # noqa: E402

CONFIG = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=6, batch_size=16, seed=5)


class Calls:
    """Counts the worker values created from Python (their types), the states among them created after the first
    round (``round_done`` is the run's callback), and the selections made."""

    def __init__(self, monkeypatch):
        self.created, self.selected, self.rounds_done, self.states_after_round_one = [], 0, 0, 0
        create_value, create_selection = remote_executor.RemoteExecutor.create_value, \
            remote_executor.RemoteExecutor.create_selection

        async def counting_value(executor, value, type_spec=None):
            if not str(type_spec).startswith("("):  # a computation's function value (kept: _patch_keep_computations)
                self.created.append(str(type_spec))
                self.states_after_round_one += self.rounds_done >= 1 and "global_model_weights" in str(type_spec)
            return await create_value(executor, value, type_spec)

        async def counting_selection(executor, source, index):
            self.selected += 1
            return await create_selection(executor, source, index)

        monkeypatch.setattr(remote_executor.RemoteExecutor, "create_value", counting_value)
        monkeypatch.setattr(remote_executor.RemoteExecutor, "create_selection", counting_selection)


    def round_done(self, row, history):
        self.rounds_done += 1


def tffs_own(monkeypatch):
    monkeypatch.setattr(async_execution_context, "_ingest", async_execution_context.fedlab_original_ingest)
    monkeypatch.setattr(async_execution_context, "_invoke", async_execution_context.fedlab_original_invoke)


def numbers(history):
    columns = [c for c in history.columns if c != "seconds" and np.issubdtype(history[c].dtype, np.number)]
    assert "train_loss" in columns and "eval_accuracy" in columns
    return history[columns].to_numpy()


@pytest.mark.parametrize("changes", [{}, {"attacker_fraction": 0.34, "robust": "median"}],
                         ids=["one computation a round", "a split round"])
def test_a_run_gives_tffs_numbers_and_sends_the_state_once(monkeypatch, changes):
    config = CONFIG.replace(**changes)
    with monkeypatch.context() as patch:
        calls = Calls(patch)
        kept = run_experiment(config, progress=False, callback=calls.round_done)
    assert calls.states_after_round_one == 0  # the state the worker computed, selected there every round
    assert calls.selected >= config.rounds - 1
    with monkeypatch.context() as patch:
        tffs_own(patch)
        calls = Calls(patch)
        own = run_experiment(config, progress=False, callback=calls.round_done)
    assert calls.selected == 0 and calls.states_after_round_one >= config.rounds - 1  # TFF's: sent every round
    np.testing.assert_array_equal(numbers(kept), numbers(own))
    for mine, theirs in zip(kept.attrs["final_weights"].value, own.attrs["final_weights"].value):
        np.testing.assert_array_equal(mine, theirs)


VECTOR = t.TensorType(np.float32, [3])


@t.tensorflow.computation(VECTOR)
def pair(x):
    return x + 1.0, x * 2.0


@t.tensorflow.computation(VECTOR)
def nested(x):
    return (x + 1.0, x * 2.0), x


@t.tensorflow.computation(VECTOR)
def plus_one(x):
    return x + 1.0


@t.tensorflow.computation(t.StructType([("a", VECTOR), ("b", VECTOR)]))
def a_minus_b(a, b):
    return a - b


@t.tensorflow.computation(VECTOR)
def named_pair(x):
    return collections.OrderedDict(a=x + 1.0, b=x * 2.0), x


@t.tensorflow.computation(t.StructType([VECTOR, VECTOR]), VECTOR)
def difference_plus(both, z):
    return both[0] - both[1] + z


def newest():
    """The result kept last, on whichever thread (the context's event loop runs on one of its own)."""
    return max((entry for kept in tff_speedups._KEPT_BY_THREAD.values() for entry in kept.values()),
               key=lambda entry: entry[-1])


def test_only_the_arrays_fetched_are_taken_for_the_kept_value(monkeypatch):
    calls = Calls(monkeypatch)
    first, second = pair(np.arange(3, dtype=np.float32))
    assert not first.flags.writeable  # as TFF fetches them (views of the response's bytes): nothing changes them
    created = len(calls.created)
    np.testing.assert_array_equal(plus_one(first), [2.0, 3.0, 4.0])  # the worker's own value, selected
    assert (calls.selected, len(calls.created)) == (1, created)
    copy = np.array(first)
    copy[0] = 7.0  # a copy can be changed, and is sent
    np.testing.assert_array_equal(plus_one(copy), [8.0, 3.0, 4.0])
    assert calls.selected == 1 and "float32[3]" in calls.created[-1]
    np.testing.assert_array_equal(plus_one(second), [1.0, 3.0, 5.0])  # the other element of the same result
    assert calls.selected == 2


def test_an_array_python_could_change_is_not_kept(monkeypatch):
    from tensorflow_federated.python.core.impl.types import type_conversions

    convert = type_conversions.type_to_py_container
    monkeypatch.setattr(type_conversions, "type_to_py_container",
                        lambda value, type_spec: tuple(np.array(v) for v in convert(value, type_spec)))
    first, _ = pair(np.arange(3, dtype=np.float32))
    assert first.flags.writeable
    calls = Calls(monkeypatch)
    np.testing.assert_array_equal(plus_one(first), [2.0, 3.0, 4.0])
    assert calls.selected == 0  # sent: it might have changed since


def test_the_same_arrays_in_other_containers_are_sent(monkeypatch):
    calls = Calls(monkeypatch)
    (x, y), _ = nested(np.arange(3, dtype=np.float32))  # a kept element: the tuple (x, y)
    z = np.zeros(3, dtype=np.float32)
    np.testing.assert_array_equal(difference_plus((x, y), z), x - y)  # the tuple itself: selected
    assert calls.selected == 1
    np.testing.assert_array_equal(difference_plus([x, y], z), x - y)  # a list of them: sent
    assert calls.selected == 1


def test_a_mapping_with_its_keys_in_another_order_is_sent(monkeypatch):
    calls = Calls(monkeypatch)
    named, _ = named_pair(np.arange(3, dtype=np.float32))  # a kept element: OrderedDict(a=x, b=y)
    x, y = named["a"], named["b"]
    np.testing.assert_array_equal(a_minus_b(named), x - y)  # itself: selected
    assert calls.selected == 1
    swapped = collections.OrderedDict(b=y, a=x)  # the same arrays and keys, in another order
    mine = a_minus_b(swapped)
    assert calls.selected == 1  # sent: TFF matches a mapping's values to the parameter by position
    with monkeypatch.context() as patch:
        tffs_own(patch)
        np.testing.assert_array_equal(mine, a_minus_b(swapped))  # what TFF's own path makes of it


def kept_on_a_stub(value, element_type):
    """A remote executor talking to a stand-in for the worker, with ``value`` kept as an element of type
    ``element_type`` of a result it made (on this thread)."""
    executor = remote_executor.RemoteExecutor(Stub())
    executor.set_cardinalities({})
    made = tff_speedups._kept_remote_value_class()(executor_pb2.ValueRef(id="kept"), t.StructType([element_type]),
                                                     executor)
    kept = tff_speedups._kept_results()
    kept[id(made)] = (executor, executor._executor_id, made, [(0, element_type, tff_speedups._flattened(value))], -1)
    return executor, id(made)


def test_a_value_for_every_client_is_not_taken_for_one_per_client():
    value = np.frombuffer(np.arange(3, dtype=np.float32).tobytes(), np.float32)  # read-only, as TFF fetches
    every = t.FederatedType(VECTOR, t.CLIENTS, all_equal=True)
    executor, key = kept_on_a_stub(value, every)
    try:
        assert tff_speedups._kept_element(executor, value, every) is not None
        assert tff_speedups._kept_element(executor, value, t.FederatedType(VECTOR, t.CLIENTS)) is None
        assert tff_speedups._kept_element(executor, value, t.TensorType(np.float32, [3])) is None  # not placed
        assert tff_speedups._kept_element(object(), value, every) is None  # not a remote executor
    finally:
        del tff_speedups._kept_results()[key]


def test_a_new_worker_executor_is_sent_the_values():
    value = np.frombuffer(np.arange(3, dtype=np.float32).tobytes(), np.float32)
    executor, key = kept_on_a_stub(value, VECTOR)
    try:
        assert tff_speedups._kept_element(executor, value, VECTOR) is not None
        executor.set_cardinalities({})  # TFF replaces the worker executor (as after an error): its values are gone
        assert tff_speedups._kept_element(executor, value, VECTOR) is None
    finally:
        del tff_speedups._kept_results()[key]


def test_results_beyond_the_limit_leave_the_worker_at_once(monkeypatch):
    disposed = []
    dispose = tff_speedups._dispose_now
    monkeypatch.setattr(tff_speedups, "_dispose_now", lambda executor, executor_id, value: (
        disposed.append(value.reference.id), dispose(executor, executor_id, value)))
    refs = []
    for k in range(tff_speedups.RESULTS_KEPT + 2):
        results = pair(np.full(3, k, dtype=np.float32))
        refs.append(newest()[2].reference.id)
        if k == 0:
            first = results[0]
    assert set(refs[:2]) <= set(disposed) and not set(refs[2:]) & set(disposed)  # the two oldest, at once
    calls = Calls(monkeypatch)
    np.testing.assert_array_equal(plus_one(first), [2.0, 2.0, 2.0])  # sent again: not kept any more
    np.testing.assert_array_equal(plus_one(results[0]), np.full(3, tff_speedups.RESULTS_KEPT + 3.0))
    assert calls.selected == 1


def test_a_result_that_cannot_be_fetched_leaves_the_worker(monkeypatch):
    disposed = []
    dispose = tff_speedups._dispose_now
    monkeypatch.setattr(tff_speedups, "_dispose_now", lambda executor, executor_id, value: (
        disposed.append(value), dispose(executor, executor_id, value)))

    async def failing(value):
        raise RuntimeError("the worker went away")

    monkeypatch.setattr(tff_speedups._kept_remote_value_class(), "compute", failing)
    with pytest.raises(RuntimeError):
        pair(np.ones(3, dtype=np.float32))
    assert len(disposed) == 1 and isinstance(disposed[0], tff_speedups._kept_remote_value_class())


def test_the_results_of_a_thread_that_has_ended_leave_the_worker():
    value = np.frombuffer(np.arange(3, dtype=np.float32).tobytes(), np.float32)
    executor, key = kept_on_a_stub(value, VECTOR)
    mine = tff_speedups._kept_results()
    entry = mine.pop(key)
    ended = threading.Thread(target=lambda: None)
    ended.start()
    ended.join()
    tff_speedups._KEPT_BY_THREAD[ended.ident] = collections.OrderedDict({key: entry})  # as its thread left it
    tff_speedups._forget_ended_threads()
    assert ended.ident not in tff_speedups._KEPT_BY_THREAD and executor._stub.disposed == ["kept"]


def _tffs_stub(address):
    import grpc
    from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub

    channel = grpc.insecure_channel(address)
    return remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel), channel.close


def _remote_workers_stub(address):  # fedlab's stub for a worker named with workers= (fedlab.workers.distributed)
    from fedlab.workers import distributed

    stub = distributed._guarded_stub(address, 1.0)
    return stub, lambda: None


@pytest.mark.parametrize("make_stub", [_tffs_stub, _remote_workers_stub], ids=["local worker", "remote worker"])
def test_a_worker_that_does_not_answer_a_disposal_holds_nothing_up(monkeypatch, make_stub):
    """A port that accepts and never answers (a hung worker, or another program's port since): the disposal gives
    up after DISPOSE_TIMEOUT_S instead of holding TFF's event loop (gRPC alone waits about 20 s to connect, then for
    an answer without end)."""
    import socket
    import time

    monkeypatch.setattr(tff_speedups, "DISPOSE_TIMEOUT_S", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))  # listens, accepts (the kernel's backlog), never answers
    stub, close = make_stub(f"127.0.0.1:{silent.getsockname()[1]}")
    try:
        executor = remote_executor.RemoteExecutor(stub)
        executor._executor_id = executor_pb2.ExecutorId(id="gone")
        value = tff_speedups._kept_remote_value_class()(executor_pb2.ValueRef(id="kept"), VECTOR, executor)
        started = time.monotonic()
        tff_speedups._dispose_now(executor, executor._executor_id, value)
        assert 0.3 <= time.monotonic() - started < 5.0  # waited for the answer, then gave up at the deadline
    finally:
        close()
        silent.close()
