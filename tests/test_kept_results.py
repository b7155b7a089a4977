"""What TFF's worker computed stays there for the next call that takes it (``tff_speedups._patch_keep_results``):
a run gives the numbers of TFF's own path, the state is created on the worker once, not once a round, and only
the very arrays fetched (read-only) in their own structure and type are taken for the kept value."""

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.core import runtime, tff_speedups

t = runtime.tff()  # installs the patch

from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor  # noqa: E402

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


@t.tensorflow.computation(t.TensorType(np.float32, [3]))
def pair(x):
    return x + 1.0, x * 2.0


@t.tensorflow.computation(t.TensorType(np.float32, [3]))
def plus_one(x):
    return x + 1.0


@t.tensorflow.computation(t.TensorType(np.int32, [3]))
def int_plus_one(x):
    return x + 1


def test_only_the_arrays_fetched_are_taken_for_the_kept_value(monkeypatch):
    calls = Calls(monkeypatch)
    first, second = pair(np.arange(3, dtype=np.float32))
    with pytest.raises(ValueError):  # read-only: nothing changes a kept value in place
        first[0] = 7.0
    created = len(calls.created)
    np.testing.assert_array_equal(plus_one(first), [2.0, 3.0, 4.0])  # the worker's own value, selected
    assert (calls.selected, len(calls.created)) == (1, created)
    copy = np.array(first)
    copy[0] = 7.0  # a copy can be changed, and is sent
    np.testing.assert_array_equal(plus_one(copy), [8.0, 3.0, 4.0])
    assert calls.selected == 1 and "float32[3]" in calls.created[-1]
    np.testing.assert_array_equal(plus_one(second), [1.0, 3.0, 5.0])  # the other element of the same result
    assert calls.selected == 2


def test_results_beyond_the_limit_are_disposed_of(monkeypatch):
    disposed = []
    dispose = tff_speedups._dispose_quietly
    monkeypatch.setattr(tff_speedups, "_dispose_quietly",
                        lambda executor, ref, executor_id: (disposed.append(ref.id), dispose(executor, ref, executor_id)))
    results = [pair(np.full(3, k, dtype=np.float32)) for k in range(tff_speedups.RESULTS_KEPT + 2)]
    assert len(disposed) >= 2  # the two oldest left the worker (and what earlier tests left there)
    calls = Calls(monkeypatch)
    for k, (first, _) in enumerate(results):
        np.testing.assert_array_equal(plus_one(first), np.full(3, k + 2.0))
    assert calls.selected == tff_speedups.RESULTS_KEPT  # the last ones selected; the first two sent again


def test_another_structure_or_type_is_sent(monkeypatch):
    @t.tensorflow.computation(t.TensorType(np.int32, [3]))
    def ints(x):
        return x, x

    calls = Calls(monkeypatch)
    first, _ = ints(np.arange(3, dtype=np.int32))
    assert tff_speedups._kept_element(object(), first, t.TensorType(np.int32, [3])) is None  # not a remote executor
    np.testing.assert_array_equal(int_plus_one(first), [1, 2, 3])
    assert calls.selected == 1
    holding = [e for e in _executors() if tff_speedups._kept_element(e, first, t.TensorType(np.int32, [3]))]
    assert len(holding) == 1
    assert tff_speedups._kept_element(holding[0], first, t.TensorType(np.float32, [3])) is None  # another dtype
    wrapped = t.StructType([t.TensorType(np.int32, [3])])
    assert tff_speedups._kept_element(holding[0], [first], wrapped) is None  # another structure


def _executors():
    """The remote executors holding kept results (found through the garbage collector: TFF keeps them private)."""
    import gc

    return [o for o in gc.get_objects() if isinstance(o, remote_executor.RemoteExecutor)
            and o.__dict__.get("_fedlab_results")]
