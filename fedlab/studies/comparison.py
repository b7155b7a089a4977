"""Comparisons a reviewer accepts: every method over the same seeds, tuned with the same budget on validation
data, against baselines a constant cannot beat, reported with 95 % intervals and paired differences.

* :func:`compare` runs (or reads from the result cache) each method at each seed and returns one row per method
  and metric: the mean over seeds (of the mean over sites, where the data has sites), its interval
  (:mod:`fedlab.reporting.stats`), and against a named reference the difference paired over the same seeds, its interval
  and the paired t-test's p-value. ``space`` and ``budget`` tune every method first, each with the same number of
  trials (:func:`tune`).
* :func:`tune` chooses hyperparameters on a validation split carved from the training data (``validation_fraction``
  of each site's training records); a test-set metric as the selection metric is refused.
* Baselines are registered methods (:func:`register_baseline`, the way a user adds one): ``majority_site`` (each
  site predicts its own training majority), ``majority_global``, ``constant`` (the same as ``majority_site``; for
  survival one risk score for everybody), ``local`` (each site trains alone, with the
  federation's optimizer, steps and tuning, and is scored on its own test set) and ``pooled`` (one client holding
  every site's training data).

Metrics (:func:`fedlab.experiment.evaluation.classification_metrics`): ``accuracy``, ``balanced_accuracy`` (mean recall over
the classes: a constant scores 0.5) and ``auc``. A site whose test set has one class has neither of the last two:
it is reported as undefined and left out of the mean over sites, never scored 1.0.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .analysis import summarize_paired
from ..experiment.clients import dataset_for, spec_for
from ..experiment.config import FIELD_NAMES, ExperimentConfig
from ..data.data import Dataset
from ..experiment.evaluation import Evaluator
from ..core.registry import Registry, decorator
from ..experiment.pool import spread
from ..experiment.runner import evaluated_rows, final_weights, run_experiment
from ..reporting.stats import METHODS as INTERVALS
from ..data.tasks import TASKS, Task
from ..core.validation import ConfigError

METRICS = TASKS["classification"].metrics  # ("accuracy", "balanced_accuracy", "auc"); a task names its own
VALIDATION_METRICS = tuple(f"validation_{m}" for m in METRICS)
DEFAULT_VALIDATION_FRACTION = 0.2

Baseline = Callable[..., pd.DataFrame]
BASELINES: Registry[Baseline] = Registry("baseline", "baseline")


# What a baseline trains, by its registered name: runs(config) -> the configs it runs (see register_baseline)
BASELINE_RUNS: dict[str, Callable[[ExperimentConfig], list[ExperimentConfig]]] = {}


def register_baseline(name: str, *, paper: Optional[str] = None, replace: bool = False,
                      runs: Optional[Callable[[ExperimentConfig], Sequence[ExperimentConfig]]] = None):
    """Registers ``baseline(config, *, results_cache) -> DataFrame`` under ``name``: one row per test site of
    ``dataset_for(config)`` with the :data:`METRICS` (a ``site`` column; ``"all"`` without sites). The config
    carries the seed, the tuned hyperparameters and, while tuning, ``validation_fraction``.

    ``runs(config)``: the configs the baseline runs with :func:`fedlab.run_experiment` for ``config``, known
    before it runs, so that :func:`compare` and :func:`tune` train them side by side with the other methods'
    (:mod:`fedlab.experiment.pool`); without it the baseline's runs train one after the other when it is called.
    """
    def register(fn):
        decorator(BASELINES, name, lambda f: f, paper=paper, replace=replace)(fn)
        if runs is None:
            BASELINE_RUNS.pop(name, None)
        else:
            BASELINE_RUNS[name] = lambda config: list(runs(config))
        return fn

    return register


def metric_rows(logits: np.ndarray, data: Dataset, binary: Optional[bool] = None) -> pd.DataFrame:
    """The metrics of the data's task (classification: :data:`METRICS`) on each site's test set (one row ``"all"``
    without sites), with each site's test size and prevalence (classification: share of label 1, NaN beyond two
    classes; survival: share of patients whose event was seen)."""
    del binary  # the task knows (two classes: one logit)
    task = TASKS[data.task]
    y = np.asarray(data.y_test)
    groups = ([("all", np.arange(len(y)))] if data.test_sites is None or data.site_names is None else
              [(name, np.flatnonzero(data.test_sites == s)) for s, name in enumerate(data.site_names)])
    rows = []
    for name, idx in groups:
        scores = task.scores(logits[idx], y[idx], data.num_classes)
        prevalence = task.prevalence(y[idx], data.num_classes)
        rows.append({"site": name, **scores, "num_test": int(len(idx)), "prevalence": prevalence})
    return pd.DataFrame(rows)


def scores_of(config: ExperimentConfig, history: pd.DataFrame) -> pd.DataFrame:
    """A finished run's final model on each site's test set (:func:`metric_rows`); each site's own model, for an
    algorithm whose clients keep one, under the natural partition."""
    data = dataset_for(config)
    spec = spec_for(config, data)
    if config.algorithm_entry.personal and config.partition == "natural" and data.site_names is not None:
        last = evaluated_rows(history).iloc[-1]
        table = metric_rows(np.zeros((len(data.y_test), 1)), data, spec.binary)  # sizes and prevalence
        for metric in TASKS[data.task].metrics:
            table[metric] = [float(last[f"site_{metric}_{name}"]) for name in data.site_names]
        return table
    # a model of its own: the cached evaluator may be in use by a panel's run in another thread
    logits = Evaluator(spec).load(final_weights(history)).logits(data.x_test)
    return metric_rows(logits, data, spec.binary)


def run_scores(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """Runs ``config`` (or reads it from ``results_cache``) and scores its final model: :func:`scores_of`."""
    return scores_of(config, run_experiment(config, results_cache=results_cache, progress=False))


def _constant(config: ExperimentConfig, label_of_site: Callable[[Dataset, Optional[int]], int]) -> pd.DataFrame:
    data = dataset_for(config)
    spec = spec_for(config, data)
    if data.task != "classification":  # one risk score for every patient: ranks nobody (a C-index of 0.5)
        return metric_rows(np.zeros((len(data.y_test), 1)), data)
    predicted = np.zeros(len(data.y_test), int)
    if data.test_sites is None:
        predicted[:] = label_of_site(data, None)
    else:
        for s in range(len(data.site_names)):
            predicted[data.test_sites == s] = label_of_site(data, s)
    if spec.binary:  # a logit of +-1 for the predicted class
        logits = (2.0 * predicted - 1.0).reshape(-1, 1)
    else:
        logits = np.eye(data.num_classes)[predicted]
    return metric_rows(logits, data, spec.binary)


def _majority(labels: np.ndarray, num_classes: int) -> int:
    counts = np.bincount(np.asarray(labels, int), minlength=num_classes)
    return int(np.argmax(counts))  # ties: the lowest label


@register_baseline("majority_site", paper="a constant: what any model must beat")
def majority_site(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """Each site predicts the most common label of its own training records, for every patient (no model)."""
    def label(data, site):
        y = data.y_train if site is None else data.y_train[data.train_sites == site]
        return _majority(y, data.num_classes)

    return _constant(config, label)


@register_baseline("majority_global", paper="a constant: what any model must beat")
def majority_global(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """Every site predicts the most common label of all training records (no model)."""
    return _constant(config, lambda data, site: _majority(data.y_train, data.num_classes))


@register_baseline("constant", paper="a constant: what any model must beat")
def constant(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """One answer for every record, no model: each site's majority class for classification (``majority_site``),
    one risk score for everybody for survival (it orders no pair: a C-index of 0.5)."""
    return majority_site(config)


def _plain(config: ExperimentConfig, **changes) -> ExperimentConfig:
    """The config's training (client optimizer, learning rate, steps, rounds, seed) with FedAvg's plain mean."""
    return config.replace(algorithm="fedavg", **changes)


def local_runs(config: ExperimentConfig) -> list[ExperimentConfig]:
    """Baseline ``local``'s runs: site ``s`` alone (every other site excluded), for each site."""
    data = dataset_for(config)
    if config.partition != "natural" or data.site_names is None:
        raise ConfigError("partition", "baseline 'local' needs the natural partition of a data set with sites")
    return [_plain(config, exclude_clients=tuple(c for c in range(config.num_clients) if c != s),
                   clients_per_round=1) for s in range(config.num_clients)]


@register_baseline("local", paper="Ogier du Terrail et al. 2022 (FLamby's local baselines)", runs=local_runs)
def local(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """Each site trains alone, with the config's client optimizer, learning rate and steps for its rounds (the
    other sites excluded), and is scored on its own test set."""
    rows = [run_scores(run, results_cache=results_cache).iloc[s] for s, run in enumerate(local_runs(config))]
    return pd.DataFrame(rows).reset_index(drop=True)


def pooled_runs(config: ExperimentConfig) -> list[ExperimentConfig]:
    """Baseline ``pooled``'s run: one client holding every site's training records."""
    return [_plain(config, partition="iid", num_clients=1, clients_per_round=1, exclude_clients=())]


@register_baseline("pooled", paper="Ogier du Terrail et al. 2022 (FLamby's pooled baseline)", runs=pooled_runs)
def pooled(config: ExperimentConfig, *, results_cache=None) -> pd.DataFrame:
    """All training records in one place (not possible in practice): one client holding every site's data, with
    the config's client optimizer, learning rate, steps and rounds; scored on each site's test set."""
    return run_scores(pooled_runs(config)[0], results_cache=results_cache)


MethodSpec = Union[ExperimentConfig, str]


def _runs_of(method: MethodSpec, base: Optional[ExperimentConfig], seed: int, changes: dict) -> list:
    """The configs :func:`_method_scores` runs, where they are known before it runs (a baseline registered
    without ``runs``: none, so it trains its own one after the other; a constant one trains none)."""
    if isinstance(method, ExperimentConfig):
        return [method.replace(seed=seed, **changes)]
    runs = BASELINE_RUNS.get(method)
    return runs(base.replace(seed=seed, **changes)) if runs is not None else []


def _method_scores(method: MethodSpec, base: Optional[ExperimentConfig], seed: int, changes: dict,
                   results_cache) -> pd.DataFrame:
    if isinstance(method, ExperimentConfig):
        return run_scores(method.replace(seed=seed, **changes), results_cache=results_cache)
    return BASELINES[method](base.replace(seed=seed, **changes), results_cache=results_cache)


def _applies(method: MethodSpec, base: Optional[ExperimentConfig], field: str) -> bool:
    """Whether ``field`` is a setting of ``method``: a config field or its algorithm's hyperparameter; constant
    baselines (the majority ones) have none."""
    if isinstance(method, str) and (method.startswith("majority") or method == "constant"):
        return False
    config = method if isinstance(method, ExperimentConfig) else _plain(base)
    return field in FIELD_NAMES or field in {f.name for f in config.algorithm_entry.param_fields()}


def _task_of(config: Optional[ExperimentConfig]) -> Task:
    """The task of the config's data set (classification without a config)."""
    from ..data.data import DATASETS

    return TASKS[DATASETS[config.dataset].task] if isinstance(config, ExperimentConfig) else TASKS["classification"]


def _check_metric(metric: str, field: str = "metric", task: Optional[Task] = None) -> None:
    task = TASKS["classification"] if task is None else task
    allowed = tuple(f"validation_{m}" for m in task.metrics)
    if metric not in allowed:
        test = isinstance(metric, str) and (metric.removeprefix("test_") in task.metrics
                                            or metric.startswith(("eval_", "test_")))
        why = (": choosing on the test set would report a number the choice has already seen" if test else "")
        raise ConfigError(field, f"must be a validation metric ({', '.join(allowed)}), got {metric!r}{why}")


def _candidates(space: Mapping[str, Sequence[Any]], budget: Optional[int], seed: int) -> list[dict]:
    """Every point of the grid, or ``budget`` of them drawn without replacement (the same for every method with
    the same grid), in grid order."""
    fields = list(space)
    grid = [dict(zip(fields, (v.item() if isinstance(v, np.generic) else v for v in values)))
            for values in itertools.product(*(space[f] for f in fields))]
    if budget is None or budget >= len(grid):
        return grid
    keep = sorted(np.random.default_rng(seed).choice(len(grid), size=budget, replace=False))
    return [grid[i] for i in keep]


# What a search must not choose: the data the scores are computed on, and the seeds that the comparison repeats over.
NOT_TUNABLE = ("validation_fraction", "test_fraction", "local_test_fraction", "seed", "data_seed", "model_seed",
               "sampling_seed", "noise_seed", "systems_seed", "dataset", "partition", "num_clients", "workers")


def _check_space(space: Mapping[str, Sequence[Any]], budget: Optional[int]) -> None:
    if not isinstance(space, Mapping):
        raise ConfigError("space", f"must map a setting to the values to try, got {type(space).__name__}")
    fixed = [f for f in space if f in NOT_TUNABLE]
    if fixed:
        raise ConfigError("space", f"{fixed[0]!r} cannot be tuned: it decides what the scores are computed on or "
                                   "repeated over, not how a method trains")
    for field, values in space.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
            raise ConfigError("space", f"{field}: must be a non-empty list of values to try, got {values!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError("budget", f"must be a whole number of trials >= 1, got {budget!r}")


def _check_tuning(validation_fraction: float, seeds, field: str) -> list[int]:
    """The validation share must carve patients out of training (never 0: the search would score on the test
    set), and the seeds must be whole, distinct and at least one."""
    if isinstance(validation_fraction, bool) or not isinstance(validation_fraction, (int, float)) or \
            not 0 < validation_fraction < 1:
        raise ConfigError("validation_fraction", "must be between 0 and 1 (a share of each site's training records; "
                                                 f"0 would tune on the test set), got {validation_fraction!r}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, (int, np.integer)) and not
                                                             isinstance(s, bool) for s in seeds):
        raise ConfigError(field, f"must be distinct whole numbers, at least one, got {seeds!r}")
    return [int(s) for s in seeds]


def _tuning_points(method: MethodSpec, base: Optional[ExperimentConfig], space: Mapping[str, Sequence[Any]],
                   budget: Optional[int]) -> tuple[dict, list[dict]]:
    """The part of ``space`` that applies to ``method``, and the candidates drawn from it."""
    own = {f: v for f, v in space.items() if _applies(method, base, f)}
    return own, (_candidates(own, budget, seed=0) if own else [{}])


def _tuning_runs(items: Mapping[str, MethodSpec], base: Optional[ExperimentConfig],
                 space: Mapping[str, Sequence[Any]], budget: Optional[int], seeds: Sequence[int],
                 validation_fraction: float) -> list[ExperimentConfig]:
    """Every run the tuning of ``items`` makes (known ahead: trained side by side)."""
    return [run for method in items.values() for point in _tuning_points(method, base, space, budget)[1]
            for seed in seeds
            for run in _runs_of(method, base, seed, {**point, "validation_fraction": validation_fraction})]


def _tune(method: MethodSpec, base: Optional[ExperimentConfig], space: Mapping[str, Sequence[Any]], *,
          budget: Optional[int], metric: str, seeds: Sequence[int], validation_fraction: float, results_cache,
          label: str) -> tuple[dict, pd.DataFrame]:
    own, candidates = _tuning_points(method, base, space, budget)
    name = metric.removeprefix("validation_")
    rows = []
    for point in candidates:
        values = [_method_scores(method, base, seed, {**point, "validation_fraction": validation_fraction},
                                 results_cache)[name].mean() for seed in seeds]
        rows.append({"method": label, **point, metric: float(np.nanmean(values)) if not np.all(np.isnan(values))
                     else np.nan, "trials": len(candidates) if own else 0})
    table = pd.DataFrame(rows)
    if table[metric].isna().all():
        raise ConfigError("space", f"{label}: every candidate's {metric} is undefined (a validation split with one "
                                   "class, or training that diverged): nothing to choose from")
    order = table[metric].fillna(-np.inf).to_numpy()
    best = int(np.argmax(order))  # ties: the first candidate in grid order
    table["chosen"] = np.arange(len(table)) == best
    return candidates[best], table


def tune(config: ExperimentConfig, space: Mapping[str, Sequence[Any]], *, budget: Optional[int] = None,
         metric: Optional[str] = None, seeds: Sequence[int] = (0,),
         validation_fraction: float = DEFAULT_VALIDATION_FRACTION, baseline: Optional[str] = None,
         results_cache=None) -> tuple[ExperimentConfig, pd.DataFrame]:
    """The settings of ``space`` (setting -> values to try) that score best on ``metric``, measured on a
    validation split of each site's training records (``validation_fraction``), never on the test set.

    ``budget``: at most that many candidates, drawn from the grid with a fixed generator (the same draw for
    every method with the same grid), so that methods compared are tuned with the same number of trials.
    ``baseline``: tune that registered baseline on ``config`` instead of ``config``'s own algorithm.
    ``metric``: default ``validation_<the task's select_by>`` (classification: balanced accuracy).
    Returns the chosen config and the search's table (one row per candidate, its score, ``chosen``).
    """
    task = _task_of(config)
    metric = f"validation_{task.select_by}" if metric is None else metric
    _check_metric(metric, task=task)
    _check_space(space, budget)
    seeds = _check_tuning(validation_fraction, seeds, "seeds")
    method: MethodSpec = config if baseline is None else BASELINES.entry(baseline).name
    unknown = [f for f in space if not _applies(method, config, f)]
    if unknown:
        raise ConfigError("space", f"{unknown[0]!r} is not a setting of {baseline or config.algorithm!r}")
    runs = _tuning_runs({"": method}, config, space, budget, seeds, validation_fraction)
    with spread(runs, results_cache) as done:
        best, table = _tune(method, config, space, budget=budget, metric=metric, seeds=seeds,
                            validation_fraction=validation_fraction, results_cache=done.cache,
                            label=baseline or config.algorithm)
    return config.replace(**best), table


def _as_methods(methods) -> dict[str, MethodSpec]:
    if isinstance(methods, Mapping):
        items = dict(methods)
    elif isinstance(methods, (list, tuple)):
        items = {}
        for m in methods:
            label = m if isinstance(m, str) else getattr(m, "algorithm", repr(m))
            if label in items:
                raise ConfigError("methods", f"two methods share the label {label!r}; pass a dict of label -> method")
            items[label] = m
    else:
        raise ConfigError("methods", f"must be a dict of label -> ExperimentConfig or baseline name (or a list), "
                                     f"got {type(methods).__name__}")
    if not items:
        raise ConfigError("methods", "must name at least one method")
    for label, method in items.items():
        if isinstance(method, str) and method not in BASELINES:
            raise ConfigError("methods", f"{label}: {method!r} is not a registered baseline "
                                         f"({', '.join(BASELINES.names())})")
        if not isinstance(method, (str, ExperimentConfig)):
            raise ConfigError("methods", f"{label}: must be an ExperimentConfig or a baseline name "
                                         f"({', '.join(BASELINES.names())}), got {type(method).__name__}")
    return items


class Comparison(pd.DataFrame):
    """:func:`compare`'s table (one row per method and metric), carrying what it was computed from:
    ``scores`` (method, seed, site, each metric, num_test, prevalence), ``tuning`` (every trial) and ``chosen``
    (label -> the settings chosen). Kept as pandas metadata, not in ``attrs``, so tables concatenate."""

    _metadata = ["scores", "tuning", "chosen", "settings"]

    @property
    def _constructor(self):
        return Comparison

    def per_site(self) -> "Comparison":
        """The same comparison one row per method, metric and site (each site's test size and prevalence beside
        it), from the same scores: nothing is run again."""
        table = Comparison(summarize_scores(self.scores, **{**self.settings, "by_site": True}))
        table.scores, table.tuning, table.chosen, table.settings = self.scores, self.tuning, self.chosen, self.settings
        return table


def compare(methods, *, seeds: Sequence[int] = (0, 1, 2), base: Optional[ExperimentConfig] = None,
            reference: Optional[str] = None, metrics: Optional[Sequence[str]] = None, by_site: bool = False,
            space: Optional[Mapping[str, Sequence[Any]]] = None, budget: Optional[int] = None,
            tune_metric: Optional[str] = None, tune_seeds: Optional[Sequence[int]] = None,
            validation_fraction: float = DEFAULT_VALIDATION_FRACTION, interval: str = "t",
            confidence: float = 0.95, results_cache=None) -> pd.DataFrame:
    """Every method at every seed, one row per method and metric (and site, with ``by_site``).

    ``methods``: label -> an ExperimentConfig, or the name of a registered baseline applied to ``base``.
    Columns: ``method``, ``metric``, ``mean`` over seeds of the mean over sites (sites where the metric is
    undefined left out; ``sites`` says how many count), ``ci_low``/``ci_high`` (``confidence``, ``interval``:
    Student's t or the percentile bootstrap over seeds, named in ``interval``), ``n`` seeds, and against
    ``reference`` the difference paired over the same seeds: ``diff``, ``diff_ci_low``, ``diff_ci_high``,
    ``p_value`` (paired t-test). With ``space`` every method is tuned first on validation data with the same
    ``budget`` of trials (:func:`tune`; on ``tune_seeds``, default the first seed).

    ``metrics`` default to the data's task's (classification: accuracy, balanced accuracy, AUC; survival: the
    C-index); ``tune_metric`` to ``validation_<the task's select_by>``.

    Returns a :class:`Comparison`: the table, with ``.scores``, ``.tuning``, ``.chosen`` and ``.per_site()``.
    """
    items = _as_methods(methods)
    task = _task_of(next((m for m in items.values() if isinstance(m, ExperimentConfig)), base))
    metrics = task.metrics if metrics is None else metrics
    tune_metric = f"validation_{task.select_by}" if tune_metric is None else tune_metric
    if any(isinstance(m, str) for m in items.values()) and not isinstance(base, ExperimentConfig):
        raise ConfigError("base", "must be an ExperimentConfig when a method is a baseline name")
    if reference is not None and reference not in items:
        raise ConfigError("reference", f"must be one of the methods ({', '.join(items)}), got {reference!r}")
    bad = [m for m in metrics if m not in task.metrics]
    if isinstance(metrics, str) or bad or not metrics:
        raise ConfigError("metrics", f"must be a list among {', '.join(task.metrics)}, got {metrics!r}")
    _check_summary(interval, confidence)
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ConfigError("seeds", f"must be distinct whole numbers, at least one, got {seeds!r}")
    seeds = [int(s) for s in seeds]
    if space is None:
        given = {"budget": budget, "tune_seeds": tune_seeds}
        ignored = [k for k, v in given.items() if v is not None]
        if ignored:
            raise ConfigError(ignored[0], "means nothing without space (the settings to tune)")
    else:
        _check_metric(tune_metric, "tune_metric", task)
        _check_space(space, budget)
        tune_seeds = _check_tuning(validation_fraction, seeds[:1] if tune_seeds is None else tune_seeds, "tune_seeds")
    chosen: dict[str, dict] = {label: {} for label in items}
    tuning = []
    if space is not None:
        runs = _tuning_runs(items, base, space, budget, tune_seeds, validation_fraction)
        with spread(runs, results_cache) as done:
            for label, method in items.items():
                chosen[label], table = _tune(method, base, space, budget=budget, metric=tune_metric,
                                             seeds=tune_seeds, validation_fraction=validation_fraction,
                                             results_cache=done.cache, label=label)
                tuning.append(table)
    runs = [run for label, method in items.items() for seed in seeds
            for run in _runs_of(method, base, seed, chosen[label])]
    with spread(runs, results_cache) as done:
        frames = [_method_scores(method, base, seed, chosen[label], done.cache).assign(method=label, seed=seed)
                  for label, method in items.items() for seed in seeds]
    scores = pd.concat(frames, ignore_index=True)[["method", "seed", "site", *task.metrics, "num_test", "prevalence"]]
    settings = dict(reference=reference, metrics=list(metrics), interval=interval, confidence=confidence)
    table = Comparison(summarize_scores(scores, by_site=by_site, **settings))
    table.scores, table.chosen, table.settings = scores, chosen, settings
    table.tuning = pd.concat(tuning, ignore_index=True) if tuning else pd.DataFrame()
    return table


def _check_summary(interval: str, confidence: float) -> None:
    if interval not in INTERVALS:
        raise ConfigError("interval", f"must be one of {', '.join(INTERVALS)}, got {interval!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("confidence", f"must be a number between 0 and 1 (0.95: a 95 % interval), got "
                                        f"{confidence!r}")


def summarize_scores(scores: pd.DataFrame, *, reference: Optional[str] = None, metrics: Sequence[str] = METRICS,
                     by_site: bool = False, interval: str = "t", confidence: float = 0.95) -> pd.DataFrame:
    """:func:`compare`'s table from its per-seed, per-site scores (method, seed, site, metrics):
    :func:`fedlab.summarize_paired` over the seeds of each method's mean over its sites (sites where a metric is
    undefined left out: ``sites`` counts those that count), or per site with ``by_site`` (with each site's test
    size and prevalence)."""
    _check_summary(interval, confidence)
    keys = ["method", "site"] if by_site else ["method"]
    table = summarize_paired(scores, keys, list(metrics), reference=reference, interval_method=interval,
                             confidence=confidence)
    defined = scores.groupby([*keys, "seed"], sort=False)[list(metrics)].count().groupby(level=keys, sort=False).max()
    table["sites"] = [int(defined.loc[tuple(r[k] for k in keys) if by_site else r["method"], r["metric"]])
                      for _, r in table.iterrows()]
    if by_site:
        info = scores.drop_duplicates(["method", "site"]).set_index(["method", "site"])
        table["num_test"] = [int(info.loc[(r.method, r.site), "num_test"]) for r in table.itertuples()]
        table["prevalence"] = [float(info.loc[(r.method, r.site), "prevalence"]) for r in table.itertuples()]
    front = [*keys, "metric", "mean", "ci_low", "ci_high", "n", "interval", "sites"]
    return table[front + [c for c in table.columns if c not in front]]
