"""Tasks, losses and metrics: what a data set's labels mean, what a model is trained on and scored with.

A data set names its task (:attr:`fedlab.Dataset.task`); the task names its loss and its metrics, and says how
labels reach the model. Each of the three is registered the way a user registers one:

* :func:`register_loss` — ``keras(num_classes) -> tf.keras.losses.Loss`` (training, per batch) with ``numpy(outputs,
  y, num_classes) -> float`` (evaluation, float64, on a whole test set). ``per_example=False`` says the loss couples
  the records of a batch (a Cox partial likelihood's risk set): record-level DP, per-record audits and label
  attacks are refused for it, because their per-record losses would mean nothing.
* :func:`register_metric` — ``fn(outputs, y, num_classes) -> float`` for one task, NaN where undefined (a test set
  with one class has no AUC; one without a comparable pair has no C-index), reported as undefined and left out of
  means over sites.
* :func:`register_task` — a :class:`Task`: its loss, the metric the history reports as ``eval_<metric>``, the one
  tuning selects by, and its labels (the TF spec, how arrays are prepared, how many model outputs, what a
  validation split is stratified on).

fedlab's own: ``classification`` (integer labels; binary or softmax cross-entropy; accuracy, balanced accuracy,
AUC) and ``survival`` (labels (event, time); the Cox partial likelihood with Breslow ties; Harrell's C-index).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from ..core.registry import Registry, decorator
from ..core.validation import ConfigError


@dataclasses.dataclass(frozen=True)
class Loss:
    """A registered loss: Keras' (training) and NumPy's (evaluation) forms of the same quantity."""

    name: str
    keras: Callable[[int], Any]
    numpy: Callable[[np.ndarray, np.ndarray, int], float]
    per_example: bool = True


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered metric of one task: ``fn(outputs, y, num_classes) -> float`` (higher is better)."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray, int], float]
    task: str


@dataclasses.dataclass(frozen=True)
class Task:
    """What labels mean and how a model is trained and scored on them.

    ``loss``: a :data:`LOSSES` name; ``eval_metric``: reported on the pooled test set as ``eval_<name>``;
    ``select_by``: what tuning maximises on validation data; ``label_spec(num_classes)``: the TF spec of a batch's
    labels; ``prepare_labels(y, num_classes)``: labels as the loss takes them; ``num_outputs(num_classes)``: the
    model's outputs; ``train_metrics(num_classes)``: TFF's training metrics (a ``loss`` entry at least);
    ``strata(y)``: one integer per record that a validation split keeps in proportion; ``prevalence(y,
    num_classes)``: what a score table reports beside each site's size (the share of positives, of deaths seen);
    ``joint(outputs, y, num_classes) -> dict``: optional, several of the task's metrics computed at once (each
    metric's own function gives the same number).
    """

    name: str
    loss: str
    eval_metric: str
    select_by: str
    label_spec: Callable[[int], Any]
    prepare_labels: Callable[[np.ndarray, int], np.ndarray]
    num_outputs: Callable[[int], int]
    train_metrics: Callable[[int], "collections.OrderedDict"]
    strata: Callable[[np.ndarray], np.ndarray]
    prevalence: Callable[[np.ndarray, int], float]
    joint: Optional[Callable[[np.ndarray, np.ndarray, int], dict]] = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The task's registered metrics, in registration order (fedlab's first)."""
        return tuple(entry.name for entry in METRICS.entries() if entry.component.task == self.name)

    @property
    def loss_entry(self) -> Loss:
        return LOSSES[self.loss]

    def scores(self, outputs: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
        """Every metric of the task on these outputs and labels."""
        shared = self.joint(outputs, y, num_classes) if self.joint is not None else {}
        return {name: float(shared[name]) if name in shared else float(METRICS[name].fn(outputs, y, num_classes))
                for name in self.metrics}


LOSSES: Registry[Loss] = Registry("loss", "loss")
METRICS: Registry[Metric] = Registry("metric", "metrics")
TASKS: Registry[Task] = Registry("task", "task")


def register_loss(name: str, *, numpy: Callable[[np.ndarray, np.ndarray, int], float], per_example: bool = True,
                  paper: Optional[str] = None, replace: bool = False):
    """Registers ``keras(num_classes) -> tf.keras.losses.Loss`` under ``name``, with ``numpy(outputs, y,
    num_classes) -> float``, the same loss in float64 on a whole set. ``per_example=False``: the loss of a batch is
    not a mean of per-record losses (see the module docstring)."""
    return decorator(LOSSES, name, lambda keras: Loss(name, keras, numpy, per_example), paper=paper, replace=replace)


def register_metric(name: str, *, task: str, paper: Optional[str] = None, replace: bool = False):
    """Registers ``fn(outputs, y, num_classes) -> float`` (higher is better; NaN where undefined) as a metric of
    ``task``: every evaluation of that task reports it (per site as ``site_<name>_<site>``)."""
    if task not in TASKS:
        raise ConfigError("task", f"must be one of {', '.join(TASKS.names())}; got {task!r}")
    return decorator(METRICS, name, lambda fn: Metric(name, fn, task), paper=paper, replace=replace)


def register_task(task: Task, *, summary: str = "", paper: Optional[str] = None, replace: bool = False) -> Task:
    """Registers ``task`` under ``task.name`` (its loss must be registered first; metrics name it afterwards);
    ``summary``: what ``python -m fedlab list`` says of it."""
    if task.loss not in LOSSES:
        raise ConfigError("loss", f"must be one of {', '.join(LOSSES.names())}; got {task.loss!r}")
    TASKS.add(task.name, task, summary=summary, source=task.prepare_labels, paper=paper, replace=replace)
    return task


def task_of(name: str) -> Task:
    return TASKS[name]


# Classification ------------------------------------------------------------------------------------------------


def _binary(num_classes: int) -> bool:
    return num_classes == 2


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


def _cross_entropy_keras(num_classes: int):
    """Binary cross-entropy on one logit for two classes, sparse softmax cross-entropy otherwise."""
    import tensorflow as tf

    if _binary(num_classes):
        return tf.keras.losses.BinaryCrossentropy(from_logits=True)
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _cross_entropy_numpy(logits: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    y = np.asarray(y).reshape(-1)
    return float(per_example_loss(logits, y, _binary(num_classes)).mean()) if len(y) else float("nan")


register_loss("cross_entropy", numpy=_cross_entropy_numpy)(_cross_entropy_keras)


def _classification_label_spec(num_classes: int):
    import tensorflow as tf

    return tf.TensorSpec([None, 1], tf.float32) if _binary(num_classes) else tf.TensorSpec([None], tf.int32)


def _classification_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """A float column for two classes (binary cross-entropy), an int vector otherwise."""
    y = np.asarray(y)
    return y.astype(np.float32).reshape(-1, 1) if _binary(num_classes) else y.astype(np.int32)


def _classification_train_metrics(num_classes: int):
    import tensorflow as tf

    if _binary(num_classes):
        return collections.OrderedDict(
            accuracy=lambda: tf.keras.metrics.BinaryAccuracy(threshold=0.0),
            loss=lambda: tf.keras.metrics.BinaryCrossentropy(from_logits=True),
        )
    return collections.OrderedDict(
        accuracy=tf.keras.metrics.SparseCategoricalAccuracy,
        loss=lambda: tf.keras.metrics.SparseCategoricalCrossentropy(from_logits=True),
    )


register_task(Task("classification", loss="cross_entropy", eval_metric="accuracy", select_by="balanced_accuracy",
                   label_spec=_classification_label_spec, prepare_labels=_classification_labels,
                   num_outputs=lambda num_classes: 1 if _binary(num_classes) else num_classes,
                   train_metrics=_classification_train_metrics,
                   strata=lambda y: np.asarray(y).reshape(-1).astype(np.int64),
                   prevalence=lambda y, num_classes: (float((np.asarray(y).reshape(-1) == 1).mean())
                                                      if num_classes == 2 and len(y) else float("nan")),
                   joint=lambda logits, y, num_classes: classification_metrics(logits, y, _binary(num_classes),
                                                                               num_classes)),
              summary="Integer class labels: which class a record belongs to.")


def _classification_metric(name: str):
    def metric(logits: np.ndarray, y: np.ndarray, num_classes: int) -> float:
        return classification_metrics(logits, y, _binary(num_classes), num_classes)[name]

    metric.__doc__ = {"accuracy": "Share predicted right (logit > 0 for two classes, arg-max otherwise).",
                      "balanced_accuracy": "Mean recall over the classes: a constant scores 1 / classes.",
                      "auc": "ROC AUC (one-vs-rest macro beyond two classes); NaN unless every class is present."}[name]
    return metric


for _name in ("accuracy", "balanced_accuracy", "auc"):
    register_metric(_name, task="classification")(_classification_metric(_name))


# Survival ------------------------------------------------------------------------------------------------------


def _cox_keras(num_classes: int):
    """The Cox partial likelihood (Breslow ties) of a batch: its patients are the risk set."""
    from .survival import cox_loss_keras

    return cox_loss_keras()


def _cox_numpy(scores: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    from .survival import cox_loss

    return cox_loss(scores, y)


register_loss("cox_breslow", numpy=_cox_numpy, per_example=False,
              paper="Cox 1972; Breslow 1974 (ties); FLamby Fed-TCGA-BRCA's BaselineLoss")(_cox_keras)


def _survival_label_spec(num_classes: int):
    import tensorflow as tf

    return tf.TensorSpec([None, 2], tf.float32)


def _survival_train_metrics(num_classes: int):
    import tensorflow as tf

    from .survival import cox_terms

    return collections.OrderedDict(loss=lambda: tf.keras.metrics.MeanMetricWrapper(cox_terms, name="loss"))


register_task(Task("survival", loss="cox_breslow", eval_metric="c_index", select_by="c_index",
                   label_spec=_survival_label_spec,
                   prepare_labels=lambda y, num_classes: np.asarray(y, np.float32).reshape(-1, 2),
                   num_outputs=lambda num_classes: 1, train_metrics=_survival_train_metrics,
                   strata=lambda y: np.asarray(y).reshape(-1, 2)[:, 0].astype(np.int64),
                   prevalence=lambda y, num_classes: (float(np.asarray(y, np.float64).reshape(-1, 2)[:, 0].mean())
                                                      if len(y) else float("nan"))),
              summary="Labels (event, time): event 1 = died at time, 0 = censored (alive at time); a risk score.")


@register_metric("c_index", task="survival", paper="Harrell et al. 1982; lifelines' concordance_index")
def c_index_metric(scores: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Harrell's C: the share of comparable pairs the risk scores order right (a constant scores 0.5)."""
    from .survival import c_index

    return c_index(np.asarray(scores, np.float64).reshape(-1), y)
