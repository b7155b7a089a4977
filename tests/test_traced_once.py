"""A client's training and a server optimizer's finalizer are traced once and shared by the processes built from the
same settings (fedlab.rounds.array_training): the same computations, so the same numbers as traced anew."""

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.algorithms.fedopt import reddi_optimizer
from fedlab.core import tff_speedups
from fedlab.core.array_files import building_for_remote_workers
from fedlab.core.runtime import tff
from fedlab.experiment import processes
from fedlab.experiment.clients import dataset_for, spec_for
from fedlab.rounds import array_training
from fedlab.rounds.array_training import client_training, server_finalizer

TINY = dict(dataset="digits", num_clients=6, clients_per_round=3, local_steps=2, rounds=2)


def _final_weights(config):
    return run_experiment(config, progress=False).attrs["final_weights"].value


@pytest.fixture
def fresh():
    processes.clear_process_cache()
    yield
    processes.clear_process_cache()


@pytest.mark.slow
@pytest.mark.parametrize("other", [
    dict(dp="fixed", noise_multiplier=0.3, clip_norm=0.5),  # an aggregator of TFF's (its own round)
    dict(quantization_bits=8),  # another of TFF's
    dict(algorithm="fedadam", server_lr=0.05),  # another server optimizer, the fused mean
], ids=["dp", "8-bit", "fedadam"])
def test_a_process_sharing_a_traced_client_training_gives_the_numbers_of_one_traced_anew(fresh, other):
    config = ExperimentConfig(**TINY, **other)
    traced_anew = _final_weights(config)
    processes.clear_process_cache()
    _final_weights(ExperimentConfig(**TINY))  # plain FedAvg first: its client training is traced here
    shared = dict(array_training._TRAININGS)
    assert len(shared) == 1
    after = _final_weights(config)
    assert dict(array_training._TRAININGS) == shared, "the second process traced its client training again"
    assert len(after) == len(traced_anew)
    for a, b in zip(after, traced_anew):
        np.testing.assert_array_equal(a, b)


def _training(spec, **changes):
    settings = {"client_lr": 0.1, "server_optimizer": tff().learning.optimizers.build_sgdm(1.0), **changes}
    return client_training(spec.functional_model(), **settings)


def test_a_client_training_is_traced_again_for_anything_its_graph_depends_on(fresh):
    config = ExperimentConfig(**TINY)
    spec = spec_for(config, dataset_for(config))
    first = _training(spec)
    again = _training(spec, server_optimizer=tff().learning.optimizers.build_sgdm(0.5, momentum=0.9))
    assert again.train_client is first.train_client
    assert again.server_optimizer is not first.server_optimizer  # each caller's own server optimizer
    others = [_training(spec, **changes) for changes in (
        dict(client_lr=0.2), dict(proximal_strength=0.1), dict(proximal_strength=0.2), dict(full_batch=True),
        dict(weighting="uniform"), dict(example_dp=(1.0, 0.5)), dict(example_dp=(1.0, 0.7)), dict(normalized=True),
        dict(corrected=True), dict(personal=1), dict(proximal_strength=0.1, anchor_to_server=True))]
    with building_for_remote_workers():  # the clients' arrays sent, not their files
        others.append(_training(spec))
    others.append(client_training(spec.functional_model(1), client_lr=0.1,
                                  server_optimizer=first.server_optimizer))  # another model (its seed's weights)
    traced = [first.train_client] + [t.train_client for t in others]
    assert len({id(t) for t in traced}) == len(traced)
    given = tff().learning.optimizers.build_sgdm(0.1)  # a client optimizer the caller chose: traced anew
    assert _training(spec, client_optimizer=given).train_client is not first.train_client
    processes.clear_process_cache()
    assert not array_training._TRAININGS
    assert _training(spec).train_client is not first.train_client


def test_a_finalizer_is_traced_once_per_optimizer_class_and_settings(fresh):
    config = ExperimentConfig(**TINY)
    weights_type = _training(spec_for(config, dataset_for(config))).weights_type
    sgdm = tff().learning.optimizers.build_sgdm
    first = server_finalizer(sgdm(1.0, momentum=0.9), weights_type)
    assert server_finalizer(sgdm(1.0, momentum=0.9), weights_type) is first
    adam = server_finalizer(reddi_optimizer("adam", learning_rate=0.1), weights_type)
    assert server_finalizer(reddi_optimizer("adam", learning_rate=0.1), weights_type) is adam
    different = [server_finalizer(o, weights_type) for o in (
        sgdm(1.0), sgdm(0.5, momentum=0.9), reddi_optimizer("yogi", learning_rate=0.1),
        reddi_optimizer("adam", learning_rate=0.1, tau=0.01))]
    assert len({id(f) for f in [first, adam, *different]}) == 6

    class Users(type(sgdm(1.0))):  # a class of the user's: its settings may not be all its attributes say
        pass

    users = Users(learning_rate=1.0)
    assert server_finalizer(users, weights_type) is not server_finalizer(users, weights_type)
    processes.clear_process_cache()
    assert server_finalizer(sgdm(1.0, momentum=0.9), weights_type) is not first


@pytest.mark.slow
def test_grappler_optimises_the_graphs_a_process_shares_with_an_earlier_one_once(fresh, monkeypatch):
    from tensorflow_federated.python.core.environments.tensorflow_backend import (
        compiled_computation_transformations as transformations)

    tff()  # fedlab's TFF: Grappler once per computation
    once = transformations.optimize_tensorflow_comp
    original, asked, optimised = once.fedlab_original, [], []
    monkeypatch.setattr(once, "fedlab_original", lambda c, config: optimised.append(c) or original(c, config))
    monkeypatch.setattr(transformations, "optimize_tensorflow_comp",
                        lambda c, config: asked.append(c) or once(c, config))
    _final_weights(ExperimentConfig(**TINY))
    assert tff_speedups._OPTIMIZED
    processes.clear_process_cache()
    assert not tff_speedups._OPTIMIZED, "Grappler's outputs were not forgotten with the processes"
    _final_weights(ExperimentConfig(**TINY))
    del asked[:], optimised[:]
    _final_weights(ExperimentConfig(**TINY, dp="fixed", noise_multiplier=0.3, clip_norm=0.5))
    # its aggregator's graphs are new, its client's and its finalizer's were optimised for the plain run
    assert 0 < len(optimised) < len(asked)


def test_grappler_runs_once_per_tensorflow_computation_and_configuration(fresh):
    import tensorflow as tf
    from tensorflow_federated.python.core.environments.tensorflow_backend import (
        compiled_computation_transformations as transformations)

    config = ExperimentConfig(**TINY)
    training = _training(spec_for(config, dataset_for(config)))
    computation = training.train_client.to_building_block()
    tff()
    optimize = transformations.optimize_tensorflow_comp
    assert getattr(transformations, "fedlab_optimize_once", False)  # installed by fedlab.core.runtime.tff()
    aggressive = tf.compat.v1.ConfigProto()
    aggressive.graph_options.rewrite_options.arithmetic_optimization = \
        aggressive.graph_options.rewrite_options.AGGRESSIVE
    first = optimize(computation, aggressive)
    assert optimize(training.train_client.to_building_block(), aggressive) is first
    assert first.proto != computation.proto  # Grappler did rewrite it
    off = tf.compat.v1.ConfigProto()
    off.graph_options.rewrite_options.disable_meta_optimizer = True
    other = optimize(computation, off)  # another configuration: optimised for it (here, not at all)
    assert other is not first and other.proto != first.proto


@pytest.mark.parametrize("frozen", [0, 1])
def test_a_converted_models_methods_run_in_the_callers_graph_with_tffs_numbers(frozen):
    """fedlab's converted models are TFF FunctionalModels whose predict and metrics methods are plain (TFF's are
    ``tf.function``s bound to each instance through a weak ``TfMethodTarget``, traced as a nested function into every
    graph that calls them); each gives what TFF's method gives."""
    import tensorflow as tf

    base = tff().learning.models.FunctionalModel
    spec = spec_for(ExperimentConfig(**TINY, model="2nn", freeze_layers=frozen))
    model = spec.functional_model()
    assert isinstance(model, base) and model is spec.functional_model()
    for name in ("predict_on_batch", "initialize_metrics_state", "update_metrics_state", "finalize_metrics"):
        assert not hasattr(getattr(type(model), name), "python_function"), name

    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    y = np.arange(5, dtype=np.int32)[:, None]

    def step(predict, initialize, update, finalize):
        weights = tuple(tuple(tf.constant(w) for w in part) for part in model.initial_weights)
        output = predict(weights, x, training=False)
        loss = model.loss(output=output, label=y)
        from tensorflow_federated.python.learning.models import variable
        state = update(initialize(), labels=y, batch_output=variable.BatchOutput(loss=loss, predictions=output,
                                                                                   num_examples=5))
        return output, finalize(state)

    with tf.Graph().as_default() as graph:  # TFF's converted Keras model runs in a graph only
        plain = step(model.predict_on_batch, model.initialize_metrics_state, model.update_metrics_state,
                     model.finalize_metrics)
        tffs = step(*(getattr(base, name).__get__(model, base) for name in (
            "predict_on_batch", "initialize_metrics_state", "update_metrics_state", "finalize_metrics")))
        with tf.compat.v1.Session(graph=graph) as session:
            plain, tffs = session.run((plain, tffs))
    np.testing.assert_array_equal(plain[0], tffs[0])
    assert plain[1] == tffs[1] and set(plain[1]) == {"loss", "accuracy"}, plain[1]

    calls = tf.Graph()
    with calls.as_default():
        model.initialize_metrics_state()
    assert not [f.signature.name for f in calls.as_graph_def().library.function
                if "initialize_metrics_state" in f.signature.name]
