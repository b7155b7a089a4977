"""Caches that keep their most recent entries: the two steps fedlab's in-process caches of traced computations
share (:mod:`fedlab.rounds.array_training`'s client trainings and finalizers, :mod:`fedlab.core.runtime`'s Grappler
outputs). Each step is one operation on an ``OrderedDict``, so another thread (a panel's run) keeping or evicting
entries meanwhile cannot make it fail."""

from __future__ import annotations

import collections


def recall(cache: collections.OrderedDict, key):
    """``cache[key]``, now the most recent, or None."""
    value = cache.get(key)
    if value is not None:
        try:
            cache.move_to_end(key)
        except KeyError:  # evicted meanwhile
            pass
    return value


def keep(cache: collections.OrderedDict, key, value, limit: int):
    """``value`` kept in ``cache`` under ``key``, the oldest entries beyond ``limit`` evicted; returns ``value``."""
    cache[key] = value
    while len(cache) > limit:
        try:
            cache.popitem(last=False)
        except KeyError:  # emptied meanwhile
            break
    return value
