"""Misbehaving clients: which clients attack, and what they do.

An attack is registered with :func:`register_attack` and named by the config's
``attack`` field; ``attacker_fraction`` of the clients (chosen once from the
data seed) carry it out.

* A **data** attack changes what an attacker trains on. Label flipping
  (Tolpegin et al. 2020, arXiv:2007.08432): labels c -> C-1-c, the attacker
  training ``attack_boost`` times as long (a larger poisoned update).
* An **update** attack changes what an attacker sends: it trains honestly,
  then replaces its update. ``apply(honest, *, clients, boost, rng)`` takes
  the round's attackers' honest updates, one flattened row each, the number
  of clients in the round and ``attack_boost``, and returns what they send.
  fedlab runs it between the clients' training and the server's aggregator
  (:mod:`fedlab.rounds.split_rounds`), so every defence sees the forged updates.

  - sign flipping (Damaskinos et al. 2018; Li et al. 2019, arXiv:1811.03761):
    the negated update, times ``attack_boost``;
  - Gaussian (Blanchard et al. 2017; Xie et al. 2018, arXiv:1802.10116):
    noise N(0, s^2) in every coordinate, s = ``attack_boost`` x the RMS of the
    attacker's own update (noise as large as an honest update, or larger);
  - "A little is enough" (ALIE, Baruch et al. 2019, arXiv:1902.06156): every
    attacker sends mu - z sigma, mu and sigma the coordinate-wise mean and
    standard deviation of the attackers' honest updates this round and z the
    largest shift that the median still takes for an honest value:
    s = floor(n/2 + 1) - m honest clients must look further away than the
    attackers, z = Phi^-1((n - s) / n) for n clients in the round, m attackers.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist
from typing import Callable, Optional

import numpy as np

from ..core.registry import Registry, decorator

KINDS = ("data", "update")


@dataclasses.dataclass(frozen=True)
class Attack:
    """A registered attack: ``kind`` "data" (changes the attacker's labels) or "update" (``apply`` forges updates)."""

    name: str
    kind: str
    apply: Optional[Callable[..., np.ndarray]] = None
    boost: bool = True  # whether attack_boost changes it


ATTACKS: Registry[Attack] = Registry("attack", "attack")


def register_attack(name: str, *, kind: str = "update", paper: Optional[str] = None, boost: bool = True,
                    replace: bool = False):
    """Registers an update attack ``apply(honest, *, clients, boost, rng) -> forged`` under ``name``.

    ``honest``: (attackers this round, parameters) float32, the updates they
    trained; ``clients``: clients in the round; ``boost``: ``attack_boost``;
    ``rng``: a NumPy generator seeded by the data seed and the round.
    ``boost=False`` if ``attack_boost`` does not change it (a config setting it is refused).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {', '.join(KINDS)}; got {kind!r}")
    return decorator(ATTACKS, name, lambda apply: Attack(name, kind, None if kind == "data" else apply, boost),
                     paper=paper, replace=replace)


def attacker_clients(config) -> np.ndarray:
    """The ``attacker_fraction`` of clients that misbehave, chosen once from the data seed."""
    count = int(math.ceil(config.attacker_fraction * config.num_clients - 1e-9))
    rng = np.random.default_rng([config.seeds["data"], 31])
    return np.sort(rng.permutation(config.num_clients)[:count])


def poison_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """A label-flipping attacker's labels: class c becomes C - 1 - c."""
    return (num_classes - 1 - np.asarray(y)).astype(np.asarray(y).dtype)


def is_update_attack(config) -> bool:
    """Whether the config's attackers forge their updates (so the round must be split before aggregation)."""
    return config.attacker_fraction > 0 and ATTACKS[config.attack].kind == "update"


def attack_rng(seed: int, round_num: int) -> np.random.Generator:
    """The attackers' random generator for a round, from the data seed (which also chose them)."""
    return np.random.default_rng([int(seed), int(round_num), 0xA77AC])


@register_attack("label_flip", kind="data", paper="Tolpegin et al. 2020, arXiv:2007.08432")
def label_flip(honest, *, clients, boost, rng):
    """Label flipping: an attacker trains on labels c -> C-1-c, attack_boost times as long."""
    return honest  # never called: a data attack's work is done on the labels (fedlab.experiment.clients)


@register_attack("sign_flip", paper="Li et al. 2019, arXiv:1811.03761")
def sign_flip(honest: np.ndarray, *, clients: int, boost: float, rng) -> np.ndarray:
    """Sign flipping: the attacker sends -attack_boost x its honest update."""
    return (-float(boost) * honest).astype(honest.dtype)


@register_attack("gaussian", paper="Xie et al. 2018, arXiv:1802.10116")
def gaussian(honest: np.ndarray, *, clients: int, boost: float, rng) -> np.ndarray:
    """Gaussian updates: N(0, s^2) per coordinate, s = attack_boost x the RMS of the attacker's honest update."""
    rms = np.sqrt(np.mean(np.square(honest.astype(np.float64)), axis=1, keepdims=True))
    return (rng.standard_normal(honest.shape) * (float(boost) * rms)).astype(honest.dtype)


def alie_z(clients: int, attackers: int) -> float:
    """Baruch et al.'s z_max: s = floor(n/2 + 1) - m, z = Phi^-1((n - s) / n) (0 when the attackers need no shift)."""
    s = math.floor(clients / 2 + 1) - attackers
    p = (clients - s) / clients
    if p <= 0.5:
        return 0.0
    if p >= 1.0:  # the attackers are a majority: any shift passes; cap at the 99.9th percentile
        p = 0.999
    return NormalDist().inv_cdf(p)


@register_attack("alie", paper="Baruch et al. 2019, arXiv:1902.06156", boost=False)
def a_little_is_enough(honest: np.ndarray, *, clients: int, boost: float, rng) -> np.ndarray:
    """A little is enough: every attacker sends mu - z sigma of the attackers' honest updates (z from n and m)."""
    values = honest.astype(np.float64)
    mu, sigma = values.mean(axis=0), values.std(axis=0)
    forged = mu - alie_z(clients, len(honest)) * sigma
    return np.repeat(forged[None], len(honest), axis=0).astype(honest.dtype)
