"""Distributed DP on TFF's secure sum: every client adds a share of the noise, the server sees only the sum.

The clients' encoding and the server's decoding are :mod:`fedlab.protection.skellam_shares` (TFF 0.87's
``DistributedDpSumFactory`` arithmetic with Skellam noise, seeded, one share per client of the population every
round); between them TFF's secure sum of b-bit values adds the clients' vectors, as TFF's factory nests it
(``SecureSumFactory(2^b - 1, 0)``, then mod 2^b). The aggregator's state holds the noise seed and the round, whose
key the server broadcasts (it keys the rotation, which every client shares).
"""

from __future__ import annotations

import collections

import numpy as np

from ..core.runtime import tff
from ..core.stateless_keys import fold_key, fresh_key
from ..protection.skellam_shares import SkellamShares, share_codec
from .seeded import SEED_KEY, seed_state_type

_CLASSES: dict = {}


def distributed_skellam(shares: SkellamShares):
    """An unweighted TFF factory: the mean over the expected K of the clients' values under distributed DP with
    Skellam shares (``shares``) on TFF's secure sum of b-bit values."""
    return _factory_class()(shares)


def _factory_class():
    if "skellam" in _CLASSES:
        return _CLASSES["skellam"]
    import tensorflow as tf

    t = tff()

    class _DistributedSkellam(t.aggregators.UnweightedAggregationFactory):
        def __init__(self, shares: SkellamShares):
            self.shares = shares

        def create(self, value_type):
            encode, decode, params = share_codec(self.shares, value_type)
            fresh, modulus = self.shares.fresh, 2 ** self.shares.bits
            secure_sum = t.aggregators.SecureSumFactory(upper_bound_threshold=modulus - 1, lower_bound_threshold=0
                                                        ).create(t.TensorType(np.int32, [params.padded_dim]))

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

            @t.tensorflow.computation(value_type)
            def one(value):
                del value
                return tf.constant(1, tf.int32)

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
