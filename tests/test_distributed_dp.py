"""Distributed DP (dp="distributed"): Skellam shares on TFF's secure sum, its parameters, its accounting, its refusals."""

import math

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.aggregators import aggregation
from fedlab.core.runtime import simulated_secure_sums
from fedlab.core.validation import ConfigError
from fedlab.protection import accounting

BASE = dict(dataset="digits", model="logreg", num_clients=10, clients_per_round=5, rounds=2, batch_size=16,
            local_steps=2, dp="distributed", noise_multiplier=0.5, clip_norm=1.0, secure_aggregation=True,
            quantization_bits=16)


@pytest.mark.parametrize("z, clip, bits, k, dim", [(1.0, 1.0, 16, 10, 199_210), (0.5, 0.1, 12, 10, 7_850),
                                                   (2.0, 3.0, 20, 100, 7_851), (0.0, 1.0, 8, 5, 650)])
def test_the_scale_and_the_bounds_are_tffs(z, clip, bits, k, dim):
    from tensorflow_federated.python.aggregators import discretization, distributed_dp

    ours = accounting.ddp_parameters(z, clip, bits, k, 3 * k, dim)
    kstd = distributed_dp._clip_prob_to_num_stddevs(1e-4)  # noqa: SLF001
    assert ours.padded_dim == math.ceil(dim / 2) * 2
    assert accounting.ddp_stddevs() == pytest.approx(kstd, rel=1e-6)  # TFF computes it in float32
    # TFF sizes each of the K clients' shares at z C / sqrt(K); the sum's noise is the same (z C)^2 as ours
    scale = min(float(distributed_dp._heuristic_scale_factor(z * clip / math.sqrt(k), clip, bits, k,  # noqa: SLF001
                                                              ours.padded_dim, kstd).numpy()), 1e6)
    assert ours.scale == pytest.approx(scale, rel=1e-6)
    inflated = float(discretization.inflated_l2_norm_bound(clip, 1 / scale, 0.0, ours.padded_dim).numpy())
    l2 = (inflated + 1e-5) * scale
    assert ours.l2_bound == pytest.approx(l2, rel=1e-6)  # TFF's bound is float32
    assert ours.l1_bound == pytest.approx(math.ceil(l2 * min(math.sqrt(ours.padded_dim), l2)), rel=1e-6)
    assert ours.total_variance == pytest.approx((z * clip * ours.scale) ** 2, rel=1e-12)
    assert ours.share_variance * 3 * k == pytest.approx(ours.total_variance, rel=1e-12)


def _aggregate(config, dim, values, seed=5, rounds=1):
    from fedlab.core.runtime import tff

    process = aggregation.make_aggregator(config).create(tff().types.TensorType(np.float32, [dim]))
    state = process.initialize()
    state["noise_seed"] = np.asarray([seed, 0], np.int64)
    out = []
    with simulated_secure_sums(True):
        for _ in range(rounds):
            step = process.next(state, [np.asarray(v, np.float32) for v in values])
            state = step.state
            out.append(np.asarray(step.result, np.float64))
    return out


def test_without_noise_the_mean_is_the_clipped_updates_over_k_up_to_the_rounding():
    config = ExperimentConfig(**{**BASE, "noise_multiplier": 0.0, "quantization_bits": 12})
    rng = np.random.default_rng(0)
    dim = 301  # odd: padded by one
    values = [rng.normal(size=dim) * s for s in (0.01, 0.5, 3.0)]  # inside, near and beyond the clip
    clipped = sum(v * min(1.0, 1.0 / np.linalg.norm(v)) for v in values)
    [mean] = _aggregate(config, dim, values)
    params = aggregation.ddp_parameters_of(config, dim)
    # each coordinate of each rotated update moves less than one step 1/s; the rotation keeps L2 norms
    bound = len(values) * math.sqrt(params.padded_dim) / params.scale / config.clients_per_round
    error = np.linalg.norm(mean - clipped / config.clients_per_round)
    assert 0 < error <= bound  # rounded, and within the rounding's bound
    # stochastic rounding: a coordinate with fractional part f moves by 1 - f or -f, variance f (1 - f), 1/6 on
    # average (rounding to the nearest would give 1/12)
    unbiased = math.sqrt(len(values) * params.padded_dim / 6) / params.scale / config.clients_per_round
    assert error == pytest.approx(unbiased, rel=0.15)


def test_the_noise_is_z_c_whoever_was_sampled_and_keyed_by_the_seed():
    config = ExperimentConfig(**{**BASE, "noise_multiplier": 2.0, "clip_norm": 0.5, "num_clients": 10})
    dim = 20_000
    # updates that all round to 0, each its own (a client's rounding and share are keyed by a hash of its update:
    # identical updates would draw the same share, a limit the module states)
    quiet = [np.eye(1, dim, 0)[0] * 1e-9 * (i + 1) for i in range(10)]
    for clients in (1, 5, 10):  # the absent clients' shares make up the rest: the sum's noise does not depend on m
        [mean] = _aggregate(config, dim, quiet[:clients])
        # z C = 1 per coordinate of K x mean; the spread of 20,000 draws is within 0.5 % of it (1 SE), so 2.5 % is
        # 5 SE (a server drawing all N shares with 5 clients in would give sqrt(15/10) = 1.22, N - 1 at 10: 0.95)
        assert np.std(mean * config.clients_per_round) == pytest.approx(1.0, rel=0.025)
    values = quiet[:3]
    a, b = _aggregate(config, dim, values, seed=5), _aggregate(config, dim, values, seed=5)
    assert np.array_equal(a[0], b[0])
    assert not np.array_equal(a[0], _aggregate(config, dim, values, seed=6)[0])
    first, second = _aggregate(config, dim, values, seed=5, rounds=2)
    assert np.array_equal(first, a[0]) and not np.array_equal(first, second)  # a new key every round


def test_unseeded_noise_differs_every_time_and_decodes_with_the_clients_key():
    config = ExperimentConfig(**{**BASE, "noise_source": "unseeded"})
    values = [np.zeros(50), np.ones(50) * 1e-9]
    assert not np.array_equal(_aggregate(config, 50, values)[0], _aggregate(config, 50, values)[0])
    # without noise the mean is the clients' (within the rounding): the server rotates back with the clients' key
    rng = np.random.default_rng(1)
    values = [rng.normal(size=50) * 0.1 for _ in range(3)]
    quiet = config.replace(noise_multiplier=0.0)
    params = aggregation.ddp_parameters_of(quiet, 50)
    [mean] = _aggregate(quiet, 50, values)
    assert np.linalg.norm(mean - sum(values) / 5) <= 3 * math.sqrt(50) / params.scale / 5


def test_skellam_rdp_by_hand():
    params = accounting.DdpParameters(dim=10, padded_dim=10, bits=16, scale=1.0, l2_bound=10.0, l1_bound=100.0,
                                      share_variance=100.0, total_variance=1000.0, population=10)
    # alpha = 2: 2 * 100 / 2000 + min((3 * 100 + 600) / (4 * 10^6), 300 / 2000) = 0.1 + 0.000225
    assert accounting.skellam_rdp(params, [2])[0] == pytest.approx(0.100225, rel=1e-12)
    # alpha = 5, displaced (twice the bounds): 5 * 400 / 2000 + min((9 * 400 + 1200) / (4 * 10^6), 600 / 2000)
    assert accounting.skellam_rdp(params, [5], displaced=True)[0] == pytest.approx(1.0 + 0.0012, rel=1e-12)


def test_poisson_subsampling_by_hand_and_against_the_gaussians():
    # alpha = 2: log[(1 - q)(1 + q) + q^2 e^eps(2)]; q = 0.1, eps(2) = 1
    assert accounting.poisson_subsampled_rdp(np.array([1.0]), [2], 0.1)[0] == pytest.approx(
        math.log(0.99 + 0.01 * math.e), rel=1e-12)
    orders = list(range(2, 129))
    z, q = 1.0, 0.1
    gaussian = np.array([a / (2 * z ** 2) for a in orders])
    assert np.array_equal(accounting.poisson_subsampled_rdp(gaussian, orders, 1.0), gaussian)
    import dp_accounting

    exact = dp_accounting.rdp.RdpAccountant(orders)
    exact.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
    tight = np.asarray(exact._rdp)  # noqa: SLF001
    ours = accounting.poisson_subsampled_rdp(gaussian, orders, q)
    assert (ours >= tight * (1 - 1e-9)).all()  # a general bound: never below the Gaussian's exact curve
    assert (ours <= gaussian).all() and ours[0] < 0.1 * gaussian[0]  # subsampling amplifies
    with pytest.raises(ValueError, match="^orders: the subsampled bound at order 4 needs every integer order"):
        accounting.poisson_subsampled_rdp(np.ones(2), [2, 4], 0.1)


def test_epsilon_falls_with_more_bits_and_more_noise():
    def eps(z, bits):
        params = accounting.ddp_parameters(z, 1.0, bits, 10, 100, 7850)
        return accounting.ddp_epsilon_by_round(params, 0.1, 50, 1e-5)

    curve = eps(1.0, 16)
    assert (np.diff(curve) > 0).all()  # composes over rounds
    assert eps(1.0, 8)[-1] > eps(1.0, 12)[-1] > curve[-1] > eps(2.0, 16)[-1]
    assert math.isinf(eps(0.0, 16)[-1])
    # near the Gaussian at the effective noise multiplier on the same integer orders (the general subsampling
    # bound is looser than the Gaussian's exact one)
    import dp_accounting

    params = accounting.ddp_parameters(1.0, 1.0, 16, 10, 100, 7850)
    exact = dp_accounting.rdp.RdpAccountant(list(accounting.DDP_ORDERS))
    exact.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(
        params.effective_noise_multiplier)), 50)
    gaussian = exact.get_epsilon(1e-5)
    assert gaussian < curve[-1] < 1.5 * gaussian


def test_a_run_reports_the_skellam_epsilon_and_repeats_its_numbers():
    config = ExperimentConfig(**BASE)
    history = run_experiment(config, progress=False)
    again = run_experiment(config, progress=False, results_cache=None)
    params = aggregation.ddp_parameters_of(config, 650)  # digits' logistic regression: 64 x 10 + 10 weights
    expected = accounting.ddp_epsilon_by_round(params, config.sampling_probability, 2, config.effective_delta)
    np.testing.assert_allclose(history.epsilon, expected, rtol=1e-12)
    assert all(np.array_equal(a, b) for a, b in zip(history.attrs["final_weights"].value,
                                                     again.attrs["final_weights"].value))
    assert aggregation.method_name(config) == "ddp-16bit"
    assert "distributed DP (Skellam shares" in aggregation.describe(config)


def test_round_bytes_count_every_clients_share_and_the_clock_one_clients_upload():
    from fedlab.experiment.sampling import Scheduler

    config = ExperimentConfig(**{**BASE, "model": "logreg"})
    sizes = [640, 10]  # 650 values, already even
    got = aggregation.round_bytes(config, sizes, [], clients=3)
    assert got["bytes_up"] == 3 * (650 * 16 / 8 + 4) + 10 * 650 * 16 / 8  # 3 updates, the 10 clients' shares
    assert got["bytes_down"] == 3 * 4 * 650
    # a client's upload on the simulated clock is its own vector, not the population's shares
    assert Scheduler(config, [50] * 10, (sizes, [])).bytes_up == 650 * 16 / 8 + 4


@pytest.mark.parametrize("change, field, message", [
    (dict(secure_aggregation=False, quantization_bits=0), "secure_aggregation",
     "must be True with dp='distributed': each client adds only its share of the noise"),
    (dict(secure_protocol="ckks", quantization_bits=0), "secure_protocol",
     "cannot be 'ckks' with dp='distributed': user-level DP's noise is calibrated to clipped updates"),
    (dict(secure_protocol="secagg", dropout_rate=0.1), "dropout_rate",
     "must be 0 with dp='distributed' on secure_protocol='secagg': a client left out after the key exchange"),
    (dict(quantization_bits=0), "quantization_bits", "must be 2..16 with dp='distributed'"),
    (dict(num_clients=200, clients_per_round=100, quantization_bits=5), "quantization_bits",
     "must be at least 7 with dp='distributed' and 100 clients a round, got 5"),
    (dict(num_clients=100_000, clients_per_round=10), "quantization_bits",
     "must be at most 14 with dp='distributed' and 100000 clients"),
    (dict(accountant="pld"), "accountant", "must be 'rdp' with dp='distributed'"),
    (dict(robust="zeroing"), "robust", "cannot be 'zeroing' with dp='distributed': every zeroed client would send"),
])
def test_what_cannot_run_is_refused_naming_the_field(change, field, message):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(**{**BASE, **change})
    assert err.value.field == field and err.value.message.startswith(message), err.value.message


@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_an_empty_round_releases_every_share_as_the_server_draws_them(protocol):
    # seed 3 samples nobody in round 1 (8 clients, K = 2): the server draws all N shares, so every value of the model
    # moves by noise of spread z C / K = 1 x 1 / 2 whether the sum is TFF's or the protocol's (650 values: 0.12 is
    # four standard errors)
    from fedlab.experiment.runner import final_weights

    clean = ExperimentConfig(**{**BASE, "num_clients": 8, "clients_per_round": 2, "rounds": 1, "seed": 3,
                                "noise_multiplier": 0.0, "secure_protocol": protocol})
    noisy = clean.replace(noise_multiplier=1.0)
    base, released = run_experiment(clean, progress=False), run_experiment(noisy, progress=False)
    assert list(released.clients_this_round) == [0]
    moved = np.concatenate([(a - b).ravel() for a, b in zip(final_weights(released), final_weights(base))])
    assert moved.size == 650 and np.std(moved) == pytest.approx(0.5, rel=0.12) and abs(np.mean(moved)) < 0.08


@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_a_round_of_several_clients_carries_z_c_whichever_sum_adds_the_shares(protocol):
    # seed 1, 10 clients, K = 5: round 1 has several clients, whose rounding is the same with and without noise (it is
    # keyed by the round and their updates, equal in both runs): the models differ by the noise alone, every share
    # (the clients' own and the server's draw of the others'), of spread z C / K = 1 x 1 / 5 on every value (650
    # values: 0.12 is four standard errors); unseeded, the protocol's clients and server share one key a round
    from fedlab.experiment.runner import final_weights

    clean = ExperimentConfig(**{**BASE, "rounds": 1, "seed": 1, "noise_multiplier": 0.0, "secure_protocol": protocol})
    noisy = clean.replace(noise_multiplier=1.0)
    base, released = run_experiment(clean, progress=False), run_experiment(noisy, progress=False)
    assert released.clients_this_round.tolist()[0] >= 2
    moved = np.concatenate([(a - b).ravel() for a, b in zip(final_weights(released), final_weights(base))])
    assert np.std(moved) == pytest.approx(0.2, rel=0.12) and abs(np.mean(moved)) < 0.2 * 4 / math.sqrt(650)
    unseeded = run_experiment(clean.replace(noise_source="unseeded"), progress=False, results_cache=None)
    params = aggregation.ddp_parameters_of(clean, 650)
    for a, b in zip(final_weights(unseeded), final_weights(base)):  # rounded with other keys, decoded right
        np.testing.assert_allclose(a, b, atol=20 / params.scale / clean.clients_per_round)


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_on_the_protocol_the_shares_sum_to_tffs_mean_without_noise_and_repeat_with_it(algorithm):
    # without noise, the protocol's sum of the rounded updates decodes to the clipped mean as TFF's secure sum does
    # (each coordinate within the rounding's steps: the two round with different keys); with noise, the same seed
    # gives the same model (fedavg) and the epsilon is the Skellam sum's, as on TFF's sum
    from fedlab.experiment.runner import final_weights

    config = ExperimentConfig(**{**BASE, "noise_multiplier": 0.0, "algorithm": algorithm, "seed": 1})
    tffs, protocols = (run_experiment(config.replace(secure_protocol=p), progress=False) for p in ("none", "secagg"))
    assert protocols.clients_this_round.tolist() == tffs.clients_this_round.tolist()
    assert min(protocols.clients_this_round) >= 2  # summed by the protocol, not a lone client
    params = aggregation.ddp_parameters_of(config, 650)
    for a, b in zip(final_weights(tffs), final_weights(protocols)):
        np.testing.assert_allclose(a, b, atol=40 / params.scale / config.clients_per_round)  # 40 steps of 1/(s K)
        assert not np.array_equal(a, b)
    if algorithm != "fedavg":
        return
    noisy = config.replace(noise_multiplier=0.5, secure_protocol="secagg")
    first, again = run_experiment(noisy, progress=False), run_experiment(noisy, progress=False, results_cache=None)
    assert all(np.array_equal(a, b) for a, b in zip(final_weights(first), final_weights(again)))
    expected = accounting.ddp_epsilon_by_round(aggregation.ddp_parameters_of(noisy, 650), noisy.sampling_probability,
                                               noisy.rounds, noisy.effective_delta)
    np.testing.assert_allclose(first.epsilon, expected, rtol=1e-12)  # the Skellam sum's, as on TFF's sum


def test_a_device_that_may_be_offline_is_refused_before_training(tmp_path):
    import fedlab as fl

    table = tmp_path / "devices.csv"
    rows = ["client,examples_per_second,down_mbps,up_mbps,availability"]
    rows += [f"{c},100,10,10,{0.5 if c == 3 else 1.0}" for c in range(10)]
    table.write_text("\n".join(rows) + "\n")
    from fedlab.systems.systems import DEVICE_PROFILES

    fl.register_device_table("half_online_ddp", table, replace=True)
    try:
        with pytest.raises(ConfigError, match="^device_profile: must keep every client online with dp='distributed', "
                                              "but 'half_online_ddp' gives client 3 availability 0.5"):
            run_experiment(ExperimentConfig(**{**BASE, "device_profile": "half_online_ddp"}), progress=False)
        # a client left out of the population sends no share, and may be offline
        quiet = ExperimentConfig(**{**BASE, "device_profile": "half_online_ddp", "exclude_clients": (3,),
                                    "rounds": 1})
        assert list(run_experiment(quiet, progress=False)["round"]) == [1]
    finally:
        DEVICE_PROFILES._entries.pop("half_online_ddp", None)


def test_the_studies_epsilon_is_the_runs_and_central_dp_under_the_general_bound_is_looser():
    from fedlab import privacy

    config = ExperimentConfig(**BASE)
    history = run_experiment(config, progress=False)
    assert privacy.user_level_epsilon(config) == pytest.approx(history.epsilon.iloc[-1], rel=1e-12)
    assert privacy.user_level_epsilon(config, bound="general") == privacy.user_level_epsilon(config)
    central = config.replace(dp="fixed", secure_aggregation=False, quantization_bits=0)
    exact = privacy.user_level_epsilon(central)
    assert exact == pytest.approx(accounting.epsilon(0.5, 0.5, 2, config.effective_delta), rel=1e-12)
    assert exact < privacy.user_level_epsilon(central, bound="general") < 1.5 * exact
    assert privacy.user_level_epsilon(central, bound="general") == accounting.general_bound_epsilon(
        0.5, 0.5, 2, config.effective_delta)
    with pytest.raises(ConfigError, match="^bound: must be 'tightest' or 'general', got 'exact'"):
        privacy.user_level_epsilon(central, bound="exact")
