"""TFF's client side runs without its tracing spans (``tff_speedups._patch_untraced``): no function of those modules
left wrapped, and a run gives the numbers of TFF's traced functions. A test swaps TFF's tracing provider for another
(never their number: TFF asserts it in every span of a thread that has made one)."""

import numpy as np

from fedlab import ExperimentConfig, run_experiment
from fedlab.core import runtime, tff_speedups

runtime.tff()  # installs the patch

from tensorflow_federated.python.common_libs import tracing  # noqa: E402
from tensorflow_federated.python.core.impl.executors import remote_executor  # noqa: E402

CONFIG = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=6, batch_size=16, seed=4)


def functions():
    """(owner, name, value) of every module-level function and class attribute where the patch looks."""
    for owner in tff_speedups.untraced_owners():
        yield from ((owner, attr, value) for attr, value in list(vars(owner).items()))


class CountingProvider(tracing.TracingProvider):
    """A tracing provider that counts the spans of each (scope, function): a module's last name or a class's."""

    def __init__(self):
        self.spans = {}

    def span(self, scope, sub_scope, nonce, parent_span_yield, fn_args, fn_kwargs, trace_opts):
        self.spans[scope, sub_scope] = self.spans.get((scope, sub_scope), 0) + 1
        yield None


def test_no_function_is_left_traced():
    found = list(functions())
    assert [f"{owner.__name__}.{attr}" for owner, attr, fn in found if tff_speedups._is_traced(fn)] == []
    plain = {attr: fn for _, attr, fn in found if hasattr(fn, "fedlab_traced")}
    assert {"serialize_value", "deserialize_value", "_request", "create_call", "_compute"} <= set(plain)
    create_value = remote_executor.RemoteExecutor.create_value.fedlab_original  # under the kept computations' patch
    for fn in [*plain.values(), create_value]:
        assert tff_speedups._is_traced(fn.fedlab_traced) and fn.fedlab_traced.__wrapped__ is fn
    assert not tff_speedups._is_traced(len) and not tff_speedups._is_traced(lambda: None)


def test_a_run_gives_the_numbers_of_tffs_traced_functions(monkeypatch):
    untraced, traced = CountingProvider(), CountingProvider()
    names = {(owner.__name__.split(".")[-1], attr) for owner, attr, fn in functions()
             if hasattr(fn, "fedlab_traced") and not owner.__name__.endswith(".framework")}  # re-exports only
    names.add(("RemoteExecutor", "create_value"))
    monkeypatch.setattr(tracing, "_global_tracing_providers", [untraced])
    history = run_experiment(CONFIG, progress=False)
    assert untraced.spans and not names & set(untraced.spans)  # none of them made a span (TFF's others did)

    for owner, attr, fn in list(functions()):  # TFF's own functions back
        if hasattr(fn, "fedlab_traced"):
            monkeypatch.setattr(owner, attr, fn.fedlab_traced)
    kept = remote_executor.RemoteExecutor.create_value
    monkeypatch.setattr(kept, "fedlab_original", kept.fedlab_original.fedlab_traced)
    monkeypatch.setattr(tracing, "_global_tracing_providers", [traced])
    own = run_experiment(CONFIG, progress=False)
    assert traced.spans.get(("value_serialization", "serialize_value"), 0) >= CONFIG.rounds
    assert traced.spans.get(("remote_executor_grpc_stub", "_request"), 0) > 0
    assert traced.spans.get(("RemoteExecutor", "create_value"), 0) >= CONFIG.rounds

    columns = [c for c in history.columns if c != "seconds" and np.issubdtype(history[c].dtype, np.number)]
    assert "train_loss" in columns and "eval_accuracy" in columns
    np.testing.assert_array_equal(history[columns].to_numpy(), own[columns].to_numpy())


def test_a_fedlab_wrapper_made_first_gets_the_plain_function(monkeypatch):
    class Owner:
        pass

    traced = tracing.trace(lambda x: x + 1)

    def wrapper(x):
        return wrapper.fedlab_original(x)

    wrapper.fedlab_original = traced
    Owner.method, Owner.plain_traced = wrapper, tracing.trace(lambda x: x * 2)
    monkeypatch.setattr(tff_speedups, "untraced_owners", lambda: [Owner])
    tff_speedups._patch_untraced()
    assert Owner.method is wrapper and not tff_speedups._is_traced(wrapper.fedlab_original)
    assert wrapper.fedlab_original.fedlab_traced is traced and Owner.method(1) == 2
    assert not tff_speedups._is_traced(Owner.plain_traced) and Owner.plain_traced(3) == 6
