"""The server optimizers of Reddi et al. 2021, "Adaptive Federated Optimization" (arXiv:2003.00295), Algorithm 2.

With Delta_t the round's mean client update (new minus old weights)::

    m_t = beta1 m_{t-1} + (1 - beta1) Delta_t                      (all three)
    v_t = v_{t-1} + Delta_t^2                                      FedAdagrad
    v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)  FedYogi
    v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2                    FedAdam
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

m starts at 0 and v at tau^2 (the paper asks v_{-1} >= tau^2; FLamby, which
implements the same algorithm, starts v at 0, the same to within tau^2 = 1e-16
at its tau = 1e-8). There is no bias correction, tau sits outside the square
root, and FedAdagrad keeps beta1 momentum.

Why not TFF's own ``build_adam``/``build_yogi``/``build_adagrad``: those are
the centralised optimizers (Adam and Yogi with bias correction, Yogi's v
starting at 1e-6, Adagrad with v starting at 0.1, no momentum, epsilon inside
the square root), which move the server model far less in the first rounds;
fedlab keeps them available as ``fedadam_tff``, ``fedyogi_tff``,
``fedadagrad_tff``.

TFF hands the optimizer the aggregated update as a gradient (old minus new
weights, that is -Delta_t), so the code below steps against it; the squares
are the same.
"""

from __future__ import annotations

import collections
import functools

from ..core.runtime import tff

RULES = ("adagrad", "yogi", "adam")


@functools.lru_cache(maxsize=1)
def _optimizer_class():
    import tensorflow as tf

    base = tff().learning.optimizers.Optimizer
    hparam_keys = ("learning_rate", "beta_1", "beta_2", "tau")

    class ReddiOptimizer(base):
        """One of Reddi et al.'s adaptive server optimizers, as a ``tff.learning.optimizers.Optimizer``."""

        def __init__(self, rule: str, learning_rate: float, beta_1: float, beta_2: float, tau: float):
            if rule not in RULES:
                raise ValueError(f"rule: must be one of {', '.join(RULES)}; got {rule!r}")
            self.rule = rule
            self._hparams = collections.OrderedDict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                                                    tau=tau)

        def initialize(self, specs):
            state = collections.OrderedDict(
                (k, tf.constant(v, tf.float32)) for k, v in self._hparams.items())
            tau = self._hparams["tau"]
            state["m"] = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs)
            state["v"] = tf.nest.map_structure(lambda s: tf.fill(s.shape, tf.cast(tau * tau, s.dtype)), specs)
            return state

        def next(self, state, weights, gradients):
            lr, b1, b2, tau = (state[k] for k in hparam_keys)

            def step(w, g, m, v):
                if g is None:
                    return w, m, v
                d = -g  # Delta_t: TFF passes old minus new
                m = b1 * m + (1.0 - b1) * d
                d2 = tf.square(d)
                if self.rule == "adagrad":
                    v = v + d2
                elif self.rule == "yogi":
                    v = v - (1.0 - b2) * d2 * tf.sign(v - d2)
                else:
                    v = b2 * v + (1.0 - b2) * d2
                return w + lr * m / (tf.sqrt(v) + tau), m, v

            flat = [step(w, g, m, v) for w, g, m, v in zip(
                tf.nest.flatten(weights), tf.nest.flatten(gradients), tf.nest.flatten(state["m"]),
                tf.nest.flatten(state["v"]))]
            new_weights = tf.nest.pack_sequence_as(weights, [f[0] for f in flat])
            new_state = collections.OrderedDict(state)
            new_state["m"] = tf.nest.pack_sequence_as(state["m"], [f[1] for f in flat])
            new_state["v"] = tf.nest.pack_sequence_as(state["v"], [f[2] for f in flat])
            return new_state, new_weights

        def get_hparams(self, state):
            return collections.OrderedDict((k, state[k]) for k in hparam_keys)

        def set_hparams(self, state, hparams):
            new_state = collections.OrderedDict(state)
            new_state.update(hparams)
            return new_state

    return ReddiOptimizer


def reddi_optimizer(rule: str, *, learning_rate: float, beta_1: float = 0.9, beta_2: float = 0.99,
                    tau: float = 1e-3):
    """FedAdagrad's, FedYogi's or FedAdam's server optimizer (``rule``), as in Algorithm 2."""
    return _optimizer_class()(rule, float(learning_rate), float(beta_1), float(beta_2), float(tau))
