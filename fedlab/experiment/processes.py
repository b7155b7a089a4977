"""Built TFF learning processes: made once per what they depend on, and fed client arrays.

Building a process takes about 4 s, so processes are cached in memory by what
the computation depends on (model, algorithm and its hyperparameters,
learning rates, aggregator), not by the data, partition, clients, epochs,
batch size or seeds, which change only what ``next`` is fed. A component
registered again under the same name (an edited notebook cell) is a new key.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import numpy as np

from ..algorithms import algorithms
from ..aggregators.aggregation import aggregator_key, builders_in_use, make_aggregator
from ..core.array_files import building_for_remote_workers
from ..core.array_files import enabled as array_files_enabled
from ..rounds.array_training import clear_traced, with_learning_rates
from ..rounds.attacks import is_update_attack
from ..rounds.buffered_rounds import BufferedRounds
from .clients import batches
from .config import ExperimentConfig
from ..rounds.finetune import FineTuning
from ..models.models import ModelSpec, clear_converted_models
from ..core.runtime import tff
from ..core.tff_speedups import clear_optimized
from ..aggregators.seeded import set_noise_seed
from ..rounds.split_rounds import SplitRounds


def uses_arrays(config: ExperimentConfig, spec: ModelSpec) -> bool:
    """Whether the config's process trains clients on arrays in one compiled loop (:mod:`fedlab.rounds.array_training`)."""
    return config.algorithm_entry.on_arrays is not None


def process_key(config: ExperimentConfig, spec: ModelSpec) -> tuple:
    """What a built process depends on; configs with the same key share one process.

    A compiled-loop process takes its learning rates from its state, so they
    are not in its key: a learning-rate sweep builds one process. One built for
    remote workers is sent client arrays, one for this machine their files'
    paths (:mod:`fedlab.core.array_files`).
    """
    entry = config.algorithm_entry
    on_arrays = uses_arrays(config, spec)
    rates = () if on_arrays else (config.client_lr, None if entry.full_batch else config.effective_server_lr)
    builders = tuple(builders_in_use(config))
    record_level = (config.noise_multiplier, config.clip_norm) if config.dp == "example" else None
    attack = config.attack if is_update_attack(config) else None
    return (spec, spec.builder, entry, config.algorithm_params, on_arrays, rates, config.client_weighting,
            aggregator_key(config), builders, record_level, attack, _for_remote_workers(config),
            async_slots(config) if config.async_concurrency else 0)


def async_slots(config: ExperimentConfig) -> int:
    """The most updates that can wait for a FedBuff step at once: every job in flight, and a buffer filling."""
    return config.async_concurrency + config.effective_async_buffer


def _for_remote_workers(config: ExperimentConfig) -> bool:
    """Whether a process for ``config`` is sent client arrays (remote workers), not their files' paths."""
    return bool(config.workers) or not array_files_enabled()


# Processes whose ``next`` takes client arrays (fedlab.rounds.array_training), not datasets.
_ON_ARRAYS: "weakref.WeakSet" = weakref.WeakSet()


def build_process(config: ExperimentConfig, spec: ModelSpec, *, model_aggregator: Any = None,
                  on_arrays: Optional[bool] = None):
    """The learning process for ``config.algorithm`` with the config's hyperparameters and aggregator.

    ``on_arrays`` (None: whenever possible): the algorithm's compiled-loop
    builder (a functional model, frozen layers too: :meth:`ModelSpec.functional_model`); else TFF's
    stock client work on datasets.
    """
    if model_aggregator is None:
        model_aggregator = make_aggregator(config)
    entry = config.algorithm_entry
    if on_arrays is None:
        on_arrays = uses_arrays(config, spec)
    if on_arrays and is_update_attack(config):  # the attackers forge their updates before the aggregator
        model_aggregator = SplitRounds(model_aggregator, config.attack)
    if on_arrays and config.async_concurrency:  # FedBuff: updates wait in the state for their server step
        model_aggregator = BufferedRounds(model_aggregator, async_slots(config))
    if on_arrays:
        extra = {"example_dp": (config.noise_multiplier, config.clip_norm)} if config.dp == "example" else {}
        with building_for_remote_workers(_for_remote_workers(config)):
            process = entry.on_arrays(spec.functional_model(), client_lr=config.client_lr,
                                      server_lr=config.effective_server_lr, params=config.algorithm_params,
                                      model_aggregator=model_aggregator, client_weighting=config.client_weighting,
                                      **extra)
        _ON_ARRAYS.add(process)
        return process
    return algorithms.build(config.algorithm, spec.tff_model(), client_lr=config.client_lr,
                            server_lr=config.effective_server_lr, params=config.algorithm_params,
                            model_aggregator=model_aggregator)


def trainer_for(process, x: np.ndarray, y: np.ndarray):
    """What the runner calls ``next`` on with each client's arrays: the process itself when it trains on arrays."""
    return process if process in _ON_ARRAYS else trainer_on_arrays(process, x, y)


_PROCESS_CACHE: dict[tuple, Any] = {}


def get_process(config: ExperimentConfig, spec: ModelSpec):
    """A built process from the in-memory cache, building it only once per key."""
    key = process_key(config, spec)
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build_process(config, spec)
    return _PROCESS_CACHE[key]


def get_site_process(config: ExperimentConfig, spec: ModelSpec):
    """The process of a federation of site processes (:mod:`fedlab.experiment.site_rounds`), built once per key: the same
    on the driver (which aggregates and steps the server) and at every site (which trains its client)."""
    from .site_rounds import SiteRounds

    key = ("sites",) + process_key(config, spec)
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build_process(config, spec, model_aggregator=SiteRounds(make_aggregator(config)),
                                            on_arrays=True)
    return _PROCESS_CACHE[key]


def get_finetuning(spec: ModelSpec, remote: bool = False) -> FineTuning:
    """The local fine-tuning evaluation of ``spec``'s model (:mod:`fedlab.rounds.finetune`), built once per model (and
    once more for ``remote`` workers, which are sent the arrays, not their files' paths)."""
    remote = remote or not array_files_enabled()
    key = ("finetune", spec, spec.builder, remote)
    if key not in _PROCESS_CACHE:
        with building_for_remote_workers(remote):
            _PROCESS_CACHE[key] = FineTuning(spec.functional_model())
    return _PROCESS_CACHE[key]


def clear_process_cache() -> None:
    """Forget the built processes, the functional models they were built from (their traces keep the
    processes' graphs), their traced client trainings and finalizers, and Grappler's outputs for their graphs."""
    _PROCESS_CACHE.clear()
    clear_traced()
    clear_optimized()
    clear_converted_models()


def process_cache_size() -> int:
    return len(_PROCESS_CACHE)


# process -> {array types: trainer}; an entry goes when the process cache lets its process go.
_TRAINERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def trainer_on_arrays(process, x: np.ndarray, y: np.ndarray):
    """``process`` with a ``next`` that takes each client's arrays (:func:`fedlab.experiment.clients.client_inputs`).

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
                                  t.TensorType(np.int64, [None, None]), int64, int64, int64,
                                  t.TensorType(np.int64, [2]))
        def client_data(x, y, orders, batch, steps, skip, key):
            del key  # TFF's client work has no record-level DP to key
            return batches(x, y, orders, batch, steps, skip)

        trainers[key] = t.simulation.compose_dataset_computation_with_learning_process(client_data, process)
    return trainers[key]


def initial_state(process, config: ExperimentConfig, spec: ModelSpec):
    """The process's first state for ``config``: initial weights from the model seed, the config's learning
    rates (compiled-loop processes), the noise seed (seeded aggregators)."""
    state = process.set_model_weights(process.initialize(), initial_weights(process, spec, config.seeds["model"]))
    if process in _ON_ARRAYS:
        server_lr = config.client_lr if config.algorithm_entry.full_batch else config.effective_server_lr
        state = with_learning_rates(state, config.client_lr, server_lr)
    if config.noise_source == "seeded":
        state = set_noise_seed(state, config.seeds["noise"])
    if hasattr(process, "client_state"):  # per-client state kept between rounds (SCAFFOLD's control variates)
        state = process.client_state(state, config.num_clients)
    return state


def initial_weights(process, spec: ModelSpec, seed: int):
    """Model weights drawn from ``seed`` in the container types the process expects."""
    template = process.get_model_weights(process.initialize())
    # a fresh Keras model, built eagerly, every run: not only for its weights. Building a process makes Keras layers
    # in graphs of TFF's own, which turns Keras' layer classes to their graph (v1) form (Keras swaps a layer class's
    # bases on every construction), and the runner's cached evaluator model fails in that form; this build, after
    # the process's and before the first evaluation, turns them back. Do not cache it.
    keras = spec.build_keras(seed)
    trainable = [v.numpy() for v in keras.trainable_variables]
    non_trainable = [v.numpy() for v in keras.non_trainable_variables]
    return tff().learning.models.ModelWeights(
        trainable=type(template.trainable)(trainable), non_trainable=type(template.non_trainable)(non_trainable))
