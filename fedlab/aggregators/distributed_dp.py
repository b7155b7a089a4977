"""Distributed DP: every client adds a share of the noise, the server sees only the secure sum (Kairouz et al. 2021).

The arithmetic is TFF 0.87's ``DistributedDpSumFactory`` with Skellam noise (Agarwal et al. 2021), step by step:
the client's values concatenated into one vector (``concat_factory``), padded to even and randomly rotated (its
'dft' rotation: a random phase on each complex pair, an FFT, divided by sqrt(d/2)), L2-clipped to C, scaled by s
and stochastically rounded to integers (beta = 0), given its Skellam share (Poisson(lambda) - Poisson(lambda)),
reduced mod 2^b and summed by TFF's secure sum of b-bit values; the server takes the sum mod 2^b, centres it,
divides by s, rotates back and divides by the expected K (as central DP's mean does). The scale and the norm bounds
are TFF's formulas (:func:`fedlab.protection.accounting.ddp_parameters`, checked against TFF's helpers in the
tests).

Two departures, and why:

* **The randomness is keyed** by the run's noise seed and the round (the rotation, public), and by those and a
  hash of the client's own update (its rounding and its share), as :mod:`fedlab.aggregators.seeded` keys its
  rounding; TFF draws all three from the clock, so its runs never repeat. ``fresh`` keys come from the system's
  entropy each round (``noise_source="unseeded"``).
* **Population shares.** TFF sizes each sampled client's share for the expected K, so the noise a round carries
  grows and shrinks with how many were sampled, which depends on whether a user took part: the subsampling
  theorem behind the accounting assumes noise independent of the sample. Here every client that may be sampled
  (the population N, :func:`fedlab.aggregators.aggregation.cohort_size`) adds a share of variance (z C s)^2 / N
  every round, sampled or not, and the noise of the sum is always (z C s)^2. The simulation draws the shares of
  the N - m clients that did not train this round as one Skellam draw at the server (a sum of Skellams is a
  Skellam), equal in distribution to their N - m shares in the secure sum. In a deployment each of them sends
  d values of b bits every round (``round_bytes`` counts them).

What the guarantee assumes: every share is added honestly (colluding clients who know their own shares can
subtract them and see the sum under less noise), and the noise seed is secret (see :mod:`fedlab.aggregators.seeded`).
A client whose update equals another's bit for bit draws the same rounding and share (the hash is the same).
"""

from __future__ import annotations

import collections
import math

import numpy as np

from ..core.runtime import tff
from ..protection.accounting import DdpParameters, ddp_parameters
from .seeded import SEED_KEY, fold_key, fresh_key, seed_state_type, update_digest

_CLASSES: dict = {}


def distributed_skellam(*, noise_multiplier: float, clients_per_round: float, clip: float, bits: int,
                        population: int, fresh: bool = False):
    """An unweighted TFF factory: the mean over the expected ``clients_per_round`` of the clients' values under
    distributed DP with Skellam shares on a ``bits``-bit secure sum (module docstring)."""
    return _factory_class()(noise_multiplier=noise_multiplier, clients_per_round=clients_per_round, clip=clip,
                            bits=bits, population=population, fresh=fresh)


def _rotate(flat, seed, inverse: bool = False):
    """TFF's 'dft' rotation of an even-length float32 vector (``DiscreteFourierTransformFactory``), or its inverse."""
    import tensorflow as tf

    half = tf.shape(flat)[0] // 2
    theta = tf.random.stateless_uniform([half], seed, minval=0, maxval=2) * math.pi
    pair = tf.reshape(flat, [2, -1])
    z = tf.complex(real=pair[0], imag=pair[1])
    root = tf.sqrt(tf.cast(half, tf.float32))
    if inverse:
        z = tf.signal.ifft(z * tf.cast(root, tf.complex64)) * tf.exp(tf.complex(0.0, -theta))
        return tf.concat([tf.math.real(z), tf.math.imag(z)], axis=0)
    z = tf.signal.fft(z * tf.exp(tf.complex(0.0, theta)))
    return tf.concat([tf.math.real(z), tf.math.imag(z)], axis=0) / root


def _skellam(shape, seed, rate):
    """Skellam noise, Poisson(rate) - Poisson(rate) (variance 2 rate), as int64: TF Privacy's
    ``DistributedSkellamSumQuery`` draws it so, from a seed of the clock."""
    import tensorflow as tf

    draw = lambda key: tf.random.stateless_poisson(shape, key, tf.cast(rate, tf.float64), dtype=tf.int64)  # noqa: E731
    return draw(fold_key(seed, 0)) - draw(fold_key(seed, 1))


def _factory_class():
    if "skellam" in _CLASSES:
        return _CLASSES["skellam"]
    import tensorflow as tf

    t = tff()

    class _DistributedSkellam(t.aggregators.UnweightedAggregationFactory):
        def __init__(self, *, noise_multiplier: float, clients_per_round: float, clip: float, bits: int,
                     population: int, fresh: bool = False):
            self.noise_multiplier, self.clients_per_round = float(noise_multiplier), float(clients_per_round)
            self.clip, self.bits, self.population, self.fresh = float(clip), int(bits), int(population), fresh

        def parameters(self, dim: int) -> DdpParameters:
            return ddp_parameters(self.noise_multiplier, self.clip, self.bits, self.clients_per_round,
                                  self.population, dim)

        def create(self, value_type):
            from tensorflow_federated.python.core.impl.types import type_conversions

            specs = type_conversions.structure_from_tensor_type_tree(lambda x: tf.TensorSpec(x.shape, x.dtype),
                                                                     value_type)
            leaves = tf.nest.flatten(specs)
            shapes = [tuple(leaf.shape) for leaf in leaves]
            sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
            params = self.parameters(sum(sizes))
            dim, padded, scale, clip = params.dim, params.padded_dim, params.scale, self.clip
            modulus, half_range = 2 ** self.bits, 2 ** (self.bits - 1)
            share_rate = params.share_variance / 2  # each share: Poisson(rate) - Poisson(rate)
            population, denominator, fresh = self.population, self.clients_per_round, self.fresh
            key_type, sum_type = t.TensorType(np.int64, [2]), t.TensorType(np.int32, [padded])
            secure_sum = t.aggregators.SecureSumFactory(upper_bound_threshold=modulus - 1,
                                                        lower_bound_threshold=0).create(sum_type)

            @t.tensorflow.computation()
            def initial_state():
                return collections.OrderedDict([(SEED_KEY, tf.zeros([2], tf.int64)),
                                                ("round", tf.constant(0, tf.int64))])

            @t.tensorflow.computation(seed_state_type())
            def round_key(state):
                return fresh_key() if fresh else fold_key(state[SEED_KEY], state["round"])

            @t.tensorflow.computation(seed_state_type())
            def advance(state):
                return collections.OrderedDict([(SEED_KEY, state[SEED_KEY]), ("round", state["round"] + 1)])

            @t.tensorflow.computation(value_type, key_type)
            def encode(value, key):
                flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)], 0)
                flat = tf.pad(flat, [[0, padded - dim]])
                rotated = tf.clip_by_norm(_rotate(flat, fold_key(key, 1)), clip)  # orthonormal: the norm is kept
                own = fold_key(key, 2, update_digest([flat]))  # the round's key and a hash of the client's update
                if fresh:
                    own = fold_key(own, fresh_key()[0])
                scaled = tf.cast(rotated, tf.float64) * scale
                floor = tf.floor(scaled)
                up = tf.random.stateless_uniform(tf.shape(scaled), fold_key(own, 3), dtype=tf.float64) < scaled - floor
                rounded = tf.cast(floor, tf.int64) + tf.cast(up, tf.int64)
                share = _skellam(tf.shape(rounded), fold_key(own, 4), share_rate)
                return tf.cast(tf.math.floormod(rounded + share, modulus), tf.int32)

            @t.tensorflow.computation(value_type)
            def one(value):
                del value
                return tf.constant(1, tf.int32)

            @t.tensorflow.computation(sum_type, t.TensorType(np.int32, []), key_type)
            def decode(total, count, key):
                missing = tf.cast(tf.maximum(population - count, 0), tf.float64)  # the absent clients' shares
                noised = tf.cast(total, tf.int64) + _skellam([padded], fold_key(key, 5), share_rate * missing)
                wrapped = tf.math.floormod(noised, modulus)
                centred = tf.where(wrapped >= half_range, wrapped - modulus, wrapped)
                flat = _rotate(tf.cast(tf.cast(centred, tf.float64) / scale, tf.float32), fold_key(key, 1),
                               inverse=True)[:dim] / denominator
                parts = tf.split(flat, sizes) if len(sizes) > 1 else [flat]
                out = [tf.cast(tf.reshape(p, s), leaf.dtype) for p, s, leaf in zip(parts, shapes, leaves)]
                return tf.nest.pack_sequence_as(specs, out)

            @t.federated_computation()
            def init_fn():
                return t.federated_eval(initial_state, t.SERVER)

            @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS))
            def next_fn(state, value):
                key = t.federated_map(round_key, state)
                sent = t.federated_map(encode, (value, t.federated_broadcast(key)))
                total = secure_sum.next(secure_sum.initialize(), sent).result
                count = t.federated_sum(t.federated_map(one, value))
                mean = t.federated_map(decode, (total, count, key))
                return t.templates.MeasuredProcessOutput(t.federated_map(advance, state), mean,
                                                         t.federated_value((), t.SERVER))

            return t.templates.AggregationProcess(init_fn, next_fn)

    _CLASSES["skellam"] = _DistributedSkellam
    return _DistributedSkellam
