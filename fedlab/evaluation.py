"""Evaluating global model weights: held-out loss and accuracy, per site, per client.

Evaluation runs centrally on a Keras copy of the model (one per model spec in
this process), in float64 NumPy after the forward pass, so that numbers do not
depend on the batch size of the forward pass.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .data import Dataset
from .models import ModelSpec


def per_example_loss(logits: np.ndarray, y: np.ndarray, binary: bool) -> np.ndarray:
    """Cross-entropy of each example, float64: sigmoid for one logit, softmax otherwise. A diverged model's
    infinite or NaN logits give a NaN loss (the history says so), without NumPy's warning."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        if binary:
            z = logits.reshape(-1)
            # log(1 + exp(-|z|)) + max(z, 0) - z*y: the stable form of BCE with logits.
            return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(len(y)), y]


def evaluate_logits(logits: np.ndarray, y: np.ndarray, binary: bool) -> tuple[float, float]:
    """(loss, accuracy) of logits against integer labels; binary predicts positive when the logit > 0."""
    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = np.asarray(logits, dtype=np.float64)
    loss = float(per_example_loss(logits, y, binary).mean())
    predicted = (logits.reshape(-1) > 0).astype(int) if binary else logits.argmax(axis=1)
    return loss, float((predicted == y).mean())


def positive_scores(logits: np.ndarray, binary: bool) -> np.ndarray:
    """One score per example that ranks the positive class (binary): the logit, or the logit difference."""
    z = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if binary or z.shape[1] == 1:
        return z[:, 0]
    return z[:, 1] - z[:, 0]


def classification_metrics(logits: np.ndarray, y: np.ndarray, binary: bool, num_classes: int) -> dict:
    """Accuracy, balanced accuracy and ROC AUC of logits against integer labels.

    Balanced accuracy is the mean recall over the classes, so predicting the majority class scores
    1 / classes whatever the prevalence. A test set that lacks a class has no balanced accuracy (binary:
    the recall of the absent class is undefined) and no AUC: NaN, to be reported as undefined and left
    out of means, never scored as the constant predictor's perfect 1.0. Multi-class: balanced accuracy over
    the classes present (NaN with one class present, for the same reason), AUC one-vs-rest (macro) only with
    every class present.
    """
    y = np.asarray(y).reshape(-1)
    nan = float("nan")
    if len(y) == 0:
        return {"accuracy": nan, "balanced_accuracy": nan, "auc": nan}
    logits = np.asarray(logits, dtype=np.float64)
    binary = binary or logits.reshape(len(y), -1).shape[1] == 1
    predicted = (logits.reshape(-1) > 0).astype(int) if binary else logits.argmax(axis=1)
    present = np.unique(y)
    recalls = [float((predicted[y == c] == c).mean()) for c in present]
    all_present = len(present) == (2 if binary else num_classes)
    balanced = float(np.mean(recalls)) if (all_present or (not binary and len(present) > 1)) else nan
    auc = nan
    if all_present and np.isfinite(logits).all():  # a diverged model (inf or NaN logits) ranks nothing
        from sklearn.metrics import roc_auc_score

        if binary:
            auc = float(roc_auc_score(y, positive_scores(logits, True)))
        else:
            shifted = logits - logits.max(axis=1, keepdims=True)
            probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
            auc = float(roc_auc_score(y, probs, multi_class="ovr", labels=np.arange(num_classes)))
    return {"accuracy": float((predicted == y).mean()), "balanced_accuracy": balanced, "auc": auc}


class Evaluator:
    """Evaluates global model weights centrally with a Keras copy of the model."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = spec.build_keras(0)

    def load(self, weights: Sequence[np.ndarray]) -> "Evaluator":
        """Sets the model to ``weights``: trainable tensors, then frozen ones (as ``final_weights`` gives them)."""
        for variable, value in zip(self.model.trainable_variables + self.model.non_trainable_variables, weights):
            variable.assign(value)
        return self

    def set_weights(self, model_weights) -> None:
        """Sets the model to TFF ``ModelWeights``."""
        for variable, value in zip(self.model.trainable_variables, model_weights.trainable):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, model_weights.non_trainable):
            variable.assign(value)

    def logits(self, x: np.ndarray, batch: int = 2048) -> np.ndarray:
        return np.concatenate([self.model(x[i:i + batch], training=False).numpy() for i in range(0, len(x), batch)])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        return evaluate_logits(self.logits(x), y, self.spec.binary)

    def site_metrics(self, data: Dataset, weights_for: Optional[Callable[[int], Any]] = None) -> dict:
        """Each site's own held-out data: ``site_accuracy_<name>``, ``site_balanced_accuracy_<name>`` and
        ``site_auc_<name>`` (:func:`classification_metrics`; NaN where the site's test set has one class), and
        their means over the sites where they are defined, ``mean_site_accuracy`` (the cross-silo benchmarks'
        headline; ``eval_accuracy`` pools all test data), ``mean_site_balanced_accuracy``, ``mean_site_auc``.
        With ``weights_for(site)`` (``ModelWeights``), each site's own model (personalisation)."""
        logits = self.logits(data.x_test) if weights_for is None else None
        out, by_metric = {}, {"accuracy": [], "balanced_accuracy": [], "auc": []}
        for s, name in enumerate(data.site_names):
            idx = np.flatnonzero(data.test_sites == s)
            if weights_for is not None:
                self.set_weights(weights_for(s))
            site_logits = logits[idx] if logits is not None else self.logits(data.x_test[idx])
            scores = classification_metrics(site_logits, data.y_test[idx], self.spec.binary, self.spec.num_classes)
            for metric, value in scores.items():
                out[f"site_{metric}_{name}"] = value
                by_metric[metric].append(value)
        for metric, values in by_metric.items():
            defined = [v for v in values if not np.isnan(v)]
            out[f"mean_site_{metric}"] = float(np.mean(defined)) if defined else float("nan")
        return out

    def client_rows(self, client_x: Sequence[np.ndarray], client_y: Sequence[np.ndarray], round_num: int,
                    weights_for: Optional[Callable[[int], Any]] = None) -> list[dict]:
        """The model on each client's local data (its held-out share, or its training data), as that client holds
        it; with ``weights_for(client)`` (``ModelWeights``), each client's own model (personalisation)."""
        rows = []
        for client, (x, y) in enumerate(zip(client_x, client_y)):
            if weights_for is not None:
                self.set_weights(weights_for(client))
            loss, acc = evaluate_logits(self.logits(x), y, self.spec.binary) if len(y) else (np.nan, np.nan)
            rows.append({"round": round_num, "client": client, "num_examples": len(y), "loss": loss, "accuracy": acc})
        return rows


@functools.lru_cache(maxsize=16)
def evaluator_for(spec: ModelSpec, builder=None) -> Evaluator:
    """One evaluator per model spec (and builder, should the model be registered again) in this process."""
    return Evaluator(spec)


def worst_fraction_mean(values: Sequence[float], fraction: float = 0.1) -> float:
    """Mean of the lowest ``fraction`` of values (at least one value)."""
    values = np.sort(np.asarray(values, dtype=float))
    k = max(1, int(np.floor(len(values) * fraction)))
    return float(values[:k].mean())


def client_summary(rows: list[dict]) -> dict:
    """Mean, worst 10 % and spread of per-client accuracy: the history's fairness columns (clients with nothing
    to test on left out)."""
    accs = [r["accuracy"] for r in rows if not np.isnan(r["accuracy"])]
    return {"client_accuracy_mean": float(np.mean(accs)), "client_accuracy_worst10": worst_fraction_mean(accs, 0.1),
            "client_accuracy_std": float(np.std(accs))}


def clients_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["round", "client", "num_examples", "loss", "accuracy"])
