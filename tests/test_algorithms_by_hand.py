"""The TFF processes fedlab builds, checked against updates computed by hand in NumPy.

Model: logistic regression with 2 features and 3 classes (softmax cross-entropy,
mean over the batch). Client A holds 1 example, client B holds 3.
"""

import numpy as np
import pytest

from fedlab.algorithms import algorithms
from fedlab.algorithms.algorithms import FedAvgMParams, FedProxParams
from fedlab.models.models import ModelSpec
from fedlab.core.runtime import tff

from by_hand import grad

SPEC = ModelSpec("logreg", num_features=2, num_classes=3)
MODEL = SPEC.functional_model()
RNG = np.random.default_rng(0)
W0 = RNG.normal(size=(2, 3)).astype(np.float32)
B0 = RNG.normal(size=3).astype(np.float32)
XA = np.array([[1.0, 2.0]], np.float32)
YA = np.array([2], np.int32)
XB = np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]], np.float32)
YB = np.array([0, 1, 1], np.int32)


def local_sgd(x, y, lr, batch, mu=0.0):
    """Client SGD from (W0, B0) over batches in order, with FedProx's mu * (w - w0)."""
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    for i in range(0, len(x), batch):
        gw, gb = grad(w, b, x[i:i + batch], y[i:i + batch])
        w, b = w - lr * (gw + mu * (w - W0)), b - lr * (gb + mu * (b - B0))
    return w - W0, b - B0


def run_round(process, datasets, rounds=1):
    t = tff()
    weights = t.learning.models.ModelWeights(trainable=[W0, B0], non_trainable=[])
    state = process.set_model_weights(process.initialize(), weights)
    for _ in range(rounds):
        state = process.next(state, datasets).state
    w, b = process.get_model_weights(state).trainable
    return np.asarray(w), np.asarray(b)


def data(x, y, batch):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_fedavg_one_step_is_the_example_weighted_average():
    lr = 0.5
    process = algorithms.build_fedavg(MODEL, client_lr=lr)
    w, b = run_round(process, [data(XA, YA, 10), data(XB, YB, 10)])
    da, db = local_sgd(XA, YA, lr, 10), local_sgd(XB, YB, lr, 10)
    expect_w = W0 + (1 * da[0] + 3 * db[0]) / 4
    expect_b = B0 + (1 * da[1] + 3 * db[1]) / 4
    np.testing.assert_allclose(w, expect_w, atol=1e-5)
    np.testing.assert_allclose(b, expect_b, atol=1e-5)
    # and not the unweighted mean, which differs here
    assert not np.allclose(w, W0 + (da[0] + db[0]) / 2, atol=1e-3)


def test_fedsgd_applies_the_weighted_mean_gradient():
    lr = 0.3
    process = algorithms.build_fedsgd(MODEL, client_lr=lr)
    w, b = run_round(process, [data(XA, YA, 10), data(XB, YB, 10)])
    ga, gb = grad(W0, B0, XA, YA), grad(W0, B0, XB, YB)
    np.testing.assert_allclose(w, W0 - lr * (1 * ga[0] + 3 * gb[0]) / 4, atol=1e-5)
    np.testing.assert_allclose(b, B0 - lr * (1 * ga[1] + 3 * gb[1]) / 4, atol=1e-5)


def test_fedavgm_server_momentum_over_two_rounds():
    # Same data both rounds; sgdm: v <- m v + d, w <- w + lr v (d = mean client delta).
    lr, server_lr, m = 0.5, 0.7, 0.9
    process = algorithms.build_fedavgm(MODEL, client_lr=lr, server_lr=server_lr,
                                      params=FedAvgMParams(server_momentum=m))
    w, _ = run_round(process, [data(XB, YB, 10)], rounds=2)
    d1 = local_sgd(XB, YB, lr, 10)[0]
    w1, b1 = W0 + server_lr * d1, B0 + server_lr * local_sgd(XB, YB, lr, 10)[1]
    # round 2 starts from (w1, b1)
    gw, gb = grad(w1, b1, XB, YB)
    d2 = -lr * gw
    expect = w1 + server_lr * (m * d1 + d2)
    np.testing.assert_allclose(w, expect, atol=1e-5)


def test_fedprox_adds_the_proximal_gradient():
    lr, mu = 0.5, 2.0
    process = algorithms.build_fedprox(MODEL, client_lr=lr, params=FedProxParams(mu=mu))
    w, b = run_round(process, [data(XB, YB, 1)])  # three local steps of one example
    dw, db = local_sgd(XB, YB, lr, 1, mu=mu)
    np.testing.assert_allclose(w, W0 + dw, atol=1e-5)
    np.testing.assert_allclose(b, B0 + db, atol=1e-5)
    no_prox = local_sgd(XB, YB, lr, 1, mu=0.0)[0]
    assert not np.allclose(w, W0 + no_prox, atol=1e-3)


def reddi_by_hand(rule, rounds, *, client_lr, server_lr, beta1, beta2, tau):
    """Reddi et al. 2021, Algorithm 2, in NumPy: m0 = 0, v0 = tau^2, no bias correction."""
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.full_like(w, tau * tau), np.full_like(b, tau * tau)]
    for _ in range(rounds):
        deltas = local_sgd_from(w, b, XB, YB, client_lr, 10)
        new = []
        for k, (x, d) in enumerate(zip((w, b), deltas)):
            m[k] = beta1 * m[k] + (1 - beta1) * d
            if rule == "adagrad":
                v[k] = v[k] + d * d
            elif rule == "yogi":
                v[k] = v[k] - (1 - beta2) * d * d * np.sign(v[k] - d * d)
            else:
                v[k] = beta2 * v[k] + (1 - beta2) * d * d
            new.append(x + server_lr * m[k] / (np.sqrt(v[k]) + tau))
        w, b = new
    return w, b


def local_sgd_from(w0, b0, x, y, lr, batch):
    w, b = w0.copy(), b0.copy()
    for i in range(0, len(x), batch):
        gw, gb = grad(w, b, x[i:i + batch], y[i:i + batch])
        w, b = w - lr * gw, b - lr * gb
    return w - w0, b - b0


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_fedopt_three_rounds_equal_reddi_algorithm_2_by_hand(rule):
    params = dict(server_epsilon=0.01, beta1=0.9, **({} if rule == "adagrad" else {"beta2": 0.99}))
    entry = algorithms.ALGORITHMS[f"fed{rule}"]
    process = algorithms.build(f"fed{rule}", MODEL, client_lr=0.5, server_lr=0.1, params=params)
    w, b = run_round(process, [data(XB, YB, 10)], rounds=3)
    ew, eb = reddi_by_hand(rule, 3, client_lr=0.5, server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    np.testing.assert_allclose(w, ew, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, eb, rtol=1e-5, atol=1e-6)
    # The same optimizer behind the compiled client loop gives the same weights.
    fast = entry.on_arrays(MODEL, client_lr=0.5, server_lr=0.1, params=entry.make_params(params))
    inputs = {"x": XB, "y": YB, "orders": np.arange(3)[None], "batch": np.int64(10), "steps": np.int64(-1),
              "skip": np.int64(0), "key": np.zeros(2, np.int64)}  # key: record-level DP's noise (unused here)
    state = fast.set_model_weights(fast.initialize(), tff().learning.models.ModelWeights([W0, B0], []))
    for _ in range(3):
        state = fast.next(state, [inputs]).state
    np.testing.assert_allclose(fast.get_model_weights(state).trainable[0], ew, rtol=1e-5, atol=1e-6)
    # and not TFF's bias-corrected optimizer, which moves differently
    tff_process = algorithms.build(f"fed{rule}_tff", MODEL, client_lr=0.5, server_lr=0.1,
                                   params={"server_epsilon": 0.01})
    tw, _ = run_round(tff_process, [data(XB, YB, 10)], rounds=3)
    assert not np.allclose(tw, ew, atol=1e-3)


def test_tff_own_fedprox_has_the_proximal_sign_flipped():
    """Documents the TFF 0.87.0 bug fedlab.algorithms.fedprox works around; fails once TFF fixes it."""
    lr, mu = 0.5, 2.0
    t = tff()
    process = t.learning.algorithms.build_weighted_fed_prox(
        SPEC.functional_model(), proximal_strength=mu,
        client_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=lr),
        server_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=1.0))
    w, _ = run_round(process, [data(XB, YB, 1)])
    np.testing.assert_allclose(w, W0 + local_sgd(XB, YB, lr, 1, mu=-mu)[0], atol=1e-5)
