"""A computation's function value stays on TFF's worker from call to call (``tff_speedups._patch_keep_computations``):
created once per worker executor, the same numbers as TFF's own path, and nothing kept past its executor."""

import asyncio
import gc
import weakref

import numpy as np

from fedlab import ExperimentConfig, run_experiment
from fedlab.core import runtime, tff_speedups

t = runtime.tff()  # installs the patch

from tensorflow_federated.proto.v0 import executor_pb2  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor  # noqa: E402


class Stub:
    """Stands for the worker: records what it is asked."""

    def __init__(self):
        self.created, self.disposed, self.executors = [], [], 0

    def get_executor(self, request):
        self.executors += 1
        return executor_pb2.GetExecutorResponse(executor=executor_pb2.ExecutorId(id=f"executor{self.executors}"))

    def create_value(self, request):
        self.created.append(request)
        return executor_pb2.CreateValueResponse(value_ref=executor_pb2.ValueRef(id=f"value{len(self.created)}"))

    def dispose(self, request):
        self.disposed.extend(ref.id for ref in request.value_ref)

    def dispose_executor(self, request):
        pass


def adding(k):
    @t.tensorflow.computation(np.float32)
    def add(x):
        return x + np.float32(k)

    return add


def created(executor, comp):
    return asyncio.run(executor.create_value(comp, comp.type_signature))


def executor_on(stub):
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities({})
    return executor


def test_a_computation_is_created_once_per_worker_executor():
    stub, one, two = Stub(), adding(1), adding(2)
    executor = executor_on(stub)
    first = created(executor, one)
    assert created(executor, one).reference == first.reference and len(stub.created) == 1  # kept
    assert stub.created[0].value.HasField("computation") and stub.created[0].executor.id == "executor1"
    assert created(executor, two).reference != first.reference and len(stub.created) == 2  # another computation
    executor.set_cardinalities({})  # a new worker executor: the kept values were the old one's
    assert created(executor, one).reference.id == "value3" and stub.created[-1].executor.id == "executor2"


def test_the_computations_beyond_the_limit_are_disposed_of_and_the_executor_is_collected():
    stub = Stub()
    executor = executor_on(stub)
    comps = [adding(k) for k in range(tff_speedups.COMPUTATIONS_KEPT + 1)]
    values = [created(executor, comp) for comp in comps]
    assert [ref.id for ref in executor._dispose_request.value_ref] == ["value1"]  # the oldest, batched as TFF does
    assert created(executor, comps[0]).reference.id == f"value{len(comps) + 1}"  # created again
    gone = weakref.ref(executor)
    del executor, values
    gc.collect()
    assert gone() is None  # no finalizer keeps it (TFF's RemoteValue would, through its weakref.finalize)


CONFIG = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=8, batch_size=16, seed=3)


def test_a_run_gives_the_numbers_of_tffs_own_path_and_sends_its_round_once(monkeypatch):
    calls, made = [], []
    kept = tff_speedups._kept_computation

    def counting(executor, value, type_spec):
        calls.append(id(value))
        made.append(kept(executor, value, type_spec))
        return made[-1]

    monkeypatch.setattr(tff_speedups, "_kept_computation", counting)
    history = run_experiment(CONFIG, progress=False)
    assert len(calls) > CONFIG.rounds  # every call goes through it, but the round's computation is one object,
    assert 1 <= len(set(calls)) <= CONFIG.rounds // 2  # created on the worker once, called every round:
    assert 1 <= len({value.reference.id for value in made}) <= CONFIG.rounds // 2
    monkeypatch.setattr(remote_executor.RemoteExecutor, "create_value",
                        remote_executor.RemoteExecutor.create_value.fedlab_original)  # TFF's own, untraced
    own = run_experiment(CONFIG, progress=False)
    columns = [c for c in history.columns if c != "seconds" and np.issubdtype(history[c].dtype, np.number)]
    assert "train_loss" in columns and "eval_accuracy" in columns
    np.testing.assert_array_equal(history[columns].to_numpy(), own[columns].to_numpy())


def test_a_computations_hash_is_tffs_computed_once():
    from tensorflow_federated.python.core.impl.computation import computation_impl

    comp = adding(5)
    original = computation_impl.ConcreteComputation.__hash__.fedlab_original
    assert hash(comp) == original(comp) == hash(comp) == comp.__dict__["_fedlab_hash"]
    assert callable(remote_executor.RemoteExecutor.create_value.fedlab_original)
