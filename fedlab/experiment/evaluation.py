"""Evaluating global model weights: held-out loss and the task's metrics, per site, per client.

Evaluation runs centrally on a Keras copy of the model (one per model spec in
this process), in float64 NumPy after the forward pass, so that numbers do not
depend on the batch size of the forward pass. The runner's evaluators (one per
model spec, kept) trace the model's call into a ``tf.function``: an eager Keras
call costs about a millisecond of Python before any arithmetic, and a run that
scores each of 100 clients every few rounds makes a hundred of them each time.
The traced call gives the eager call's logits within float tolerance
(``tests/test_evaluation.py``; TensorFlow may fuse a graph's operations, and on
this machine they came out bit-identical); an evaluator made for one use calls
the model eagerly, as tracing would cost it more than it saves.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ..data.data import Dataset
from ..models.models import ModelSpec
from ..data.tasks import LOSSES, classification_metrics, per_example_loss, positive_scores  # noqa: F401 (re-exported)


def evaluate_logits(logits: np.ndarray, y: np.ndarray, binary: bool) -> tuple[float, float]:
    """(loss, accuracy) of logits against integer labels; binary predicts positive when the logit > 0."""
    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = np.asarray(logits, dtype=np.float64)
    loss = float(per_example_loss(logits, y, binary).mean())
    predicted = (logits.reshape(-1) > 0).astype(int) if binary else logits.argmax(axis=1)
    return loss, float((predicted == y).mean())


class Evaluator:
    """Evaluates global model weights centrally with a Keras copy of the model."""

    def __init__(self, spec: ModelSpec, *, compiled: bool = False):
        """``compiled``: the forward pass traced into a ``tf.function`` (for an evaluator that scores many times)."""
        import tensorflow as tf

        self.spec = spec
        self.model = spec.build_keras(0)
        model = self.model
        # traced on the first call and once more for another batch length, then with that dimension unknown
        self._forward = (tf.function(lambda x: model(x, training=False), reduce_retracing=True) if compiled
                         else lambda x: model(x, training=False))

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
        """The model's outputs on ``x``, in forward batches of at most ``batch`` rows; no rows: an empty array of
        the outputs' width (a site or client with nothing to score, whose scores are then NaN)."""
        if len(x) == 0:  # eager: a batch of none could make the compiled pass trace again
            return self.model(x, training=False).numpy()
        return np.concatenate([self._forward(x[i:i + batch]).numpy() for i in range(0, len(x), batch)])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(loss, the task's ``eval_metric``) on ``x, y``: for classification (loss, accuracy)."""
        if self.spec.task == "classification":
            return evaluate_logits(self.logits(x), y, self.spec.binary)
        task = self.spec.task_entry
        outputs = self.logits(x)
        loss = LOSSES[task.loss].numpy(outputs, y, self.spec.num_classes)
        return float(loss), float(task.scores(outputs, y, self.spec.num_classes)[task.eval_metric])

    def site_metrics(self, data: Dataset, weights_for: Optional[Callable[[int], Any]] = None) -> dict:
        """Each site's own held-out data: ``site_<metric>_<name>`` for each metric of the data's task (for
        classification ``site_accuracy_<name>``, ``site_balanced_accuracy_<name>`` and ``site_auc_<name>``,
        :func:`classification_metrics`; NaN where the site's test set has one class; for survival
        ``site_c_index_<name>``), and their means over the sites where they are defined, ``mean_site_<metric>``
        (``mean_site_accuracy`` is the cross-silo benchmarks' headline; ``eval_accuracy`` pools all test data).
        With ``weights_for(site)`` (``ModelWeights``), each site's own model (personalisation)."""
        task = self.spec.task_entry
        logits = self.logits(data.x_test) if weights_for is None else None
        out, by_metric = {}, {metric: [] for metric in task.metrics}
        for s, name in enumerate(data.site_names):
            idx = np.flatnonzero(data.test_sites == s)
            if weights_for is not None:
                self.set_weights(weights_for(s))
            site_logits = logits[idx] if logits is not None else self.logits(data.x_test[idx])
            scores = task.scores(site_logits, data.y_test[idx], self.spec.num_classes)
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
    """One evaluator per model spec (and builder, should the model be registered again) in this process, its forward
    pass compiled."""
    return Evaluator(spec, compiled=True)


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
