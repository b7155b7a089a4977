"""User-level DP stacked on what it used to refuse (issue #33): a robust statistic under central DP (robust
aggregate, then noise at the statistic's sensitivity), and an adaptive clip on TFF's secure sum and on the
SecAgg/SecAgg+ protocol."""

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
    # Multi-Krum keeps K - floor(0.2 K) = 4 of a round of the expected K = 5
    "multikrum": (lambda a: krum(a, fraction_count(0.2, len(a)), 4), aggregation.krum_sensitivity),
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


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum"])
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
    # a fraction within 1e-9 of a half trims everything at even n: the factory takes the median (norm <= sqrt 2 C)
    # and at odd n keeps one value (sqrt(n / 1)): 2 sqrt(9) at n <= 10
    assert aggregation.trimmed_mean_sensitivity(0.4999999999, 10) == pytest.approx(6.0)


def test_the_noise_of_a_statistic_is_built_for_the_clients_it_may_see():
    """The process cache must not hand a statistic sized for fewer clients to a config with more."""
    config = ExperimentConfig(dp="fixed", noise_multiplier=1.0, robust="trimmed_mean", robust_fraction=0.1,
                              num_clients=8, clients_per_round=4)
    more = config.replace(num_clients=20)
    assert aggregation.dp_statistic(config)[1] != aggregation.dp_statistic(more)[1]
    assert aggregation.aggregator_key(config) != aggregation.aggregator_key(more)


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


@pytest.mark.parametrize("robust", ["median", "trimmed_mean", "krum", "multikrum"])
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


def test_an_adaptive_clip_moves_as_under_the_mean_with_a_statistic_of_the_clipped_updates():
    """No noise: round 1 takes the median at the first clip C = 1, and the clip steps by exp(-0.2 (b - q)) with b
    the share of updates at or below it (TF Privacy's rule, as for the mean); round 2 uses the new clip."""
    config = ExperimentConfig(dp="adaptive", noise_multiplier=0.0, clip_norm=1.0, robust="median", num_clients=10,
                              clients_per_round=3, target_quantile=0.5)
    values = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32), np.array([0.0, 1.0], np.float32)]
    factory = aggregation.make_aggregator(config)
    factory.count_stddev = 0.0  # the count's noise off too, to follow the clip by hand
    (first, clip1), (second, clip2) = _process(factory, 2, 2, values)
    np.testing.assert_allclose(first, coordinate_median(np.stack([[0.6, 0.8], values[1], values[2]])), atol=1e-6)
    assert clip1 == 1.0
    new_clip = math.exp(-0.2 * (2 / 3 - 0.5))  # norms 5, 0.5, 1.0: two at or below 1
    assert clip2 == pytest.approx(new_clip, rel=1e-6)
    np.testing.assert_allclose(second, coordinate_median(np.stack([v * min(1.0, new_clip / np.linalg.norm(v))
                                                                   for v in values])), atol=1e-6)


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
    # updates far above the first clip C = 1 and mostly along one axis, a target of 0.9: the clip grows past C,
    # so a clipped update's largest coordinate leaves the range [-C, C] that sized the secure sum (at 0 bits), and
    # four of them the ring of four clients' b-bit values (16 bits)
    base = ExperimentConfig(dp="adaptive", noise_multiplier=0.5, clip_norm=1.0, num_clients=4, clients_per_round=4,
                            target_quantile=0.9)
    secure = base.replace(secure_aggregation=True, quantization_bits=bits)
    rng = np.random.default_rng(3)
    values = [((np.eye(30)[0] + 0.1 * v) / np.linalg.norm(np.eye(30)[0] + 0.1 * v) * s).astype(np.float32)
              for v, s in zip(rng.normal(size=(4, 30)), [6.0, 8.0, 10.0, 12.0])]
    clear = _process(aggregation.make_aggregator(base), 30, 6, values)
    with simulated_secure_sums(True):  # what the runner runs TFF's secure sums in (the C++ runtime has none)
        hidden = _process(aggregation.make_aggregator(secure), 30, 6, values)
    clips = [c for _, c in clear]
    assert [c for _, c in hidden] == clips and len(set(clips)) == 6  # the clip moves every round, the same way
    assert clips[-1] > 1.5  # and leaves the first clip's range behind
    for (a, clip), (b, _) in zip(clear, hidden):  # mean error: K half-steps of C_t / (2^15 - 1), over K
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


def test_an_adaptive_clip_on_the_protocol_steps_by_tf_privacys_rule_by_hand():
    from fedlab.rounds.secure_rounds import ProtocolSum

    z_v, s = aggregation.adaptive_noise_split(1.0, 4)
    assert s == 1.0 and z_v ** -2 + (2 * s) ** -2 == pytest.approx(1.0)  # composed back to the config's z
    protocol = ProtocolSum("secagg", 8, 2.0, 4, noise_stddev=z_v * 2.0, denominator=4.0, adaptive=True,
                           target_quantile=0.9, count_stddev=0.0)
    # 3 of 4 clients at or below C_t = 1.5: b = 0.75, C_t exp(-0.2 (0.75 - 0.9))
    assert protocol.next_clip(1.5, 3, 4, None) == pytest.approx(1.5 * math.exp(0.2 * 0.15), rel=1e-7)
    assert protocol.next_clip(1.5, 0, 0, None) == pytest.approx(1.5 * math.exp(-0.2 * (0.5 - 0.9)), rel=1e-7)
    assert protocol.constants(1.5) == (np.float32(1.5), np.float32(127 / 1.5))
    assert protocol.divisor(3, 1.5) == np.float32(4 * 2.0 / 1.5)  # K, in units of the first clip
    noisy = ProtocolSum("secagg", 8, 2.0, 4, denominator=4.0, adaptive=True, count_stddev=1.0)
    moves = [noisy.next_clip(1.0, 2, 4, seed) for seed in range(2000)]
    assert moves[:3] == [noisy.next_clip(1.0, 2, 4, seed) for seed in range(3)]  # seeded by the round
    fractions = 0.5 - np.log(np.asarray(moves, np.float64)) / 0.2  # b = 0.5 + N(0, 1) / 4, clipped to [0, 1]
    inside = (fractions > 1e-6) & (fractions < 1 - 1e-6)
    assert len(set(np.asarray(moves)[inside])) == inside.sum() > 1800  # a fresh draw each round
    assert np.mean(fractions[inside] - 0.5) == pytest.approx(0.0, abs=0.02)
    assert np.mean(fractions <= 1e-6) == pytest.approx(0.0228, abs=0.01)  # P(N(0, 1) / 4 < -0.5)
    with pytest.raises(ValueError, match="noise_seed"):
        noisy.next_clip(1.0, 2, 4, None)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])  # the fused protocol round; split, side values
def test_an_adaptive_clip_on_the_protocol_releases_what_tffs_secure_sum_releases(algorithm, monkeypatch):
    """Without noise (z = 0, the count's noise off too): SecAgg under an adaptive clip gives the clips of TFF's
    secure sum under the same adaptive clip (its rule checked by hand above and against the clear sum) and its
    losses within the rounding, in rounds with clients (the seed samples some every round); with noise, the
    protocol's z_v and count noise are TFF's split of z, and both report the same epsilon."""
    from fedlab.experiment import processes

    monkeypatch.setattr(processes, "_PROCESS_CACHE", {})  # built afresh with the count's noise off
    monkeypatch.setattr(aggregation, "adaptive_count_stddev", lambda noise_multiplier, clients_per_round: 0.0)
    base = ExperimentConfig(dataset="digits", model="2nn", algorithm=algorithm, num_clients=8, clients_per_round=4,
                            rounds=6, local_steps=3, dp="adaptive", noise_multiplier=0.0, clip_norm=0.3,
                            target_quantile=0.9, secure_aggregation=True, quantization_bits=12, seed=11)
    on_sum, protocol = (run_experiment(base.replace(secure_protocol=p), progress=False) for p in ("none", "secagg"))
    clips = on_sum.clip_norm_this_round.tolist()
    assert len(set(clips)) == 6 and max(clips) > 0.3  # it moves every round, past the first clip
    np.testing.assert_allclose(protocol.clip_norm_this_round, clips, rtol=1e-5)
    np.testing.assert_allclose(protocol.eval_loss, on_sum.eval_loss, rtol=0, atol=1e-5)
    assert (protocol.secagg_included == protocol.clients_this_round).all()
    monkeypatch.undo()
    noisy = base.replace(noise_multiplier=1.0, rounds=2)
    built = aggregation.make_aggregator(noisy.replace(secure_protocol="secagg"))
    # s = max(0.05 K, z) = 1, z_v = (1 - (2 s)^-2)^-1/2: the noise sizes of TFF's gaussian_adaptive at z = 1
    assert (built.adaptive, built.count_stddev) == (True, 1.0)
    assert built.noise_stddev == pytest.approx(0.3 / math.sqrt(0.75), rel=1e-12)
    assert run_experiment(noisy.replace(secure_protocol="secagg"), progress=False).epsilon.tolist() == \
        run_experiment(noisy, progress=False).epsilon.tolist()


@pytest.mark.parametrize("algorithm", ["fedavg", "fedper"])  # the fused protocol round; split at the updates
def test_an_adaptive_clip_on_the_protocol_resumes_from_a_checkpoint_to_the_uninterrupted_result(algorithm, tmp_path):
    from conftest import interrupt_after

    config = ExperimentConfig(dataset="digits", model="2nn", algorithm=algorithm, num_clients=6, clients_per_round=3,
                              rounds=3, local_steps=2, dp="adaptive", noise_multiplier=0.5, clip_norm=0.5,
                              secure_aggregation=True, secure_protocol="secaggplus", quantization_bits=10, seed=4)
    whole = run_experiment(config, progress=False)
    assert whole.clip_norm_this_round.nunique() == 3  # the clip, in the state, moves every round
    interrupt_after(run_experiment, config, 2, tmp_path)
    resumed = run_experiment(config, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(whole.clip_norm_this_round, resumed.clip_norm_this_round)
    np.testing.assert_array_equal(whole.eval_loss, resumed.eval_loss)
    assert not list(tmp_path.rglob("*damaged*"))


@pytest.mark.parametrize("fused", [True, False])  # trained and encoded in one computation; split at the updates
def test_an_empty_round_under_an_adaptive_clip_on_the_protocol_releases_noise_at_the_current_clip(fused):
    """A round that sampled nobody: the model moves by the round's seeded draw x C_t / C / K (noise z_v C_t over
    K), and the clip by the noised count of nobody."""
    from fedlab.core.runtime import tff
    from fedlab.models.models import ModelSpec
    from fedlab.rounds.array_training import client_training
    from fedlab.rounds.secure_rounds import ProtocolSum
    from fedlab.rounds.split_rounds import SplitRoundProcess

    protocol = ProtocolSum("secagg", 12, 2.0, 4, noise_stddev=3.0, denominator=4.0, adaptive=True,
                           target_quantile=0.8, count_stddev=0.5)
    model = ModelSpec("logreg", num_features=2, num_classes=3).functional_model()
    training = client_training(model, client_lr=0.1, server_optimizer=tff().learning.optimizers.build_sgdm(1.0))
    process = SplitRoundProcess(training, protocol, None if fused else "sign_flip")
    assert process.fused == fused
    state = process.initialize()
    assert float(state.aggregator["clip"]) == 2.0
    state = type(state)(global_model_weights=state.global_model_weights, distributor=state.distributor,
                        client_work=state.client_work, aggregator={"clip": np.float32(0.5)}, finalizer=state.finalizer)
    after, measured = process.empty_round(state, noise_seed=21)
    assert float(measured["dp_query_metrics"]["clip"]) == 0.5  # the round's clip, where TFF's DP factory reports one
    moved = [np.asarray(a) - np.asarray(b) for a, b in zip(process.get_model_weights(after).trainable,
                                                          process.get_model_weights(state).trainable)]
    drawn = protocol.noise([m.shape for m in moved], 21)
    for m, n in zip(moved, drawn):  # the server optimizer steps by -1 x the mean
        np.testing.assert_allclose(-m, n * (0.5 / 2.0) / 4.0, rtol=1e-6, atol=1e-7)
    assert float(after.aggregator["clip"]) == protocol.next_clip(0.5, 0, 0, 21) != 0.5
