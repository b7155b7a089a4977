"""User-level DP stacked on what it used to refuse (issue #33): a robust statistic under central DP (robust
aggregate, then noise at the statistic's sensitivity), and an adaptive clip on TFF's secure sum."""

import math

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.aggregators import aggregation
from fedlab.aggregators.robust import coordinate_median, fraction_count, krum, trimmed_mean
from fedlab.core.runtime import simulated_secure_sums
from fedlab.core.validation import ConfigError

STATISTICS = {
    "median": (coordinate_median, aggregation.median_sensitivity),
    "trimmed_mean": (lambda a: trimmed_mean(a, 0.2), aggregation.trimmed_mean_sensitivity),
    "krum": (lambda a: krum(a, fraction_count(0.2, len(a))), aggregation.krum_sensitivity),
}


def _rounds(rng, trials):
    """Rounds of 1..9 updates of norm <= 1 (some at 1, some inside), Gaussian, signs or one-signed."""
    for _ in range(trials):
        n, d = int(rng.integers(1, 10)), int(rng.integers(1, 6))
        a = rng.normal(size=(n, d))
        kind = rng.integers(3)
        if kind == 1:
            a = np.sign(a) * (rng.random((n, d)) < 0.5)
        elif kind == 2:
            a = np.abs(a) * np.where(rng.random((n, 1)) < 0.5, 1.0, -1.0)
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        yield a / np.where(norms == 0, 1.0, norms) * np.where(rng.random((n, 1)) < 0.5, 1.0, rng.random((n, 1)))


@pytest.mark.parametrize("name", STATISTICS)
def test_one_update_added_or_removed_moves_a_statistic_by_at_most_its_sensitivity(name):
    statistic, sensitivity = STATISTICS[name]
    bound = sensitivity(0.2, 10)
    worst = 0.0
    for rows in _rounds(np.random.default_rng(0), 4000):
        before = statistic(rows[:-1]) if len(rows) > 1 else np.zeros(rows.shape[1])  # no update: 0
        worst = max(worst, float(np.linalg.norm(statistic(rows) - before)))
    assert worst <= bound + 1e-9
    # the mean's sensitivity (C, with the noise then divided by K) would not cover Krum: it moves by 2C
    assert worst > (1.9 if name == "krum" else 0.9)


def test_the_sensitivities_by_hand():
    assert aggregation.median_sensitivity(0.2, 10) == pytest.approx((1 + math.sqrt(2)) / 2)
    # fraction 0.2: n = 5 trims 1 a side (5 / 3), n = 10 trims 2 (10 / 6), n = 15 trims 3 (15 / 9): the most is 5 / 3
    assert aggregation.trimmed_mean_sensitivity(0.2, 10) == pytest.approx(2 * math.sqrt(5 / 3))
    assert aggregation.trimmed_mean_sensitivity(0.2, 4) == pytest.approx(2.0)  # nothing trimmed below 5: the mean
    assert aggregation.krum_sensitivity(0.2, 10) == 2.0


def _process(factory, dim, rounds, values, seed=5):
    from fedlab.core.runtime import tff

    t = tff()
    process = factory.create(t.types.TensorType(np.float32, [dim]))
    state = process.initialize()
    state["noise_seed"] = np.asarray([seed, 0], np.int64)
    outputs = []
    for _ in range(rounds):
        out = process.next(state, values)
        state = out.state
        outputs.append((np.asarray(out.result), float(out.measurements["dp_query_metrics"]["clip"])))
    return outputs


@pytest.mark.parametrize("robust", ["median", "trimmed_mean", "krum"])
def test_dp_on_a_statistic_takes_it_of_the_clipped_updates_and_noises_it_at_z_s_c(robust):
    config = ExperimentConfig(dp="fixed", noise_multiplier=0.0, clip_norm=1.0, robust=robust, num_clients=10,
                              clients_per_round=5)
    rng = np.random.default_rng(1)
    values = [(v * s).astype(np.float32) for v, s in zip(rng.normal(size=(5, 6)), [0.1, 3.0, 0.2, 9.0, 0.4])]
    clipped = np.stack([v * min(1.0, 1.0 / np.linalg.norm(v)) for v in values])
    [(result, clip)] = _process(aggregation.make_aggregator(config), 6, 1, values)
    np.testing.assert_allclose(result, STATISTICS[robust][0](clipped), atol=1e-6)  # no division by K
    assert clip == 1.0
    # zero updates and z = 2, C = 0.5: the statistic is 0, the release pure noise of std z s C (20,000 draws)
    noisy = config.replace(noise_multiplier=2.0, clip_norm=0.5)
    _, sensitivity = aggregation.dp_statistic(noisy)
    assert sensitivity == STATISTICS[robust][1](0.2, 10)
    [(noise, _)] = _process(aggregation.make_aggregator(noisy), 20_000, 1, [np.zeros(20_000, np.float32)] * 5)
    assert noise.std() == pytest.approx(2.0 * sensitivity * 0.5, rel=0.03)
    # unseeded: fresh noise each time, of the same size
    fresh = aggregation.make_aggregator(noisy.replace(noise_source="unseeded"))
    [(a, _)], [(b, _)] = (_process(fresh, 20_000, 1, [np.zeros(20_000, np.float32)] * 5) for _ in range(2))
    assert not np.allclose(a, b) and a.std() == pytest.approx(2.0 * sensitivity * 0.5, rel=0.03)


def test_dp_on_a_statistic_of_compressed_updates_takes_it_of_what_the_clients_sent():
    from fedlab.aggregators.seeded import quantizing_sum
    from fedlab.core.runtime import tff

    rng = np.random.default_rng(2)
    values = [(v / np.linalg.norm(v) * s).astype(np.float32) for v, s in zip(rng.normal(size=(5, 40)),
                                                                                [0.5, 0.9, 0.2, 0.99, 0.7])]
    config = ExperimentConfig(dp="fixed", noise_multiplier=0.0, clip_norm=1.0, robust="median", num_clients=10,
                              clients_per_round=5, quantization_bits=2)
    encode = quantizing_sum(2).client_map(tff().types.TensorType(np.float32, [40]))
    sent = np.stack([np.asarray(encode(v)) for v in values])
    assert np.all(np.linalg.norm(sent, axis=1) <= np.linalg.norm(values, axis=1) * (1 + 1e-6))  # within C
    [(result, _)] = _process(aggregation.make_aggregator(config), 40, 1, values)
    np.testing.assert_allclose(result, coordinate_median(sent), atol=1e-6)


@pytest.mark.parametrize("bits", [16, 0])
def test_an_adaptive_clip_on_a_secure_sum_releases_what_it_releases_in_the_clear(bits):
    """Same seed, same noise: the secure sum (updates in units of the first clip, bits summed securely) gives the
    clear sum's clips exactly and its means within the rounding of a secure sum (K x half a step of C_t / 2^15)."""
    base = ExperimentConfig(dp="adaptive", noise_multiplier=0.5, clip_norm=1.0, num_clients=10, clients_per_round=4)
    secure = base.replace(secure_aggregation=True, quantization_bits=bits)
    rng = np.random.default_rng(3)
    values = [(v / np.linalg.norm(v) * s).astype(np.float32) for v, s in zip(rng.normal(size=(4, 30)),
                                                                                [0.3, 2.0, 0.6, 5.0])]
    clear = _process(aggregation.make_aggregator(base), 30, 4, values)
    with simulated_secure_sums(True):  # what the runner runs TFF's secure sums in (the C++ runtime has none)
        hidden = _process(aggregation.make_aggregator(secure), 30, 4, values)
    clips = [c for _, c in clear]
    assert [c for _, c in hidden] == clips and len(set(clips)) == 4  # the clip moves every round, the same way
    for (a, clip), (b, _) in zip(clear, hidden):
        step = clip / (2 ** 15 - 1) if bits else 2 * clip / (2 ** 32 - 1)
        np.testing.assert_allclose(b, a, atol=4 * step / 2 / 4 + 1e-6)


def test_dp_on_a_statistic_reports_the_epsilon_of_dp_alone_and_is_refused_where_it_cannot_run():
    base = ExperimentConfig(dataset="digits", model="logreg", num_clients=10, clients_per_round=3, rounds=2,
                            batch_size=10, dp="fixed", noise_multiplier=0.5, clip_norm=1.0, delta=1e-5)
    plain, median = (run_experiment(c, progress=False) for c in (base, base.replace(robust="median")))
    assert median.epsilon.tolist() == plain.epsilon.tolist()
    assert np.isfinite(median.eval_loss).all()
    with pytest.raises(ConfigError, match="^robust: 'median' needs each client's update as it is, which "
                                          "secure_aggregation hides"):
        base.replace(robust="median", secure_aggregation=True)
    import fedlab as fl

    @fl.register_aggregator("boundless", role="robust", replaces_mean=True)
    def _boundless(clip_norm, inner):
        return aggregation.robust_median(clip_norm, inner)

    try:
        with pytest.raises(ConfigError, match="^robust: 'boundless' states no bound on how far one update moves"):
            base.replace(robust="boundless")
        base.replace(robust="boundless", dp="none", noise_multiplier=0.0)  # without DP it needs none
    finally:
        aggregation.AGGREGATORS._entries.pop("boundless", None)
