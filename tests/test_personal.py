"""Personalisation: FedPer's shared body and personal heads (fedlab.algorithms.personal) checked by hand on a two-layer
linear network, and each client's own held-out data (local_test_fraction)."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.algorithms.algorithms import DittoParams, FedPerParams
from fedlab.rounds.array_training import with_learning_rates
from fedlab.experiment.clients import Clients, local_test_split, spec_for
from fedlab.models.models import ModelSpec
from fedlab.algorithms.personal import build_ditto, build_fedper
from fedlab.core.runtime import tff
from fedlab.core.validation import ConfigError

from by_hand import BATCH, X, Y, grad, inputs, softmax_delta


@fl.register_model("linear2_for_tests", weight_layers=2)
def linear2(shape, seed):
    """Two dense layers without activation (a body and a head), for checks by hand."""
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(shape.num_features,)),
                                tf.keras.layers.Dense(2), tf.keras.layers.Dense(shape.num_outputs)])


RNG = np.random.default_rng(3)
W1, B1 = RNG.normal(size=(2, 2)).astype(np.float32), RNG.normal(size=2).astype(np.float32)
W2, B2 = RNG.normal(size=(2, 3)).astype(np.float32), RNG.normal(size=3).astype(np.float32)
def grads(params, x, y):
    """Mean softmax cross-entropy of (x W1 + b1) W2 + b2: gradients by the chain rule."""
    w1, b1, w2, b2 = params
    h = x @ w1 + b1
    z = h @ w2 + b2
    _, dz = softmax_delta(z, y)
    dh = dz @ w2.T
    return x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)


def fedper_by_hand(rounds, lr, server_lr):
    body = [W1.astype(np.float64), B1.astype(np.float64)]
    heads = [[W2.astype(np.float64), B2.astype(np.float64)] for _ in X]
    for sampled in rounds:
        updates, weights = [], []
        for i in sampled:
            params = body + heads[i]
            for j in range(0, len(X[i]), BATCH):
                params = [p - lr * g for p, g in zip(params, grads(params, X[i][j:j + BATCH], Y[i][j:j + BATCH]))]
            updates.append([b - p for b, p in zip(body, params[:2])])
            heads[i] = params[2:]  # the head stays on the client
            weights.append(len(X[i]))  # examples processed (one epoch)
        body = [b - server_lr * sum(w * u[k] for w, u in zip(weights, updates)) / sum(weights)
                for k, b in enumerate(body)]
    return body, heads


def test_fedper_two_rounds_equal_the_shared_body_and_personal_heads_by_hand():
    lr, server_lr = 0.3, 0.9
    model = ModelSpec("linear2_for_tests", 2, 3).functional_model()
    process = build_fedper(model, client_lr=lr, server_lr=server_lr, params=FedPerParams(personal_layers=1))
    weights = tff().learning.models.ModelWeights(trainable=(W1, B1, W2, B2), non_trainable=())
    state = process.client_state(with_learning_rates(process.set_model_weights(process.initialize(), weights), lr),
                                 len(X))
    rounds = [[0, 1], [1, 2]]
    for sampled in rounds:
        state = process.next(state, [inputs(i) for i in sampled], clients=sampled).state
    body, heads = fedper_by_hand(rounds, lr, server_lr)
    trainable = process.get_model_weights(state).trainable
    for got, expect in zip(trainable[:2], body):
        np.testing.assert_allclose(got, expect, atol=1e-5)
    np.testing.assert_array_equal(trainable[2], W2)  # the server's head never moves
    np.testing.assert_array_equal(trainable[3], B2)
    for i in range(len(X)):
        own = process.client_weights(state, i).trainable
        for got, expect in zip(own, body + heads[i]):
            np.testing.assert_allclose(got, expect, atol=1e-5)
    assert not np.allclose(heads[0][0], heads[2][0])  # the heads differ by client


def ditto_by_hand(rounds, lr, server_lr, lam):
    """Li et al. 2021, Algorithm 1: FedAvg on w; v_k <- v_k - lr (grad F_k(v_k) + lam (v_k - w^t))."""
    w = [W2.astype(np.float64), B2.astype(np.float64)]
    own = [[W2.astype(np.float64), B2.astype(np.float64)] for _ in X]
    for sampled in rounds:
        updates, weights = [], []
        for i in sampled:
            local, v = list(w), own[i]
            for j in range(0, len(X[i]), BATCH):
                xb, yb = X[i][j:j + BATCH], Y[i][j:j + BATCH]
                local = [p - lr * g for p, g in zip(local, grad(*local, xb, yb))]
                v = [p - lr * (g + lam * (p - wt)) for p, g, wt in zip(v, grad(*v, xb, yb), w)]
            own[i] = v
            updates.append([a - b for a, b in zip(w, local)])
            weights.append(len(X[i]))
        w = [a - server_lr * sum(n * u[k] for n, u in zip(weights, updates)) / sum(weights) for k, a in enumerate(w)]
    return w, own


def test_ditto_two_rounds_equal_algorithm_1_by_hand():
    lr, server_lr, lam = 0.3, 0.9, 0.5
    model = ModelSpec("logreg", 2, 3).functional_model()
    process = build_ditto(model, client_lr=lr, server_lr=server_lr, params=DittoParams(lam=lam))
    weights = tff().learning.models.ModelWeights(trainable=(W2, B2), non_trainable=())
    state = process.client_state(with_learning_rates(process.set_model_weights(process.initialize(), weights), lr),
                                 len(X))
    rounds = [[0, 1], [1, 2]]
    for sampled in rounds:
        state = process.next(state, [inputs(i) for i in sampled], clients=sampled).state
    w, own = ditto_by_hand(rounds, lr, server_lr, lam)
    for got, expect in zip(process.get_model_weights(state).trainable, w):
        np.testing.assert_allclose(got, expect, atol=1e-5)
    for i in range(len(X)):
        for got, expect in zip(process.client_weights(state, i).trainable, own[i]):
            np.testing.assert_allclose(got, expect, atol=1e-5)
    assert not np.allclose(own[1][0], own[2][0]) and not np.allclose(own[1][0], w[0])


def test_each_client_holds_out_its_own_test_share():
    train, held = local_test_split(10, 0.2, seed=0, client=3)
    assert len(held) == 2 and len(train) == 8 and not set(train) & set(held)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(10))
    np.testing.assert_array_equal(held, local_test_split(10, 0.2, seed=0, client=3)[1])
    assert not np.array_equal(held, local_test_split(10, 0.2, seed=0, client=4)[1])
    assert [len(local_test_split(n, 0.2, 0, 0)[1]) for n in (1, 2, 3)] == [0, 1, 1]  # something is left to train on
    config = fl.ExperimentConfig(dataset="digits", num_clients=5, local_test_fraction=0.25)
    spec = spec_for(config, fl.dataset_for(config))
    clients, whole = Clients.for_config(config, spec), Clients.for_config(config.replace(local_test_fraction=0.0), spec)
    for c in range(5):
        assert len(clients.x[c]) + len(clients.test_x[c]) == len(whole.x[c])
        assert len(clients.test_x[c]) == round(0.25 * len(whole.x[c]))


def test_fedper_run_reports_each_clients_own_model_on_its_own_data():
    base = fl.ExperimentConfig(dataset="digits", model="2nn", partition="dirichlet", alpha=0.1, num_clients=6,
                               clients_per_round=6, rounds=3, client_lr=0.1, eval_per_client=True,
                               local_test_fraction=0.3, eval_every=3)
    fedavg = fl.run_experiment(base, progress=False)
    fedavg_losses = fl.clients_table(fedavg).loss.to_numpy()
    sizes = [len(x) for x in Clients.for_config(base, spec_for(base, fl.dataset_for(base))).test_x]
    for algorithm in ("fedper", "ditto"):
        personal = fl.run_experiment(base.replace(algorithm=algorithm), progress=False)
        table = fl.clients_table(personal)
        assert len(table) == 6 and table.accuracy.notna().all()
        assert personal.client_accuracy_mean.iloc[-1] == pytest.approx(table.accuracy.mean())
        # other models than FedAvg's global one: per-client losses (not coarse accuracies, which two models can
        # share) apart by far more than any CPU's rounding moves them
        assert not np.allclose(table.loss, fedavg_losses, rtol=0.05, atol=0), algorithm
        assert table.num_examples.tolist() == sizes  # evaluated on the held-out share


def test_with_one_client_per_site_each_site_is_scored_with_its_own_model(monkeypatch):
    """One client per site (natural partition), personalised: site s is scored with client s's own model
    (``client_weights(state, s)``), not with the global model.

    Comparing the sites' accuracies with the global model's cannot show it: accuracies on 26-34 patients are
    coarse, and two models can score the same (on some CPUs' float order they did). Here, for scoring only, each
    client's own model is a stand-in whose scores are known from the global model's: the global model negated
    (every prediction flipped) for even sites, the global model itself for odd ones. Whatever the float order,
    site s must then show the negated model's score (even s) or the global model's (odd s), and the two differ at
    every site (asserted): a site scored with the global model, or with another site's model, is caught. The real
    own models (``lam=0``: each trained on its own site alone) are checked to be other than the global model,
    their weights far further apart than rounding moves them.
    """
    from fedlab.experiment.evaluation import Evaluator
    from fedlab.algorithms.personal import DittoProcess

    real_client_weights = DittoProcess.client_weights
    own, stand_ins, asked = {}, {}, []

    def stand_in(process, state, client):
        own[client] = real_client_weights(process, state, client)
        w = state.global_model_weights
        sign = np.float32(-1.0 if client % 2 == 0 else 1.0)
        stand_ins[client] = type(w)(trainable=type(w.trainable)([sign * np.asarray(t) for t in w.trainable]),
                                    non_trainable=w.non_trainable)
        asked.append(client)
        return stand_ins[client]

    monkeypatch.setattr(DittoProcess, "client_weights", stand_in)
    config = fl.ExperimentConfig(dataset="breast_cancer_sites", partition="natural", num_clients=4,
                                 clients_per_round=4, rounds=4, client_lr=0.5, algorithm="ditto", lam=0.0)
    history = fl.run_experiment(config, progress=False)
    assert asked[-4:] == [0, 1, 2, 3]  # the last round's scoring asked for every site's own model, in order
    data = fl.dataset_for(config)
    spec = spec_for(config, data)
    columns = [f"site_accuracy_{name}" for name in data.site_names]
    scored = history[columns].iloc[-1].to_numpy()

    # the runner's scoring path (Evaluator.site_metrics with a model per site) on the same weights: the same bits
    flipped = Evaluator(spec).site_metrics(data, weights_for=lambda s: stand_ins[0])
    plain = Evaluator(spec).site_metrics(data, weights_for=lambda s: stand_ins[1])
    flipped, plain = np.array([flipped[c] for c in columns]), np.array([plain[c] for c in columns])
    assert (flipped != plain).all(), "the stand-ins must score differently at every site for the test to tell"
    np.testing.assert_array_equal(scored, np.where(np.arange(len(columns)) % 2 == 0, flipped, plain))
    assert history.mean_site_accuracy.iloc[-1] == pytest.approx(scored.mean())

    global_weights = fl.final_weights(history)
    np.testing.assert_array_equal(stand_ins[1].trainable[0], global_weights[0])  # the stand-ins came from it
    for client, weights in own.items():
        gap = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(weights.trainable, global_weights))
        assert gap > 1e-2, f"client {client}'s own model is the global model"


@pytest.mark.parametrize("changes, field", [
    (dict(model="logreg"), "personal_layers"),  # one layer: nothing left to share
    (dict(personal_layers=0), "personal_layers"),
    (dict(personal_layers=1, freeze_layers=2), "freeze_layers"),  # 2NN: 3 layers, 2 frozen, 1 personal
    (dict(local_test_fraction=0.95), "local_test_fraction"),
    (dict(local_test_fraction=float("nan")), "local_test_fraction"),
    (dict(secure_aggregation=True, secure_protocol="ckks"), "secure_protocol"),  # CKKS's round is not split
    (dict(algorithm="ditto", lam=-1.0), "lam"),
    (dict(algorithm="ditto", lam=float("inf")), "lam"),
])
def test_fedper_refuses_what_it_cannot_honour(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(**{"dataset": "digits", "model": "2nn", "algorithm": "fedper", **changes})
    assert err.value.field == field and "\n" not in str(err.value)


def test_fedper_with_frozen_layers_shares_the_layer_between_them():
    """2NN, first layer frozen, last layer personal: the middle layer is the body the server averages."""
    config = fl.ExperimentConfig(dataset="digits", model="2nn", algorithm="fedper", personal_layers=1, freeze_layers=1,
                                 num_clients=4, clients_per_round=4, rounds=2, local_steps=2)
    history = fl.run_experiment(config, progress=False)
    spec = spec_for(config)
    keras = spec.build_keras()
    weights = fl.final_weights(history)  # trainable (middle, last), then frozen (first)
    assert [w.shape for w in weights] == [tuple(v.shape) for v in keras.trainable_variables + keras.non_trainable_variables]
    np.testing.assert_array_equal(weights[-2], keras.non_trainable_variables[0].numpy())  # frozen: as built
    assert not np.array_equal(weights[0], keras.trainable_variables[0].numpy())  # the shared body moved
    np.testing.assert_array_equal(weights[2], keras.trainable_variables[2].numpy())  # the global head: never sent


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fedper", "ditto"])
def test_dp_personalisation_without_noise_or_clipping_weighs_clients_alike(algorithm):
    """User-level DP on FedPer's body and Ditto's global model: with no noise and a clip no update reaches, the DP
    mean (sum / K) is the uniform mean; with noise, the noise reaches the model and epsilon is DP-FedAvg's."""
    from fedlab.protection import accounting

    base = fl.ExperimentConfig(dataset="digits", model="2nn", partition="quantity", num_clients=4, clients_per_round=4,
                               rounds=3, algorithm=algorithm, local_steps=3, batch_size=16)
    private = fl.run_experiment(base.replace(dp="fixed", noise_multiplier=0.0, clip_norm=1e6), progress=False)
    uniform = fl.run_experiment(base.replace(client_weighting="uniform"), progress=False)
    weighted = fl.run_experiment(base, progress=False)
    for column in ("train_loss", "eval_loss", "eval_accuracy"):
        np.testing.assert_allclose(private[column], uniform[column], rtol=0, atol=1e-6, err_msg=column)
    for a, b in zip(fl.final_weights(private), fl.final_weights(uniform)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert not np.allclose(private.eval_loss, weighted.eval_loss, rtol=0, atol=1e-6)  # the weighting shows
    noisy = base.replace(dp="fixed", noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    released = fl.run_experiment(noisy, progress=False)
    quiet = fl.run_experiment(noisy.replace(noise_multiplier=0.0), progress=False)
    shared = 4 if algorithm == "fedper" else 6  # FedPer: the body (noise on the server's unused head shows nothing)
    for a, b in zip(fl.final_weights(released)[:shared], fl.final_weights(quiet)[:shared]):
        assert not np.allclose(a, b)
    assert released.epsilon.iloc[-1] == pytest.approx(accounting.epsilon(1.0, 1.0, 3, 1e-5))


@pytest.mark.slow
def test_fedper_with_a_secure_sum_is_the_uniform_mean_within_the_quantisation_bound():
    """TFF's secure sum of 16-bit clipped updates: FedPer's body moves by the uniform mean of the clients' body
    updates, within the rounding of the sum (each of K values off by at most half a step), its head not at all."""
    from fedlab.aggregators import aggregation

    base = fl.ExperimentConfig(dataset="digits", model="2nn", partition="quantity", num_clients=4, clients_per_round=4,
                               rounds=1, algorithm="fedper", local_steps=3, batch_size=16)
    secure = base.replace(secure_aggregation=True, quantization_bits=16, clip_norm=10.0)
    summed = fl.final_weights(fl.run_experiment(secure, progress=False))
    uniform = fl.final_weights(fl.run_experiment(base.replace(client_weighting="uniform"), progress=False))
    bound = aggregation.quantization_error_bound(16, 10.0, 4) / 4  # of the mean
    gaps = [float(np.abs(a - b).max()) for a, b in zip(summed, uniform)]
    assert max(gaps) <= bound + 1e-6 and max(gaps[:4]) > 0  # the body: rounded, not untouched
    np.testing.assert_array_equal(summed[4], uniform[4])  # the head (last layer) is the clients' own: unchanged
