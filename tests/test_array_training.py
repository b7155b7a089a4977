"""Clients that train on their arrays in one compiled loop give the numbers of TFF's stock client work."""

import numpy as np
import pytest

from fedlab import ExperimentConfig
from fedlab.experiment import processes
from fedlab.experiment.clients import Clients, dataset_for, spec_for


def _round(config, on_arrays, round_num=2):
    spec = spec_for(config, dataset_for(config))
    clients = Clients.for_config(config, spec)
    process = processes.build_process(config, spec, on_arrays=on_arrays)
    trainer = processes.trainer_for(process, clients.x[0], clients.y[0])
    state = processes.initial_state(process, config, spec)
    chosen = range(config.num_clients)
    output = trainer.next(state, [clients.inputs(config, round_num, c) for c in chosen])
    output = trainer.next(output.state, [clients.inputs(config, round_num + 1, c) for c in chosen])
    return output.metrics["client_work"]["train"], process.get_model_weights(output.state)


@pytest.mark.parametrize("changes", [
    dict(),
    dict(local_epochs=3, batch_size=7),
    dict(local_steps=5, batch_size=4),
    dict(algorithm="fedsgd", batch_size=0),
    dict(algorithm="fedprox", mu=0.5),
    dict(algorithm="fedavgm", server_momentum=0.8),
    dict(algorithm="fedadam", server_lr=0.05),
    dict(feature_noise=0.5, attacker_fraction=0.4, attack_boost=3),
    dict(model="2nn", batch_size=16),
    dict(dataset="breast_cancer", partition="dirichlet"),  # binary: one logit
    dict(dp="fixed", noise_multiplier=0.0, clip_norm=0.5),  # an unweighted aggregator (no noise: comparable)
    dict(robust="clip", clip_norm=0.3),
    dict(secure_aggregation=True, quantization_bits=12, clip_norm=1.0),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "fedavg")
def test_compiled_loop_equals_tff_stock_client_work(changes):
    from fedlab.core.runtime import simulated_secure_sums

    config = ExperimentConfig(**{"dataset": "digits", "num_clients": 6, "clients_per_round": 6, **changes})
    with simulated_secure_sums(config.secure_aggregation):
        stock_metrics, stock = _round(config, on_arrays=False)
        ours_metrics, ours = _round(config, on_arrays=True)
    # Same arithmetic in the same order: with softmax models the weights agree to the bit. With one sigmoid
    # logit TF's graph optimiser fuses the loss's gradient differently in the two graphs: last-bit differences.
    binary = config.dataset == "breast_cancer"
    assert ours_metrics["loss"] == pytest.approx(stock_metrics["loss"], rel=1e-6 if binary else 0)
    assert ours_metrics["accuracy"] == stock_metrics["accuracy"]
    for a, b in zip(ours.trainable, stock.trainable):
        np.testing.assert_allclose(a, b, rtol=1e-6 if binary else 0, atol=1e-7 if binary else 0)


def test_dataset_size_weighting_by_hand():
    """weighting="dataset": each client counts by its local data size, not by the examples it processed."""
    config = ExperimentConfig(dataset="digits", partition="quantity", alpha=0.5, num_clients=3, clients_per_round=3,
                              local_steps=2, batch_size=5, client_lr=0.1)
    spec = spec_for(config, dataset_for(config))
    clients = Clients.for_config(config, spec)
    from fedlab.rounds.array_training import build_array_process
    from fedlab.core.runtime import tff

    sizes = np.array([len(x) for x in clients.x], float)
    assert len(set(sizes)) == 3
    inputs = [clients.inputs(config, 1, c) for c in range(3)]
    deltas = []
    for c in range(3):  # each client alone: its own update
        process = build_array_process(spec.functional_model(), client_lr=0.1,
                                      server_optimizer=tff().learning.optimizers.build_sgdm(1.0))
        state = process.initialize()
        w0 = [np.asarray(w) for w in process.get_model_weights(state).trainable]
        w1 = process.get_model_weights(process.next(state, [inputs[c]]).state).trainable
        deltas.append([np.asarray(b) - a for a, b in zip(w0, w1)])
    process = build_array_process(spec.functional_model(), client_lr=0.1, weighting="dataset",
                                  server_optimizer=tff().learning.optimizers.build_sgdm(1.0))
    state = process.initialize()
    w0 = [np.asarray(w) for w in process.get_model_weights(state).trainable]
    w1 = process.get_model_weights(process.next(state, inputs).state).trainable
    for k, got in enumerate(w1):
        expected = w0[k] + sum(sizes[c] * deltas[c][k] for c in range(3)) / sizes.sum()
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_a_clients_input_packs_into_one_plan_and_unpacks_to_the_same_values():
    import collections

    import tensorflow as tf

    from fedlab.rounds.array_training import pack_client_data, unpack_plan

    orders = np.array([[4, 0, 2, 1, 3], [1, 3, 0, 4, 2]], np.int64)
    data = collections.OrderedDict(x=np.ones((5, 2), np.float32), y=np.arange(5), orders=orders, batch=np.int64(3),
                                   steps=np.int64(4), skip=np.int64(1), key=np.array([7, 9], np.int64),
                                   tau_eff=np.float32(2.5))
    packed = pack_client_data(data)
    assert list(packed) == ["x", "y", "plan", "tau_eff"] and pack_client_data(packed) is packed
    got = [np.asarray(v) for v in unpack_plan(tf.constant(packed["plan"]))]
    np.testing.assert_array_equal(got[0], orders)
    assert [int(v) for v in got[1:4]] == [3, 4, 1] and got[4].tolist() == [7, 9]
    empty = pack_client_data(dict(data, orders=np.zeros((2, 0), np.int64)))  # a client holding nothing
    assert np.asarray(unpack_plan(tf.constant(empty["plan"]))[0]).shape == (2, 0)
