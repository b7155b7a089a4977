"""Fed-TCGA-BRCA: survival of breast-cancer patients across six regions, FLamby's benchmark reproduced.

Ogier du Terrail et al. (2022), "FLamby: Datasets and Benchmarks for Cross-Silo Federated Learning in Realistic
Healthcare Settings", NeurIPS Datasets and Benchmarks; the data prepared by Andreux et al. (2020) from TCGA-BRCA's
clinical records (GDC open access). As FLamby's code runs (owkin/FLamby, ``benchmarks/fed_benchmark.py`` and
``flamby/config_tcga_brca.json``):

* data: ``fed_tcga_brca``, FLamby's fixed split (866 training, 222 test patients), six regions as clients, 39 raw
  features (age in years, the rest one-hot);
* model: a linear Cox model (``cox_linear``: nn.Linear(39, 1)'s initialisation); loss the Cox partial likelihood
  of each batch (its patients are the risk set; Breslow's rule for tied times, where FLamby orders them by their
  position in the batch), the mean over the batch's patients; metric Harrell's C-index on each region's test set;
* federated: 5 rounds of 100 client SGD steps of batch 8 (``get_nb_max_rounds(100)``), batches going on across
  rounds (``carry_epochs``), regions weighted by training-set size (``client_weighting="dataset"``), each
  strategy's hyperparameters from FLamby's config (:data:`TCGA_STRATEGIES`);
* baselines: Adam (lr 0.1, eps 1e-8) for 30 epochs of batch 8, on one region (``local_<region>``) or on all
  training patients (``pooled``), every model tested on the six regions.

Departures: PyTorch's random streams cannot be copied (seeds 0-4 stand for FLamby's 42-46); SCAFFOLD's server
control variate is the paper's uniform mean of the clients' (FLamby weights it by data size); the baselines' Adam is
Keras', whose epsilon is added to the square root of the second moment before its bias correction, PyTorch's after.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..experiment.clients import dataset_for, spec_for
from .comparison import metric_rows
from ..experiment.config import ExperimentConfig
from .crosssilo import train_centralized
from ..data.data import TCGA_BRCA_REGIONS, Dataset
from ..experiment.evaluation import Evaluator
from ..experiment.pool import spread
from ..experiment.runner import final_weights, run_experiment
from ..reporting.stats import summary_table
from ..data.survival import c_index, comparable_pairs, kaplan_meier
from ..core.validation import ConfigError

# flamby/config_tcga_brca.json (learning_rate -> client_lr, server_learning_rate -> server_lr, tau -> server_epsilon;
# FedAdagrad's beta2 is unused by Adagrad).
TCGA_STRATEGIES = {
    "fedavg": {"client_lr": 0.1},
    "fedprox": {"client_lr": 0.1, "mu": 0.1},
    "fedadam": {"client_lr": 0.01, "server_lr": 0.1, "beta1": 0.9, "beta2": 0.999, "server_epsilon": 1e-8},
    "fedyogi": {"client_lr": 0.01, "server_lr": 0.1, "beta1": 0.9, "beta2": 0.999, "server_epsilon": 1e-8},
    "fedadagrad": {"client_lr": 0.01, "server_lr": 1.0, "beta1": 0.9, "server_epsilon": 1e-8},
    "scaffold": {"client_lr": 0.01, "server_lr": 1.0},
}
FLAMBY_TCGA_METHODS = {"Pooled Training": "pooled", **{f"Local {k}": f"local_{r}" for k, r in
                                                       enumerate(TCGA_BRCA_REGIONS)},
                       "FedAvg100": "fedavg", "FedProx100": "fedprox", "FedAdam100": "fedadam",
                       "FedYogi100": "fedyogi", "FedAdagrad100": "fedadagrad", "Scaffold100": "scaffold"}
# FLamby's published C-index (flamby_tcga_brca_results, seeds 42-46): the mean over the six client_test sets at each
# seed; tests/test_tcga.py recomputes them from the files.
FLAMBY_TCGA_SEEDS = {
    "pooled": (0.7798, 0.7408, 0.6173, 0.6970, 0.5448),
    "local_northeast": (0.7754, 0.6791, 0.7054, 0.7297, 0.7516),
    "local_south": (0.7604, 0.6919, 0.7470, 0.7547, 0.7940),
    "local_west": (0.5240, 0.4661, 0.4811, 0.5243, 0.4928),
    "local_midwest": (0.6216, 0.6494, 0.7703, 0.6290, 0.6106),
    "local_europe": (0.7350, 0.7572, 0.6879, 0.6911, 0.6893),
    "local_canada": (0.6860, 0.6929, 0.6948, 0.7020, 0.6810),
    "fedavg": (0.8117, 0.4081, 0.8148, 0.8203, 0.8047),
    "fedprox": (0.7987, 0.4296, 0.8075, 0.8283, 0.7811),
    "fedadam": (0.8073, 0.7769, 0.8408, 0.8362, 0.8146),
    "fedyogi": (0.8073, 0.7769, 0.8408, 0.8362, 0.8146),
    "fedadagrad": (0.8195, 0.8163, 0.8088, 0.8090, 0.8111),
    "scaffold": (0.6899, 0.7103, 0.6578, 0.7317, 0.6448),
}
# (mean, std with ddof=1) over FLamby's five seeds, as its README gives them
FLAMBY_TCGA_PUBLISHED = {m: (float(np.mean(v)), float(np.std(v, ddof=1))) for m, v in FLAMBY_TCGA_SEEDS.items()}
COLLAPSED = 0.6  # a mean C-index below this at a seed: the model ranks little better than a constant's 0.5
POOLED_TEST = "pooled test"  # the site label of the scores on all 222 test patients at once
BASELINE_LR, BASELINE_EPOCHS = 0.1, 30  # benchmarks/fed_benchmark.py: LR and NUM_EPOCHS_POOLED, Adam


def tcga_config(algorithm: str = "fedavg", **changes) -> ExperimentConfig:
    """A federated run under FLamby's Fed-TCGA-BRCA protocol with its hyperparameters for ``algorithm``."""
    if algorithm not in TCGA_STRATEGIES:
        raise ConfigError("algorithm", f"FLamby's TCGA-BRCA protocol has {', '.join(TCGA_STRATEGIES)}; "
                                       f"got {algorithm!r}")
    values = dict(dataset="fed_tcga_brca", partition="natural", num_clients=6, clients_per_round=6,
                  model="cox_linear", algorithm=algorithm, batch_size=8, local_steps=100, carry_epochs=True,
                  client_weighting="dataset", rounds=5, eval_every=5, **TCGA_STRATEGIES[algorithm])
    values.update(changes)
    return ExperimentConfig(**values)


def model_scores(outputs: np.ndarray, data: Dataset) -> pd.DataFrame:
    """A model's C-index on each region's test set and on all test patients at once (site ``"pooled test"``),
    with the test size and the share of patients whose death was seen (``prevalence``)."""
    table = metric_rows(np.asarray(outputs), data)
    y = np.asarray(data.y_test)
    pooled = {"site": POOLED_TEST, "c_index": c_index(outputs, y), "num_test": len(y),
              "prevalence": float(y[:, 0].astype(np.float64).mean())}
    return pd.concat([table, pd.DataFrame([pooled])], ignore_index=True)


def tcga_baselines(seeds: Sequence[int], *, epochs: int = BASELINE_EPOCHS, batch_size: int = 8,
                   lr: float = BASELINE_LR) -> pd.DataFrame:
    """FLamby's ``pooled`` and ``local_<region>`` baselines: one row per (method, seed, site)."""
    data = dataset_for(tcga_config())
    spec = spec_for(tcga_config(), data)
    groups = {f"local_{name}": (data.x_train[data.train_sites == s], data.y_train[data.train_sites == s])
              for s, name in enumerate(data.site_names)}
    groups = {"pooled": (data.x_train, data.y_train), **groups}
    rows = []
    for seed in seeds:
        for method, (x, y) in groups.items():
            model = train_centralized(spec, x, y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                      epsilon=1e-8)
            outputs = model(data.x_test, training=False).numpy()
            rows.append(model_scores(outputs, data).assign(method=method, seed=seed))
    return _ordered(pd.concat(rows, ignore_index=True))


def federated_scores(config: ExperimentConfig, *, method: Optional[str] = None, results_cache=None) -> pd.DataFrame:
    """One federated run's final global model on each region's test set and on all test patients."""
    history = run_experiment(config, results_cache=results_cache, progress=False)
    data = dataset_for(config)
    outputs = Evaluator(spec_for(config, data)).load(final_weights(history)).logits(data.x_test)
    return _ordered(model_scores(outputs, data).assign(method=method or config.algorithm, seed=config.seed))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    return table[["method", "seed", "site", "c_index", "num_test", "prevalence"]]


def tcga_benchmark(seeds: Sequence[int], *, algorithms: Sequence[str] = tuple(TCGA_STRATEGIES),
                   baseline_epochs: int = BASELINE_EPOCHS, results_cache=None, **changes) -> pd.DataFrame:
    """Per-region scores of FLamby's protocol: the baselines and every strategy, for each seed (method, seed,
    site, c_index, num_test, prevalence; site ``"pooled test"``: all test patients at once)."""
    frames = [tcga_baselines(seeds, epochs=baseline_epochs)]
    runs = [(algorithm, tcga_config(algorithm, seed=seed, **changes)) for algorithm in algorithms for seed in seeds]
    with spread([config for _, config in runs], results_cache) as done:
        frames += [federated_scores(config, method=algorithm, results_cache=done.cache) for algorithm, config in runs]
    return pd.concat(frames, ignore_index=True)


def per_seed(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed): the mean C-index over the regions where it is defined (FLamby's headline) and the
    C-index on all test patients."""
    regions = scores[scores.site != POOLED_TEST]
    table = regions.groupby(["method", "seed"], sort=False).c_index.mean().rename("c_index").reset_index()
    pooled = scores[scores.site == POOLED_TEST].set_index(["method", "seed"]).c_index.rename("pooled_test_c_index")
    return table.join(pooled, on=["method", "seed"])


def published_tcga(results_dir) -> pd.DataFrame:
    """FLamby's per-seed result files as a table like :func:`tcga_benchmark`'s: method, seed, site, c_index."""
    rows = []
    for path in sorted(pathlib.Path(results_dir).glob("*.csv")):
        table = pd.read_csv(path)
        table = table[table["Method"].isin(FLAMBY_TCGA_METHODS)]
        for r in table.itertuples():
            site = POOLED_TEST if r.Test == "Pooled Test" else TCGA_BRCA_REGIONS[int(r.Test.rsplit("_", 1)[1])]
            rows.append({"method": FLAMBY_TCGA_METHODS[r.Method], "seed": int(r.seed), "site": site,
                         "c_index": float(r.Metric)})
    return pd.DataFrame(rows)


def reproduction_table(scores: pd.DataFrame) -> pd.DataFrame:
    """fedlab against FLamby's published numbers, one row per method: each one's mean and std over seeds of the
    mean C-index over regions, the difference and its 95 % interval (Welch: the seeds are not matched, PyTorch's
    streams cannot be copied), ``half_width`` of that interval and ``within`` (it holds 0: not distinguishable at
    that width, which for a method with a collapsed seed is wide), and how many seeds collapsed (mean C-index below
    :data:`COLLAPSED`) in each; then the same means over the seeds that did not collapse (``typical_*``): a
    comparison FLamby's one collapsed FedAvg and FedProx seed does not widen. A seed whose model diverged (NaN)
    counts in ``diverged`` and is left out of the means."""
    from scipy import stats

    ours = per_seed(scores)
    rows = []
    for method, published in FLAMBY_TCGA_SEEDS.items():
        values = ours.loc[ours.method == method, "c_index"].to_numpy(dtype=float)
        if len(values) == 0:
            continue
        theirs = np.asarray(published)
        finite = values[np.isfinite(values)]
        n, m = len(finite), len(theirs)
        diff = float(finite.mean() - theirs.mean()) if n else np.nan
        se2 = (finite.var(ddof=1) / n if n > 1 else np.nan, theirs.var(ddof=1) / m)
        dof = sum(se2) ** 2 / (se2[0] ** 2 / (n - 1) + se2[1] ** 2 / (m - 1)) if n > 1 else np.nan
        half = float(stats.t.ppf(0.975, dof) * np.sqrt(sum(se2))) if n > 1 else np.nan
        kept, kept_theirs = finite[finite >= COLLAPSED], theirs[theirs >= COLLAPSED]
        rows.append({"method": method, "fedlab": float(finite.mean()) if n else np.nan,
                     "fedlab_std": float(finite.std(ddof=1)) if n > 1 else np.nan, "flamby": float(theirs.mean()),
                     "flamby_std": float(theirs.std(ddof=1)), "difference": diff, "diff_ci_low": diff - half,
                     "diff_ci_high": diff + half, "half_width": half,
                     "within": bool(abs(diff) <= half) if n > 1 else None,
                     "fedlab_collapsed": int((finite < COLLAPSED).sum()),
                     "flamby_collapsed": int((theirs < COLLAPSED).sum()),
                     "typical_fedlab": float(kept.mean()) if len(kept) else np.nan,
                     "typical_flamby": float(kept_theirs.mean()) if len(kept_theirs) else np.nan,
                     "typical_difference": (float(kept.mean() - kept_theirs.mean()) if len(kept) and len(kept_theirs)
                                            else np.nan),
                     "seeds": len(values), "diverged": int(len(values) - n)})
    return pd.DataFrame(rows)


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % t-interval over seeds of each method's mean C-index over regions
    (:func:`fedlab.reporting.stats.summary_table`)."""
    return summary_table(per_seed(scores), ["method"], "c_index")


def region_summary(data: Dataset) -> pd.DataFrame:
    """Per region: training and test patients, the deaths seen in each (the rest are censored: alive at their last
    follow-up), the pairs of test patients a C-index compares (its resolution is 1 / pairs), and the median time
    observed (to death or to the last follow-up), in years."""
    rows = []
    for s, name in enumerate(data.site_names):
        train, test = data.y_train[data.train_sites == s], data.y_test[data.test_sites == s]
        both = np.r_[train, test].astype(np.float64)
        rows.append({"region": name, "train_patients": len(train), "train_deaths": int(train[:, 0].sum()),
                     "test_patients": len(test), "test_deaths": int(test[:, 0].sum()),
                     "test_comparable_pairs": comparable_pairs(test),
                     "deaths_percent": round(100 * float(both[:, 0].mean()), 1),
                     "median_time_observed_years": round(float(np.median(both[:, 1])) / 365.25, 1)})
    return pd.DataFrame(rows)


def region_survival(data: Dataset) -> pd.DataFrame:
    """Kaplan-Meier survival of each region's patients (training and test), in years: region, time_years,
    at_risk, events, survival (draw it with :func:`fedlab.plot_kaplan_meier`)."""
    frames = []
    for s, name in enumerate(data.site_names):
        y = np.r_[data.y_train[data.train_sites == s], data.y_test[data.test_sites == s]]
        curve = kaplan_meier(y[:, 1], y[:, 0])
        frames.append(curve.assign(region=name, time_years=curve["time"] / 365.25))
    return pd.concat(frames, ignore_index=True)[["region", "time_years", "at_risk", "events", "survival"]]


def age_only_scores(data: Dataset) -> pd.DataFrame:
    """Age alone as the risk score (no training): the reference a learned model must beat, like a constant's 0.5."""
    age = data.x_test[:, list(data.feature_names).index("age_at_index")] if data.feature_names else data.x_test[:, 0]
    return model_scores(age.astype(np.float64), data).assign(method="age alone", seed=0)


def region_dropout(algorithm: str, seeds: Sequence[int], *, results_cache=None, **changes) -> pd.DataFrame:
    """fedlab's own question: what each region's absence costs. For every region left out of training
    (``exclude_clients``) and for none, the final model's C-index on every region's test set: method
    ``"without <region>"`` or ``"all regions"``, seed, site, c_index."""
    runs = []
    for left_out in (None, *range(len(TCGA_BRCA_REGIONS))):
        label = "all regions" if left_out is None else f"without {TCGA_BRCA_REGIONS[left_out]}"
        for seed in seeds:
            config = tcga_config(algorithm, seed=seed, **changes)
            if left_out is not None:
                config = config.replace(exclude_clients=(left_out,), clients_per_round=len(TCGA_BRCA_REGIONS) - 1)
            runs.append((label, config))
    with spread([config for _, config in runs], results_cache) as done:
        frames = [federated_scores(config, method=label, results_cache=done.cache) for label, config in runs]
    return pd.concat(frames, ignore_index=True)


def with_references(scores: pd.DataFrame, data: Dataset) -> pd.DataFrame:
    """Per (method, seed) mean C-index over the regions (:func:`per_seed`), with two references added at every seed:
    ``"constant"`` (one risk score for everybody: 0.5 wherever a C-index exists) and ``"age alone"`` (the older, the
    riskier; no training), so that methods can be compared with them paired over the seeds."""
    table = per_seed(scores)
    constant = model_scores(np.zeros(len(data.y_test)), data).assign(method="constant", seed=0)
    references = per_seed(pd.concat([constant, age_only_scores(data)], ignore_index=True))
    rows = [references.assign(seed=seed) for seed in table.seed.unique()]
    return pd.concat([table, *rows], ignore_index=True)


def dropout_cost(dropout: pd.DataFrame) -> pd.DataFrame:
    """What leaving a region out of training costs (:func:`region_dropout`'s scores), paired over the seeds with
    the federation of all six: for each region left out, the C-index on that region's own test patients
    (``site="left-out region"``) and the mean over the five others (``"other regions"``); method ``"without
    <region>"`` against ``"all regions"`` (:func:`fedlab.summarize_paired`: mean, interval, difference)."""
    from .analysis import summarize_paired

    scores = dropout[dropout.site != POOLED_TEST]
    everyone = scores[scores.method == "all regions"]
    rows = []
    for region in TCGA_BRCA_REGIONS:
        without = scores[scores.method == f"without {region}"]
        if without.empty:
            continue
        for label, table in ((f"without {region}", without), ("all regions", everyone)):
            for seed, group in table.groupby("seed"):
                own = group.loc[group.site == region, "c_index"]
                others = group.loc[group.site != region, "c_index"]
                rows += [{"region": region, "method": label, "seed": seed, "site": "left-out region",
                          "c_index": float(own.mean())},
                         {"region": region, "method": label, "seed": seed, "site": "other regions",
                          "c_index": float(others.mean())}]
    table = summarize_paired(pd.DataFrame(rows), ["region", "site", "method"], "c_index", reference="all regions")
    return table.assign(p_holm=holm(table["p_value"]))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN ones, e.g. the reference's, left out and kept NaN):
    the k-th smallest of m is multiplied by m - k + 1, made non-decreasing, capped at 1. A difference counts only
    where its adjusted p is below 0.05: the family's chance of one false finding stays below 5 %."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    known = np.flatnonzero(np.isfinite(p))
    order = known[np.argsort(p[known], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out
