"""Rounds split at the clients' updates (fedlab.rounds.split_rounds): update attacks and SCAFFOLD, checked against
NumPy computations by hand on a logistic regression (2 features, 3 classes, softmax cross-entropy)."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.rounds import attacks
from fedlab.rounds.array_training import build_array_process, client_training
from fedlab.experiment.clients import Clients, spec_for
from fedlab.models.models import ModelSpec
from fedlab.core.runtime import tff
from fedlab.algorithms.scaffold import build_scaffold
from fedlab.rounds.split_rounds import SplitRoundProcess
from fedlab.core.validation import ConfigError

from by_hand import BATCH, X, Y, grad, inputs

SPEC = ModelSpec("logreg", num_features=2, num_classes=3)
MODEL = SPEC.functional_model()
RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(2, 3)).astype(np.float32)
B0 = RNG.normal(size=3).astype(np.float32)
def start(process, lr):
    from fedlab.rounds.array_training import with_learning_rates

    weights = tff().learning.models.ModelWeights(trainable=(W0, B0), non_trainable=())
    state = process.set_model_weights(process.initialize(), weights)
    return with_learning_rates(state, lr)


def local_sgd(w, b, i, lr, correction=(0.0, 0.0)):
    """Client i's SGD from (w, b) over its batches in order, each gradient plus ``correction``; the update w0 - w
    (TFF's sign) and the steps taken."""
    w1, b1 = w.astype(np.float64), b.astype(np.float64)
    steps = 0
    for j in range(0, len(X[i]), BATCH):
        gw, gb = grad(w1, b1, X[i][j:j + BATCH], Y[i][j:j + BATCH])
        w1, b1 = w1 - lr * (gw + correction[0]), b1 - lr * (gb + correction[1])
        steps += 1
    return (w - w1, b - b1), steps


# Update attacks -----------------------------------------------------------------------------------


def test_sign_flip_and_alie_by_hand():
    honest = np.array([[0.0, 2.0], [2.0, 4.0]], np.float32)
    np.testing.assert_array_equal(attacks.sign_flip(honest, clients=10, boost=3, rng=None), [[-0.0, -6.0], [-6.0, -12.0]])
    # ALIE: n = 10 clients, m = 2 attackers: s = floor(10/2 + 1) - 2 = 4, z = Phi^-1((10 - 4) / 10) = 0.2533471
    assert attacks.alie_z(10, 2) == pytest.approx(0.2533471, abs=1e-6)
    assert attacks.alie_z(50, 12) == pytest.approx(0.5828415, abs=1e-6)  # s = 14, Phi^-1(0.72)
    assert attacks.alie_z(10, 0) == 0.0  # s = 6: the median is honest, no shift passes unseen
    forged = attacks.a_little_is_enough(honest, clients=10, boost=1, rng=None)
    z = 0.2533471  # mean (1, 3), standard deviation (1, 1)
    np.testing.assert_allclose(forged, [[1 - z, 3 - z], [1 - z, 3 - z]], atol=1e-6)


def test_gaussian_noise_is_as_large_as_boost_times_the_honest_update():
    honest = np.stack([np.full(20_000, 0.5, np.float32), np.full(20_000, -2.0, np.float32)])
    forged = attacks.gaussian(honest, clients=10, boost=3, rng=np.random.default_rng(1))
    assert forged.shape == honest.shape and forged.dtype == np.float32
    np.testing.assert_allclose(forged.std(axis=1), [1.5, 6.0], rtol=0.02)
    assert abs(forged.mean(axis=1)).max() < 0.1


def test_a_split_round_without_attackers_equals_the_one_computation_round():
    lr = 0.5
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=0.8)
    mean = tff().aggregators.MeanFactory()
    one = build_array_process(MODEL, client_lr=lr, server_optimizer=optimizer, model_aggregator=mean)
    split = SplitRoundProcess(client_training(MODEL, client_lr=lr, server_optimizer=optimizer), mean)
    states = [start(one, lr), start(split, lr)]
    for _ in range(2):
        states = [one.next(states[0], [inputs(0), inputs(1)]).state, split.next(states[1], [inputs(0), inputs(1)]).state]
    for a, b in zip(one.get_model_weights(states[0]).trainable, split.get_model_weights(states[1]).trainable):
        np.testing.assert_array_equal(a, b)


def test_a_sign_flipping_attacker_moves_the_mean_by_hand():
    lr, server_lr, boost = 0.5, 0.8, 3
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    process = SplitRoundProcess(client_training(MODEL, client_lr=lr, server_optimizer=optimizer),
                                tff().aggregators.MeanFactory(), attack="sign_flip")
    assert process.round_inputs == ("clients", "attackers", "attack_boost", "attack_rng", "attack_clients")
    state = process.next(start(process, lr), [inputs(0), inputs(1), inputs(2)], clients=[0, 1, 2],
                         attackers=[False, True, False], attack_boost=boost).state
    (ua, _), (ub, _), (uc, _) = (local_sgd(W0, B0, i, lr) for i in range(3))
    ub = tuple(-boost * u for u in ub)  # client 1 sends -3 x its update; weights: the examples each processed
    for k, got in enumerate(process.get_model_weights(state).trainable):
        expect = (W0, B0)[k] - server_lr * (1 * ua[k] + 3 * ub[k] + 2 * uc[k]) / 6
        np.testing.assert_allclose(got, expect, atol=1e-5)


def test_update_attackers_train_on_true_labels_and_label_flippers_do_not():
    config = fl.ExperimentConfig(dataset="digits", num_clients=5, clients_per_round=5, attacker_fraction=0.4)
    spec = spec_for(config, fl.dataset_for(config))
    flipped, forged = (Clients.for_config(config.replace(attack=a), spec) for a in ("label_flip", "sign_flip"))
    attacker = min(flipped.attackers)
    assert flipped.attackers == forged.attackers and len(forged.attackers) == 2
    assert not np.array_equal(flipped.y[attacker], forged.y[attacker])
    data = fl.dataset_for(config)
    np.testing.assert_array_equal(forged.y[attacker], spec.prepare_labels(data.y_train[forged.parts[attacker]]))


def test_a_run_under_attack_forges_only_the_attackers_updates():
    base = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=6, rounds=2, client_lr=0.1,
                               client_weighting="uniform")
    honest = fl.run_experiment(base, progress=False)
    attacked = {a: fl.run_experiment(base.replace(attacker_fraction=0.34, attack=a, robust="median"), progress=False)
                for a in ("sign_flip", "gaussian", "alie")}
    again = fl.run_experiment(base.replace(attacker_fraction=0.34, attack="gaussian", robust="median"),
                              progress=False)
    np.testing.assert_array_equal(attacked["gaussian"].eval_loss, again.eval_loss)  # the attackers' noise is seeded
    for name, history in attacked.items():
        assert history.eval_loss.iloc[-1] != honest.eval_loss.iloc[-1], name
        assert (history.attack == name).all()
    # no attacker: the split round is not built, the run is the honest one
    none = fl.run_experiment(base.replace(attack="sign_flip"), progress=False)
    np.testing.assert_array_equal(none.eval_loss, honest.eval_loss)


@pytest.mark.parametrize("changes, field", [
    (dict(attack="poison"), "attack"),
    (dict(attack="alie", attack_boost=2), "attack_boost"),
    (dict(attack="sign_flip", secure_aggregation=True, secure_protocol="ckks"), "secure_protocol"),
])
def test_bad_attack_settings_are_refused_in_one_line(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(**{"dataset": "digits", "num_clients": 10, "attacker_fraction": 0.2, **changes})
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_users_update_attack_is_registered_like_fedlabs():
    @fl.register_attack("zero_update", paper="a test")
    def zero_update(honest, *, clients, boost, rng):
        """Sends nothing."""
        return np.zeros_like(honest)

    assert "zero_update" in fl.ATTACKS.names()
    assert any(row.name == "zero_update" and row.kind == "attack" for row in fl.catalog().itertuples())
    fl.ExperimentConfig(dataset="digits", attacker_fraction=0.2, attack="zero_update")


# SCAFFOLD -----------------------------------------------------------------------------------------


def scaffold_by_hand(rounds, lr, server_lr, weighting, clip=None, denominator=None):
    """Karimireddy et al. 2020, Algorithm 1, option II, in NumPy (float64): x, c and every c_i.

    ``clip``: as under user-level DP without noise: each client's (update, lr c_i+) clipped together to L2 norm
    ``clip``, the model moved by the sum of the clipped updates over ``denominator`` (the expected K), c the sum
    of the clipped lr c_i+ over K and lr (estimated afresh each round); each client's own c_i moves unclipped."""
    n = len(X)
    x = (W0.astype(np.float64), B0.astype(np.float64))
    c = (np.zeros((2, 3)), np.zeros(3))
    ci = [(np.zeros((2, 3)), np.zeros(3)) for _ in range(n)]
    for sampled in rounds:
        updates, weights, deltas = [], [], []
        for i in sampled:
            update, steps = local_sgd(*x, i, lr, correction=(c[0] - ci[i][0], c[1] - ci[i][1]))
            new = tuple(ci[i][k] - c[k] + update[k] / (steps * lr) for k in range(2))  # c_i+ (x - y_i: TFF's update)
            delta = tuple(new[k] - ci[i][k] for k in range(2))
            ci[i] = new
            if clip is not None:  # what the client sends: the update and lr c_i+, clipped together
                norm = np.sqrt(sum(np.sum(u ** 2) for u in update) + sum(np.sum((lr * v) ** 2) for v in new))
                factor = min(1.0, clip / norm)
                update, delta = tuple(factor * u for u in update), tuple(factor * v for v in new)
            deltas.append(delta)
            updates.append(update)
            weights.append(1.0 if weighting == "uniform" else float(len(X[i])))  # 1 epoch: examples processed
        total = sum(weights) if denominator is None else denominator
        mean = [sum(w * u[k] for w, u in zip(weights, updates)) / total for k in range(2)]
        x = tuple(x[k] - server_lr * mean[k] for k in range(2))  # x + eta_g mean(y_i - x)
        if clip is None:
            c = tuple(c[k] + sum(d[k] for d in deltas) / n for k in range(2))
        else:
            c = tuple(sum(d[k] for d in deltas) / denominator for k in range(2))
    return x, c, ci


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_scaffold_two_rounds_equal_algorithm_1_by_hand(weighting):
    lr, server_lr = 0.5, 0.8
    rounds = [[0, 1], [1, 2]]  # client 1 trains twice: its own c_i and the server's c both correct its steps
    process = build_scaffold(MODEL, client_lr=lr, server_lr=server_lr, client_weighting=weighting)
    state = process.client_state(start(process, lr), len(X))
    for sampled in rounds:
        state = process.next(state, [inputs(i) for i in sampled], clients=sampled).state
    x, c, ci = scaffold_by_hand(rounds, lr, server_lr, weighting)
    for got, expect in zip(process.get_model_weights(state).trainable, x):
        np.testing.assert_allclose(got, expect, atol=1e-5)
    for got, expect in zip(state.client_work["server_control"], c):
        np.testing.assert_allclose(got, expect, atol=1e-5)
    for i in range(len(X)):
        for got, expect in zip(state.client_work["client_controls"], ci[i]):
            np.testing.assert_allclose(got[i], expect, atol=1e-5)
    assert np.abs(ci[1][0]).max() > 0.01 and np.abs(c[0]).max() > 0.01  # the corrections were not zero


def test_scaffold_resumes_to_the_uninterrupted_result(tmp_path):
    import threading

    from fedlab.experiment.runner import RunStopped

    config = fl.ExperimentConfig(dataset="digits", num_clients=5, clients_per_round=3, rounds=3, client_lr=0.1,
                                 algorithm="scaffold", partition="dirichlet", alpha=0.3)
    whole = fl.run_experiment(config, progress=False)
    stop = threading.Event()
    with pytest.raises(RunStopped):
        fl.run_experiment(config, progress=False, checkpoint_dir=tmp_path, stop=stop,
                          callback=lambda row, history: stop.set() if row["round"] == 1 else None)
    resumed = fl.run_experiment(config, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(whole.eval_loss, resumed.eval_loss)
    for a, b in zip(fl.final_weights(whole), fl.final_weights(resumed)):
        np.testing.assert_array_equal(a, b)
    fedavg = fl.run_experiment(config.replace(algorithm="fedavg"), progress=False)
    assert fedavg.eval_loss.iloc[-1] != whole.eval_loss.iloc[-1]  # the corrections changed something


def _scaffold_rounds(process, lr, rounds):
    state = process.client_state(start(process, lr), len(X))
    for sampled in rounds:
        state = process.next(state, [inputs(i) for i in sampled], clients=sampled).state
    return state


def _assert_scaffold_state(state, x, c, ci, process, atol=1e-5):
    for got, expect in zip(process.get_model_weights(state).trainable, x):
        np.testing.assert_allclose(got, expect, atol=atol)
    for got, expect in zip(state.client_work["server_control"], c):
        np.testing.assert_allclose(got, expect, atol=atol)
    for i in range(len(X)):
        for got, expect in zip(state.client_work["client_controls"], ci[i]):
            np.testing.assert_allclose(got[i], expect, atol=atol)


def test_scaffold_through_an_aggregator_that_hides_the_updates_releases_only_sums_and_equals_algorithm_1():
    """A secure mean (unweighted): each client sends lr (c_i+ - c_i) beside its update, the server moves c by the
    mean the aggregator releases times the clients summed over lr N: the paper's numbers with equal weights."""
    lr, server_lr, rounds = 0.5, 0.8, [[0, 1], [1, 2]]
    hiding = tff().aggregators.UnweightedMeanFactory()
    hiding.hides_updates, hiding.mean_denominator = True, None
    process = build_scaffold(MODEL, client_lr=lr, server_lr=server_lr, model_aggregator=hiding)
    assert process.side_shapes == [(2, 3), (3,)]
    state = _scaffold_rounds(process, lr, rounds)
    _assert_scaffold_state(state, *scaffold_by_hand(rounds, lr, server_lr, "uniform"), process)


def test_dp_scaffold_clips_the_update_and_the_control_variate_together_and_estimates_c_afresh_by_hand():
    """User-level DP without noise, a clip that bites: (update, lr c_i+) clipped as one vector, the model moved by
    the clipped updates' sum over the expected K = 2 (one client in round 1, three in round 2: not their count), c
    the clipped lr c_i+'s sum over K and lr."""
    from fedlab.aggregators.aggregation import make_aggregator

    lr, server_lr, rounds, clip = 0.5, 0.8, [[0], [0, 1, 2]], 0.3
    config = fl.ExperimentConfig(dataset="digits", algorithm="scaffold", dp="fixed", noise_multiplier=0.0,
                                 clip_norm=clip, num_clients=3, clients_per_round=2, local_steps=2)
    process = build_scaffold(MODEL, client_lr=lr, server_lr=server_lr, model_aggregator=make_aggregator(config))
    state = _scaffold_rounds(process, lr, rounds)
    expected = scaffold_by_hand(rounds, lr, server_lr, "uniform", clip=clip, denominator=2)
    _assert_scaffold_state(state, *expected, process)
    unclipped = scaffold_by_hand(rounds, lr, server_lr, "uniform", clip=1e9, denominator=2)
    assert not np.allclose(expected[0][0], unclipped[0][0], atol=1e-3)  # the clip did bite


def test_scaffold_on_a_16_bit_secure_sum_moves_c_by_the_released_changes():
    """TFF's secure sum, 16 bits, a clip no update reaches: the paper's numbers with equal weights, within the
    rounding (the model by half a step of C / (2^15 - 1) a coordinate, c by D / (lr N) of that)."""
    from fedlab.aggregators.aggregation import make_aggregator
    from fedlab.core.runtime import simulated_secure_sums

    lr, server_lr, rounds = 0.5, 0.8, [[0, 1], [1, 2]]
    config = fl.ExperimentConfig(dataset="digits", algorithm="scaffold", secure_aggregation=True, quantization_bits=16,
                                 clip_norm=20.0, num_clients=3, clients_per_round=2)
    process = build_scaffold(MODEL, client_lr=lr, server_lr=server_lr, model_aggregator=make_aggregator(config))
    with simulated_secure_sums(True):
        state = _scaffold_rounds(process, lr, rounds)
    x, c, ci = scaffold_by_hand(rounds, lr, server_lr, "uniform")
    _assert_scaffold_state(state, x, c, ci, process, atol=2 * 20.0 / (2 ** 15 - 1) / lr)
    assert np.abs(state.client_work["server_control"][0]).max() > 0.01  # c moved: the changes were not rounded away


def test_on_a_clipped_secure_sum_c_stays_the_mean_of_the_clients_control_variates():
    """A clip that bites (0.3): each client keeps the share of its change the sum took, so c is the mean of all
    N c_i after every round, within the 16-bit rounding."""
    from fedlab.aggregators.aggregation import make_aggregator
    from fedlab.core.runtime import simulated_secure_sums

    lr, rounds = 0.5, [[0, 1], [1, 2], [0, 2]]
    config = fl.ExperimentConfig(dataset="digits", algorithm="scaffold", secure_aggregation=True, quantization_bits=16,
                                 clip_norm=0.3, num_clients=3, clients_per_round=2)
    process = build_scaffold(MODEL, client_lr=lr, server_lr=0.8, model_aggregator=make_aggregator(config))
    with simulated_secure_sums(True):
        state = _scaffold_rounds(process, lr, rounds)
    for c, ci in zip(state.client_work["server_control"], state.client_work["client_controls"]):
        np.testing.assert_allclose(c, ci.mean(axis=0), atol=3 * 3 * 0.3 / (2 ** 15 - 1) / lr)
    x, c, _ = scaffold_by_hand(rounds, lr, 0.8, "uniform")
    assert not np.allclose(process.get_model_weights(state).trainable[0], x[0], atol=1e-3)  # the clip did bite


def test_dp_scaffold_runs_with_either_clip_and_local_steps():
    for dp in ("fixed", "adaptive"):
        history = fl.run_experiment(fl.ExperimentConfig(dataset="digits", model="logreg", num_clients=6,
                                                        clients_per_round=3, rounds=2, local_steps=3, batch_size=10,
                                                        algorithm="scaffold", dp=dp, noise_multiplier=0.5),
                                    progress=False)
        assert np.isfinite(history.eval_loss).all() and history.epsilon.iloc[-1] > 0


@pytest.mark.parametrize("central_dp", [False, True])
def test_a_protocol_round_that_aborts_leaves_every_control_variate_as_it_was(central_dp):
    """Under central DP the aborted round still releases the server's noise on the model, but tells nothing of
    the clients' control variates."""
    import warnings

    from fedlab.rounds.secure_rounds import ProtocolSum

    lr = 0.5
    protocol = ProtocolSum("secagg", 16, 20.0, 3, noise_stddev=0.5 if central_dp else 0.0,
                           denominator=2.0 if central_dp else 0.0)
    process = build_scaffold(MODEL, client_lr=lr, server_lr=0.8, model_aggregator=protocol)
    state = process.client_state(start(process, lr), len(X))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = process.next(state, [inputs(0)], clients=[0], participants=[0, 1], side_scale=1.0,
                             noise_seed=7).state
    assert any("secure aggregation" in str(w.message) or "abort" in str(w.message).lower() for w in caught)
    assert "pending_controls" not in after.client_work
    for before, now in zip(state.client_work["client_controls"] + state.client_work["server_control"],
                           after.client_work["client_controls"] + after.client_work["server_control"]):
        np.testing.assert_array_equal(before, now)


def test_scaffold_on_a_secure_sum_resumes_to_the_uninterrupted_result(tmp_path):
    from conftest import interrupt_after

    config = fl.ExperimentConfig(dataset="digits", num_clients=5, clients_per_round=3, rounds=3, client_lr=0.1,
                                 algorithm="scaffold", secure_aggregation=True, quantization_bits=16, clip_norm=5.0)
    whole = fl.run_experiment(config, progress=False)
    interrupt_after(fl.run_experiment, config, 1, tmp_path)
    resumed = fl.run_experiment(config, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(whole.eval_loss, resumed.eval_loss)
    assert not list(tmp_path.rglob("*damaged*"))  # resumed from round 1's state, not started again


@pytest.mark.parametrize("changes, field", [
    (dict(dp="fixed", noise_multiplier=1.0, robust="median", local_steps=5), "robust"),
    (dict(dp="fixed", noise_multiplier=1.0), "local_steps"),
    (dict(secure_aggregation=True), "quantization_bits"),  # 32 bits clamp coordinates: no share to keep
    (dict(secure_aggregation=True, quantization_bits=8, robust="zeroing"), "robust"),
    (dict(secure_aggregation=True, secure_protocol="ckks"), "secure_protocol"),
])
def test_scaffold_refuses_what_it_cannot_honour(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(**{"dataset": "digits", "algorithm": "scaffold", **changes})
    assert err.value.field == field and "\n" not in str(err.value)


def test_a_protocol_round_trained_and_encoded_in_one_computation_is_the_split_rounds_bit_for_bit():
    """With nothing between the clients' training and their encoding, one computation does both (fused); a step
    between (here one that changes nothing) splits the round at the updates: the same numbers, dropouts included."""
    from fedlab.rounds.secure_rounds import ProtocolSum

    class WithAStepBetween(SplitRoundProcess):
        def between(self, state, clients, client_data, updates, update_weights):
            return state

    lr, protocol = 0.5, ProtocolSum("secagg+", 12, 2.0, 3)
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=0.8)
    processes = [cls(client_training(MODEL, client_lr=lr, server_optimizer=optimizer), protocol)
                 for cls in (SplitRoundProcess, WithAStepBetween)]
    assert [p.fused for p in processes] == [True, False]
    states = [start(p, lr) for p in processes]
    for round_num, (ids, everyone) in enumerate([([0, 1, 2], None), ([1, 2], [0, 1, 2]), ([0, 2], None)]):
        outputs = [p.next(s, [inputs(i) for i in ids], clients=ids, participants=everyone, graph_seed=round_num)
                   for p, s in zip(processes, states)]
        states = [o.state for o in outputs]
        assert outputs[0].metrics["aggregator"]["secagg"]["included"] == len(ids)
        for a, b in zip(*(p.get_model_weights(s).trainable for p, s in zip(processes, states))):
            np.testing.assert_array_equal(a, b)
        assert outputs[0].metrics["client_work"] == outputs[1].metrics["client_work"]
    assert not np.array_equal(processes[0].get_model_weights(states[0]).trainable[0], W0)
