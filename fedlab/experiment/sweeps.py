"""Many runs: grids of configs, sweeps that stack their histories (or each client's final score),
round-time measurements."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .config import ExperimentConfig
from ..core.quiet_periods import measures_time
from .pool import run_all
from .runner import clients_table, evaluated_rows, run_experiment
from ..core.validation import ConfigError


def grid(base: ExperimentConfig, **axes: Iterable[Any]) -> list[ExperimentConfig]:
    """Every combination of the given field values, each as ``base.replace(...)``.

    ``grid(base, local_epochs=[1, 5], seed=[0, 1])`` gives four configs; an
    algorithm's hyperparameters are axes too (``grid(base, mu=[0.01, 0.1])``).
    """
    if not isinstance(base, ExperimentConfig):
        raise TypeError(f"base: must be an ExperimentConfig, got {type(base).__name__}")
    values = {}
    for name, axis in axes.items():
        if isinstance(axis, (str, bytes, dict)) or not isinstance(axis, Iterable):
            raise ConfigError(name, f"a grid axis must be a list of values, got {axis!r} "
                                    f"(write {name}=[{axis!r}] for a single value)")
        values[name] = list(axis)
        if not values[name]:
            raise ConfigError(name, "a grid axis must hold at least one value, got an empty list")
    names = list(values)
    return [base.replace(**dict(zip(names, combo))) for combo in itertools.product(*(values[n] for n in names))]


def _config_list(configs) -> list[ExperimentConfig]:
    if isinstance(configs, ExperimentConfig):
        raise TypeError("configs: must be a list of ExperimentConfig, got one ExperimentConfig; pass [config], "
                        "or a list from fedlab.grid(config, ...)")
    if isinstance(configs, (str, bytes, dict)) or not isinstance(configs, Iterable):
        raise TypeError(f"configs: must be a list of ExperimentConfig (e.g. from fedlab.grid), got "
                        f"{type(configs).__name__}")
    configs = list(configs)
    if not configs:
        raise ValueError("configs: the sweep is empty; give at least one ExperimentConfig")
    bad = [c for c in configs if not isinstance(c, ExperimentConfig)]
    if bad:
        raise TypeError(f"configs: every item must be an ExperimentConfig, got {type(bad[0]).__name__}")
    return configs


def run_sweep(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
              labels: Optional[dict[str, Callable[[ExperimentConfig], object]]] = None,
              tensorboard_dir=None, processes: Optional[int] = None) -> pd.DataFrame:
    """Runs several configs and stacks their histories (config fields tell them apart).

    ``labels`` adds columns computed from each config, e.g.
    ``{"method": fedlab.aggregators.aggregation.method_name}``; ``tensorboard_dir``: every
    run's metrics as TensorBoard events, one folder per run. The runs not in ``results_cache`` train side by
    side in ``processes`` worker processes (default: ``$FEDLAB_SWEEP_PROCESSES``, which ``make figures`` sets to
    each notebook's share of the cores, else one per core; :mod:`fedlab.experiment.pool`) once what is left
    would take over 30 s here (``$FEDLAB_SPREAD_AFTER_S``), with the same numbers as one after the other.
    """
    configs = _config_list(configs)
    histories = run_all(configs, results_cache=results_cache, progress=progress, processes=processes,
                        tensorboard_dir=tensorboard_dir)
    for config, history in zip(configs, histories):
        for column, fn in (labels or {}).items():
            history[column] = fn(config)
    return stack_histories(histories)


RUN_SUMMARY = ("eval_loss", "eval_accuracy", "client_accuracy_mean", "client_accuracy_worst10", "client_accuracy_std")


def client_scores(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
                  labels: Optional[dict[str, Callable[[ExperimentConfig], object]]] = None,
                  processes: Optional[int] = None) -> pd.DataFrame:
    """Each client's score under each run's final model, for configs with ``eval_per_client``: one row per config
    and client, from the last evaluated round (round, client, num_examples, loss, accuracy), beside the config's
    fields (as a history has them), the ``labels`` columns (see :func:`run_sweep`), and the run's own summary of
    that round (:data:`RUN_SUMMARY`: the global model's ``eval_loss`` and ``eval_accuracy`` on the test set, the
    mean, worst 10 % and spread of the clients' accuracy), the same on each of its clients' rows. Runs are spread
    over ``processes`` as :func:`run_sweep`'s are.

    A client is scored on its own held-out share with ``local_test_fraction`` > 0 (``num_examples`` counts it),
    else on the data it trained on: not a held-out score.
    """
    configs = _config_list(configs)
    without = [i for i, c in enumerate(configs) if not c.eval_per_client]
    if without:
        raise ConfigError("eval_per_client", f"must be True in every config to score each client (config "
                                             f"{without[0]} of {len(configs)} has False)")
    frames = []
    histories = run_all(configs, results_cache=results_cache, progress=progress, processes=processes)
    for config, history in zip(configs, histories):
        clients = clients_table(history)
        last = clients[clients["round"] == clients["round"].max()].reset_index(drop=True)
        evaluated = evaluated_rows(history).iloc[-1]
        run = {**config.experiment_dict(), **{column: fn(config) for column, fn in (labels or {}).items()},
               **{c: float(evaluated[c]) for c in RUN_SUMMARY if c in evaluated}}
        frames.append(pd.concat([pd.DataFrame([run] * len(last)), last], axis=1))
    return stack_histories(frames)


def stack_histories(histories: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The histories one under the other, as ``pd.concat`` stacked them with pandas 2.2, without its FutureWarning.

    A config field that is None in one run and a number in another (``server_lr`` of FedAvg and of FedAvgM) is an
    all-None object column in the first history and a float column in the second. pandas 2.2 leaves such all-NA
    columns out when it chooses the stacked column's dtype (float, NaN for the None rows) and warns that a later
    pandas will not (an object column); here they become float NaN first, so the result stays float and nothing
    is deprecated.
    """
    numeric = {c for h in histories for c in h.columns if h[c].dtype.kind == "f" and h[c].notna().any()}
    stacked = []
    for history in histories:
        empty = {c: "float64" for c in history.columns
                 if c in numeric and history[c].dtype == object and history[c].isna().all()}
        stacked.append(history.astype(empty) if empty else history)
    return pd.concat(stacked, ignore_index=True)


@measures_time("round times (fedlab.round_times)")
def round_times(base: ExperimentConfig, clients_per_round: Sequence[int], executions: dict, *, warmup: int = 1):
    """Median seconds per round for each K in ``clients_per_round`` and each execution.

    ``executions`` maps a name to a tuple of workers (``()``: this process).
    The first ``warmup`` rounds (tracing, first contact with a worker) are not
    counted. Runs are never read from a results cache: timing is the point.
    Returns a DataFrame: execution, clients_per_round, seconds_per_round,
    rounds_timed, eval_accuracy (a survival task's eval_c_index; last round).
    """
    if base.rounds <= warmup:
        raise ValueError(f"rounds: must exceed warmup={warmup} to leave rounds to time, got {base.rounds}")
    rows = []
    for k in clients_per_round:
        for name, workers in executions.items():
            history = run_experiment(base.replace(clients_per_round=k, workers=tuple(workers)), progress=False)
            timed = history["seconds"].iloc[warmup:]
            metrics = {c: float(history[c].iloc[-1]) for c in ("eval_accuracy", "eval_c_index") if c in history}
            rows.append({"execution": name, "clients_per_round": k, "seconds_per_round": float(timed.median()),
                         "rounds_timed": len(timed), **metrics})
    return pd.DataFrame(rows)
