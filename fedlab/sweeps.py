"""Many runs: grids of configs, sweeps that stack their histories, round-time measurements."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .config import ExperimentConfig
from .runner import run_experiment
from .validation import ConfigError


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


def run_sweep(configs: Sequence[ExperimentConfig], *, results_cache=None, progress: bool = True,
              labels: Optional[dict[str, Callable[[ExperimentConfig], object]]] = None,
              tensorboard_dir=None) -> pd.DataFrame:
    """Runs several configs and stacks their histories (config fields tell them apart).

    ``labels`` adds columns computed from each config, e.g.
    ``{"method": fedlab.aggregation.method_name}``; ``tensorboard_dir``: every
    run's metrics as TensorBoard events, one folder per run.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("configs: the sweep is empty; give at least one ExperimentConfig")
    bad = [c for c in configs if not isinstance(c, ExperimentConfig)]
    if bad:
        raise TypeError(f"configs: every item must be an ExperimentConfig, got {type(bad[0]).__name__}")
    from tqdm.auto import tqdm

    histories = []
    for config in tqdm(configs, desc="configs", disable=not progress):
        history = run_experiment(config, results_cache=results_cache, progress=False, tensorboard_dir=tensorboard_dir)
        for column, fn in (labels or {}).items():
            history[column] = fn(config)
        histories.append(history)
    return pd.concat(histories, ignore_index=True)


def round_times(base: ExperimentConfig, clients_per_round: Sequence[int], executions: dict, *, warmup: int = 1):
    """Median seconds per round for each K in ``clients_per_round`` and each execution.

    ``executions`` maps a name to a tuple of workers (``()``: this process).
    The first ``warmup`` rounds (tracing, first contact with a worker) are not
    counted. Runs are never read from a results cache: timing is the point.
    Returns a DataFrame: execution, clients_per_round, seconds_per_round,
    rounds_timed, eval_accuracy (last round).
    """
    if base.rounds <= warmup:
        raise ValueError(f"rounds: must exceed warmup={warmup} to leave rounds to time, got {base.rounds}")
    rows = []
    for k in clients_per_round:
        for name, workers in executions.items():
            history = run_experiment(base.replace(clients_per_round=k, workers=tuple(workers)), progress=False)
            timed = history["seconds"].iloc[warmup:]
            rows.append({"execution": name, "clients_per_round": k, "seconds_per_round": float(timed.median()),
                         "rounds_timed": len(timed), "eval_accuracy": float(history["eval_accuracy"].iloc[-1])})
    return pd.DataFrame(rows)
