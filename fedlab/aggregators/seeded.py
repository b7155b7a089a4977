"""Aggregators whose randomness comes from the run's seed: the same config gives the same numbers.

TFF 0.87 draws DP noise (TensorFlow Privacy's ``GaussianSumQuery``) and the
compressor's stochastic rounding (tensor_encoding's uniform quantiser) from
TensorFlow's unseeded generator, so a DP or compressed run differs every time
it runs. These factories do the same arithmetic with stateless random ops
keyed by ``(noise seed, round)``: the aggregator's state holds the seed and a
round counter, so a run resumed from a checkpoint, or split over workers,
draws exactly what an uninterrupted local run draws.

* :func:`seeded_gaussian`: user-level DP, the mean of updates clipped
  to an L2 norm C plus N(0, (z C)^2) noise on the sum, divided by the expected
  clients per round (McMahan et al. 2018), as TFF's
  ``DifferentiallyPrivateFactory.gaussian_fixed``; with ``adaptive`` the clip
  follows Andrew et al. 2021 exactly as TensorFlow Privacy's
  ``QuantileAdaptiveClipSumQuery`` does (geometric update, learning rate 0.2,
  counts shifted by -0.5, noise on the count, the value noise raised to
  (z^-2 - (2 s)^-2)^-1/2).
* :func:`seeded_quantizing`: each tensor uniformly quantised to b
  bits between its min and max with stochastic rounding, as TFF's
  ``EncodedSumFactory.quantize_above_threshold(threshold=0)``; a client's
  rounding is keyed by the round's seed and a hash of its own update, since a
  TFF client does not know its index.
* :func:`quantizing_sum`: the same quantisation as the sum of user-level DP's
  clipped updates, each quantised tensor then scaled down to no longer than it
  was, so the clip the noise is calibrated to still bounds it.

**What a seed means for privacy.** The noise is Gaussian with the stated
variance whatever the seed, so the accounting is unchanged *for someone who does
not know the seed*; whoever knows the seed and the config can regenerate the
noise and remove it, and then there is no privacy at all. Seeded noise is for
simulation, where reproducing a figure is the point. A deployment sets
``noise_source="unseeded"``: TFF's own factories where they stack, else these with ``fresh`` keys drawn from
the system's entropy each round (:func:`fedlab.core.stateless_keys.fresh_key`), never from the clock.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from ..core.runtime import tff
from ..core.stateless_keys import fold_key, fresh_key, update_digest

SEED_KEY = "noise_seed"


def seed_state_type(extra=None):
    """The TFF type of a seeded aggregator's state: its noise seed, its round and ``extra`` fields."""
    t = tff()
    fields = [(SEED_KEY, t.TensorType(np.int64, [2])), ("round", t.TensorType(np.int64, []))]
    return t.StructWithPythonType(fields + list((extra or {}).items()), collections.OrderedDict)


def seeded_gaussian(*, noise_multiplier: float, clients_per_round: float, clip: float, adaptive: bool = False,
                    target_quantile: float = 0.5, clipped_count_stddev=None, record_sum=None, statistic=None,
                    sensitivity: float = 1.0, fresh: bool = False):
    """User-level DP mean with seeded Gaussian noise (fixed or adaptive clipping): an unweighted TFF factory.

    ``record_sum``: an unweighted factory that sums the clipped updates (a secure sum, or :func:`quantizing_sum`),
    the noise then added to its result; its state must not change between rounds (each round starts from its
    initial state: a fixed scale, or none). Under an adaptive clip C_t, a sum that may lengthen an update (a secure
    sum's fixed range, unlike ``keeps_norm``) is given each clipped update times C / C_t (norm at most the initial
    clip C, which sized its range) and its result is multiplied back by C_t / C; the clients' below-the-clip bits
    and their count are then summed by TFF's secure sum too.

    ``statistic``: instead of the sum divided by the expected K, an unweighted factory (a median, a trimmed mean,
    Krum) of the clipped updates, with ``sensitivity`` (s) the bound, in units of the clip, on how far one update
    added or removed moves it; the noise on it is then z s C_t, and the accounting that of the mean at z.

    ``fresh``: the noise drawn anew each round from the system's entropy (``noise_source="unseeded"``), not the seed.
    """
    return _gaussian_class()(noise_multiplier=noise_multiplier, clients_per_round=clients_per_round, clip=clip,
                             adaptive=adaptive, target_quantile=target_quantile,
                             clipped_count_stddev=clipped_count_stddev, record_sum=record_sum, statistic=statistic,
                             sensitivity=sensitivity, fresh=fresh)


def quantizing_sum(bits: int, *, fresh: bool = False):
    """The sum of the clients' values, each tensor quantised to ``bits`` as :func:`seeded_quantizing` does and then
    multiplied by min(1, its norm before / after): an unweighted TFF factory, the ``record_sum`` of user-level DP
    with compression.

    Stochastic rounding can lengthen a tensor (a coordinate moves up to one step of (max - min) / (2^b - 1));
    scaling it back keeps every client's update within the clip C, so one user still moves the sum by at most C
    and the noise z C keeps its meaning. The scaled tensor is still b-bit codes between a min and a max (both
    scaled): what a client sends is unchanged. Since rounding adds variance, the quantised tensor is longer than
    the original more often than not, so the scale biases updates towards shorter ones: barely at 8 bits, by a
    good fraction at 1 or 2. Its state never changes: a client's rounding is keyed by a hash of its update (with
    ``fresh``, also a key from the system's entropy), not by the round or the noise seed.
    """
    return _quantizing_sum_class()(bits, fresh=fresh)


def _stochastic_round(v, levels: float, seed):
    """``v`` uniformly quantised to ``levels`` + 1 values between its min and max, rounding up with probability the
    remainder (unbiased), as the server decodes it."""
    import tensorflow as tf

    lo, hi = tf.reduce_min(v), tf.reduce_max(v)
    span = tf.where(hi > lo, hi - lo, tf.ones_like(hi))
    scaled = (v - lo) / span * levels
    floor = tf.floor(scaled)
    up = tf.cast(tf.random.stateless_uniform(tf.shape(v), seed=seed, dtype=v.dtype) < scaled - floor, v.dtype)
    return (floor + up) / levels * span + lo


def seeded_quantizing(bits: int, inner=None, *, fresh: bool = False):
    """The weighted mean of updates quantised to ``bits`` with seeded stochastic rounding: a weighted TFF factory.

    ``inner``: an unweighted factory (a median, a trimmed mean, Krum) that takes the clients' quantised updates,
    as the server decodes them, instead of the mean; ``fresh``: the rounding's randomness drawn anew every round
    (``noise_source="unseeded"``), not from the run's noise seed.
    """
    return _quantizing_class()(bits, inner, fresh=fresh)


# TFF's factory base classes are subclassed on first use: importing TFF takes 15 s.
_CLASSES: dict = {}


def _gaussian_class():
    if "gaussian" in _CLASSES:
        return _CLASSES["gaussian"]
    import tensorflow as tf

    t = tff()

    class _SeededGaussian(t.aggregators.UnweightedAggregationFactory):
        def __init__(self, *, noise_multiplier: float, clients_per_round: float, clip: float,
                     adaptive: bool = False, target_quantile: float = 0.5, learning_rate: float = 0.2,
                     clipped_count_stddev: float | None = None, record_sum=None, statistic=None,
                     sensitivity: float = 1.0, fresh: bool = False):
            if record_sum is not None and statistic is not None and not hasattr(record_sum, "client_map"):
                raise ValueError("statistic: takes the clipped updates themselves; record_sum must be one that maps "
                                 "each client's update (client_map, as quantizing_sum), not only their sum")
            if not (math.isfinite(sensitivity) and sensitivity > 0):
                raise ValueError(f"sensitivity: must be a finite number > 0, got {sensitivity!r}")
            self.record_sum, self.statistic = record_sum, statistic
            self.sensitivity, self.fresh = float(sensitivity), fresh
            # an adaptive clip leaves a sum's fixed range: the clients send their updates in units of the first clip
            self.rescaled = adaptive and record_sum is not None and not getattr(record_sum, "keeps_norm", False)
            self.noise_multiplier = float(noise_multiplier)
            self.clients_per_round = float(clients_per_round)
            self.clip = float(clip)
            self.adaptive = adaptive
            self.target_quantile = float(target_quantile)
            self.learning_rate = float(learning_rate)
            if adaptive and self.noise_multiplier > 0:
                s = 0.05 * self.clients_per_round if clipped_count_stddev is None else float(clipped_count_stddev)
                if self.noise_multiplier >= 2 * s:
                    raise ValueError(f"clipped_count_stddev: {s} is too low for noise_multiplier "
                                     f"{self.noise_multiplier}; it must exceed half of it")
                self.value_noise_multiplier = (self.noise_multiplier ** -2 - (2 * s) ** -2) ** -0.5
                self.count_stddev = s
            else:
                self.value_noise_multiplier = self.noise_multiplier
                self.count_stddev = 0.0 if clipped_count_stddev is None else float(clipped_count_stddev)

        def create(self, value_type):
            state_type = seed_state_type({"clip": t.TensorType(np.float32, [])})
            clip0 = self.clip
            records = self.record_sum.create(value_type) if self.record_sum is not None else None
            statistic = self.statistic.create(value_type) if self.statistic is not None else None
            # a statistic of compressed updates: each client's clipped update quantised (no longer than it was)
            encode = self.record_sum.client_map(value_type) if statistic is not None and records is not None else None
            rescaled, fresh = self.rescaled, self.fresh
            bits_sum = (t.aggregators.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0).create(
                t.TensorType(np.int32, [2])) if rescaled else None)

            @t.tensorflow.computation()
            def initial_state():
                return collections.OrderedDict([(SEED_KEY, tf.zeros([2], tf.int64)),
                                                ("round", tf.constant(0, tf.int64)),
                                                ("clip", tf.constant(clip0, tf.float32))])

            @t.tensorflow.computation(value_type, t.TensorType(np.float32, []))
            def clip_record(value, clip):
                flat = tf.nest.flatten(value)
                clipped, norm = tf.clip_by_global_norm(flat, clip)
                # As TF Privacy: the count of records below the clip, shifted by -0.5 (sensitivity 0.5).
                below = tf.cast(norm <= clip, tf.float32) - 0.5
                return tf.nest.pack_sequence_as(value, clipped), below

            @t.tensorflow.computation(value_type, t.TensorType(np.float32, []))
            def in_first_clip_units(value, clip):
                return tf.nest.map_structure(lambda v: v * tf.cast(clip0 / clip, v.dtype), value)

            @t.tensorflow.computation(t.TensorType(np.float32, []))
            def bit_and_one(below):
                return tf.stack([tf.cast(below > 0, tf.int32), tf.constant(1, tf.int32)])

            @t.tensorflow.computation(t.TensorType(np.int32, [2]))
            def shifted_count(sums):
                return tf.cast(sums[0], tf.float32) - 0.5 * tf.cast(sums[1], tf.float32)

            # noise z s C_t: s = 1 for the sum (then divided by the expected K), a statistic's own bound otherwise
            noise_multiplier = self.value_noise_multiplier * self.sensitivity
            count_stddev = self.count_stddev
            denominator = self.clients_per_round if statistic is None else 1.0
            expected, adaptive = self.clients_per_round, self.adaptive
            target, lr = self.target_quantile, self.learning_rate

            @t.tensorflow.computation(value_type, t.TensorType(np.float32, []), state_type)
            def noised_mean(total, below, state):
                seed = fresh_key() if fresh else fold_key(state[SEED_KEY], state["round"])
                clip = state["clip"]
                flat = tf.nest.flatten(total)
                if rescaled:  # the sum came in units of the first clip
                    flat = [v * tf.cast(clip / clip0, v.dtype) for v in flat]
                noised = [v + tf.random.stateless_normal(tf.shape(v), seed=fold_key(seed, 1, i),
                                                         stddev=noise_multiplier * clip, dtype=v.dtype)
                          for i, v in enumerate(flat)]
                mean = tf.nest.pack_sequence_as(total, [v / denominator for v in noised])
                new_clip = clip
                if adaptive:
                    noisy_below = below + tf.random.stateless_normal([], seed=fold_key(seed, 2), stddev=count_stddev)
                    fraction = tf.clip_by_value(noisy_below / expected + 0.5, 0.0, 1.0)
                    new_clip = tf.maximum(clip * tf.math.exp(-lr * (fraction - target)), 0.0)
                new_state = collections.OrderedDict([(SEED_KEY, state[SEED_KEY]), ("round", state["round"] + 1),
                                                     ("clip", new_clip)])
                return mean, new_state, clip

            @t.federated_computation()
            def init_fn():
                return t.federated_eval(initial_state, t.SERVER)

            @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS))
            def next_fn(state, value):
                clip_at_clients = t.federated_broadcast(t.federated_map(_clip_of_state(state_type), state))
                clipped, below = t.federated_map(clip_record, (value, clip_at_clients))
                if statistic is not None:
                    sent = clipped if encode is None else t.federated_map(encode, clipped)
                    total = statistic.next(statistic.initialize(), sent).result
                elif records is None:
                    total = t.federated_sum(clipped)
                elif rescaled:
                    sent = t.federated_map(in_first_clip_units, (clipped, clip_at_clients))
                    total = records.next(records.initialize(), sent).result
                else:
                    total = records.next(records.initialize(), clipped).result
                if rescaled:  # the bits and their count summed securely too, then shifted by -0.5 each
                    sums = bits_sum.next(bits_sum.initialize(), t.federated_map(bit_and_one, below)).result
                    below_sum = t.federated_map(shifted_count, sums)
                else:
                    below_sum = t.federated_sum(below)
                mean, new_state, clip = t.federated_map(noised_mean, (total, below_sum, state))
                measurements = t.federated_zip(collections.OrderedDict(
                    dp_query_metrics=t.federated_zip(collections.OrderedDict(clip=clip))))
                return t.templates.MeasuredProcessOutput(new_state, mean, measurements)

            return t.templates.AggregationProcess(init_fn, next_fn)

    _CLASSES["gaussian"] = _SeededGaussian
    return _SeededGaussian


def _clip_of_state(state_type):
    t = tff()

    @t.tensorflow.computation(state_type)
    def clip_of(state):
        return state["clip"]

    return clip_of


def _quantizing_class():
    if "quantizing" in _CLASSES:
        return _CLASSES["quantizing"]
    import tensorflow as tf

    t = tff()

    class _SeededQuantizing(t.aggregators.WeightedAggregationFactory):
        def __init__(self, bits: int, inner=None, *, fresh: bool = False):
            if not 1 <= int(bits) <= 16:
                raise ValueError(f"quantization_bits: must be in 1..16, got {bits}")
            self.bits, self.inner, self.fresh = int(bits), inner, fresh

        def create(self, value_type, weight_type):
            inner = self.inner.create(value_type) if self.inner is not None else None
            state_type = seed_state_type({"inner": inner.initialize.type_signature.result.member}
                                     if inner is not None else None)
            levels = float(2 ** self.bits - 1)

            @t.tensorflow.computation()
            def initial_state():
                return collections.OrderedDict([(SEED_KEY, tf.zeros([2], tf.int64)),
                                                ("round", tf.constant(0, tf.int64))])

            @t.tensorflow.computation(value_type, weight_type, t.TensorType(np.int64, [2]))
            def quantize(value, weight, seed):
                flat = tf.nest.flatten(value)
                key = fold_key(seed, update_digest(flat))  # the round's seed and a hash of the client's own update
                out = [_stochastic_round(v, levels, fold_key(key, i)) * weight for i, v in enumerate(flat)]
                return tf.nest.pack_sequence_as(value, out), weight

            @t.tensorflow.computation(value_type, weight_type)
            def divide(total, weight_total):
                return tf.nest.map_structure(lambda v: tf.math.divide_no_nan(v, weight_total), total)

            fresh = self.fresh

            @t.tensorflow.computation(seed_state_type())
            def round_seed(state):
                if fresh:  # from the system's entropy, as TFF's own rounding (nothing in the state)
                    return fresh_key()
                return fold_key(state[SEED_KEY], state["round"])

            @t.tensorflow.computation(seed_state_type())
            def advance(state):
                return collections.OrderedDict([(SEED_KEY, state[SEED_KEY]), ("round", state["round"] + 1)])

            if inner is not None:
                @t.tensorflow.computation(value_type, t.TensorType(np.int64, [2]))
                def decoded(value, seed):
                    """A client's update quantised, as the server decodes it (the weighted mean's rounding)."""
                    return quantize(value, tf.constant(1.0, tf.float32), seed)[0]

                return self._around(inner, state_type, initial_state, decoded, round_seed, advance, value_type,
                                    weight_type)

            @t.federated_computation()
            def init_fn():
                return t.federated_eval(initial_state, t.SERVER)

            @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS),
                                     t.FederatedType(weight_type, t.CLIENTS))
            def next_fn(state, value, weight):
                seed = t.federated_broadcast(t.federated_map(round_seed, state))
                weighted, weights = t.federated_map(quantize, (value, weight, seed))
                mean = t.federated_map(divide, (t.federated_sum(weighted), t.federated_sum(weights)))
                return t.templates.MeasuredProcessOutput(t.federated_map(advance, state), mean,
                                                         t.federated_value((), t.SERVER))

            return t.templates.AggregationProcess(init_fn, next_fn)

        @staticmethod
        def _around(inner, state_type, initial_state, decoded, round_seed, advance, value_type, weight_type):
            """The process whose clients quantise their updates and whose server gives them, decoded, to
            ``inner`` (the clients' weights are not used: a median or Krum weighs every update alike)."""

            @t.tensorflow.computation(seed_state_type(), inner.initialize.type_signature.result.member)
            def join(seeds, inner_state):
                return collections.OrderedDict([(SEED_KEY, seeds[SEED_KEY]), ("round", seeds["round"]),
                                                ("inner", inner_state)])

            @t.tensorflow.computation(state_type)
            def seeds_of(state):
                return collections.OrderedDict([(SEED_KEY, state[SEED_KEY]), ("round", state["round"])])

            @t.tensorflow.computation(state_type)
            def inner_of(state):
                return state["inner"]

            @t.federated_computation()
            def init_fn():
                return t.federated_map(join, (t.federated_eval(initial_state, t.SERVER), inner.initialize()))

            @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS),
                                     t.FederatedType(weight_type, t.CLIENTS))
            def next_fn(state, value, weight):
                seeds = t.federated_map(seeds_of, state)
                seed = t.federated_broadcast(t.federated_map(round_seed, seeds))
                output = inner.next(t.federated_map(inner_of, state), t.federated_map(decoded, (value, seed)))
                return t.templates.MeasuredProcessOutput(
                    t.federated_map(join, (t.federated_map(advance, seeds), output.state)), output.result,
                    output.measurements)

            return t.templates.AggregationProcess(init_fn, next_fn)

    _CLASSES["quantizing"] = _SeededQuantizing
    return _SeededQuantizing


def _quantizing_sum_class():
    if "quantizing_sum" in _CLASSES:
        return _CLASSES["quantizing_sum"]
    import tensorflow as tf

    t = tff()

    class _QuantizingSum(t.aggregators.UnweightedAggregationFactory):
        keeps_norm = True  # no client's value comes out longer than it went in (seeded_gaussian's record_sum)

        def __init__(self, bits: int, *, fresh: bool = False):
            if not 1 <= int(bits) <= 16:
                raise ValueError(f"quantization_bits: must be in 1..16, got {bits}")
            self.bits, self.fresh = int(bits), fresh

        def client_map(self, value_type):
            """The TFF computation a client applies to its value before the sum (quantise, scale back)."""
            levels, fresh, bits = float(2 ** self.bits - 1), self.fresh, self.bits

            @t.tensorflow.computation(value_type)
            def quantize(value):
                flat = tf.nest.flatten(value)
                key = tf.constant([0x5EC, bits], tf.int64)
                if fresh:  # from the system's entropy, as TFF's own rounding
                    key = fresh_key()
                key = fold_key(key, update_digest(flat))
                out = []
                for i, v in enumerate(flat):
                    q = _stochastic_round(v, levels, fold_key(key, i))
                    before, after = tf.norm(tf.reshape(v, [-1])), tf.norm(tf.reshape(q, [-1]))
                    out.append(q * tf.minimum(tf.constant(1.0, v.dtype), tf.math.divide_no_nan(before, after)))
                return tf.nest.pack_sequence_as(value, out)

            return quantize

        def create(self, value_type):
            quantize = self.client_map(value_type)

            @t.federated_computation()
            def init_fn():
                return t.federated_value((), t.SERVER)

            @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS))
            def next_fn(state, value):
                return t.templates.MeasuredProcessOutput(state, t.federated_sum(t.federated_map(quantize, value)),
                                                         t.federated_value((), t.SERVER))

            return t.templates.AggregationProcess(init_fn, next_fn)

    _CLASSES["quantizing_sum"] = _QuantizingSum
    return _QuantizingSum


def set_noise_seed(state, seed: int):
    """``state`` (a learning process state) with every seeded aggregator keyed by ``seed``.

    Aggregators start with a zero key so that one built process serves every
    seed; the runner writes the run's noise seed in before the first round.
    """
    key = np.asarray([seed & 0x7FFFFFFF, (seed >> 31) & 0x7FFFFFFF], np.int64)

    def visit(node):
        if isinstance(node, collections.OrderedDict):
            return collections.OrderedDict((k, key.copy() if k == SEED_KEY else visit(v)) for k, v in node.items())
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[visit(v) for v in node])
        if isinstance(node, (list, tuple)):
            return type(node)(visit(v) for v in node)
        return node

    aggregator = visit(state.aggregator)
    return type(state)(global_model_weights=state.global_model_weights, distributor=state.distributor,
                       client_work=state.client_work, aggregator=aggregator, finalizer=state.finalizer)


def expected_noise_std(noise_multiplier: float, clip: float, clients_per_round: float) -> float:
    """Standard deviation of the noise on each coordinate of the mean: z C / K."""
    return noise_multiplier * clip / clients_per_round if clients_per_round else math.inf


def round_seed(seed: int, round_num: int) -> int:
    """A 32-bit seed of (seed, round): public randomness of a protocol round (SecAgg+'s neighbour graph)."""
    return int(np.random.SeedSequence([seed, round_num, 0x5EC]).generate_state(1)[0])
