"""The secure aggregation protocol as a stage of a round (:mod:`fedlab.protection.secagg` runs the protocol).

TFF 0.87 runs secure sums as intrinsics its C++ runtime does not implement
(fedlab otherwise runs their plain bodies: the right numbers, no masking).
A round with the protocol is split where the protocol sits
(:class:`~fedlab.rounds.split_rounds.SplitRoundProcess`, which this module's
pieces serve):

1. a TFF computation broadcasts the model, trains every client in fedlab's
   compiled loop (:mod:`fedlab.rounds.array_training`) and encodes its update
   (in a computation of its own when Python runs between: forged updates,
   per-client state) as TFF's secure aggregator does (:func:`protocol_codec`): L2-clipped to C
   (``clipping_factory``), scaled by (2^(b-1) - 1) / C and rounded
   (``DiscretizationFactory``), taken modulo R = 2^(b + ceil(log2 K)); it
   returns each client's ring vector (under an adaptive clip C_t stands for C,
   and the vector ends with the client's bit: :class:`ProtocolSum`);
   Under distributed DP (:attr:`ProtocolSum.shares`) a client encodes its update with its noise share instead
   (:mod:`fedlab.protection.skellam_shares`), and the ring is 2^b;
2. the clients and the server run SecAgg or SecAgg+ in Python with real
   cryptography; the server object receives only masked vectors and recovers
   their sum modulo R, also when clients drop out after the key exchange;
3. a second TFF computation decodes the sum (:func:`signed_sum`, / scale, /
   clients included; under user-level DP, plus the server's Gaussian noise, /
   the expected K: :class:`ProtocolSum`) and applies TFF's server-optimizer
   finalizer.

The arithmetic of 1 and 3 is that of TFF's ``clipping_factory`` around
``UnweightedMeanFactory(DiscretizationFactory(SecureModularSumFactory))``,
operation for operation, so a round without dropouts gives the numbers of
the simulated secure sum (``tests/test_secure_rounds.py``). Clients that
dropped out after the key exchange are the round's ``participants`` that sent
no update; the mean divides by the clients whose masked vector arrived. When
too few clients remain for the protocol to unmask (:class:`SecAggAborted`),
the round's update is lost and the model stays as it was: what a deployment
would see (:func:`lost_round`). Under central DP (:class:`ProtocolSum`) every
sampled client's update is summed (:func:`lone_client`), an empty round
releases the noise alone, and what could make the protocol abort is refused.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from ..core.runtime import tff
from ..protection.skellam_shares import SkellamShares


@dataclasses.dataclass(frozen=True)
class ProtocolSum:
    """The aggregator slot's value for a secure protocol: how clients encode, which protocol sums.

    ``bits``: b, quantisation bits of each coordinate; ``clip_norm``: C, the
    L2 bound; ``clients``: K, the most clients a round includes (it sizes the
    ring so that K b-bit values never wrap around).

    Central DP on the protocol's sum (user-level DP): the server
    adds Gaussian noise of standard deviation ``noise_stddev`` (z * C) to the sum
    it unmasked and divides by ``denominator`` (the expected clients of a round,
    as TFF's ``DifferentiallyPrivateFactory.gaussian_fixed`` does) instead of the
    clients included. ``seeded``: the noise comes from the round's noise seed
    (reproducible simulation), else from the operating system's entropy.

    ``adaptive`` (user-level DP, ``dp='adaptive'``; Andrew et al. 2021, as TF
    Privacy's ``QuantileAdaptiveClipSumQuery``): the clip C_t moves to the
    ``target_quantile`` of the update norms. A client clips its update to C_t
    and encodes it at scale (2^(b-1) - 1) / C_t, so that it fills the ring as
    under the first clip C, and appends its bit [norm <= C_t] as one more ring
    element; the protocol sums both. The server decodes the sum in units of C
    (``scale``), adds its noise (``noise_stddev``, z_v C, in units of C too)
    and divides by K C / C_t (:meth:`divisor`): the mean of the clipped updates
    plus noise z_v C_t, over K. The bits' sum moves the clip (:meth:`next_clip`,
    with its own noise ``count_stddev``); z_v and ``count_stddev`` split the
    config's z as TFF's ``gaussian_adaptive`` does.
    """

    protocol: str
    bits: int
    clip_norm: float
    clients: int
    noise_stddev: float = 0.0
    denominator: float = 0.0
    seeded: bool = True
    adaptive: bool = False
    target_quantile: float = 0.5
    count_stddev: float = 0.0
    clip_learning_rate: float = 0.2
    # distributed DP (dp='distributed'): the clients encode their updates with their noise shares and the ring is
    # 2^b (the shares wrap; the server centres the sum), :mod:`fedlab.protection.skellam_shares`
    shares: Optional[SkellamShares] = None

    @property
    def modulus_bits(self) -> int:
        """log2 R: R = 2^(b + ceil(log2 K)) holds the sum of K symmetric b-bit integers; 2^b for distributed DP's
        shares, which the sum wraps around as TFF's modular sum does."""
        if self.shares is not None:
            return self.bits
        return self.bits + math.ceil(math.log2(max(self.clients, 1)))

    def round_key(self, noise_seed: Optional[int]) -> np.ndarray:
        """Distributed DP's key for a round (int64[2], the same at the clients and the server): from the round's
        noise seed, or, unseeded, from the system's entropy."""
        if not self.seeded:
            return np.random.default_rng().integers(0, 2 ** 62, size=2, dtype=np.int64)
        if noise_seed is None:
            raise ValueError("noise_seed: seeded distributed DP needs the round's seed (the runner passes it)")
        return np.asarray([int(noise_seed), 0xDD], np.int64)

    @property
    def scale(self) -> float:
        return (2 ** (self.bits - 1) - 1) / self.clip_norm

    @property
    def central_dp(self) -> bool:
        return self.denominator > 0

    def noise(self, shapes: Sequence[tuple], noise_seed: Optional[int]) -> tuple:
        """The server's noise for the round's sum, one float32 array per weight (zeros without central DP).

        Seeded noise needs the round's ``noise_seed``: a fixed default would draw the same noise every round."""
        if not self.central_dp or self.noise_stddev == 0:
            return tuple(np.zeros(shape, np.float32) for shape in shapes)
        if self.seeded and noise_seed is None:
            raise ValueError("noise_seed: seeded central DP needs the round's seed (the runner passes it)")
        rng = np.random.default_rng([int(noise_seed), 0xD9] if self.seeded else None)
        return tuple(rng.normal(0.0, self.noise_stddev, size=shape).astype(np.float32) for shape in shapes)

    def count(self, included: int) -> np.float32:
        """The clients the mean is over: the expected clients under central DP, else the clients included."""
        return np.float32(self.denominator if self.central_dp else included)

    def divisor(self, included: int, clip: float) -> np.float32:
        """What the decoded sum (in units of the first clip C) plus noise is divided by: :meth:`count`, times
        C / C_t under an adaptive clip C_t (its clients encoded at C_t's scale)."""
        if not self.adaptive:
            return self.count(included)
        return np.float32(float(self.count(included)) * self.clip_norm / float(clip))

    def constants(self, clip: float) -> tuple:
        """(clip, scale) as float32, what a client encodes with this round: C_t and (2^(b-1) - 1) / C_t under an
        adaptive clip, else C's."""
        if not self.adaptive:
            return np.float32(self.clip_norm), np.float32(self.scale)
        return np.float32(clip), np.float32((2 ** (self.bits - 1) - 1) / float(clip))

    def initial_aggregator_state(self):
        """What a round process keeps in the state's ``aggregator`` slot for the protocol: the clip, if adaptive;
        else nothing (the split round then keeps its unused mean's empty state there)."""
        return collections.OrderedDict(clip=np.float32(self.clip_norm)) if self.adaptive else ()

    def next_clip(self, clip: float, below: int, included: int, noise_seed: Optional[int]) -> np.float32:
        """The next round's clip, C_t exp(-0.2 (b - gamma)) (TF Privacy's geometric update): b is the noised share
        of clients at or below C_t, (bits summed - 0.5 x clients included + N(0, ``count_stddev``^2)) / K + 0.5
        clipped to [0, 1] (TF Privacy's shifted count, sensitivity 0.5), gamma the target quantile."""
        noise = 0.0
        if self.count_stddev > 0:
            if self.seeded and noise_seed is None:
                raise ValueError("noise_seed: seeded central DP needs the round's seed (the runner passes it)")
            rng = np.random.default_rng([int(noise_seed), 0xDA] if self.seeded else None)
            noise = float(rng.normal(0.0, self.count_stddev))
        fraction = min(max((below - 0.5 * included + noise) / self.denominator + 0.5, 0.0), 1.0)
        return np.float32(float(clip) * math.exp(-self.clip_learning_rate * (fraction - self.target_quantile)))


def lone_client(protocol: ProtocolSum, ids: Sequence[int], everyone: Sequence[int]) -> bool:
    """Whether a round under central DP has one client, whose update is then summed without the protocol.

    A sum of one client is that client's update, which the protocol cannot hide and refuses to compute. Under
    central DP the round is summed all the same (one update, then the server's noise): had it released the noise
    alone, adding a user to it would move the released sum by two updates (theirs and the lone client's), twice
    the sensitivity the accounting uses. Dropouts, over-selection and deadlines, which would make whether the
    protocol aborts depend on one user, are refused with central DP on a protocol (``ExperimentConfig``)."""
    return protocol.central_dp and len(ids) == 1 and len(everyone) == 1


def current_clip(state) -> Optional[float]:
    """The adaptive clip a protocol round process keeps in the state's ``aggregator`` slot; None without one."""
    aggregator = state.aggregator
    return float(np.asarray(aggregator["clip"])) if isinstance(aggregator, collections.abc.Mapping) \
        and "clip" in aggregator else None


def moved_clip(protocol: ProtocolSum, state, clip: Optional[float], total: Optional[np.ndarray], included: int,
               noise_seed: Optional[int]):
    """``state`` with the next round's clip (:meth:`ProtocolSum.next_clip`) under an adaptive clip, from the
    bits' sum, the last ring element of ``total`` (None: an empty sum); else ``state``."""
    if not protocol.adaptive:
        return state
    below = int(np.asarray(total, np.uint64)[-1]) if total is not None else 0  # K bits < R / 2: no wrap
    new = protocol.next_clip(clip, below, included, noise_seed)
    return type(state)(global_model_weights=state.global_model_weights, distributor=state.distributor,
                       client_work=state.client_work, aggregator=collections.OrderedDict(clip=new),
                       finalizer=state.finalizer)


def aggregator_measurements(protocol: ProtocolSum, stats: dict, clip: Optional[float]) -> collections.OrderedDict:
    """A protocol round's aggregator measurements: the protocol's ``stats``, and the clip the round clipped to under
    an adaptive clip, in the place TFF's DP factories report theirs (``dp_query_metrics``)."""
    measurements = collections.OrderedDict(secagg=stats)
    if protocol.adaptive:
        measurements["dp_query_metrics"] = collections.OrderedDict(clip=np.float32(clip))
    return measurements


def lost_round(protocol: ProtocolSum) -> str:
    """What an aborted protocol round releases: under central DP the server still adds its noise to an empty sum
    and steps the model (no simulated round aborts then: :func:`lone_client`)."""
    if protocol.central_dp:
        return "the round's update is lost; the model moves by the server's DP noise alone"
    return "the round's update is lost, the model is unchanged"


def signed_sum(total: np.ndarray, modulus_bits: int, shapes: Sequence[tuple]) -> tuple:
    """A protocol's sum modulo R = 2^modulus_bits as signed integers in ``shapes``."""
    modulus = 2 ** modulus_bits
    signed = np.asarray(total, dtype=np.uint64).astype(np.int64)
    signed = np.where(signed >= modulus // 2, signed - modulus, signed)
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(signed[start:start + size].reshape(shape))
        start += size
    return tuple(out)


def protocol_codec(protocol: ProtocolSum, update_type, shapes: Sequence[tuple]) -> tuple:
    """TFF computations (encode, undiscretize, divide) of a protocol's clients and server.

    ``encode(update, clip, scale)``: a client's update as ring elements, TFF's
    ``clipping_factory`` then ``DiscretizationFactory`` (deterministic rounding)
    operation for operation, modulo R; ``undiscretize(summed, scale)`` and
    ``divide(total, noise, count)``: the server's decoding of the sum and
    ``UnweightedMeanFactory``'s division (under central DP, of the sum plus the
    server's noise: :meth:`ProtocolSum.noise`), as two computations (in one,
    TensorFlow's optimizer may fold the two divisions into one). Clip and scale
    are inputs, as in TFF's factories: as constants, TensorFlow's optimizer
    would turn x / c into x * (1 / c), which rounds differently.
    """
    import tensorflow as tf

    t = tff()
    modulus = 2 ** protocol.modulus_bits
    summed_type = t.types.tensorflow_to_type(tuple(tf.TensorSpec(s, tf.int64) for s in shapes))

    @t.tensorflow.computation(update_type, t.TensorType(np.float32), t.TensorType(np.float32))
    def encode(update, clip, scale):  # TFF's clipping_factory (_clip_by_global_l2_norm), then discretization
        values = tf.nest.flatten(update)
        norm = tf.math.sqrt(tf.reduce_sum(tf.stack([tf.cast(tf.norm(a, ord=2) ** 2, tf.float32)
                                                     for a in values])))
        values = tf.cond(tf.math.greater(norm, clip),
                         lambda: [a / tf.cast(norm / clip, a.dtype) for a in values], lambda: values)
        encoded = tuple(tf.math.floormod(tf.cast(tf.cast(tf.round(tf.cast(a, tf.float32) * scale), tf.int32),
                                                 tf.int64), modulus) for a in values)
        if protocol.adaptive:  # the client's bit [norm <= C_t], summed with its update (ProtocolSum)
            encoded += (tf.reshape(tf.cast(norm <= clip, tf.int64), [1]),)
        return encoded

    @t.tensorflow.computation(summed_type, t.TensorType(np.float32))
    def undiscretize(summed, scale):
        return tuple(tf.cast(s, tf.float32) / scale for s in summed)

    @t.tensorflow.computation(undiscretize.type_signature.result, undiscretize.type_signature.result,
                              t.TensorType(np.float32))
    def divide(total, noise, count):
        if protocol.central_dp:  # built without the addition otherwise: the protocol's mean bit for bit
            total = tuple(x + n for x, n in zip(total, noise))
        return tuple(tf.math.divide(x, count) for x in total)

    return encode, undiscretize, divide
