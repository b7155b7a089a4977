"""Runs an experiment config round by round and returns a tidy DataFrame.

One row per round: ``round``, ``train_loss``, ``train_accuracy`` (client
metrics during local training), ``eval_loss``, ``eval_accuracy`` (global
model on the held-out test set, every ``eval_every`` rounds and at the last
round), ``seconds`` (wall time of the round), then every config field.

Randomness: clients of round r are drawn from ``(sampling_seed, r)`` and a
client's local shuffling from ``(sampling_seed, r, client)``, so a resumed
run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import asyncio
import functools
import json
import pathlib
import time
import weakref
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from . import algorithms
from .config import EXECUTION_FIELDS, ExperimentConfig
from .distributed import WorkerError
from .data import Dataset, load_dataset, stratified_split
from .models import ModelSpec, evaluate_logits
from .partition import add_feature_noise, make_partitioner, partition_report
from .runtime import tff

HISTORY_FILE = "history.csv"
CLIENT_FILE = "clients.csv"
CONFIG_FILE = "config.json"


class _Opaque:
    """Holds arrays in ``DataFrame.attrs``: compared by identity, never deep-copied
    (pandas compares and deep-copies attrs on every operation)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


class CheckpointMismatchError(ValueError):
    """A checkpoint folder holds the run of another config."""


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, seed: int, test_fraction: float) -> Dataset:
    """Loads a data set once per (name, seed, test_fraction) in this process."""
    return load_dataset(name, seed=seed, test_fraction=test_fraction)


def dataset_for(config: ExperimentConfig) -> Dataset:
    """The config's data; with ``validation_fraction`` the held-out set is carved from training data."""
    data = cached_dataset(config.dataset, config.seeds["data"], config.test_fraction)
    if config.validation_fraction > 0:
        return _validation_dataset(data, config.validation_fraction, config.seeds["data"])
    return data


@functools.lru_cache(maxsize=8)
def _validation_dataset(data: Dataset, fraction: float, seed: int) -> Dataset:
    """Training data split again (per site, stratified): the test set is not touched while tuning."""
    import dataclasses

    sites = data.train_sites if data.train_sites is not None else np.zeros(len(data.y_train), np.int32)
    train, val = [], []
    for s in np.unique(sites):
        idx = np.flatnonzero(sites == s)
        tr, va = stratified_split(data.y_train[idx], fraction, seed + 17 + int(s))
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
    """(client, label, count) table of the partition ``config`` makes."""
    data = dataset_for(config)
    return partition_report(data.y_train, partition_for(config, data), data.num_classes)


def client_arrays_for(config: ExperimentConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's training inputs (feature noise applied) and labels, as the clients hold them."""
    data = dataset_for(config)
    parts = partition_for(config, data)
    xs = add_feature_noise([data.x_train[p] for p in parts], config.feature_noise, seed=config.seeds["data"])
    return xs, [data.y_train[p] for p in parts]


def spec_for(config: ExperimentConfig, data: Optional[Dataset] = None) -> ModelSpec:
    data = dataset_for(config) if data is None else data
    return ModelSpec(config.model, data.num_features, data.num_classes, data.image_shape, config.freeze_layers)


def sample_clients(config: ExperimentConfig, round_num: int) -> np.ndarray:
    """The clients of round ``round_num`` (1-based), sorted.

    K of N without replacement; with DP on, Poisson sampling instead (each
    client joins with probability K/N), as the privacy accounting assumes,
    so a round may have more or fewer than K clients, or none.
    """
    rng = np.random.default_rng([config.seeds["sampling"], round_num])
    if config.dp != "none":
        from .privacy import poisson_sample

        chosen = poisson_sample(config.num_clients, config.sampling_probability, rng)
        return np.setdiff1d(chosen, config.exclude_clients)
    eligible = np.setdiff1d(np.arange(config.num_clients), config.exclude_clients)
    return np.sort(rng.choice(eligible, size=config.clients_per_round, replace=False))


def local_order(n: int, config: ExperimentConfig, round_num: int, client: int,
                epochs: Optional[int] = None) -> list[np.ndarray]:
    """One shuffled order of a client's ``n`` examples per local epoch."""
    rng = np.random.default_rng([config.seeds["sampling"], round_num, client, 1])
    return [rng.permutation(n) for _ in range(config.local_epochs if epochs is None else epochs)]


def client_plan(n: int, config: ExperimentConfig, round_num: int, client: int) -> tuple[np.ndarray, int, int]:
    """What a client trains on in one round: (E, n) example orders, the batch size, a step cap (-1: none)."""
    batch = n if config.batch_size == 0 or config.algorithm == "fedsgd" else config.batch_size
    epochs = config.local_epochs
    if config.local_steps is not None:  # enough reshuffled epochs for the steps, then cut
        epochs = -(-config.local_steps // -(-n // batch))
    orders = np.stack(local_order(n, config, round_num, client, epochs))
    return orders, batch, -1 if config.local_steps is None else config.local_steps


def batches(x, y, orders, batch, steps):
    """The client's tf.data pipeline: E shuffled epochs of batches gathered from ``x``, ``y``.

    One (E, n) matrix of orders, batched per epoch: the graph stays the same
    size whatever E is (chaining E ``concatenate`` calls made E = 20 crawl).
    Used eagerly by :func:`client_dataset` and inside TFF's runtime by
    :func:`trainer_on_arrays`.
    """
    import tensorflow as tf

    gather = tf.autograph.experimental.do_not_convert(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))
    return (tf.data.Dataset.from_tensor_slices(orders)
            .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch))
            .map(gather)
            .take(steps))


def client_dataset(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, round_num: int, client: int):
    """The tf.data.Dataset a client trains on in one round (built here, in Python)."""
    import tensorflow as tf

    orders, batch, steps = client_plan(len(x), config, round_num, client)
    return batches(tf.constant(x), tf.constant(y), orders, batch, steps)


def client_inputs(x: np.ndarray, y: np.ndarray, config: ExperimentConfig, round_num: int, client: int) -> tuple:
    """The arrays from which :func:`trainer_on_arrays` builds the same dataset inside TFF's runtime."""
    orders, batch, steps = client_plan(len(x), config, round_num, client)
    return x, y, orders.astype(np.int64), np.int64(batch), np.int64(steps)


# process -> {array types: trainer}; an entry goes when fedlab's process cache lets its process go.
_TRAINERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def trainer_on_arrays(process, x: np.ndarray, y: np.ndarray):
    """``process`` with a ``next`` that takes each client's arrays (:func:`client_inputs`), not a dataset.

    TFF builds each client's dataset inside its runtime
    (``tff.simulation.compose_dataset_computation_with_learning_process``):
    no tf.data pipeline is built and serialised per client in Python, which
    halves a round with 100 clients (``make bench``). Same batches, same numbers.
    """
    trainers = _TRAINERS.setdefault(process, {})
    key = (x.dtype.str, x.shape[1:], y.dtype.str, y.shape[1:])
    if key not in trainers:
        t = tff()
        int64 = t.TensorType(np.int64, [])

        @t.tensorflow.computation(t.TensorType(x.dtype, [None, *x.shape[1:]]), t.TensorType(y.dtype, [None, *y.shape[1:]]),
                                  t.TensorType(np.int64, [None, None]), int64, int64)
        def client_data(x, y, orders, batch, steps):
            return batches(x, y, orders, batch, steps)

        trainers[key] = t.simulation.compose_dataset_computation_with_learning_process(client_data, process)
    return trainers[key]


class _Evaluator:
    """Evaluates global model weights centrally with a Keras copy of the model."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = spec.build_keras(0)

    def load_final(self, history: pd.DataFrame) -> "_Evaluator":
        """Sets the model to a run's final global weights (trainable, then frozen tensors)."""
        for variable, value in zip(self.model.trainable_variables + self.model.non_trainable_variables,
                                   final_weights(history)):
            variable.assign(value)
        return self

    def set_weights(self, model_weights) -> None:
        for variable, value in zip(self.model.trainable_variables, model_weights.trainable):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, model_weights.non_trainable):
            variable.assign(value)

    def logits(self, x: np.ndarray, batch: int = 2048) -> np.ndarray:
        return np.concatenate([self.model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return evaluate_logits(self.logits(x), y, self.spec.binary)


@functools.lru_cache(maxsize=16)
def _evaluator(spec: ModelSpec) -> _Evaluator:
    return _Evaluator(spec)


def initial_weights(process, spec: ModelSpec, seed: int):
    """Model weights drawn from ``seed`` in the container types the process expects."""
    t = tff()
    template = process.get_model_weights(process.initialize())
    keras = spec.build_keras(seed)
    trainable = [v.numpy() for v in keras.trainable_variables]
    non_trainable = [v.numpy() for v in keras.non_trainable_variables]
    return t.learning.models.ModelWeights(
        trainable=type(template.trainable)(trainable), non_trainable=type(template.non_trainable)(non_trainable)
    )


def worst_fraction_mean(values: Sequence[float], fraction: float = 0.1) -> float:
    """Mean of the lowest ``fraction`` of values (at least one value)."""
    values = np.sort(np.asarray(values, dtype=float))
    k = max(1, int(np.floor(len(values) * fraction)))
    return float(values[:k].mean())


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of fedlab's source: part of the result-cache key, so changed code never reads stale results."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(pathlib.Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _run(coro):
    try:
        loop = asyncio.get_event_loop()  # Jupyter's loop (nest_asyncio lets it nest)
    except RuntimeError:  # a worker thread without a loop, e.g. the widget's
        return asyncio.run(coro)
    return loop.run_until_complete(coro)


class _Checkpoint:
    """Program state plus history in one folder; resumes losing at most one round."""

    def __init__(self, directory: pathlib.Path, config: ExperimentConfig):
        self.dir = pathlib.Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / CONFIG_FILE
        if config_path.exists():
            saved = {k: v for k, v in json.loads(config_path.read_text()).items() if k not in EXECUTION_FIELDS}
            wanted = json.loads(json.dumps(config.experiment_dict()))
            if saved != wanted:  # the same run on other workers may resume here
                changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise CheckpointMismatchError(
                    f"checkpoint_dir: {self.dir} holds a run with other settings ({', '.join(changed)}); "
                    "use a new folder or delete it"
                )
        else:
            _atomic_write(config_path, config.to_json())
        self.manager = tff().program.FileProgramStateManager(self.dir / "state", keep_total=2)

    def load(self, state_template):
        state, version = _run(self.manager.load_latest(state_template))
        if state is None:
            return None, 0, [], []
        history = pd.read_csv(self.dir / HISTORY_FILE) if (self.dir / HISTORY_FILE).exists() else pd.DataFrame()
        clients = pd.read_csv(self.dir / CLIENT_FILE) if (self.dir / CLIENT_FILE).exists() else pd.DataFrame()
        keep = lambda df: df[df["round"] <= version].to_dict("records") if len(df) else []  # noqa: E731
        return state, version, keep(history), keep(clients)

    def save(self, state, round_num: int, rows: list[dict], client_rows: list[dict]) -> None:
        # History first: a crash between the two leaves history ahead of the
        # state, and load() drops the rows the state has not reached.
        _atomic_write(self.dir / HISTORY_FILE, pd.DataFrame(rows).to_csv(index=False))
        if client_rows:
            _atomic_write(self.dir / CLIENT_FILE, pd.DataFrame(client_rows).to_csv(index=False))
        _run(self.manager.save(state, round_num))


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_experiment(
    config: ExperimentConfig,
    *,
    checkpoint_dir: Optional[str | pathlib.Path] = None,
    results_cache: Optional[str | pathlib.Path] = None,
    progress: bool = True,
    callback: Optional[Callable[[dict, pd.DataFrame], None]] = None,
) -> pd.DataFrame:
    """Runs ``config`` and returns its history (one row per round).

    ``checkpoint_dir``: save state every round and resume from it.
    ``results_cache``: folder of finished histories keyed by the config's
    fingerprint; a config seen before is read back instead of re-run.
    ``callback(row, history)``: called after every round (widgets redraw here).
    Per-client evaluation (``eval_per_client``): :func:`clients_table` of the result.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config: must be an ExperimentConfig, got {type(config).__name__}")
    cache_path = None
    if results_cache is not None:
        cache_path = pathlib.Path(results_cache) / f"{config.fingerprint()}-{code_version()}.csv"
        if cache_path.exists():
            history = pd.read_csv(cache_path)
            client_cache = cache_path.with_suffix(".clients.csv")
            history.attrs["clients"] = pd.read_csv(client_cache).to_dict("records") if client_cache.exists() else []
            history.attrs["from_cache"] = True
            weights_path = cache_path.with_suffix(".weights.npz")
            if weights_path.exists():
                with np.load(weights_path) as saved:
                    history.attrs["final_weights"] = _Opaque([saved[f"arr_{i}"] for i in range(len(saved.files))])
            if callback is not None:
                callback(history.iloc[-1].to_dict(), history)
            return history

    from .distributed import on_workers
    from .runtime import simulated_secure_sums

    try:
        with on_workers(config.workers), simulated_secure_sums(config.secure_aggregation):
            return _execute(config, checkpoint_dir, cache_path, progress, callback)
    finally:
        if config.dp != "none":
            # TFF's C++ worker keeps 5-10 MB per DP round (tools/dp_worker_memory.py); stopping it
            # frees that, and TFF's service manager starts a fresh one on the next call.
            from .runtime import stop_local_workers

            stop_local_workers()


def _execute(config, checkpoint_dir, cache_path, progress, callback) -> pd.DataFrame:
    data = dataset_for(config)
    parts = partition_for(config, data)
    spec = spec_for(config, data)
    labels = spec.prepare_labels(data.y_train)
    client_x = add_feature_noise([data.x_train[p] for p in parts], config.feature_noise, seed=config.seeds["data"])
    process = algorithms.get_process(config, spec)
    trainer = trainer_on_arrays(process, client_x[0], labels)
    evaluator = _evaluator(spec)

    state = process.set_model_weights(process.initialize(), initial_weights(process, spec, config.seeds["model"]))
    start, rows, client_rows = 0, [], []
    checkpoint = _Checkpoint(checkpoint_dir, config) if checkpoint_dir is not None else None
    if checkpoint is not None:
        saved, version, saved_rows, saved_clients = checkpoint.load(state)
        if saved is not None:
            state, start, rows, client_rows = saved, version, saved_rows, saved_clients

    fields = config.experiment_dict()
    epsilons = _epsilons(config)
    from .aggregation import attacker_clients, poison_labels, round_bytes

    attackers = set(attacker_clients(config).tolist())
    attacker_config = config.replace(
        local_epochs=config.local_epochs * config.attack_boost,
        local_steps=None if config.local_steps is None else config.local_steps * config.attack_boost)
    poisoned = {c: spec.prepare_labels(poison_labels(data.y_train[parts[c]], data.num_classes)) for c in attackers}
    sizes = spec.tensor_sizes()
    cumulative = float(rows[-1]["cumulative_bytes"]) if rows and "cumulative_bytes" in rows[-1] else 0.0
    from tqdm.auto import tqdm

    bar = tqdm(total=config.rounds, initial=start, disable=not progress, desc=f"{config.algorithm} rounds",
               leave=False)
    try:
        for round_num in range(start + 1, config.rounds + 1):
            t0 = time.perf_counter()
            clients = sample_clients(config, round_num)
            row = {"round": round_num, "train_loss": np.nan, "train_accuracy": np.nan,
                   "eval_loss": np.nan, "eval_accuracy": np.nan, "clients_this_round": len(clients)}
            if len(clients):  # a Poisson-sampled DP round can be empty: nothing is trained or released
                inputs = [client_inputs(client_x[c], poisoned[c], attacker_config, round_num, int(c))
                          if c in attackers else
                          client_inputs(client_x[c], labels[parts[c]], config, round_num, int(c))
                          for c in clients]
                try:
                    output = trainer.next(state, inputs)
                except WorkerError as err:
                    kept = (f"the checkpoint in {checkpoint.dir} holds rounds 1-{round_num - 1}"
                            if checkpoint is not None else "no checkpoint_dir was given, so nothing was kept")
                    raise type(err)(err.worker, f"{err} (round {round_num}; {kept})") from None
                state = output.state
                train = output.metrics["client_work"]["train"]
                row.update(train_loss=float(train["loss"]), train_accuracy=float(train["accuracy"]))
                row.update(_aggregator_metrics(output.metrics))
            seconds = time.perf_counter() - t0
            moved = round_bytes(config, *sizes, clients=len(clients))
            cumulative += moved["bytes_down"] + moved["bytes_up"]
            row.update(moved, cumulative_bytes=cumulative)
            if epsilons is not None:
                row.update(epsilon=epsilons[round_num - 1], delta=config.effective_delta)
            if round_num % config.eval_every == 0 or round_num == config.rounds:
                evaluator.set_weights(state.global_model_weights)
                row["eval_loss"], row["eval_accuracy"] = evaluator.evaluate(data.x_test, data.y_test)
                if data.test_sites is not None and data.site_names is not None and len(data.site_names) <= 20:
                    row.update(_site_metrics(evaluator, data))
                if config.eval_per_client:
                    per_client = _evaluate_clients(evaluator, data, parts, client_x, round_num)
                    client_rows.extend(per_client)
                    accs = [r["accuracy"] for r in per_client]
                    row.update(client_accuracy_mean=float(np.mean(accs)),
                               client_accuracy_worst10=worst_fraction_mean(accs, 0.1),
                               client_accuracy_std=float(np.std(accs)))
            row["seconds"] = seconds
            row.update(fields)
            rows.append(row)
            if checkpoint is not None:
                checkpoint.save(state, round_num, rows, client_rows)
            bar.update(1)
            if callback is not None:
                callback(row, pd.DataFrame(rows))
    finally:
        bar.close()

    history = pd.DataFrame(rows)
    history.attrs["clients"] = client_rows
    history.attrs["from_cache"] = False
    final = [np.asarray(w) for w in state.global_model_weights.trainable] + \
        [np.asarray(w) for w in state.global_model_weights.non_trainable]
    history.attrs["final_weights"] = _Opaque(final)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_path, history.to_csv(index=False))
        if client_rows:
            _atomic_write(cache_path.with_suffix(".clients.csv"), pd.DataFrame(client_rows).to_csv(index=False))
        np.savez(cache_path.with_suffix(".weights.npz"), *final)
    return history


def _site_metrics(evaluator: _Evaluator, data: Dataset) -> dict:
    """Accuracy of the global model on each site's own held-out data: ``site_accuracy_<name>``."""
    logits = evaluator.logits(data.x_test)
    out = {}
    for s, name in enumerate(data.site_names):
        idx = np.flatnonzero(data.test_sites == s)
        out[f"site_accuracy_{name}"] = evaluate_logits(logits[idx], data.y_test[idx], evaluator.spec.binary)[1]
    return out


def _epsilons(config: ExperimentConfig) -> Optional[np.ndarray]:
    """Epsilon after each round for a DP config (None without DP); PLD only at evaluated rounds."""
    if config.dp == "none":
        return None
    from .privacy import epsilon_by_round

    at = None
    if config.accountant == "pld":
        at = sorted({r for r in range(1, config.rounds + 1) if r % config.eval_every == 0} | {config.rounds})
    return epsilon_by_round(config.noise_multiplier, config.sampling_probability, config.rounds,
                            config.effective_delta, config.accountant, at=at)


def _aggregator_metrics(metrics) -> dict:
    """The DP aggregator's clip norm this round, when it reports one (adaptive clipping)."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
        elif path and path[-1] == "clip":
            found["clip_norm_this_round"] = float(np.asarray(node))

    walk(dict(metrics.get("aggregator", {})), ())
    return found


def final_weights(history: pd.DataFrame) -> list[np.ndarray]:
    """The global model's weights after the last round: trainable, then non-trainable (frozen) tensors."""
    weights = history.attrs.get("final_weights")
    if weights is None:
        raise ValueError("history: holds no final weights (it was not made by run_experiment)")
    return weights.value


def clients_table(history: pd.DataFrame) -> pd.DataFrame:
    """Per-client evaluation of a run with ``eval_per_client``: round, client, num_examples, loss, accuracy."""
    return pd.DataFrame(history.attrs.get("clients", []), columns=["round", "client", "num_examples", "loss", "accuracy"])


def _evaluate_clients(evaluator: _Evaluator, data: Dataset, parts, client_x, round_num: int) -> list[dict]:
    """The global model on each client's local (training) data, as that client holds it."""
    rows = []
    for client, (idx, x) in enumerate(zip(parts, client_x)):
        loss, acc = evaluate_logits(evaluator.logits(x), data.y_train[idx], evaluator.spec.binary)
        rows.append({"round": round_num, "client": client, "num_examples": len(idx), "loss": loss, "accuracy": acc})
    return rows


def run_sweep(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
              labels: Optional[dict[str, Callable[[ExperimentConfig], object]]] = None) -> pd.DataFrame:
    """Runs several configs and stacks their histories (config fields tell them apart).

    ``labels`` adds columns computed from each config, e.g.
    ``{"method": fedlab.aggregation.method_name}``.
    """
    from tqdm.auto import tqdm

    histories = []
    for config in tqdm(configs, desc="configs", disable=not progress):
        history = run_experiment(config, results_cache=results_cache, progress=False)
        for column, fn in (labels or {}).items():
            history[column] = fn(config)
        histories.append(history)
    return pd.concat(histories, ignore_index=True)