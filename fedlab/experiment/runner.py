"""The round loop: runs an experiment config and returns a tidy DataFrame.

One row per round: ``round``, ``train_loss``, ``train_accuracy`` (client
metrics during local training), ``eval_loss``, ``eval_accuracy`` (global
model on the held-out test set, every ``eval_every`` rounds and at the last
round; a survival task has no accuracy and reports ``eval_c_index``), ``clients_this_round``, bytes moved, epsilon with DP, per-site and
per-client accuracy where they apply, ``seconds`` (wall time of the round),
then every config field (the algorithm's hyperparameters included).

What each piece does lives elsewhere: client data and batches in
:mod:`fedlab.experiment.clients`, who trains in :mod:`fedlab.experiment.sampling`, built processes
in :mod:`fedlab.experiment.processes`, evaluation in :mod:`fedlab.experiment.evaluation`, result
cache and checkpoints in :mod:`fedlab.core.storage`, workers in
:mod:`fedlab.workers.distributed`. This module only runs rounds.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..protection.accounting import check_pld, ddp_epsilon_by_round, epsilon_by_round, record_level_epsilons
from ..aggregators.aggregation import (accounting_noise_multiplier, builders_in_use, ddp_parameters_of, distributed_dp,
                                       round_bytes,
                                       warn_if_updates_vanish, weighs_alike)
from .clients import (Clients, attacker_config, dataset_for, dp_sgd_steps, finetune_inputs, plan_size, planned_inputs,
                      spec_for)
from .config import RECORD_LEVEL, ExperimentConfig
from ..data.data import DATASETS
from ..workers.distributed import WorkerError, on_workers
from .evaluation import client_summary, clients_frame, evaluator_for
from ..data.partition import PARTITIONERS
from .processes import get_finetuning, get_process, get_site_process, initial_state, trainer_for
from ..core import profiling
from ..core.quiet_periods import run_slot
from ..core.registry import source_digest
from ..core.runtime import held, simulated_secure_sums, stop_large_local_workers, worker_memory_limit_mb
from ..rounds.array_training import local_steps, with_tau_eff
from ..systems.asynchronous import STALENESS, staleness_weights
from ..rounds.attacks import ATTACKS, attack_rng, is_update_attack
from .sampling import Scheduler
from ..aggregators.seeded import round_seed
from ..systems.systems import DEVICE_PROFILES, devices_for
from .sites import Federation, SiteClients, SiteJob
from .sites import refusal as site_refusal
from ..core.storage import Checkpoint, ResultCache, cache_key
from .tensorboard import TensorBoardLog
from ..core.validation import ConfigError
from ..data.tasks import LOSSES, METRICS, TASKS

MAX_ORDER_BYTES = 4 * 2**30  # per round: the batch orders of every client, int64


class RunStopped(Exception):
    """A run stopped on request (``stop`` was set) after finishing round ``round``; its checkpoint holds it.
    ``waiting``: stopped before it began, while it waited for another process's measurement of wall-clock time to
    end (:mod:`fedlab.core.quiet_periods`); nothing was trained or saved (``round`` 0)."""

    def __init__(self, round_num: int, *, waiting: bool = False):
        super().__init__("stopped before its first round, while it waited for a measurement in another process to end"
                         if waiting else f"stopped after round {round_num}")
        self.round, self.waiting = round_num, waiting


class _Opaque:
    """Holds arrays in ``DataFrame.attrs``: compared by identity, never deep-copied
    (pandas compares and deep-copies attrs on every operation)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


def run_experiment(
    config: ExperimentConfig,
    *,
    checkpoint_dir=None,
    results_cache=None,
    progress: bool = True,
    callback: Optional[Callable[[dict, pd.DataFrame], None]] = None,
    stop=None,
    tensorboard_dir=None,
    sites=None,
) -> pd.DataFrame:
    """Runs ``config`` and returns its history (one row per round).

    ``checkpoint_dir``: save state every round and resume from it.
    ``results_cache``: folder of finished runs keyed by the config, fedlab's
    code and the user's components; a run seen before is read back instead.
    ``callback(row, history)``: called after every round (widgets redraw here).
    ``stop``: a ``threading.Event``; when it is set the run ends after the
    current round (its checkpoint saved) with :class:`RunStopped`.
    ``tensorboard_dir``: write each round's metrics as TensorBoard events
    (:mod:`fedlab.experiment.tensorboard`; ``tensorboard --logdir`` shows a sweep side by side).
    Per-client evaluation (``eval_per_client``): :func:`clients_table` of the result.
    ``sites``: ``{name: "host:port"}`` of site processes (``python -m fedlab site``) that hold the data set's
    natural clients; they train and score, this process never reads a record (:mod:`fedlab.experiment.sites`).
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config: must be an ExperimentConfig, got {type(config).__name__}")
    federation = None
    if sites is not None:
        try:
            federation = Federation(sites)
        except ValueError as err:
            raise ConfigError("sites", str(err)) from None
        refused = site_refusal(config)
        if refused is not None:
            raise ConfigError(*refused)
    with profiling.run(algorithm=config.algorithm, dataset=config.dataset, model=config.model,
                       clients_per_round=config.clients_per_round, rounds=config.rounds, seed=config.seed) as timer:
        history = _run(config, federation, checkpoint_dir, results_cache, progress, callback, stop, tensorboard_dir)
        if timer is not None:
            timer.fields["from_cache"] = bool(history.attrs["from_cache"])
    return history


_RUNS_LOCK = threading.Lock()
_RUNS_GOING = 0  # runs of this process between their first TFF call and their end, in any thread


def _runs_started() -> None:
    global _RUNS_GOING
    with held(_RUNS_LOCK, "the count of runs using TFF's worker"):
        _RUNS_GOING += 1


def _run_ended(memory_limit: float) -> None:
    """A run has ended: TFF's local worker is stopped if it holds more than ``memory_limit`` MB and no other run
    of this process (a panel's, in another thread) is using it. TFF's C++ worker grows, on the DP path by tens of
    MB a run (``tools/worker_memory.py``); TFF's service manager starts a fresh one on the next call. The lock is
    held while it stops, so that no run starts on a worker going away."""
    global _RUNS_GOING
    with held(_RUNS_LOCK, "the count of runs using TFF's worker"):
        _RUNS_GOING -= 1
        if _RUNS_GOING == 0:
            stop_large_local_workers(memory_limit)


def _run(config: ExperimentConfig, federation: Optional[Federation], checkpoint_dir, results_cache, progress: bool,
         callback, stop, tensorboard_dir) -> pd.DataFrame:
    """:func:`run_experiment` once its arguments are checked: from the cache, or run and stored."""
    memory_limit = worker_memory_limit_mb()  # a bad FEDLAB_WORKER_MEMORY_MB is said now, not after the run
    cache = ResultCache(results_cache) if results_cache is not None else None
    checkpoint = Checkpoint(checkpoint_dir, config) if checkpoint_dir is not None else None
    key = cache_key(config, component_digests(config) + ([federation.key] if federation is not None else []))
    profiling.note(key=key)
    board = TensorBoardLog(tensorboard_dir, config, key) if tensorboard_dir is not None else None
    if cache is not None:
        with profiling.phase("cache"):
            stored = cache.load(key, config.rounds)
        if stored is not None:
            history = make_history(config, stored["rows"], stored["clients"], stored["weights"], from_cache=True)
            if board is not None:
                board.write(stored["rows"])
            if callback is not None:
                callback(history.iloc[-1].to_dict(), history)
            return history
    if board is not None:
        user_callback, fields = callback, set(config.experiment_dict())

        def callback(row, history):  # noqa: F811 - the user's callback, after the round is on TensorBoard
            board.write(history[[c for c in history.columns if c not in fields]].to_dict("records"))
            if user_callback is not None:
                user_callback(row, history)
    started, slot = False, None
    try:
        slot = run_slot(stop)  # waits while another process measures wall-clock time (fedlab.core.quiet_periods)
        if slot.stopped:
            raise RunStopped(0, waiting=True)  # asked to stop while it waited to start: nothing trained here
        _runs_started()
        started = True
        tff_secure_sums = config.secure_aggregation and config.secure_protocol == "none"
        with on_workers(config.workers, secure_sums=tff_secure_sums), \
                simulated_secure_sums(tff_secure_sums and not config.workers):
            rows, client_rows, weights = _execute(config, checkpoint, progress, callback, stop, federation,
                                                  lambda: slot.pause_point(stop))
    finally:
        try:
            if started:  # first, so that the count comes down whatever closing the federation does
                _run_ended(memory_limit)
        finally:
            try:
                if slot is not None:
                    slot.close()
            finally:
                if federation is not None:
                    federation.close()
    if cache is not None:
        with profiling.phase("cache"):
            cache.save(key, rows, client_rows, weights, config.to_json())
    return make_history(config, rows, client_rows, weights, from_cache=False)


_ROUND_DONE: contextvars.ContextVar[Optional[Callable[[], None]]] = contextvars.ContextVar(
    "fedlab_round_done", default=None)


@contextlib.contextmanager
def after_every_round(beat: Callable[[], None]):
    """Within the block (its context: a thread started inside it does not inherit it), ``beat()`` is called as
    each round, or FedBuff server step, a run records is done, before its callback; a run read from the results
    cache records none. A sweep's worker process says it is alive this way: unlike a ``callback``, it is given no
    history, which is built anew each round (3 to 4 ms a round in notebook 01's sweeps, more as rounds add up)."""
    token = _ROUND_DONE.set(beat)
    try:
        yield
    finally:
        _ROUND_DONE.reset(token)


_SENT_DIGESTS: Optional[tuple[ExperimentConfig, tuple[str, ...]]] = None


@contextlib.contextmanager
def digests_sent(config: ExperimentConfig, digests: list[str]):
    """Within the block, ``config``'s component digests are ``digests``: in a sweep's worker process, those the
    sweep's process computed. Its components were sent here by value, and the source of a function defined in a
    notebook cell cannot be read in another process, so a digest computed here could differ and the run be stored
    under a key the sweep never reads."""
    global _SENT_DIGESTS
    earlier, _SENT_DIGESTS = _SENT_DIGESTS, (config, tuple(digests))
    try:
        yield
    finally:
        _SENT_DIGESTS = earlier


def component_digests(config: ExperimentConfig) -> list[str]:
    """Digests of the user's components this config uses (fedlab's own are covered by its code version)."""
    if _SENT_DIGESTS is not None and _SENT_DIGESTS[0] == config:
        return list(_SENT_DIGESTS[1])
    algorithm = config.algorithm_entry
    parts = [DATASETS[config.dataset].load, PARTITIONERS[config.partition].make, algorithm.build, algorithm.params,
             DEVICE_PROFILES[config.device_profile].draw]
    from ..models.models import MODELS

    parts.append(MODELS[config.model].build)
    if is_update_attack(config):
        parts.append(ATTACKS[config.attack].apply)
    parts += [b.build for b in builders_in_use(config)]
    if config.async_concurrency:  # a staleness weighting edited in a notebook must miss the cache too
        parts.append(STALENESS[config.async_staleness].weight)
    task = TASKS[DATASETS[config.dataset].task]  # a loss or metric edited in a notebook must miss the cache
    parts += [task.prepare_labels, LOSSES[task.loss].keras, LOSSES[task.loss].numpy,
              *(METRICS[m].fn for m in task.metrics)]
    return [source_digest(p) for p in parts]


def make_history(config: ExperimentConfig, rows: list[dict], client_rows: list[dict], weights, *,
                 from_cache: bool) -> pd.DataFrame:
    """The tidy history: the metric rows, then every config field as a column."""
    fields = config.experiment_dict()
    history = pd.DataFrame([{**row, **fields} for row in rows])
    history.attrs["clients"] = client_rows
    history.attrs["from_cache"] = from_cache
    history.attrs["final_weights"] = _Opaque(list(weights))
    return history


def check_cost(config: ExperimentConfig, clients: Clients) -> None:
    """Refuses, before any training (and before TensorFlow is imported), a config whose batch orders alone would
    not fit in memory, whose record-level DP batches are larger than a client's data (the sampling rate
    batch / n must be < 1), or whose record-level PLD accounting could not hold a client's DP-SGD steps over
    every round in memory (:func:`fedlab.protection.accounting.check_pld`)."""
    if config.dp == RECORD_LEVEL:
        sizes = clients.sizes
        smallest = int(np.argmin(sizes))
        if config.batch_size >= sizes[smallest] and not config.algorithm_entry.full_batch:
            raise ConfigError("batch_size", f"must be below the smallest client's {sizes[smallest]} records "
                                            f"(client {smallest}) for record-level DP: its batches are Poisson "
                                            "samples at rate batch_size / records")
        if config.accountant == "pld" and config.noise_multiplier > 0:
            for client, n in enumerate(sizes):
                per_round, batch = dp_sgd_steps(n, config)
                try:
                    check_pld(config.noise_multiplier, min(1.0, batch / n), per_round * config.rounds, "steps")
                except ConfigError as err:
                    raise ConfigError("rounds", f"{config.rounds} rounds of {per_round} DP-SGD steps at client "
                                                f"{client} are too many for accountant='pld' ({err}); use fewer "
                                                "rounds or steps, or accountant='rdp'") from None
    # at once: the round's clients, or the jobs one FedBuff version can start (in flight, and a buffer filling)
    at_once = config.async_concurrency + config.effective_async_buffer if config.async_concurrency \
        else config.clients_per_round
    sizes = sorted(clients.sizes, reverse=True)[:at_once]
    boosted = attacker_config(config) if clients.attackers else config
    total = sum(plan_size(n, boosted)[0] * n * 8 for n in sizes)
    if total > MAX_ORDER_BYTES:
        field = "local_steps" if config.local_steps is not None else "local_epochs"
        raise ConfigError(field, f"would make the batch orders of one round about {total / 2**30:.1f} GiB "
                                 f"({at_once} clients of up to {sizes[0]} examples); "
                                 f"at most {MAX_ORDER_BYTES / 2**30:.0f} GiB is allowed")


def _execute(config: ExperimentConfig, checkpoint: Optional[Checkpoint], progress: bool, callback, stop=None,
             federation: Optional[Federation] = None, pause: Callable[[], None] = lambda: None):
    """The run's rounds; ``pause()`` after each but the last is recorded (a quiet period elsewhere waits for it
    there, :mod:`fedlab.core.quiet_periods`; it returns early once ``stop`` is set)."""
    with profiling.phase("data"):
        if federation is None:
            data = dataset_for(config)
            spec = spec_for(config, data)
            clients = Clients.for_config(config, spec)
        else:  # the sites hold the data: the driver learns their sizes and features, never a record
            federation.connect(config)
            data, spec, clients = None, federation.spec(config), SiteClients(federation)
    check_cost(config, clients)
    _check_rounded_dp_accounting(config, spec)
    _check_every_share_arrives(config)
    with profiling.phase("build"):
        process = get_process(config, spec) if federation is None else get_site_process(config, spec)
        warn_if_updates_vanish(config, spec)  # once per run, before its first round
        trainer = process if federation is not None else trainer_for(process, clients.x[0], clients.y[0])
        # a process build (and get_finetuning's) makes Keras layers in graphs of TFF's own, which leaves Keras' layer
        # classes in their graph (v1) form; initial_state's eager build below turns them back before the evaluator,
        # new or cached, is called (processes.initial_weights)
        tuning = get_finetuning(spec, bool(config.workers)) if config.finetune_epochs else None
        if federation is None:
            evaluator = evaluator_for(spec, spec.builder)
            eval_x, eval_y = clients.evaluation_arrays()
        own_model = getattr(process, "client_weights", None)  # personalised: each client's own model (FedPer)
        sizes = spec.tensor_sizes()
        scheduler = Scheduler(config, clients.sizes, sizes, clients.attackers)

        # the history's columns: the task's training metrics besides the loss (classification: train_accuracy) and
        # its eval_metric (eval_accuracy; a survival task's eval_c_index)
        eval_metric = spec.task_entry.eval_metric
        train_extra = tuple(f"train_{name}" for name in spec.metrics_constructor() if name != "loss")
        state = initial_state(process, config, spec)
    start, rows, client_rows = 0, [], []
    if checkpoint is not None:
        saved, version, saved_rows, saved_clients = checkpoint.load(state)
        if saved is not None:
            state, start, rows, client_rows = saved, version, saved_rows, saved_clients

    def evaluate(row: dict, state, round_num: int) -> None:
        """The evaluated round's scores into ``row`` (per-client rows into ``client_rows``)."""
        with profiling.phase("evaluate"):
            _evaluate(row, state, round_num)

    def _evaluate(row: dict, state, round_num: int) -> None:
        if federation is not None:  # each site scores its own test split; only the scores arrive
            row.update(federation.evaluate(config, _final_weights(state), eval_metric))
            return
        evaluator.set_weights(state.global_model_weights)
        row["eval_loss"], row[f"eval_{eval_metric}"] = evaluator.evaluate(data.x_test, data.y_test)
        if data.test_sites is not None and data.site_names is not None and len(data.site_names) <= 20:
            # personalised, one client per site: each site's own model on its own test data
            by_site = own_model is not None and config.partition == "natural"
            row.update(evaluator.site_metrics(
                data, weights_for=(lambda c, s=state: own_model(s, c)) if by_site else None))
        if config.eval_per_client:
            weights_for = None if own_model is None else (lambda c, s=state: own_model(s, c))
            if tuning is not None:  # each client scores the global model tuned on its own data
                own_data = [finetune_inputs(x, y, config, round_num, c)
                            for c, (x, y) in enumerate(zip(clients.x, clients.y))]
                weights_for = tuning.tuned_weights(state.global_model_weights, own_data,
                                                   config.client_lr).__getitem__
            per_client = evaluator.client_rows(eval_x, eval_y, round_num, weights_for=weights_for)
            client_rows.extend(per_client)
            row.update(client_summary(per_client))

    def record(row: dict, state, round_num: int, bar) -> None:
        """A finished round (or server step): into the history, the checkpoint and the callback; stopped if asked."""
        with profiling.phase("bookkeeping"):
            _record(row, state, round_num, bar)
        if round_num < config.rounds:  # after the round's seconds: a pause is in no round's time. The last round's
            pause()                    # run ends instead; the next run waits at the start
            if stop is not None and stop.is_set():  # set during the pause
                raise RunStopped(round_num)

    def _record(row: dict, state, round_num: int, bar) -> None:
        rows.append(row)
        if checkpoint is not None or callback is not None:
            history = make_history(config, rows, client_rows, [], from_cache=False)
        if checkpoint is not None:
            checkpoint.save(state, round_num, rows, client_rows, history.to_csv(index=False))
        bar.update(1)
        beat = _ROUND_DONE.get()
        if beat is not None:
            beat()
        if callback is not None:
            callback({**row, **config.experiment_dict()}, history)
        if stop is not None and stop.is_set() and round_num < config.rounds:
            raise RunStopped(round_num)

    if config.async_concurrency:
        final = _execute_async(config, process, clients, scheduler, state, start, rows, evaluate, record,
                               train_extra, eval_metric, sizes, progress)
        return rows, client_rows, final
    epsilons = _epsilons(config, clients, scheduler)
    cumulative = float(rows[-1]["cumulative_bytes"]) if rows else 0.0
    elapsed = 0.0
    for row in rows:  # the clock is a function of the config: rows saved before it existed get its columns too
        schedule = scheduler.round(int(row["round"]))
        elapsed += schedule.round_seconds
        row.setdefault("sim_round_seconds", schedule.round_seconds)
        row.setdefault("sim_elapsed_seconds", elapsed)
        row.setdefault("clients_selected", len(schedule.selected))
        row.setdefault("clients_completed", len(schedule.completed))
        row.setdefault("clients_dropped", schedule.dropped)
    from tqdm.auto import tqdm

    bar = tqdm(total=config.rounds, initial=start, disable=not progress, desc=f"{config.algorithm} rounds",
               leave=False)
    try:
        for round_num in range(start + 1, config.rounds + 1):
            t0 = time.perf_counter()
            schedule = scheduler.round(round_num)
            chosen = schedule.completed
            row = {"round": round_num, "train_loss": np.nan, **dict.fromkeys(train_extra, np.nan),
                   "eval_loss": np.nan, f"eval_{eval_metric}": np.nan, "clients_this_round": len(chosen)}
            clip_before = _tff_adaptive_clip(state.aggregator)  # TFF's adaptive DP reports the clip it moved to
            if len(chosen):  # a Poisson-sampled DP round, or one every client missed, is empty: nothing trained
                with profiling.phase("inputs"):
                    inputs = [_planned(clients.inputs(config, round_num, int(c)), int(schedule.steps[int(c)]))
                              for c in chosen]
                    if config.algorithm_entry.normalized:  # tau_eff: public under user-level DP; p_i = 1/m where
                        # the aggregation weighs the clients alike (weighs_alike)
                        inputs = with_tau_eff(inputs, "uniform" if weighs_alike(config) else config.client_weighting,
                                              config.local_steps if config.user_level_dp else None)
                    extra = _round_inputs(getattr(trainer, "round_inputs", ()), config, round_num, chosen,
                                          schedule.selected, clients.attackers, inputs)
                with _lost_in(round_num, checkpoint), profiling.phase("round"):
                    output = trainer.next(state, inputs, **extra)
                state = output.state
                train = output.metrics["client_work"]["train"]
                if config.dp != RECORD_LEVEL:  # record-level DP releases no training metrics: they stay NaN
                    row.update(train_loss=float(train["loss"]), **{c: float(train[c[6:]]) for c in train_extra})
                row.update(_aggregator_metrics(output.metrics, clip_before))
            elif hasattr(trainer, "empty_round"):  # central DP (a split round's): the noise of an empty sum
                with _lost_in(round_num, checkpoint), profiling.phase("round"):
                    state, measured = trainer.empty_round(state, **_round_inputs(
                        ("noise_seed",), config, round_num, chosen, schedule.selected, clients.attackers))
                row.update(_aggregator_metrics({"aggregator": measured}, clip_before))
            elif config.user_level_dp:  # TFF's round of no client: the DP aggregator noises the empty sum
                with _lost_in(round_num, checkpoint), profiling.phase("round"):
                    output = trainer.next(state, [], **_round_inputs(getattr(trainer, "round_inputs", ()), config,
                                                                     round_num, chosen, schedule.selected,
                                                                     clients.attackers))
                state = output.state
                row.update(_aggregator_metrics(output.metrics, clip_before))
            seconds = time.perf_counter() - t0
            moved = {"bytes_down": round_bytes(config, *sizes, clients=len(schedule.selected))["bytes_down"],
                     "bytes_up": round_bytes(config, *sizes, clients=len(chosen))["bytes_up"]}
            cumulative += moved["bytes_down"] + moved["bytes_up"]
            elapsed += schedule.round_seconds
            row.update(moved, cumulative_bytes=cumulative, sim_round_seconds=schedule.round_seconds,
                       sim_elapsed_seconds=elapsed, clients_selected=len(schedule.selected),
                       clients_completed=len(chosen), clients_dropped=schedule.dropped)
            if epsilons is not None:
                row.update(epsilon=epsilons[round_num - 1], delta=config.effective_delta)
            if round_num % config.eval_every == 0 or round_num == config.rounds:
                with _lost_in(round_num, checkpoint):
                    evaluate(row, state, round_num)
            row["seconds"] = seconds
            record(row, state, round_num, bar)
    finally:
        bar.close()
    return rows, client_rows, _final_weights(state)


@contextlib.contextmanager
def _lost_in(round_num: int, checkpoint: Optional[Checkpoint]):
    """A worker or site lost during round ``round_num``: its error says what the checkpoint holds."""
    try:
        yield
    except WorkerError as err:
        kept = (f"the checkpoint in {checkpoint.dir} holds rounds 1-{round_num - 1}"
                if checkpoint is not None else "no checkpoint_dir was given, so nothing was kept")
        raise type(err)(err.worker, f"{err} (round {round_num}; {kept})") from None


def _final_weights(state) -> list[np.ndarray]:
    """The model's trainable then non-trainable arrays."""
    return [np.asarray(w) for w in state.global_model_weights.trainable] + \
        [np.asarray(w) for w in state.global_model_weights.non_trainable]


def _execute_async(config: ExperimentConfig, process, clients: Clients, scheduler: Scheduler, state, start: int,
                   rows: list, evaluate, record, train_extra: tuple, eval_metric: str, sizes, progress: bool):
    """FedBuff's server steps (:mod:`fedlab.systems.asynchronous`): one history row per step, each passed to ``record``
    (:func:`_execute`'s); returns the final weights.

    The jobs that start on a version are trained as soon as it exists and
    wait in the state until the step that takes them. A row's training metrics
    are those of the updates its step takes; its bytes, those of the jobs
    started and the updates taken since the previous step.
    """
    plan = scheduler.asynchronous(config.rounds)
    factors_of = {s.version: staleness_weights(config.async_staleness, s.staleness) for s in plan.steps}
    one = round_bytes(config, *sizes, clients=1, population_shares=False)  # one client's own upload

    def train(version: int, state) -> dict:
        jobs = plan.started_on(version)
        with profiling.phase("inputs"):
            inputs = [clients.inputs(config, job.number, job.client) for job in jobs]
        with profiling.phase("round"):
            return dict(zip((job.id for job in jobs), process.train(state, inputs)))

    pending = process.held(state) if start else train(0, state)
    cumulative = float(rows[-1]["cumulative_bytes"]) if rows else 0.0
    from tqdm.auto import tqdm

    bar = tqdm(total=config.rounds, initial=start, disable=not progress, desc=f"{config.algorithm} async steps",
               leave=False)
    try:
        for step in plan.steps[start:]:
            t0 = time.perf_counter()
            missing = [j for j in step.jobs if j not in pending]
            if missing:
                raise RuntimeError(f"async step {step.version}: the updates of jobs {missing} were never trained "
                                   "(a checkpoint from another schedule?)")
            results = [pending.pop(j) for j in step.jobs]
            with profiling.phase("round"):
                state, aggregated, _ = process.step(state, results, factors_of[step.version])
                train_metrics = process.train_metrics(results)
            if step.version < config.rounds:
                pending.update(train(step.version, state))
            state = process.hold(state, pending)
            staleness = np.asarray(step.staleness)
            row = {"round": step.version, "train_loss": float(train_metrics["loss"]),
                   **{c: float(train_metrics[c[6:]]) for c in train_extra},
                   "eval_loss": np.nan, f"eval_{eval_metric}": np.nan, "clients_this_round": len(step.jobs)}
            row.update(_aggregator_metrics({"aggregator": aggregated}))
            moved = {"bytes_down": one["bytes_down"] * step.started, "bytes_up": one["bytes_up"] * len(step.jobs)}
            cumulative += moved["bytes_down"] + moved["bytes_up"]
            previous = plan.steps[step.version - 2].time if step.version > 1 else 0.0
            row.update(moved, cumulative_bytes=cumulative, sim_round_seconds=step.time - previous,
                       sim_elapsed_seconds=step.time, clients_selected=step.started,
                       clients_completed=len(step.jobs), clients_dropped=step.lost,
                       staleness_mean=float(staleness.mean()), staleness_max=int(staleness.max()),
                       clients_in_flight=step.in_flight)
            seconds = time.perf_counter() - t0  # the step, not its evaluation: as a synchronous round's seconds
            if step.version % config.eval_every == 0 or step.version == config.rounds:
                evaluate(row, state, step.version)
            row["seconds"] = seconds
            record(row, state, step.version, bar)
    finally:
        bar.close()
    return _final_weights(state)


def _planned(inputs, steps: int):
    """A client's round input with the step cap its schedule allows (a site applies it to the inputs it makes)."""
    if isinstance(inputs, SiteJob):
        return dataclasses.replace(inputs, steps=steps)
    return planned_inputs(inputs, steps)


def _check_every_share_arrives(config: ExperimentConfig) -> None:
    """Distributed DP counts the noise share of every client that may be sampled, sent at each round's start: a
    device that may be offline then would not send it (checked before any training)."""
    if not distributed_dp(config):
        return
    devices = devices_for(config.device_profile, config.num_clients, config.seeds["systems"])
    offline = np.setdiff1d(np.flatnonzero(np.asarray(devices.availability) < 1), config.exclude_clients)
    if offline.size:
        raise ConfigError("device_profile", f"must keep every client online with dp='distributed', but "
                                            f"{config.device_profile!r} gives client {int(offline[0])} availability "
                                            f"{float(devices.availability[offline[0]]):g}: a client offline at a "
                                            "round's start sends no noise share, and the sum would carry less "
                                            "noise than the accounting counts")


def _check_rounded_dp_accounting(config: ExperimentConfig, spec) -> None:
    """User-level DP on a secure sum is accounted at a smaller noise multiplier than the config's (the rounding
    adds to the sensitivity: :func:`fedlab.aggregators.aggregation.dp_sensitivity`); PLD must hold it, checked before any
    training as the config checks the config's own."""
    if not (config.accountant == "pld" and config.user_level_dp and config.noise_multiplier > 0
            and (config.secure_aggregation or config.over_selection > 1)):
        return
    z = accounting_noise_multiplier(config, int(sum(spec.tensor_sizes()[0])))
    try:
        check_pld(z, config.sampling_probability, config.rounds)
    except ConfigError as err:
        raise ConfigError("accountant", f"'pld' cannot hold these rounds at the noise multiplier relative to the "
                                        f"sum's sensitivity ({z:.3g}: a secure sum's rounding and over-selection add "
                                        f"to it): {err.message}; use accountant='rdp', more quantization_bits, or "
                                        "no over_selection") from None


def _epsilons(config: ExperimentConfig, clients: Clients, scheduler: Scheduler) -> Optional[np.ndarray]:
    """Epsilon after each round for a DP config (None without DP); PLD only at evaluated rounds.

    User-level: the Poisson-sampled Gaussian over rounds. Record-level: the
    largest epsilon over the honest clients (:func:`record_level_site_epsilons`):
    attackers are the adversary the guarantee is held against, and they may
    train ``attack_boost`` times longer than DP-SGD's plan.
    """
    if config.dp == "none":
        return None
    at = None
    if config.accountant == "pld":
        at = sorted({r for r in range(1, config.rounds + 1) if r % config.eval_every == 0} | {config.rounds})
    if config.dp == RECORD_LEVEL:
        sites = record_level_site_epsilons(config, clients, at=at, scheduler=scheduler)
        computed = ~np.isnan(sites).all(axis=1)
        sites[:, sorted(clients.attackers)] = np.nan
        return np.where(computed, np.where(np.isnan(sites), -np.inf, sites).max(axis=1), np.nan)
    if distributed_dp(config):  # the RDP of the Skellam sum (its own bounds: the rounding is in them)
        return ddp_epsilon_by_round(ddp_parameters_of(config, scheduler.num_weights), config.sampling_probability,
                                    config.rounds, config.effective_delta, displaced=config.over_selection > 1)
    # z relative to the sum's sensitivity: clip_norm, plus a secure sum's rounding, twice that with over-selection
    # (aggregation.dp_sensitivity), at q = config.sampling_probability
    z = accounting_noise_multiplier(config, scheduler.num_weights)
    return epsilon_by_round(z, config.sampling_probability, config.rounds, config.effective_delta, config.accountant,
                            at=at)


def record_level_site_epsilons(config: ExperimentConfig, clients: Clients, at=None,
                               scheduler: Optional[Scheduler] = None) -> np.ndarray:
    """(rounds, clients) record-level epsilon of each client, from its size, steps and the rounds it trained in.

    A client cut short by the round deadline (``partial``) is counted with its full steps: an upper bound.
    """
    sizes = clients.sizes
    planned = [dp_sgd_steps(n, config) for n in sizes]  # (steps, batch): q = batch / n, 1 for a full batch
    if scheduler is None:
        scheduler = Scheduler(config, sizes, spec_for(config, clients.data).tensor_sizes(), clients.attackers)
    return record_level_epsilons(config.noise_multiplier, sizes, [b for _, b in planned], [s for s, _ in planned],
                                 scheduler.participation(),
                                 config.effective_delta, config.accountant, at=at)


def _round_inputs(wanted, config: ExperimentConfig, round_num: int, chosen, selected, attackers,
                  inputs=()) -> dict:
    """What a process that runs part of its round in Python asks of the round (its ``round_inputs``): the
    clients' ids, every client selected (a secure protocol's dropouts), SecAgg+'s graph seed, CKKS's encryption
    seed of the round, and, for an
    attack on the updates, who attacks, ``attack_boost`` and the attackers' random generator."""
    known = {
        "clients": lambda: [int(c) for c in chosen],
        "participants": lambda: [int(c) for c in selected],
        "graph_seed": lambda: round_seed(config.seeds["systems"], round_num),
        "noise_seed": lambda: round_seed(config.seeds["noise"], round_num),
        "attackers": lambda: [int(c) in attackers for c in chosen],
        "attack_boost": lambda: config.attack_boost,
        # the cohort size an attack adapts to ("A little is enough"): under user-level DP the public expected K,
        # else the clients of the round (who is sampled must not move every attacker's update: one honest user would)
        "attack_clients": lambda: config.clients_per_round if config.user_level_dp else len(chosen),
        "attack_rng": lambda: attack_rng(config.seeds["data"], round_num),
        # what sizes a client's values sent beside its update (SCAFFOLD's control variates) to an update's: the
        # config's local steps (under user-level DP it must set them: nothing about who was sampled may enter), or
        # the mean steps the server planned for the round's clients (secure aggregation hides updates, not plans)
        "side_scale": lambda: float(config.local_steps) if config.local_steps else float(
            np.mean([local_steps(i) for i in inputs]) if len(inputs) else config.local_epochs),
    }
    return {name: known[name]() for name in wanted}


SECAGG_COLUMNS = {"participants": "secagg_participants", "included": "secagg_included",
                  "aborted": "secagg_aborted", "bytes_per_client": "secagg_bytes_per_client",
                  "client_seconds": "seconds_secagg_client", "server_seconds": "seconds_secagg_server"}


def _tff_adaptive_clip(aggregator_state) -> Optional[float]:
    """The clip TFF's own adaptive DP factory (``noise_source="unseeded"``) clips this round's updates to, read from
    its state before the round, or None for any other aggregator. TFF reports the clip of its state after the round
    (``derive_metrics`` of the new query state): the one the next round clips to."""
    if hasattr(aggregator_state, "_fields"):
        fields = aggregator_state._fields
        if "sum_state" in fields and "quantile_estimator_state" in fields and \
                hasattr(aggregator_state.sum_state, "l2_norm_clip"):  # QuantileAdaptiveClipSumQuery's, not the tree's
            return float(np.asarray(aggregator_state.sum_state.l2_norm_clip))
        children = [getattr(aggregator_state, f) for f in fields]
    elif isinstance(aggregator_state, dict):
        children = list(aggregator_state.values())
    elif isinstance(aggregator_state, (list, tuple)):
        children = list(aggregator_state)
    else:
        children = []
    for child in children:
        found = _tff_adaptive_clip(child)
        if found is not None:
            return found
    return None


def _aggregator_metrics(metrics, clip_before: Optional[float] = None) -> dict:
    """The DP aggregator's clip norm this round, when it reports one (adaptive clipping; ``clip_before``, read from
    TFF's own adaptive factory's state before the round, in place of the clip it reports); a secure protocol's
    clients included, whether it stopped, its bytes per client and seconds (:mod:`fedlab.rounds.split_rounds`)."""
    found = {}
    secagg = dict(metrics.get("aggregator", {})).get("secagg")
    if secagg is not None:
        found.update({SECAGG_COLUMNS[k]: float(v) for k, v in secagg.items()})

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
        elif path and path[-1] == "clip":
            found["clip_norm_this_round"] = float(np.asarray(node))

    walk(dict(metrics.get("aggregator", {})), ())
    if clip_before is not None and "clip_norm_this_round" in found:
        found["clip_norm_this_round"] = clip_before
    return found


def evaluated_rows(history: pd.DataFrame) -> pd.DataFrame:
    """The rounds at which the global model was evaluated: every ``eval_every``-th and the last, the runner's own
    rule, so that a diverged model's round (its metrics NaN) stays in and is reported as such."""
    rounds = history["round"]
    return history[(rounds % history["eval_every"] == 0) | (rounds == history["rounds"])]


def final_weights(history: pd.DataFrame) -> list[np.ndarray]:
    """The global model's weights after the last round: trainable, then non-trainable (frozen) tensors."""
    weights = history.attrs.get("final_weights")
    if weights is None:
        raise ValueError("history: holds no final weights (it was not made by run_experiment)")
    return weights.value


def clients_table(history: pd.DataFrame) -> pd.DataFrame:
    """Per-client evaluation of a run with ``eval_per_client``: round, client, num_examples, loss, accuracy."""
    return clients_frame(history.attrs.get("clients", []))
