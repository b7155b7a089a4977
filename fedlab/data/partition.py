"""Partitioners: how a centralised data set is dealt out to simulated clients.

Each partitioner is a small class that takes all its arguments (``seed``
included) in ``__init__`` and maps a label vector to one index array per
client with ``partition(labels)``. The same arguments and labels always give
the same partition. A config names one through the :data:`PARTITIONERS`
registry (:func:`register_partitioner`), where fedlab's own are registered as a
user's would be. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ..core.registry import Registry, decorator


class Partitioner:
    """Base class: ``partition(labels)`` returns ``num_partitions`` index arrays."""

    def __init__(self, num_partitions: int, *, seed: int = 0):
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or num_partitions < 1:
            raise ValueError(f"num_partitions: must be an integer >= 1, got {num_partitions!r}")
        self.num_partitions = num_partitions
        self.seed = seed

    def _rng(self) -> np.random.Generator:
        # A fresh generator per call keeps partition() a pure function of the arguments.
        return np.random.default_rng(self.seed)

    def partition(self, labels: np.ndarray) -> list[np.ndarray]:
        labels = np.asarray(labels)
        if len(labels) < self.num_partitions:
            raise ValueError(
                f"num_clients: {self.num_partitions} clients need at least as many examples; the data has {len(labels)}"
            )
        parts = [np.sort(np.asarray(p, dtype=np.int64)) for p in self._partition(labels)]
        if len(parts) != self.num_partitions:
            raise ValueError(f"{type(self).__name__}: made {len(parts)} partitions, not {self.num_partitions}")
        everything = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if len(everything) and (everything.min() < 0 or everything.max() >= len(labels)):
            raise ValueError(f"{type(self).__name__}: an index lies outside the {len(labels)} examples")
        if len(np.unique(everything)) != len(everything):
            raise ValueError(f"{type(self).__name__}: an example was dealt to two clients (or twice to one)")
        empty = [i for i, p in enumerate(parts) if len(p) == 0]
        if empty:
            raise ValueError(f"num_clients: client {empty[0]} of {self.num_partitions} got no examples "
                             f"({len(empty)} empty); use fewer clients or another partition")
        return parts

    def _partition(self, labels: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class IidPartitioner(Partitioner):
    """Shuffles the examples and deals them out in near-equal shares."""

    def _partition(self, labels):
        return np.array_split(self._rng().permutation(len(labels)), self.num_partitions)


class DirichletPartitioner(Partitioner):
    """Label skew: each class is split over clients in Dirichlet(alpha) proportions.

    Hsu, Qi and Brown (2019), "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", arXiv:1909.06335.
    Small alpha (0.05) gives clients few labels; large alpha (100) is close to
    IID. Draws are repeated until every client has ``min_partition_size``
    examples.
    """

    def __init__(self, num_partitions: int, alpha: float, *, seed: int = 0, min_partition_size: int = 2,
                 max_tries: int = 1000):
        super().__init__(num_partitions, seed=seed)
        if not alpha > 0:
            raise ValueError(f"alpha: must be > 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.min_partition_size = min_partition_size
        self.max_tries = max_tries

    def _partition(self, labels):
        rng = self._rng()
        classes = np.unique(labels)
        for _ in range(self.max_tries):
            parts: list[list[np.ndarray]] = [[] for _ in range(self.num_partitions)]
            for label in classes:
                idx = rng.permutation(np.flatnonzero(labels == label))
                shares = rng.dirichlet(np.full(self.num_partitions, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
                for client, piece in enumerate(np.split(idx, cuts)):
                    parts[client].append(piece)
            merged = [np.concatenate(p) for p in parts]
            if min(len(p) for p in merged) >= self.min_partition_size:
                return merged
        raise ValueError(
            f"alpha: no Dirichlet({self.alpha}) draw in {self.max_tries} tries gave every one of "
            f"{self.num_partitions} clients {self.min_partition_size}+ examples; use fewer clients or a larger alpha"
        )


class ShardPartitioner(Partitioner):
    """Pathological non-IID: each client holds ``shards_per_client`` label shards.

    McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks
    from Decentralized Data", AISTATS. Shards are cut within a class, so a
    client sees at most ``shards_per_client`` labels.
    """

    def __init__(self, num_partitions: int, shards_per_client: int = 2, *, seed: int = 0):
        super().__init__(num_partitions, seed=seed)
        if shards_per_client < 1:
            raise ValueError(f"shards_per_client: must be >= 1, got {shards_per_client!r}")
        self.shards_per_client = shards_per_client

    def _partition(self, labels):
        rng = self._rng()
        classes, counts = np.unique(labels, return_counts=True)
        num_shards = self.num_partitions * self.shards_per_client
        if num_shards > len(labels):
            raise ValueError(f"shards_per_client: {num_shards} shards need {num_shards}+ examples, have {len(labels)}")
        shards_per_class = _largest_remainder(counts, num_shards)
        shards = []
        for label, n in zip(classes, shards_per_class):
            idx = rng.permutation(np.flatnonzero(labels == label))
            shards.extend(s for s in np.array_split(idx, n) if n > 0)
        order = rng.permutation(len(shards))
        k = self.shards_per_client
        return [np.concatenate([shards[j] for j in order[i * k:(i + 1) * k]]) for i in range(self.num_partitions)]


class QuantitySkewPartitioner(Partitioner):
    """Quantity skew: client sizes in Dirichlet(alpha) proportions, labels IID.

    As in Li et al. (2022), "Federated Learning on Non-IID Data Silos: An
    Experimental Study", ICDE. Every client gets at least one example.
    """

    def __init__(self, num_partitions: int, alpha: float, *, seed: int = 0):
        super().__init__(num_partitions, seed=seed)
        if not alpha > 0:
            raise ValueError(f"alpha: must be > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def _partition(self, labels):
        rng = self._rng()
        n = len(labels)
        shares = rng.dirichlet(np.full(self.num_partitions, self.alpha))
        # One example each first, the rest in proportion to the shares.
        sizes = 1 + _largest_remainder(shares, n - self.num_partitions)
        cuts = np.cumsum(sizes)[:-1]
        return np.split(rng.permutation(n), cuts)


class NaturalPartitioner(Partitioner):
    """The clients the data came from (hospital, writer): one client per site id."""

    def __init__(self, site_ids: Sequence[int], num_partitions: Optional[int] = None):
        site_ids = np.asarray(site_ids)
        super().__init__(int(site_ids.max()) + 1 if num_partitions is None else num_partitions, seed=0)
        self.site_ids = site_ids

    def _partition(self, labels):
        if len(labels) != len(self.site_ids):
            raise ValueError(f"site_ids: {len(self.site_ids)} ids for {len(labels)} examples")
        return [np.flatnonzero(self.site_ids == s) for s in range(self.num_partitions)]

    def __repr__(self) -> str:
        return f"NaturalPartitioner(num_partitions={self.num_partitions})"


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total``."""
    weights = np.asarray(weights, dtype=float)
    exact = weights / weights.sum() * total
    out = np.floor(exact).astype(int)
    remainder = total - out.sum()
    out[np.argsort(-(exact - out), kind="stable")[:remainder]] += 1
    return out


def add_feature_noise(x_parts: Sequence[np.ndarray], noise: float, *, seed: int = 0) -> list[np.ndarray]:
    """Feature skew: client i of N gets Gaussian noise of std ``noise * i / (N - 1)`` on its inputs.

    The noise-based feature imbalance of Li et al. (2022), "Federated Learning on
    Non-IID Data Silos: An Experimental Study", ICDE. Labels are untouched;
    client 0 keeps clean data. Noise is drawn from ``(seed, client)``.
    """
    if noise == 0:
        return list(x_parts)
    n = len(x_parts)
    out = []
    for i, x in enumerate(x_parts):
        std = noise * i / max(n - 1, 1)
        rng = np.random.default_rng([seed, i, 7])
        out.append((x + rng.normal(0.0, std, size=x.shape)).astype(x.dtype))
    return out


@dataclasses.dataclass(frozen=True)
class PartitionScheme:
    """A registered way to deal data out: ``make(config, site_ids) -> Partitioner``.

    ``make`` reads what it needs from the config (``num_clients``, ``alpha``,
    ``shards_per_client``, ``seeds["data"]``); ``needs_sites``: only for data
    with natural clients; ``needs_classes``: it deals out by class label, so
    only for classification data.
    """

    name: str
    make: Callable[..., Partitioner]
    needs_sites: bool = False
    needs_classes: bool = False


PARTITIONERS: Registry[PartitionScheme] = Registry("partitioner", "partition")


def register_partitioner(name: str, *, needs_sites: bool = False, needs_classes: bool = False,
                         paper: Optional[str] = None, replace: bool = False):
    """Registers ``make(config, site_ids) -> Partitioner`` under ``name`` (``partition=name`` in a config)."""
    return decorator(PARTITIONERS, name, lambda make: PartitionScheme(name, make, needs_sites, needs_classes),
                     paper=paper, replace=replace)


@register_partitioner("iid")
def _iid(config, site_ids=None) -> Partitioner:
    """Examples shuffled and dealt out in near-equal shares."""
    return IidPartitioner(config.num_clients, seed=config.seeds["data"])


@register_partitioner("dirichlet", needs_classes=True, paper="Hsu, Qi and Brown 2019, arXiv:1909.06335")
def _dirichlet(config, site_ids=None) -> Partitioner:
    """Label skew: each class split over clients in Dirichlet(alpha) proportions."""
    return DirichletPartitioner(config.num_clients, config.alpha, seed=config.seeds["data"])


@register_partitioner("shards", needs_classes=True, paper="McMahan et al. 2017, arXiv:1602.05629")
def _shards(config, site_ids=None) -> Partitioner:
    """Pathological non-IID: shards_per_client label shards per client."""
    return ShardPartitioner(config.num_clients, config.shards_per_client, seed=config.seeds["data"])


@register_partitioner("quantity", paper="Li et al. 2022, ICDE, arXiv:2102.02079")
def _quantity(config, site_ids=None) -> Partitioner:
    """Quantity skew: client sizes in Dirichlet(alpha) proportions, labels IID."""
    return QuantitySkewPartitioner(config.num_clients, config.alpha, seed=config.seeds["data"])


@register_partitioner("natural", needs_sites=True)
def _natural(config, site_ids=None) -> Partitioner:
    """The clients the data came from (hospital, writer): one client per site."""
    if site_ids is None:
        raise ValueError(f"partition: 'natural' needs site ids; dataset {config.dataset!r} has none")
    return NaturalPartitioner(site_ids, config.num_clients)


def make_partitioner(config, site_ids: Optional[np.ndarray] = None) -> Partitioner:
    """The partitioner an :class:`~fedlab.experiment.config.ExperimentConfig` asks for."""
    partitioner = PARTITIONERS[config.partition].make(config, site_ids)
    if not isinstance(partitioner, Partitioner):
        raise TypeError(f"partition {config.partition!r}: made a {type(partitioner).__name__}, not a Partitioner")
    return partitioner


def partition_report(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: Optional[int] = None) -> pd.DataFrame:
    """Long table of (client, label, count), one row per pair, zero counts kept."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rows = []
    for client, idx in enumerate(parts):
        counts = np.bincount(labels[idx], minlength=num_classes)
        rows.extend({"client": client, "label": label, "count": int(c)} for label, c in enumerate(counts))
    return pd.DataFrame(rows, columns=["client", "label", "count"])
