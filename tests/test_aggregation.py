"""Secure aggregation, compression, robust defences and byte accounting."""

import dataclasses

import numpy as np
import pytest

from fedlab import ExperimentConfig, final_weights, run_experiment
from fedlab.aggregators import aggregation
from fedlab.rounds import attacks
from fedlab.experiment.config import ConfigError
from fedlab.core.runtime import simulated_secure_sums, tff

# logistic regression on digits: a 64x10 kernel and 10 biases = 650 float32 parameters
BASE = ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=5, rounds=1, clip_norm=1.0)


@pytest.mark.parametrize("changes, up_per_client", [
    ({}, 650 * 4 + 4),                                           # float32 values + the weight
    ({"quantization_bits": 4}, 650 * 4 / 8 + 4 + 2 * 8),         # 4 bits each, min and max per tensor
    ({"secure_aggregation": True, "quantization_bits": 8}, 650 * 12 / 8 + 4),
    # modulus 2^(8 + ceil(log2 5)) = 2048, summed in [0, 2*2048 - 1): 12 bits per value
    ({"secure_aggregation": True}, 650 * (32 + 3) / 8 + 4),      # 32-bit values, 3 more bits for 5 clients
])
def test_bytes_by_hand(changes, up_per_client):
    history = run_experiment(BASE.replace(**changes), progress=False)
    row = history.iloc[0]
    assert row["bytes_down"] == 5 * 650 * 4
    assert row["bytes_up"] == pytest.approx(5 * up_per_client)
    assert row["cumulative_bytes"] == row["bytes_down"] + row["bytes_up"]


def _aggregate(config, values, weights=None):
    factory = aggregation.make_aggregator(config)
    t = tff()
    value_type = t.types.TensorType(np.float32, [len(values[0])])
    if isinstance(factory, t.aggregators.WeightedAggregationFactory):
        process = factory.create(value_type, t.types.TensorType(np.float32))
        args = (values, weights or [1.0] * len(values))
    else:
        process = factory.create(value_type)
        args = (values,)
    with simulated_secure_sums(config.secure_aggregation):
        return np.asarray(process.next(process.initialize(), *args).result)


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_secure_sum_equals_plain_mean_within_quantisation_error(bits):
    config = BASE.replace(clients_per_round=3, secure_aggregation=True, quantization_bits=bits, clip_norm=1.0)
    rng = np.random.default_rng(bits)
    values = [(v / np.linalg.norm(v) * 0.9).astype(np.float32) for v in rng.normal(size=(3, 200))]
    secure = _aggregate(config, values)
    # error of the sum <= K * 0.5 / scale per coordinate, so of the mean <= 0.5 / scale
    bound = aggregation.quantization_error_bound(bits, 1.0, 3) / 3
    error = np.abs(secure - np.mean(values, axis=0)).max()
    assert error <= bound + 1e-7, (error, bound)
    if bits == 4:
        assert error > bound / 10  # the quantisation is really there


def test_robust_clipping_never_lets_an_update_above_the_norm_through():
    config = BASE.replace(robust="clip", clip_norm=1.0)
    big = np.full(100, 10.0, np.float32)
    assert np.linalg.norm(_aggregate(config, [big])) == pytest.approx(1.0, rel=1e-5)
    mixed = _aggregate(config, [big, np.full(100, 0.01, np.float32)], [1.0, 1.0])
    assert np.linalg.norm(mixed) <= 1.0 + 1e-6


def test_zeroing_drops_an_update_above_the_norm():
    config = BASE.replace(robust="zeroing", clip_norm=1.0)
    small = np.full(4, 0.1, np.float32)
    result = _aggregate(config, [np.full(4, 100.0, np.float32), small], [1.0, 1.0])
    np.testing.assert_allclose(result, small / 2, rtol=1e-6)  # the big update counts as zero


def test_attackers_and_poisoned_labels():
    config = BASE.replace(attacker_fraction=0.25)
    attackers = attacks.attacker_clients(config)
    assert len(attackers) == 5 and len(set(attackers)) == 5
    assert attacks.poison_labels(np.array([0, 3, 9]), 10).tolist() == [9, 6, 0]
    assert len(attacks.attacker_clients(BASE)) == 0


@pytest.mark.parametrize("changes, field", [
    ({"quantization_bits": 17}, "quantization_bits"),
    ({"secure_aggregation": True, "dp": "fixed", "noise_multiplier": 1.0, "algorithm": "qffl"}, "weight_bound"),
    ({"dp": "fixed", "noise_multiplier": 1.0, "algorithm": "fednova"}, "local_steps"),  # tau_eff: public steps
    ({"model": "2nn", "freeze_layers": 3}, "freeze_layers"),
    ({"attacker_fraction": 1.0}, "attacker_fraction"),
])
def test_combinations_tff_cannot_do_are_refused(changes, field):
    with pytest.raises(ConfigError) as info:
        BASE.replace(**changes)
    assert info.value.field == field


@pytest.mark.parametrize("changes, field", [
    ({"robust": "median", "secure_aggregation": True}, "robust"),
    ({"robust": "krum", "secure_aggregation": True, "quantization_bits": 4}, "robust"),
    ({"robust": "trimmed_mean", "dp": "fixed", "noise_multiplier": 0.5, "secure_aggregation": True}, "robust"),
    ({"robust": "clip", "robust_fraction": 0.3}, "robust_fraction"),
    ({"robust": "krum", "robust_fraction": 0.5}, "robust_fraction"),
])
def test_robust_statistics_need_the_updates_themselves(changes, field):
    with pytest.raises(ConfigError) as info:
        BASE.replace(**changes)
    assert info.value.field == field and "\n" not in str(info.value)


def test_one_round_of_the_median_moves_the_model_by_the_median_update():
    """Server learning rate 1: the new global model is the old one plus the coordinate-wise median of the clients'
    updates; each client's update is what a one-client round with the plain mean moves the model by."""
    from fedlab.aggregators.robust import coordinate_median

    config = BASE.replace(clients_per_round=3, client_lr=0.1)
    median = run_experiment(config.replace(robust="median"), progress=False)
    # the three clients of round 1, each alone (same data, same batches: plans depend on (seed, round, client))
    from fedlab.experiment.clients import Clients, dataset_for, spec_for
    from fedlab.experiment.processes import get_process, initial_state, trainer_for
    from fedlab.experiment.sampling import Scheduler

    data = dataset_for(config)
    spec = spec_for(config, data)
    clients = Clients.for_config(config, spec)
    chosen = Scheduler(config, [len(x) for x in clients.x], spec.tensor_sizes(), clients.attackers).round(1).completed
    mean = config.replace(robust="none")
    process = get_process(mean, spec)
    trainer = trainer_for(process, clients.x[0], clients.y[0])
    state = initial_state(process, mean, spec)
    before = [np.asarray(w) for w in state.global_model_weights.trainable]
    deltas = []
    for c in chosen:
        after = trainer.next(state, [clients.inputs(mean, 1, int(c))]).state.global_model_weights.trainable
        deltas.append(np.concatenate([(np.asarray(a) - b).ravel() for a, b in zip(after, before)]))
    expected = np.concatenate([b.ravel() for b in before]) + coordinate_median(np.stack(deltas))
    got = np.concatenate([w.ravel() for w in final_weights(median)[:2]])  # logistic regression: kernel, bias
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_partial_updates_send_only_trainable_layers():
    full = run_experiment(BASE.replace(model="2nn"), progress=False)
    frozen = run_experiment(BASE.replace(model="2nn", freeze_layers=2), progress=False)
    # 2NN on 64 inputs: 64*200+200 + 200*200+200 + 200*10+10 = 55,210 parameters; frozen: only the last 2,010
    assert full.loc[0, "bytes_up"] == 5 * (55210 * 4 + 4)
    assert frozen.loc[0, "bytes_up"] == 5 * (2010 * 4 + 4)
    assert frozen.loc[0, "bytes_down"] == full.loc[0, "bytes_down"]


@pytest.mark.parametrize("frozen", [1, 2])
def test_frozen_layers_in_the_compiled_loop_give_tffs_keras_path_numbers(frozen, monkeypatch):
    """TFF 0.87's functional_model_from_keras mis-orders a frozen layer's weights; fedlab's wrapper
    (ModelSpec.functional_model) splits them as TFF's Keras-model path does, and trains to its numbers."""
    from fedlab.experiment import processes
    from fedlab.experiment.clients import spec_for

    config = BASE.replace(model="2nn", freeze_layers=frozen, rounds=3, local_steps=5)
    spec = spec_for(config)
    model, keras = spec.functional_model(), spec.build_keras()
    assert [w.shape for w in model.initial_weights[0]] == [tuple(v.shape) for v in keras.trainable_variables]
    assert [w.shape for w in model.initial_weights[1]] == [tuple(v.shape) for v in keras.non_trainable_variables]
    for got, want in zip(model.initial_weights[1], keras.non_trainable_variables):
        np.testing.assert_array_equal(got, want.numpy())
    assert processes.uses_arrays(config, spec)
    compiled = run_experiment(config, progress=False)
    monkeypatch.setattr(processes, "uses_arrays", lambda config, spec: False)  # TFF's Keras-model builder
    monkeypatch.setattr(processes, "_PROCESS_CACHE", {})
    keras_path = run_experiment(config, progress=False)
    columns = ["train_loss", "eval_loss", "eval_accuracy", "bytes_up"]
    np.testing.assert_allclose(compiled[columns].to_numpy(float), keras_path[columns].to_numpy(float), atol=1e-6)
    after = final_weights(compiled)[len(keras.trainable_variables):]  # trainable, then frozen tensors
    assert len(after) == len(keras.non_trainable_variables) == 2 * frozen
    for got, want in zip(after, keras.non_trainable_variables):
        np.testing.assert_array_equal(got, want.numpy())  # the frozen layers never moved


@pytest.mark.parametrize("changes, refused", [
    (dict(dp="fixed", noise_multiplier=1.0), "dp='fixed'"),
    (dict(secure_aggregation=True, quantization_bits=8), "secure_aggregation"),
    (dict(secure_aggregation=True, quantization_bits=8, secure_protocol="secagg"), "secure_aggregation"),
    (dict(robust="median"), "robust='median'"),
    (dict(robust="clip"), None),  # clips each update, then the weighted mean
    (dict(secure_aggregation=True, secure_protocol="ckks"), None),  # CKKS's mean is weighted
])
def test_dataset_weights_where_every_client_counts_alike_are_refused_not_ignored(changes, refused):
    config = dict(dataset="digits", num_clients=10, clients_per_round=4, client_weighting="dataset", **changes)
    if refused is None:
        ExperimentConfig(**config)
        assert "alike" not in aggregation.describe(ExperimentConfig(**config))
        return
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(**config)
    assert err.value.field == "client_weighting" and f"with {refused}, whose aggregation weighs every client alike" in \
        err.value.message and "\n" not in str(err.value)
    assert "every client weighted alike" in aggregation.describe(ExperimentConfig(**{**config,
                                                                                       "client_weighting": "uniform"}))


def test_secure_and_compression_builders_get_their_own_settings_not_the_config(monkeypatch):
    """A ``role="secure"`` or ``"compression"`` builder is handed a SumSettings read from the config: b bits, C, the
    most updates a sum holds (K; every client under user-level DP's Poisson rounds), seeded or not."""
    seen = []
    for name in ("compression", "secure", "secagg"):
        entry = aggregation.AGGREGATORS.entry(name)
        component = entry.component

        def recording(settings, _build=component.build):
            seen.append(settings)
            return _build(settings)

        monkeypatch.setitem(aggregation.AGGREGATORS._entries, name, dataclasses.replace(
            entry, component=dataclasses.replace(component, build=recording)))
    base = ExperimentConfig(num_clients=12, clients_per_round=4, clip_norm=0.5)
    aggregation.make_aggregator(base.replace(quantization_bits=8))
    aggregation.make_aggregator(base.replace(secure_aggregation=True, quantization_bits=12, noise_source="unseeded"))
    aggregation.make_aggregator(base.replace(secure_aggregation=True, quantization_bits=12, secure_protocol="secagg",
                                             dp="fixed", noise_multiplier=1.0))
    assert seen == [aggregation.SumSettings(bits=8, clip_norm=0.5, cohort=4, seeded=True),
                    aggregation.SumSettings(bits=12, clip_norm=0.5, cohort=4, seeded=False),
                    aggregation.SumSettings(bits=12, clip_norm=0.5, cohort=12, seeded=True)]
    ckks = base.replace(secure_aggregation=True, secure_protocol="ckks")
    assert aggregation.sum_settings(ckks).run_digest == ckks.fingerprint()
