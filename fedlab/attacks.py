"""Misbehaving clients: which clients attack, and what they do to their data.

Label flipping (Tolpegin et al. 2020, "Data Poisoning Attacks Against Federated
Learning Systems", arXiv:2007.08432): an attacker trains on labels c -> C-1-c,
optionally for ``attack_boost`` times as long (a larger poisoned update).
"""

from __future__ import annotations

import math

import numpy as np


def attacker_clients(config) -> np.ndarray:
    """The ``attacker_fraction`` of clients that misbehave, chosen once from the data seed."""
    count = int(math.ceil(config.attacker_fraction * config.num_clients - 1e-9))
    rng = np.random.default_rng([config.seeds["data"], 31])
    return np.sort(rng.permutation(config.num_clients)[:count])


def poison_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """A label-flipping attacker's labels: class c becomes C - 1 - c."""
    return (num_classes - 1 - np.asarray(y)).astype(np.asarray(y).dtype)
