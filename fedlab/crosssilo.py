"""Cross-silo benchmark protocols with natural sites: Fed-Heart-Disease (FLamby) and friends.

Ogier du Terrail et al. (2022), "FLamby: Datasets and Benchmarks for
Cross-Silo Federated Learning in Realistic Healthcare Settings", NeurIPS
Datasets and Benchmarks. Protocol: logistic regression and binary
cross-entropy; federated runs with client SGD, batch size 4, 100 local steps
per round, 15 rounds; local-only and pooled baselines with Adam (lr 0.001), 50
epochs, batch size 4; accuracy at threshold 0.5 on each site's own test set.

One deviation, forced by TFF: its FedAvg weights clients by the examples they
*processed*; with a fixed number of local steps every site processes the
same number, so the four hospitals count equally (FLamby weights by site size).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .clients import dataset_for, spec_for
from .config import ExperimentConfig
from .data import Dataset, read_heart_disease_sites
from .evaluation import Evaluator
from .models import ModelSpec
from .runner import final_weights, run_experiment

PROTOCOL_LR = 0.001  # FLamby's LR for Fed-Heart-Disease
FEDERATED = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def heart_disease_config(algorithm: str = "fedavg", **changes) -> ExperimentConfig:
    """A federated run under the FLamby protocol (override any field with ``changes``)."""
    values = dict(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4, model="logreg",
                  algorithm=algorithm, client_lr=PROTOCOL_LR, batch_size=4, local_steps=100, rounds=15,
                  eval_every=15, data_seed=0)
    values.update(changes)
    return ExperimentConfig(**values)


def site_scores(logits: np.ndarray, data: Dataset) -> list[dict]:
    """Accuracy (logit > 0) and ROC AUC on each site's test set; AUC is NaN where a site has one class."""
    from sklearn.metrics import roc_auc_score

    rows = []
    z = np.asarray(logits).reshape(len(data.y_test), -1)
    score = z[:, 0] if z.shape[1] == 1 else z[:, 1] - z[:, 0]
    for s, name in enumerate(data.site_names):
        idx = np.flatnonzero(data.test_sites == s)
        y = data.y_test[idx]
        auc = float(roc_auc_score(y, score[idx])) if len(np.unique(y)) == 2 else float("nan")
        rows.append({"site": name, "accuracy": float(((score[idx] > 0).astype(int) == y).mean()), "auc": auc,
                     "num_test": int(len(idx))})
    return rows


def train_centralized(spec: ModelSpec, x: np.ndarray, y: np.ndarray, *, epochs: int = 50, batch_size: int = 4,
                      lr: float = 1e-3, seed: int = 0):
    """A Keras model trained on pooled arrays with Adam: the local-only and pooled baselines."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = spec.build_keras(seed)
    model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss=spec.loss())
    model.fit(x, spec.prepare_labels(y), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return model


def baseline_scores(data: Dataset, *, seeds: Sequence[int], epochs: int = 50, batch_size: int = 4,
                    lr: float = 1e-3) -> pd.DataFrame:
    """``local_<site>`` (trained on one site, tested on all four) and ``pooled``, one row per (method, seed, site)."""
    spec = ModelSpec("logreg", data.num_features, data.num_classes)
    rows = []
    for seed in seeds:
        groups = {f"local_{name}": data.train_sites == s for s, name in enumerate(data.site_names)}
        groups["pooled"] = np.ones(len(data.y_train), bool)
        for method, mask in groups.items():
            model = train_centralized(spec, data.x_train[mask], data.y_train[mask], epochs=epochs,
                                      batch_size=batch_size, lr=lr, seed=seed)
            logits = model(data.x_test, training=False).numpy()
            rows += [{"method": method, "seed": seed, **r} for r in site_scores(logits, data)]
    return pd.DataFrame(rows)


def federated_scores(config: ExperimentConfig, *, method: Optional[str] = None, results_cache=None) -> pd.DataFrame:
    """One federated run's final global model on each site's test set."""
    history = run_experiment(config, results_cache=results_cache, progress=False)
    data = dataset_for(config)
    evaluator = Evaluator(spec_for(config, data)).load(final_weights(history))
    rows = site_scores(evaluator.logits(data.x_test), data)
    return pd.DataFrame([{"method": method or config.algorithm, "seed": config.seed, **r} for r in rows])


def tune_client_lr(base: ExperimentConfig, grid: Sequence[float], *, validation_fraction: float = 0.2,
                   results_cache=None) -> tuple[float, pd.DataFrame]:
    """The client learning rate with the best mean-over-sites accuracy on a validation split of the training data.

    The test sets are never looked at: each site's training data is split again.
    """
    rows = []
    for lr in grid:
        scores = federated_scores(base.replace(client_lr=lr, validation_fraction=validation_fraction),
                                  results_cache=results_cache)
        rows.append({"algorithm": base.algorithm, "client_lr": lr, "validation_accuracy": scores["accuracy"].mean()})
    table = pd.DataFrame(rows)
    best = float(table.sort_values(["validation_accuracy", "client_lr"], ascending=[False, True]).iloc[0]["client_lr"])
    return best, table


def benchmark_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean over sites per (method, seed), then mean and std over seeds: the headline table."""
    per_seed = scores.groupby(["method", "seed"])[["accuracy", "auc"]].mean().reset_index()
    table = per_seed.groupby("method")[["accuracy", "auc"]].agg(["mean", "std"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    return table.reset_index().sort_values("accuracy_mean", ascending=False).reset_index(drop=True)


def federated_benchmark(base: ExperimentConfig, algorithms: Sequence[str], seeds: Sequence[int], *,
                        lrs: Optional[dict] = None, suffix: str = "", results_cache=None) -> pd.DataFrame:
    """Per-site scores of each algorithm and seed (``lrs``: client learning rate per algorithm)."""
    from tqdm.auto import tqdm

    frames = []
    for algorithm in tqdm(algorithms, desc=f"federated{suffix}"):
        changes = {"algorithm": algorithm}
        if lrs is not None:
            changes["client_lr"] = lrs[algorithm]
        for seed in seeds:
            config = base.replace(seed=seed, **changes)
            frames.append(federated_scores(config, method=algorithm + suffix, results_cache=results_cache))
    return pd.concat(frames, ignore_index=True)


def tune_all(base: ExperimentConfig, algorithms: Sequence[str], grid: Sequence[float], *,
             results_cache=None) -> tuple[dict, pd.DataFrame]:
    """Best client learning rate per algorithm on the validation split (seed ``base.seed``)."""
    best, tables = {}, []
    for algorithm in algorithms:
        best[algorithm], table = tune_client_lr(base.replace(algorithm=algorithm), grid, results_cache=results_cache)
        tables.append(table)
    return best, pd.concat(tables, ignore_index=True)


def site_summary(data: Dataset) -> pd.DataFrame:
    """Per site: training and test patients and the share with heart disease."""
    rows = []
    for s, name in enumerate(data.site_names):
        y = np.r_[data.y_train[data.train_sites == s], data.y_test[data.test_sites == s]]
        rows.append({"site": name, "train": int((data.train_sites == s).sum()),
                     "test": int((data.test_sites == s).sum()), "patients": len(y),
                     "positive_rate": float(y.mean())})
    return pd.DataFrame(rows)


def heart_disease_raw() -> pd.DataFrame:
    """The four cleaned site tables, unstandardised, stacked with a ``site`` column (for describing sites)."""
    tables = []
    for site, table in read_heart_disease_sites().items():
        tables.append(table.drop(columns=["slope", "ca", "thal"]).dropna().assign(site=site))
    return pd.concat(tables, ignore_index=True)


def plot_site_features(raw: pd.DataFrame, features: Sequence[str], *, axes=None):
    """One box plot per feature, one box per site."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, len(features), figsize=(3.6 * len(features), 3.2))
    axes = np.atleast_1d(axes)
    sites = list(dict.fromkeys(raw["site"]))
    for ax, feature in zip(axes, features):
        ax.boxplot([raw.loc[raw.site == s, feature] for s in sites], labels=sites)
        ax.set_title(feature)
        ax.tick_params(axis="x", labelrotation=45)
    return axes[0].figure, axes, raw.groupby("site")[list(features)].describe()


def gain_table(scores: pd.DataFrame, federated_method: str) -> pd.DataFrame:
    """Each site's own-test accuracy: trained alone, federated (``federated_method``), pooled (mean over seeds)."""
    rows = []
    for site in scores["site"].unique():
        own = scores[scores.site == site]
        mean = lambda m: float(own[own.method == m]["accuracy"].mean())  # noqa: E731
        rows.append({"site": site, "local": mean(f"local_{site}"), "federated": mean(federated_method),
                     "pooled": mean("pooled")})
    table = pd.DataFrame(rows)
    table["gain_from_federating"] = table["federated"] - table["local"]
    return table


def plot_federation_gain(table: pd.DataFrame, *, ax=None, federated_label: str = "federated"):
    """Grouped bars per site: alone, federated, pooled."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4))
    x = np.arange(len(table))
    for i, (column, label) in enumerate([("local", "trained alone"), ("federated", federated_label),
                                         ("pooled", "pooled (not possible in practice)")]):
        ax.bar(x + (i - 1) * 0.27, table[column], width=0.27, label=label)
    ax.set_xticks(x, table["site"])
    ax.set_ylabel("accuracy on the site's own test set")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small", loc="lower right")
    return ax.figure, ax, table
