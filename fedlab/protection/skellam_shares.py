"""Distributed DP's arithmetic around a b-bit sum: each client's update rounded and given its Skellam share of the
noise, the server's decoding of the sum (Kairouz et al. 2021; Agarwal et al. 2021).

The steps are TFF 0.87's ``DistributedDpSumFactory`` with Skellam noise, one by one: the client's values
concatenated into one vector (``concat_factory``), padded to even and randomly rotated (its 'dft' rotation: a random
phase on each complex pair, an FFT, divided by sqrt(d/2)), L2-clipped to C, scaled by s and stochastically rounded
to integers (beta = 0), given its share (Poisson(lambda) - Poisson(lambda)) and reduced mod 2^b. Whatever sums the
clients' vectors mod 2^b (TFF's secure sum: :mod:`fedlab.aggregators.distributed_dp`; the SecAgg protocol:
:mod:`fedlab.rounds.secure_rounds`), the server adds the shares of the population's clients that sent none,
centres the sum, divides by s, rotates back and divides by the expected K. The scale and the bounds are TFF's
formulas (:func:`fedlab.protection.accounting.ddp_parameters`).

Two departures from TFF, and why:

* **The randomness is keyed.** The round's key (from the run's noise seed) keys the rotation (public, the same for
  every client) and, with a hash of the client's update, its rounding and its share; TFF draws all three from the
  clock, so its runs never repeat. ``fresh``: the clients' keys also fold in the system's entropy.
* **Population shares.** TFF sizes each sampled client's share for the expected K, so the noise a round carries
  moves with how many were sampled, which depends on whether a user took part: the subsampling theorem behind the
  accounting assumes noise independent of the sample. Here each of the N clients that may be sampled adds a share
  of variance (z C s)^2 / N every round and the sum always carries (z C s)^2. The deployment this simulates has
  every client send its share through the sum at the round's start (a sampled client's update follows), so a client
  that drops out later has sent it; the simulation folds a sampled client's share into its update's vector and draws
  the shares of the N - m others as one Skellam draw at the server (a sum of Skellams is a Skellam), equal in
  distribution.

What the guarantee assumes: every share is added honestly (clients who pool their shares can subtract them); the
noise seed is secret; the accounting's amplification by sampling holds against the server only if it cannot tell
who was sampled. Two clients whose updates hash alike (equal bit for bit, or one a permutation of the other's
values) draw the same rounding and share.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..core.runtime import tff
from ..core.stateless_keys import fold_key, fresh_key, update_digest
from .accounting import DdpParameters, ddp_parameters


@dataclasses.dataclass(frozen=True)
class SkellamShares:
    """Distributed DP's settings: z, the clip C, the sum's bits b, the expected clients K the mean divides by, the
    population N that adds shares; ``fresh``: the clients' rounding and shares keyed by the system's entropy too."""

    noise_multiplier: float
    clip: float
    bits: int
    expected_clients: float
    population: int
    fresh: bool = False

    def parameters(self, dim: int) -> DdpParameters:
        """The scale, bounds and share variance for clients sending ``dim`` values."""
        return ddp_parameters(self.noise_multiplier, self.clip, self.bits, self.expected_clients, self.population,
                              dim)


def rotate(flat, seed, inverse: bool = False):
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


def skellam(shape, seed, rate):
    """Skellam noise, Poisson(rate) - Poisson(rate) (variance 2 rate), as int64: TF Privacy's
    ``DistributedSkellamSumQuery`` draws it so, from a seed of the clock."""
    import tensorflow as tf

    draw = lambda key: tf.random.stateless_poisson(shape, key, tf.cast(rate, tf.float64), dtype=tf.int64)  # noqa: E731
    return draw(fold_key(seed, 0)) - draw(fold_key(seed, 1))


def share_codec(shares: SkellamShares, value_type) -> tuple:
    """(encode, decode, parameters) for clients sending values of TFF type ``value_type``.

    ``encode(value, key)``: a client's values as b-bit integers, an int32 vector of the padded length, for a sum
    mod 2^b; ``decode(total, count, key)``: the mean over the expected K of the clients' values, in ``value_type``'s
    structure, from that sum (int32, mod 2^b) of ``count`` clients. ``key``: the round's int64[2] key, the same at
    the clients and the server (it keys the rotation).
    """
    import tensorflow as tf
    from tensorflow_federated.python.core.impl.types import type_conversions

    t = tff()
    specs = type_conversions.structure_from_tensor_type_tree(lambda x: tf.TensorSpec(x.shape, x.dtype), value_type)
    leaves = tf.nest.flatten(specs)
    shapes = [tuple(leaf.shape) for leaf in leaves]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    params = shares.parameters(sum(sizes))
    dim, padded, scale, clip = params.dim, params.padded_dim, params.scale, float(shares.clip)
    modulus, half_range = 2 ** shares.bits, 2 ** (shares.bits - 1)
    share_rate = params.share_variance / 2  # each share: Poisson(rate) - Poisson(rate)
    population, denominator, fresh = shares.population, float(shares.expected_clients), shares.fresh
    key_type, sum_type = t.TensorType(np.int64, [2]), t.TensorType(np.int32, [padded])

    @t.tensorflow.computation(value_type, key_type)
    def encode(value, key):
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in tf.nest.flatten(value)], 0)
        flat = tf.pad(flat, [[0, padded - dim]])
        rotated = tf.clip_by_norm(rotate(flat, fold_key(key, 1)), clip)  # orthonormal: the norm is kept
        own = fold_key(key, 2, update_digest([flat]))  # the round's key and a hash of the client's update
        if fresh:
            own = fold_key(own, fresh_key()[0])
        scaled = tf.cast(rotated, tf.float64) * scale
        floor = tf.floor(scaled)
        up = tf.random.stateless_uniform(tf.shape(scaled), fold_key(own, 3), dtype=tf.float64) < scaled - floor
        rounded = tf.cast(floor, tf.int64) + tf.cast(up, tf.int64)
        share = skellam(tf.shape(rounded), fold_key(own, 4), share_rate)
        return tf.cast(tf.math.floormod(rounded + share, modulus), tf.int32)

    @t.tensorflow.computation(sum_type, t.TensorType(np.int32, []), key_type)
    def decode(total, count, key):
        missing = tf.cast(tf.maximum(population - count, 0), tf.float64)  # the absent clients' shares
        noised = tf.cast(total, tf.int64) + skellam([padded], fold_key(key, 5), share_rate * missing)
        wrapped = tf.math.floormod(noised, modulus)
        centred = tf.where(wrapped >= half_range, wrapped - modulus, wrapped)
        flat = rotate(tf.cast(tf.cast(centred, tf.float64) / scale, tf.float32), fold_key(key, 1),
                      inverse=True)[:dim] / denominator
        parts = tf.split(flat, sizes) if len(sizes) > 1 else [flat]
        return tf.nest.pack_sequence_as(specs, [tf.cast(tf.reshape(p, s), leaf.dtype)
                                                for p, s, leaf in zip(parts, shapes, leaves)])

    return encode, decode, params
