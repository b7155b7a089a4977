"""Fed-TCGA-BRCA: survival of breast-cancer patients across six regions, FLamby's benchmark reproduced.

Ogier du Terrail et al. (2022), "FLamby: Datasets and Benchmarks for Cross-Silo Federated Learning in Realistic
Healthcare Settings", NeurIPS Datasets and Benchmarks; the data prepared by Andreux et al. (2020) from TCGA-BRCA's
clinical records (GDC open access). As FLamby's code runs (owkin/FLamby, ``benchmarks/fed_benchmark.py`` and
``flamby/config_tcga_brca.json``):

* data: ``fed_tcga_brca``, FLamby's fixed split (866 training, 222 test patients), six regions as clients, 39 raw
  features (age in years, the rest one-hot);
* model: a linear Cox model (``cox_linear``: nn.Linear(39, 1)'s initialisation); loss the Cox partial likelihood
  of each batch (its patients are the risk set; Breslow ties where FLamby orders tied times by position, 0.2 % of
  batches differ), the mean over the batch's patients; metric Harrell's C-index on each region's test set;
* federated: 5 rounds of 100 client SGD steps of batch 8 (``get_nb_max_rounds(100)``), batches going on across
  rounds (``carry_epochs``), regions weighted by training-set size (``client_weighting="dataset"``), each
  strategy's hyperparameters from FLamby's config (:data:`TCGA_STRATEGIES`);
* baselines: Adam (lr 0.1, eps 1e-8) for 30 epochs of batch 8, on one region (``local_<region>``) or on all
  training patients (``pooled``), every model tested on the six regions.

Departures that cannot be avoided: PyTorch's random streams (seeds 0-4 stand for FLamby's 42-46); SCAFFOLD's
server control variate is the paper's uniform mean of the clients' (FLamby weights it by data size).
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .clients import dataset_for, spec_for
from .comparison import metric_rows
from .config import ExperimentConfig
from .crosssilo import train_centralized
from .data import TCGA_BRCA_REGIONS, Dataset
from .evaluation import Evaluator
from .runner import final_weights, run_experiment
from .stats import summary_table
from .survival import c_index, kaplan_meier

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
# FLamby's published C-index (flamby_tcga_brca_results, seeds 42-46): the mean over the six client_test sets per
# seed, then mean and std (ddof=1) over the five seeds; tests/test_tcga.py recomputes them from the files.
FLAMBY_TCGA_PUBLISHED = {
    "pooled": (0.6759, 0.0949), "local_northeast": (0.7282, 0.0378), "local_south": (0.7496, 0.0369),
    "local_west": (0.4977, 0.0260), "local_midwest": (0.6562, 0.0654), "local_europe": (0.7121, 0.0320),
    "local_canada": (0.6913, 0.0081), "fedavg": (0.7319, 0.1811), "fedprox": (0.7290, 0.1683),
    "fedadam": (0.8152, 0.0256), "fedyogi": (0.8152, 0.0256), "fedadagrad": (0.8129, 0.0048),
    "scaffold": (0.6869, 0.0360),
}
POOLED_TEST = "pooled test"  # the site label of the scores on all 222 test patients at once
BASELINE_LR, BASELINE_EPOCHS = 0.1, 30  # benchmarks/fed_benchmark.py: LR and NUM_EPOCHS_POOLED, Adam


def tcga_config(algorithm: str = "fedavg", **changes) -> ExperimentConfig:
    """A federated run under FLamby's Fed-TCGA-BRCA protocol with its hyperparameters for ``algorithm``."""
    if algorithm not in TCGA_STRATEGIES:
        raise ValueError(f"algorithm: FLamby's TCGA-BRCA protocol has {', '.join(TCGA_STRATEGIES)}; got {algorithm!r}")
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
              "prevalence": float(y[:, 0].mean())}
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
    for algorithm in algorithms:
        for seed in seeds:
            frames.append(federated_scores(tcga_config(algorithm, seed=seed, **changes), method=algorithm,
                                           results_cache=results_cache))
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
    mean C-index over regions, the difference, the 95 % interval of the difference (Welch: the seeds are not
    matched, PyTorch's streams cannot be copied), whether it holds 0, and how many of fedlab's seeds scored below 0.6
    ("seeds_below_0.6": FLamby's FedAvg and FedProx collapsed to about 0.41 at one of five seeds)."""
    from scipy import stats

    ours = per_seed(scores)
    rows = []
    for method, (mean, std) in FLAMBY_TCGA_PUBLISHED.items():
        values = ours.loc[ours.method == method, "c_index"].to_numpy()
        if len(values) == 0:
            continue
        n, m = len(values), 5
        diff = float(values.mean()) - mean
        sd = float(values.std(ddof=1)) if n > 1 else np.nan
        se2 = (sd ** 2 / n if n > 1 else np.nan, std ** 2 / m)
        se = float(np.sqrt(sum(se2)))
        dof = sum(se2) ** 2 / (se2[0] ** 2 / (n - 1) + se2[1] ** 2 / (m - 1)) if n > 1 else np.nan
        half = float(stats.t.ppf(0.975, dof) * se) if n > 1 else np.nan
        rows.append({"method": method, "fedlab": float(values.mean()), "fedlab_std": sd, "flamby": mean,
                     "flamby_std": std, "difference": diff, "diff_ci_low": diff - half, "diff_ci_high": diff + half,
                     "within": bool(abs(diff) <= half) if n > 1 else None,
                     "seeds_below_0.6": int((values < 0.6).sum()), "seeds": n})
    return pd.DataFrame(rows)


def summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95 % t-interval over seeds of each method's mean C-index over regions
    (:func:`fedlab.stats.summary_table`)."""
    return summary_table(per_seed(scores), ["method"], "c_index")


def region_summary(data: Dataset) -> pd.DataFrame:
    """Per region: training and test patients, deaths seen in each, and the share of patients whose death was
    seen (the rest are censored: alive at their last follow-up)."""
    rows = []
    for s, name in enumerate(data.site_names):
        train, test = data.y_train[data.train_sites == s], data.y_test[data.test_sites == s]
        both = np.r_[train, test]
        rows.append({"region": name, "train_patients": len(train), "train_deaths": int(train[:, 0].sum()),
                     "test_patients": len(test), "test_deaths": int(test[:, 0].sum()),
                     "deaths_percent": round(100 * float(both[:, 0].mean()), 1),
                     "median_follow_up_years": round(float(np.median(both[:, 1])) / 365.25, 1)})
    return pd.DataFrame(rows)


def region_survival(data: Dataset) -> pd.DataFrame:
    """Kaplan-Meier survival of each region's patients (training and test), in years: region, time_years,
    at_risk, events, survival."""
    frames = []
    for s, name in enumerate(data.site_names):
        y = np.r_[data.y_train[data.train_sites == s], data.y_test[data.test_sites == s]]
        curve = kaplan_meier(y[:, 1], y[:, 0])
        frames.append(curve.assign(region=name, time_years=curve["time"] / 365.25))
    return pd.concat(frames, ignore_index=True)[["region", "time_years", "at_risk", "events", "survival"]]


def plot_kaplan_meier(curves: pd.DataFrame, *, ax=None):
    """Each region's Kaplan-Meier curve (:func:`region_survival`) as a step function; draws, never saves."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    for i, (region, curve) in enumerate(curves.groupby("region", sort=False)):
        ax.step(np.r_[0.0, curve.time_years], np.r_[1.0, curve.survival], where="post", color=f"C{i}",
                label=f"{region} (n={int(curve.at_risk.iloc[0])})")
    ax.set_xlabel("years since diagnosis")
    ax.set_ylabel("share still alive (Kaplan-Meier)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax.figure, ax, curves


def age_only_scores(data: Dataset) -> pd.DataFrame:
    """Age alone as the risk score (no training): the reference a learned model must beat, like a constant's 0.5."""
    age = data.x_test[:, list(data.feature_names).index("age_at_index")] if data.feature_names else data.x_test[:, 0]
    return model_scores(age.astype(np.float64), data).assign(method="age alone", seed=0)


def region_dropout(algorithm: str, seeds: Sequence[int], *, results_cache=None, **changes) -> pd.DataFrame:
    """fedlab's own question: what each region's absence costs. For every region left out of training
    (``exclude_clients``) and for none, the final model's C-index on every region's test set: method
    ``"without <region>"`` or ``"all regions"``, seed, site, c_index."""
    frames = []
    for left_out in (None, *range(len(TCGA_BRCA_REGIONS))):
        label = "all regions" if left_out is None else f"without {TCGA_BRCA_REGIONS[left_out]}"
        for seed in seeds:
            config = tcga_config(algorithm, seed=seed, **changes)
            if left_out is not None:
                config = config.replace(exclude_clients=(left_out,), clients_per_round=len(TCGA_BRCA_REGIONS) - 1)
            frames.append(federated_scores(config, method=label, results_cache=results_cache))
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
    return summarize_paired(pd.DataFrame(rows), ["region", "site", "method"], "c_index", reference="all regions")
