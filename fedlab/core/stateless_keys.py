"""Keys for TensorFlow's stateless random ops, inside TF computations: a key with values folded in, a key from the
system's entropy, a hash of a client's update (what a TFF client, which knows no index of its own, keys its draws
by). Seeded aggregators (:mod:`fedlab.aggregators.seeded`) and distributed DP's shares
(:mod:`fedlab.protection.skellam_shares`) draw from them."""

from __future__ import annotations


def fold_key(seed, *values):
    """The stateless key ``seed`` with each of ``values`` folded in, in turn."""
    import tensorflow as tf

    for value in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


def fresh_key():
    """A key no one can predict: two int64s from TensorFlow's unseeded generator, which seeds itself from the
    operating system's entropy (as TF Privacy's noise and TFF's own rounding do). Not the clock: a key of the
    time and the round could be found by trying every microsecond around a round, and the noise removed."""
    import tensorflow as tf

    return tf.random.uniform([2], minval=0, maxval=tf.int64.max, dtype=tf.int64)


def update_digest(flat):
    """A hash of a client's update, a list of tensors: the sum of their float32 bit patterns (equal updates, or
    one a permutation of another's values, share it)."""
    import tensorflow as tf

    return tf.add_n([tf.reduce_sum(tf.cast(tf.bitcast(v, tf.int32), tf.int64)) for v in flat])
