"""q-FFL by q-FedAvg (fedlab.algorithms.qffl) against Li et al. 2020's Algorithm 2 computed by hand in NumPy, on a logistic
regression (2 features, 3 classes) and three clients."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.algorithms.algorithms import QFFLParams
from fedlab.rounds.array_training import build_array_process, with_learning_rates
from fedlab.models.models import ModelSpec
from fedlab.algorithms.qffl import build_qffl
from fedlab.core.runtime import simulated_secure_sums, tff
from fedlab.core.validation import ConfigError

from by_hand import BATCH, X, Y, grad, inputs, loss as local_loss

MODEL = ModelSpec("logreg", num_features=2, num_classes=3).functional_model()
RNG = np.random.default_rng(5)
W0 = RNG.normal(size=(2, 3)).astype(np.float32)
B0 = RNG.normal(size=3).astype(np.float32)
def q_fedavg_by_hand(rounds, lr, q, bound=None, seen=None, floor=0.0):
    """Algorithm 2: Delta w_k = L (w - w_k), Delta_k = F_k^q Delta w_k, h_k = q F_k^(q-1) |Delta w_k|^2 + L F_k^q.
    With ``bound`` H (on a secure sum): w - sum_k a_k Delta_k / h_k / max(sum_k a_k, floor), a_k = min(h_k, H) / H;
    ``seen`` collects each round's h_k."""
    lipschitz = 1.0 / lr
    w = [W0.astype(np.float64), B0.astype(np.float64)]
    for sampled in rounds:
        deltas, hs = [], []
        for i in sampled:
            loss = local_loss(*w, X[i], Y[i])  # F_k(w^t) on the whole local data set
            local = list(w)
            for j in range(0, len(X[i]), BATCH):
                gw, gb = grad(*local, X[i][j:j + BATCH], Y[i][j:j + BATCH])
                local = [local[0] - lr * gw, local[1] - lr * gb]
            delta_w = [lipschitz * (a - b) for a, b in zip(w, local)]
            deltas.append([loss ** q * d for d in delta_w])
            hs.append(q * loss ** (q - 1) * sum(float((d * d).sum()) for d in delta_w) + lipschitz * loss ** q)
        if seen is not None:
            seen.append(hs)
        if bound is None:
            w = [w[k] - sum(d[k] for d in deltas) / sum(hs) for k in range(2)]
        else:
            shares = [min(h, bound) / bound for h in hs]
            w = [w[k] - sum(a * d[k] / h for a, d, h in zip(shares, deltas, hs)) / max(sum(shares), floor)
                 for k in range(2)]
    return w


def run(process, rounds, lr):
    weights = tff().learning.models.ModelWeights(trainable=(W0, B0), non_trainable=())
    state = with_learning_rates(process.set_model_weights(process.initialize(), weights), lr)
    for number, sampled in enumerate(rounds):
        extra = dict(clients=sampled) if hasattr(process, "round_inputs") else {}
        if "noise_seed" in getattr(process, "round_inputs", ()):  # seeded DP on a protocol: the round's noise
            extra["noise_seed"] = number
        state = process.next(state, [inputs(i) for i in sampled], **extra).state
    return process.get_model_weights(state).trainable


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_q_fedavg_two_rounds_equal_algorithm_2_by_hand(q):
    lr, rounds = 0.4, [[0, 1, 2], [1, 2]]
    got = run(build_qffl(MODEL, client_lr=lr, server_lr=1.0, params=QFFLParams(q=q)), rounds, lr)
    for a, b in zip(got, q_fedavg_by_hand(rounds, lr, q)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_q_zero_is_fedavg_with_equal_weights():
    lr, rounds = 0.4, [[0, 1, 2], [0, 2]]
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=1.0)
    fedavg = build_array_process(MODEL, client_lr=lr, server_optimizer=optimizer, weighting="uniform",
                                 model_aggregator=tff().aggregators.MeanFactory())
    qffl = build_qffl(MODEL, client_lr=lr, server_lr=1.0, params=QFFLParams(q=0.0))
    for a, b in zip(run(qffl, rounds, lr), run(fedavg, rounds, lr)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("changes, field", [
    (dict(q=-1.0), "q"),
    (dict(q=float("nan")), "q"),
    (dict(client_weighting="uniform"), "client_weighting"),
])
def test_qffl_refuses_bad_settings_in_one_line(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(**{"dataset": "digits", "algorithm": "qffl", **changes})
    assert err.value.field == field and "\n" not in str(err.value)


@pytest.mark.parametrize("robust", ["median", "trimmed_mean", "krum"])
def test_a_robust_statistic_in_place_of_qffls_ratio_of_sums_is_refused(robust):
    from fedlab import ExperimentConfig
    from fedlab.core.validation import ConfigError

    with pytest.raises(ConfigError) as err:
        ExperimentConfig(dataset="digits", algorithm="qffl", robust=robust)
    assert err.value.field == "robust" and "ratio of two sums" in err.value.message and "\n" not in str(err.value)
    ExperimentConfig(dataset="digits", algorithm="qffl", robust="clip")  # clipped updates, then the weighted mean


def _secure(protocol: str, bits: int, clip: float):
    """A secure sum of three clients as the config builds it: TFF's b-bit sum, or the SecAgg protocol."""
    from fedlab.aggregators.aggregation import make_aggregator

    return make_aggregator(fl.ExperimentConfig(dataset="digits", algorithm="qffl", num_clients=3, clients_per_round=3,
                                               secure_aggregation=True, secure_protocol=protocol,
                                               quantization_bits=bits, clip_norm=clip, weight_bound=1.0))


@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_q_fedavg_on_a_secure_sum_is_algorithm_2_with_its_weights_bounded_by_hand(protocol):
    """Each client sends a_k s_k and a_k c (s_k = Delta_k / h_k, a_k = min(h_k, H) / H, c = C / 2), 16-bit codes of
    clip C = 8; the server steps by sum_k a_k s_k / sum_k a_k. H above every h_k: Algorithm 2 itself; H between
    the h_k: the larger ones count as H (tested against both by-hand steps, which differ)."""
    lr, rounds, q = 0.4, [[0, 1, 2], [1, 2]], 2.0
    seen = []
    exact = q_fedavg_by_hand(rounds, lr, q, seen=seen)
    hs = [h for round_hs in seen for h in round_hs]
    for bound in (2 * max(hs), float(np.median(hs))):
        process = build_qffl(MODEL, client_lr=lr, server_lr=1.0, params=QFFLParams(q=q, weight_bound=bound),
                             model_aggregator=_secure(protocol, 16, 8.0))
        with simulated_secure_sums():  # TFF's C++ runtime has no secure-sum intrinsics: their plain bodies
            got = run(process, rounds, lr)
        bounded = q_fedavg_by_hand(rounds, lr, q, bound=bound)
        for a, b in zip(got, bounded):
            np.testing.assert_allclose(a, b, atol=2e-3)  # 16-bit codes: a step of C / 32767 a coordinate
        if bound > max(hs):
            for a, b in zip(got, exact):
                np.testing.assert_allclose(a, b, atol=2e-3)
        else:  # the bound binds: neither Algorithm 2's step nor the uniform mean of the s_k
            assert max(float(np.abs(a - b).max()) for a, b in zip(bounded, exact)) > 2e-2
            assert max(float(np.abs(a - b).max()) for a, b in zip(got, exact)) > 1e-2


def _private(protocol: str, noise: float = 0.0, clip: float = 8.0, dp: str = "fixed"):
    """User-level DP of three clients, all sampled, as the config builds it: TFF's aggregator (fedlab's seeded
    Gaussian), or the SecAgg protocol's server adding the noise (16-bit codes)."""
    from fedlab.aggregators.aggregation import make_aggregator

    secure = {} if protocol == "none" else dict(secure_aggregation=True, secure_protocol=protocol,
                                                 quantization_bits=16)
    return make_aggregator(fl.ExperimentConfig(dataset="digits", algorithm="qffl", num_clients=3, clients_per_round=3,
                                               dp=dp, noise_multiplier=noise, clip_norm=clip, weight_bound=1.0,
                                               **secure))


@pytest.mark.parametrize("dp", ["fixed", "adaptive"])
@pytest.mark.parametrize("protocol", ["none", "secagg"])
def test_q_fedavg_under_user_dp_is_the_bounded_step_over_at_least_one_whole_share_by_hand(protocol, dp):
    """Under user-level DP the pair (a_k s_k, a_k c) is clipped to C and noised together and the server divides by
    max(sum_k a_k, 1): without noise and below the clip, the bounded step of the secure sum, except that a round
    whose shares sum below 1 is divided by 1 (by hand; H twice the largest h_k makes both rounds' shares sum below
    1, H at their median neither). An adaptive clip moves C_t (the protocol's clients encode at C_t and its server
    divides by K C / C_t) while c stays C / 2: the same steps while no pair reaches C_t."""
    lr, rounds, q = 0.4, [[0, 1, 2], [1, 2]], 2.0
    seen = []
    q_fedavg_by_hand(rounds, lr, q, seen=seen)
    hs = [h for round_hs in seen for h in round_hs]
    for bound, floored in ((2 * max(hs), True), (float(np.median(hs)), False)):
        bounded_hs = []  # each round's h_k on the bounded run's own models
        expected = q_fedavg_by_hand(rounds, lr, q, bound=bound, floor=1.0, seen=bounded_hs)
        share_sums = [sum(min(h, bound) / bound for h in round_hs) for round_hs in bounded_hs]
        assert all((total < 1) == floored for total in share_sums), share_sums
        process = build_qffl(MODEL, client_lr=lr, server_lr=1.0, params=QFFLParams(q=q, weight_bound=bound),
                             model_aggregator=_private(protocol, dp=dp))
        got = run(process, rounds, lr)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, atol=2e-3 if protocol != "none" else 1e-5)
        if floored:  # the floor moved the step: dividing by the shares' own sum is another model
            unfloored = q_fedavg_by_hand(rounds, lr, q, bound=bound)
            assert max(float(np.abs(a - b).max()) for a, b in zip(got, unfloored)) > 1e-2


def test_the_noised_shares_are_floored_at_one_whole_share_and_an_empty_round_moves_the_model():
    """The server's step from the aggregated pair: unit c over max(the shares' mean, c / K), K the expected clients
    the noised mean divides by; a share sum the noise pushed to 0 or below divides by c / K, not by ~0 or a
    negative number."""
    process = build_qffl(MODEL, client_lr=0.4, server_lr=1.0, params=QFFLParams(q=1.0, weight_bound=10.0),
                         model_aggregator=_private("none", noise=1.0))
    assert process.noised_count == 3.0 and process._side_unit == 4.0
    update_part, _ = process._split_computations(process.value_type)
    step = (np.ones((2, 3), np.float32), np.full(3, 2.0, np.float32))
    for side, factor in ((-0.5, 3.0), (0.0, 3.0), (1.0, 3.0), (8.0, 0.5)):  # 4 / max(side, 4 / 3)
        got = update_part(step + (np.float32(side),))
        for a, b in zip(got, step):
            np.testing.assert_allclose(a, factor * b, rtol=1e-6)
    weights = tff().learning.models.ModelWeights(trainable=(W0, B0), non_trainable=())
    state = with_learning_rates(process.set_model_weights(process.initialize(), weights), 0.4)
    moved, _ = process.empty_round(state)  # the noise of nobody's pair, released as in any round
    for a, b in zip(process.get_model_weights(moved).trainable, (W0, B0)):
        assert np.all(np.isfinite(a)) and np.all(a != b)


def test_q_fedavg_under_user_dp_needs_a_public_weight_bound():
    for dp in ("fixed", "adaptive"):
        base = dict(dataset="digits", algorithm="qffl", dp=dp, noise_multiplier=1.0)
        with pytest.raises(ConfigError) as err:
            fl.ExperimentConfig(**base)
        assert err.value.field == "weight_bound" and "DP-FedAvg caps" in err.value.message
        fl.ExperimentConfig(**base, weight_bound=50.0)
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(dataset="digits", algorithm="qffl", secure_aggregation=True, secure_protocol="ckks")
    assert err.value.field == "secure_protocol" and "not split" in err.value.message


def test_q_fedavg_on_a_secure_sum_needs_a_public_weight_bound_and_bits():
    base = dict(dataset="digits", algorithm="qffl", secure_aggregation=True)
    for changes, field in [({"quantization_bits": 8}, "weight_bound"), ({"weight_bound": 50.0}, "quantization_bits"),
                           ({}, "weight_bound"), ({"weight_bound": 50.0, "quantization_bits": 4}, "quantization_bits"),
                           ({"weight_bound": 50.0, "quantization_bits": 2, "secure_protocol": "secagg"},
                            "quantization_bits")]:
        with pytest.raises(ConfigError) as err:
            fl.ExperimentConfig(**base, **changes)
        assert err.value.field == field and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^weight_bound: has no effect without a secure sum"):
        fl.ExperimentConfig(dataset="digits", algorithm="qffl", weight_bound=50.0)
    for protocol in ("none", "secagg", "secaggplus"):
        fl.ExperimentConfig(**base, secure_protocol=protocol, quantization_bits=8, weight_bound=50.0)


def test_a_checkpoint_saved_before_weight_bound_existed_resumes_and_another_q_does_not(tmp_path):
    """A parameter added since a run's checkpoint was saved had its default in force then (as a config field)."""
    import json

    from fedlab.core.storage import Checkpoint, CheckpointMismatchError, write_sealed

    config = fl.ExperimentConfig(dataset="digits", algorithm="qffl", q=2.0)
    saved = json.loads(config.to_json())
    del saved["weight_bound"]
    folder = tmp_path / "run"
    folder.mkdir()
    write_sealed(folder / "config.json", json.dumps(saved), "checkpoint/config.json")
    Checkpoint(folder, config)  # the same run
    with pytest.raises(CheckpointMismatchError, match=r"other settings \(q\)"):
        Checkpoint(folder, config.replace(q=1.0))


def test_a_panel_gives_weight_bound_a_number_box_not_a_slider_of_hundred_steps():
    panel = fl.ExperimentPanel(fl.ExperimentConfig(dataset="digits", algorithm="qffl"), ["q", "weight_bound"])
    assert type(panel.controls["weight_bound"]).__name__ == "BoundedFloatText"
    assert panel.controls["weight_bound"].value == 0.0 and panel.controls["weight_bound"].max == 1e9
    assert type(panel.controls["q"]).__name__ == "FloatSlider"


def _loss_inputs(client: int, key: int, batch: int) -> dict:
    """Client ``client``'s input with its DP-SGD key ``(key, 7)`` and expected batch ``batch``."""
    data = inputs(client)
    data["key"], data["batch"] = np.array([key, 7], np.int64), np.int64(batch)
    return data


def _noised_losses(bound: float, z: float, data: list) -> np.ndarray:
    """q-FFL's loss under record-level DP (noise multiplier z, loss bound B) of each input at (W0, B0)."""
    from fedlab.rounds.array_training import pack_clients

    process = build_qffl(MODEL, client_lr=0.4, server_lr=1.0, params=QFFLParams(q=1.0, loss_clip=bound),
                         example_dp=(z, 1.0))
    weights = tff().learning.models.ModelWeights(trainable=(W0, B0), non_trainable=())
    return np.array(process._losses_fn(weights, pack_clients(data, process.data_type)), np.float64)


def test_q_fedavg_under_record_dp_weighs_by_a_noised_sum_of_clipped_losses_by_hand():
    """Under dp='example' F_k is released as a DP-SGD step releases a gradient: a Poisson sample of the records at
    rate batch / n, each record's loss clipped to [0, B], the sum plus N(0, (z B)^2), over the expected batch."""
    per_record = [local_loss(W0, B0, X[1][j:j + 1], Y[1][j:j + 1]) for j in range(3)]  # client 1's three records
    n = len(per_record)
    everyone = [_loss_inputs(1, key, batch=n) for key in range(2)]  # rate 1: every record
    np.testing.assert_allclose(_noised_losses(1e3, 0.0, everyone), np.mean(per_record), rtol=1e-5)
    bound = float(np.median(per_record))  # clips the largest of the three
    np.testing.assert_allclose(_noised_losses(bound, 0.0, everyone), np.mean(np.minimum(per_record, bound)),
                               rtol=1e-5)
    assert np.mean(np.minimum(per_record, bound)) < np.mean(per_record) - 1e-3
    # the noise: z B over the expected batch, each client's draw its own
    z, draws = 2.0, _noised_losses(bound, 2.0, [_loss_inputs(1, key, batch=n) for key in range(300)])
    errors = draws - np.mean(np.minimum(per_record, bound))
    assert abs(np.std(errors) / (z * bound / n) - 1) < 0.15 and abs(np.mean(errors)) < 4 * z * bound / n / 300 ** 0.5
    # the Poisson sample: one record expected of three, an unbiased estimate of the clipped mean
    sampled = _noised_losses(1e3, 0.0, [_loss_inputs(1, key, batch=1) for key in range(300)])
    assert len(np.unique(sampled.round(6))) > 3 and set(np.unique(sampled.round(6))) <= {
        round(float(v), 6) for v in (0.0, *per_record, *(a + b for a in per_record for b in per_record if a != b),
                                     sum(per_record))}
    assert abs(np.mean(sampled) / np.mean(per_record) - 1) < 0.15


def test_q_fedavg_under_record_dp_counts_its_loss_as_one_more_dp_sgd_step():
    from fedlab.experiment.clients import dp_sgd_steps

    base = dict(dataset="digits", model="logreg", dp="example", noise_multiplier=1.0, batch_size=10)
    qffl = fl.ExperimentConfig(**base, algorithm="qffl", loss_clip=5.0)
    fedavg = fl.ExperimentConfig(**base, algorithm="fedavg")
    for n in (40, 57):
        steps, batch = dp_sgd_steps(n, fedavg)
        assert dp_sgd_steps(n, qffl) == (steps + 1, batch)
    with pytest.raises(ConfigError, match="^loss_clip: has no effect without dp='example'"):
        fl.ExperimentConfig(dataset="digits", algorithm="qffl", loss_clip=5.0)


def test_under_record_dp_each_clients_loss_is_drawn_with_a_key_of_its_own_not_its_dp_sgd_steps():
    """between() hands the loss computation each client's input rekeyed (array_training.rekeyed): its Poisson
    sample and noise are not those of the client's first DP-SGD step, which its own key draws."""
    from fedlab.rounds.array_training import pack_clients, rekeyed

    process = build_qffl(MODEL, client_lr=0.4, server_lr=1.0, params=QFFLParams(q=1.0, loss_clip=5.0),
                         example_dp=(1.0, 1.0))
    seen = []
    process._losses_fn = lambda weights, data: seen.extend(data) or [1.0] * len(data)
    weights = tff().learning.models.ModelWeights(trainable=(W0, B0), non_trainable=())
    state = with_learning_rates(process.set_model_weights(process.initialize(), weights), 0.4)
    data = [_loss_inputs(c, key=11 + c, batch=1) for c in (0, 1)]
    updates = [(np.ones((2, 3), np.float32), np.ones(3, np.float32)) for _ in data]
    process.between(state, [0, 1], data, updates, [np.float32(1.0)] * 2)
    own = [rekeyed(pack_clients([d], process.data_type)[0], process.LOSS_KEY)["plan"][3:5] for d in data]
    for got, mine, original in zip(seen, own, data):
        np.testing.assert_array_equal(got["plan"][3:5], mine)
        assert not np.array_equal(got["plan"][3:5], original["key"])
    with pytest.raises(ValueError, match="^loss_clip: q-FFL under record-level DP needs"):
        build_qffl(MODEL, client_lr=0.4, server_lr=1.0, params=QFFLParams(q=1.0), example_dp=(1.0, 1.0))


def test_q_fedavg_under_record_dp_on_secagg_with_a_weight_bound_runs():
    """Both bounds at once: the noised loss (record-level DP) and the weight's share on the protocol's sum."""
    config = fl.ExperimentConfig(dataset="digits", model="logreg", algorithm="qffl", num_clients=6,
                                 clients_per_round=3, rounds=2, batch_size=10, dp="example", noise_multiplier=1.0,
                                 loss_clip=5.0, secure_aggregation=True, secure_protocol="secagg",
                                 quantization_bits=16, weight_bound=100.0)
    history = fl.run_experiment(config, progress=False)
    assert np.isfinite(history["eval_loss"]).all() and (history["epsilon"] > 0).all()
    fedavg = fl.run_experiment(config.replace(algorithm="fedavg", algorithm_params=None, secure_aggregation=False,
                                              secure_protocol="none", quantization_bits=0), progress=False)
    assert (history["epsilon"] > fedavg["epsilon"]).all()  # the loss's release: one more step a round


def test_a_non_finite_record_loss_counts_as_the_bound():
    data = _loss_inputs(1, key=3, batch=3)
    data["x"] = data["x"].copy()
    data["x"][0, 0] = np.nan  # its record's loss is NaN
    per_record = [local_loss(W0, B0, X[1][j:j + 1], Y[1][j:j + 1]) for j in (1, 2)]
    bound = 10.0
    np.testing.assert_allclose(_noised_losses(bound, 0.0, [data]), (bound + sum(per_record)) / 3, rtol=1e-5)


def test_qffl_refusals_under_dp_come_in_the_order_that_helps():
    from fedlab.aggregators import aggregation

    assert QFFLParams(1.0, 100.0).weight_bound == 100.0  # positional use as before loss_clip was added
    with pytest.raises(ConfigError, match="^q: must be 0 or at least 1 with qffl and dp='example'"):
        fl.ExperimentConfig(dataset="digits", model="logreg", algorithm="qffl", dp="example", noise_multiplier=1.0,
                            batch_size=10, loss_clip=5.0, q=0.5)

    @fl.register_aggregator("dp_of_its_own", role="dp")
    def _own(noise_multiplier, clients_per_round, clip_norm, target_quantile=0.5, *, seeded=True):
        return aggregation.dp_fixed(noise_multiplier, clients_per_round, clip_norm, seeded=seeded)

    try:  # a registered DP aggregator is not known to clip the whole pair and divide by K: dp, before weight_bound
        with pytest.raises(ConfigError, match="^dp: must be 'fixed' or 'adaptive' with qffl"):
            fl.ExperimentConfig(dataset="digits", algorithm="qffl", dp="dp_of_its_own", noise_multiplier=1.0)
    finally:
        aggregation.AGGREGATORS._entries.pop("dp_of_its_own", None)
