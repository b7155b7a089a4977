"""Client data: what each simulated client holds, and what it trains on in a round.

The config's data set is loaded once per process, split (for tuning, a
validation share is carved from the training data per site), dealt out by the
config's partitioner, and given feature noise and poisoned labels where the
config asks. A client's batches in round r are a function of
``(sampling_seed, r, client)``, so a resumed run draws exactly what an
uninterrupted one would. Nothing here builds a TFF computation.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Optional

import numpy as np
import pandas as pd

from ..rounds.attacks import ATTACKS, attacker_clients, poison_labels
from .config import ExperimentConfig
from ..data.data import DATASETS, Dataset, DatasetSource, load_dataset, stratified_split
from ..models.models import ModelSpec
from ..data.partition import add_feature_noise, make_partitioner, partition_report
from ..data.tasks import TASKS
from ..core.validation import ConfigError


@functools.lru_cache(maxsize=8)
def cached_dataset(source: DatasetSource, seed: int, test_fraction: Optional[float]) -> Dataset:
    """Loads a data set once per (loader, seed, test_fraction) in this process.

    Keyed by the registered source itself, so a data set registered again
    under the same name (an edited notebook cell) is loaded again.
    """
    return load_dataset(source.name, seed=seed, test_fraction=test_fraction)


def dataset_for(config: ExperimentConfig) -> Dataset:
    """The config's data; with ``validation_fraction`` the held-out set is carved from training data."""
    data = cached_dataset(DATASETS[config.dataset], config.seeds["data"], config.test_fraction)
    if config.validation_fraction > 0:
        return _validation_dataset(data, config.validation_fraction, config.seeds["data"])
    return data


@functools.lru_cache(maxsize=8)
def _validation_dataset(data: Dataset, fraction: float, seed: int) -> Dataset:
    """Training data split again (per site, stratified): the test set is not touched while tuning."""
    sites = data.train_sites if data.train_sites is not None else np.zeros(len(data.y_train), np.int32)
    train, val = [], []
    for s in np.unique(sites):
        idx = np.flatnonzero(sites == s)
        tr, va = stratified_split(TASKS[data.task].strata(data.y_train[idx]), fraction, seed + 17 + int(s))
        train.append(idx[tr]), val.append(idx[va])
    train, val = np.concatenate(train), np.concatenate(val)
    return dataclasses.replace(
        data, x_train=data.x_train[train], y_train=data.y_train[train], x_test=data.x_train[val],
        y_test=data.y_train[val],
        train_sites=None if data.train_sites is None else data.train_sites[train],
        test_sites=None if data.train_sites is None else data.train_sites[val])


def partition_for(config: ExperimentConfig, data: Optional[Dataset] = None) -> list[np.ndarray]:
    """Index arrays into ``data.x_train``, one per client."""
    data = dataset_for(config) if data is None else data
    return make_partitioner(config, data.train_sites).partition(data.y_train)


def partition_report_for(config: ExperimentConfig) -> pd.DataFrame:
    """(client, label, count) table of the partition ``config`` makes (classification data: labels are classes)."""
    data = dataset_for(config)
    if data.task != "classification":
        raise ConfigError("dataset", f"{config.dataset} is {data.task} data: its labels are not classes to count "
                                     "per client")
    return partition_report(data.y_train, partition_for(config, data), data.num_classes)


def client_arrays_for(config: ExperimentConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's training inputs (feature noise applied) and labels, as the clients hold them."""
    data = dataset_for(config)
    parts = partition_for(config, data)
    xs = add_feature_noise([data.x_train[p] for p in parts], config.feature_noise, seed=config.seeds["data"])
    return xs, [data.y_train[p] for p in parts]


def spec_for(config: ExperimentConfig, data: Optional[Dataset] = None) -> ModelSpec:
    data = dataset_for(config) if data is None else data
    return ModelSpec(config.model, data.num_features, data.num_classes, data.image_shape, config.freeze_layers,
                     data.task)


@dataclasses.dataclass(frozen=True)
class Clients:
    """Everything about the clients one run needs: their arrays (as the model takes labels) and who attacks."""

    data: Dataset
    parts: list  # indices into data.x_train of what each client trains on
    x: list  # inputs per client, feature noise applied
    y: list  # labels per client, prepared for the loss, poisoned for attackers
    attackers: frozenset
    test_x: Optional[list] = None  # with local_test_fraction: each client's own held-out inputs
    test_y: Optional[list] = None  # and their true labels

    @classmethod
    def for_config(cls, config: ExperimentConfig, spec: ModelSpec) -> "Clients":
        data = dataset_for(config)
        parts = partition_for(config, data)
        xs = add_feature_noise([data.x_train[p] for p in parts], config.feature_noise, seed=config.seeds["data"])
        test_x = test_y = None
        if config.local_test_fraction > 0:
            kept = [local_test_split(len(p), config.local_test_fraction, config.seeds["data"], c)
                    for c, p in enumerate(parts)]
            test_x = [x[held] for x, (_, held) in zip(xs, kept)]
            test_y = [data.y_train[p[held]] for p, (_, held) in zip(parts, kept)]
            xs = [x[train] for x, (train, _) in zip(xs, kept)]
            parts = [p[train] for p, (train, _) in zip(parts, kept)]
        attackers = frozenset(attacker_clients(config).tolist())
        flips = ATTACKS[config.attack].kind == "data"  # an update attacker trains on its true labels
        ys = [spec.prepare_labels(poison_labels(data.y_train[p], data.num_classes) if flips and c in attackers
                                  else data.y_train[p]) for c, p in enumerate(parts)]
        return cls(data, parts, xs, ys, attackers, test_x, test_y)

    @property
    def sizes(self) -> list[int]:
        """How many examples each client trains on."""
        return [len(x) for x in self.x]

    def evaluation_arrays(self) -> tuple[list, list]:
        """What per-client evaluation uses: each client's held-out data if it keeps some, else its training
        data (true labels, as the client holds them)."""
        if self.test_x is not None:
            return self.test_x, self.test_y
        return self.x, [self.data.y_train[p] for p in self.parts]

    def inputs(self, config: ExperimentConfig, round_num: int, client: int) -> tuple:
        """What client ``client`` trains on in round ``round_num`` (see :func:`client_inputs`)."""
        if client in self.attackers:
            config = attacker_config(config)
        return client_inputs(self.x[client], self.y[client], config, round_num, client)


def local_test_split(n: int, fraction: float, seed: int, client: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) in a client's n examples: round(fraction x n) of them, drawn from (seed, client),
    held out to test on (at least one, and at least one left to train on, when n >= 2)."""
    k = int(round(fraction * n))
    k = min(max(k, 1), n - 1) if n >= 2 else 0
    held = np.random.default_rng([seed, client, 0x7E57]).permutation(n)[:k]
    mask = np.zeros(n, bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def attacker_config(config: ExperimentConfig) -> ExperimentConfig:
    """A label-flipping attacker trains ``attack_boost`` times longer (an update attacker trains as others do)."""
    if ATTACKS[config.attack].kind != "data":
        return config
    return config.replace(local_epochs=config.local_epochs * config.attack_boost,
                          local_steps=None if config.local_steps is None else config.local_steps * config.attack_boost)


def local_order(n: int, config: ExperimentConfig, round_num: int, client: int,
                epochs: Optional[int] = None) -> list[np.ndarray]:
    """One shuffled order of a client's ``n`` examples per local epoch."""
    rng = np.random.default_rng([config.seeds["sampling"], round_num, client, 1])
    return [rng.permutation(n) for _ in range(config.local_epochs if epochs is None else epochs)]


def plan_size(n: int, config: ExperimentConfig) -> tuple[int, int, int]:
    """(epochs, batch size, step cap or -1) of a client holding ``n`` examples, for one round."""
    batch = n if config.batch_size == 0 or config.algorithm_entry.full_batch else config.batch_size
    epochs = config.local_epochs
    if config.local_steps is not None:  # enough reshuffled epochs for the steps, then cut
        epochs = -(-config.local_steps // -(-n // batch))
        if config.carry_epochs:  # the steps may start inside an epoch: one more
            epochs += 1
    return epochs, batch, -1 if config.local_steps is None else config.local_steps


def dp_sgd_steps(n: int, config: ExperimentConfig) -> tuple[int, int]:
    """(DP-SGD steps in one round, expected batch) of a client holding ``n`` records under record-level DP: the
    plan's steps times the algorithm's passes over the records (Ditto: 2), and the algorithm's other releases
    counted as steps (q-FFL's noised loss: ``record_dp_extra_steps``); the Poisson rate is batch / n (1 for a full
    batch: FedSGD's one step on every record)."""
    epochs, batch, cap = plan_size(n, config)
    per_pass = cap if cap >= 0 else epochs * -(-n // batch)
    entry = config.algorithm_entry
    return per_pass * entry.record_dp_passes + entry.record_dp_extra_steps, batch


def client_plan(n: int, config: ExperimentConfig, round_num: int, client: int) -> tuple[np.ndarray, int, int, int]:
    """What a client trains on in one round: (E, n) example orders, batch size, step cap (-1: none), batches to skip.

    Normally each round starts fresh shuffled epochs from ``(sampling_seed,
    round, client)``. With ``carry_epochs`` (FLamby's DataLoaderWithMemory) a
    client's epochs form one stream drawn from ``(sampling_seed, client, epoch)``
    and round r takes its ``local_steps`` batches where round r-1 stopped.
    """
    epochs, batch, steps = plan_size(n, config)
    if not config.carry_epochs:
        return np.stack(local_order(n, config, round_num, client, epochs)), batch, steps, 0
    per_epoch = -(-n // batch)
    start = (round_num - 1) * steps
    first, last = start // per_epoch, (start + steps - 1) // per_epoch
    orders = [np.random.default_rng([config.seeds["sampling"], client, epoch, 2]).permutation(n)
              for epoch in range(first, last + 1)]
    return np.stack(orders), batch, steps, start - first * per_epoch


def batches(x, y, orders, batch, steps, skip=0):
    """The client's tf.data pipeline: E shuffled epochs of batches gathered from ``x``, ``y``, from batch ``skip`` on.

    One (E, n) matrix of orders, batched per epoch: the graph stays the same
    size whatever E is (chaining E ``concatenate`` calls made E = 20 crawl).
    Used eagerly by :func:`client_dataset` and inside TFF's runtime by
    :func:`fedlab.experiment.processes.trainer_on_arrays`.
    """
    import tensorflow as tf

    gather = tf.autograph.experimental.do_not_convert(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))
    return (tf.data.Dataset.from_tensor_slices(orders)
            .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch))
            .skip(skip)
            .map(gather)
            .take(steps))


def client_dataset(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, round_num: int, client: int):
    """The tf.data.Dataset a client trains on in one round (built here, in Python)."""
    import tensorflow as tf

    orders, batch, steps, skip = client_plan(len(x), config, round_num, client)
    return batches(tf.constant(x), tf.constant(y), orders, batch, steps, skip)


def client_inputs(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, round_num: int,
                  client: int) -> collections.OrderedDict:
    """What a client trains on in a round: its arrays, the example order of each epoch, batch size, step cap.

    A process from :mod:`fedlab.rounds.array_training` trains on these in one
    compiled loop; :func:`fedlab.experiment.processes.trainer_on_arrays` builds the same
    batches as a dataset inside TFF for the stock client work.
    """
    orders, batch, steps, skip = client_plan(len(x), config, round_num, client)
    # record-level DP's batch sampling and noise: from the noise seed, or fresh entropy when noise is unseeded
    source = np.random.default_rng() if config.noise_source == "unseeded" else np.random.default_rng(
        [config.seeds["noise"], round_num, client, 3])
    return _input(x, y, orders, batch, steps, skip, source.integers(0, 2**31 - 1, 2))


def planned_inputs(inputs, steps: int):
    """A client's inputs with its step cap lowered to the ``steps`` the round's schedule allows (``partial``)."""
    from ..rounds.array_training import local_steps

    if steps < local_steps(inputs):
        inputs = type(inputs)(inputs, steps=np.int64(steps))
    return inputs


def _input(x, y, orders, batch: int, steps: int, skip: int, key) -> collections.OrderedDict:
    """A client's input to the compiled loop, with the dtypes it takes."""
    return collections.OrderedDict(x=x, y=y, orders=np.asarray(orders, np.int64), batch=np.int64(batch),
                                   steps=np.int64(steps), skip=np.int64(skip), key=np.asarray(key, np.int64))


def finetune_inputs(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, round_num: int,
                    client: int) -> collections.OrderedDict:
    """What a client fine-tunes the global model on before it is scored at round ``round_num``
    (:mod:`fedlab.rounds.finetune`): ``finetune_epochs`` shuffled epochs of its training share, drawn from
    ``(sampling_seed, round, client)`` apart from its training orders, in batches of ``batch_size`` (0: all)."""
    n = len(x)
    rng = np.random.default_rng([config.seeds["sampling"], round_num, client, 4])
    orders = np.stack([rng.permutation(n) for _ in range(config.finetune_epochs)])
    batch = max(n, 1) if config.batch_size == 0 else config.batch_size
    return _input(x, y, orders, batch, steps=-1, skip=0, key=np.zeros(2))
