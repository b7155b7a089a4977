"""Survival analysis for federated training: the Cox partial-likelihood loss, Harrell's C-index, Kaplan-Meier.

Labels are float arrays ``y`` of shape (n, 2) holding (E, T) per patient, in FLamby's order: E = 1 for an
observed death (0 for censored), T the time in days. A model outputs one risk score per patient (higher =
earlier death), as in Cox's proportional-hazards model (Cox 1972) and FLamby's Fed-TCGA-BRCA baseline
(Ogier du Terrail et al. 2022; Andreux et al. 2020).

* The loss is the negative Breslow partial log-likelihood divided by the number of patients, censored ones
  included (FLamby's normalisation): ``mean_i E_i (log sum_{j: T_j >= T_i} exp(s_j) - s_i)``. Tied times use
  Breslow's rule (every patient with ``T_j >= T_i`` is at risk). In training, the batch is the risk set, so the
  loss couples a batch: a batch of one patient, or with no event, gives 0 and a zero gradient.
  ``cox_terms``/``CoxBreslowLoss`` compute it in TensorFlow, ``cox_loss`` in float64 NumPy.
* ``c_index`` is Harrell's C with lifelines' rule for ties, NaN where undefined.
* ``kaplan_meier`` is the product-limit estimator (Kaplan and Meier 1958).

TensorFlow is imported only inside the functions that need it. ``CoxBreslowLoss`` is made on first use (module
``__getattr__``): ``from fedlab.data.survival import CoxBreslowLoss`` imports TensorFlow at that moment and gives the
same class every time; ``cox_loss_keras()`` returns an instance.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

__all__ = ["cox_terms", "CoxBreslowLoss", "cox_loss_keras", "cox_loss", "c_index", "kaplan_meier"]


def _scores_and_labels(scores: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, E, T) as float64 vectors, checked: y is (n, 2) of (E, T) and scores has one value per patient."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != 2:
        raise ValueError(f"y: must be an (n, 2) array of (event, time), got shape {y.shape}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 1:
        raise ValueError(f"scores: must be one score per patient, shape (n,) or (n, 1), got shape {s.shape}")
    if len(s) != len(y):
        raise ValueError(f"scores and y: lengths must match, got {len(s)} and {len(y)}")
    e, t = y[:, 0], y[:, 1]
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValueError("y: the event column (y[:, 0]) must be 0 or 1")
    if not np.isfinite(t).all():
        raise ValueError("y: the time column (y[:, 1]) must be finite")
    return s, e, t


def cox_terms(y_true, y_pred):
    """Per-patient Breslow terms ``E_i (logsumexp_{j: T_j >= T_i} s_j - s_i)``, a TF vector [n].

    ``y_true`` is float [n, 2] of (E, T), ``y_pred`` the scores [n] or [n, 1]. Patients outside the risk set
    enter the logsumexp as -inf through ``tf.where``, so their gradient is exactly 0 and stays finite with large
    scores (the logsumexp subtracts the row maximum, which is finite: patient i is in its own risk set).
    """
    import tensorflow as tf

    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.cast(y_true, y_pred.dtype)
    if y_true.shape.rank is not None and (y_true.shape.rank != 2 or y_true.shape[-1] not in (None, 2)):
        raise ValueError(f"y_true: must be [n, 2] of (event, time), got shape {y_true.shape}")
    s = tf.reshape(y_pred, [-1])
    e, t = y_true[:, 0], y_true[:, 1]
    at_risk = t[None, :] >= t[:, None]  # row i: who is still at risk when patient i dies (i included)
    masked = tf.where(at_risk, tf.broadcast_to(s[None, :], tf.shape(at_risk)), tf.constant(-np.inf, s.dtype))
    return e * (tf.reduce_logsumexp(masked, axis=1) - s)


@functools.cache
def _loss_class():
    import tensorflow as tf

    @tf.keras.utils.register_keras_serializable(package="fedlab")
    class CoxBreslowLoss(tf.keras.losses.Loss):
        """The Cox partial-likelihood loss with Breslow ties; the batch is the risk set.

        ``call`` returns the per-patient terms (``cox_terms``), so Keras' default reduction
        (``SUM_OVER_BATCH_SIZE``) divides their sum by the batch size: FLamby's mean over all patients.
        """

        def __init__(self, reduction=tf.keras.losses.Reduction.AUTO, name: str = "cox_breslow"):
            super().__init__(reduction=reduction, name=name)

        def call(self, y_true, y_pred):
            return cox_terms(y_true, y_pred)

    CoxBreslowLoss.__module__ = __name__
    CoxBreslowLoss.__qualname__ = "CoxBreslowLoss"
    return CoxBreslowLoss


def __getattr__(name: str):
    # Made on first use so that importing fedlab.data.survival does not import TensorFlow.
    if name == "CoxBreslowLoss":
        return _loss_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cox_loss_keras(**kwargs):
    """A ``CoxBreslowLoss`` instance (``tf.keras.losses.Loss``), for ``functional_model_from_keras``."""
    return _loss_class()(**kwargs)


def cox_loss(scores: Any, y: Any) -> float:
    """The Breslow Cox loss in float64: the mean over all n patients of ``E_i (log sum_{T_j >= T_i} e^{s_j} - s_i)``.

    Equal to ``-(partial log-likelihood) / n``. NaN for no patients or non-finite scores (a diverged model).
    Sorted by time and accumulated with ``logaddexp``, so it is O(n log n) and stable for large scores.
    """
    s, e, t = _scores_and_labels(scores, y)
    if len(s) == 0 or not np.isfinite(s).all():
        return math.nan
    order = np.argsort(-t, kind="stable")
    t_desc, s_desc, e_desc = t[order], s[order], e[order]
    log_cum = np.logaddexp.accumulate(s_desc)
    # The risk set of a patient is everyone with T_j >= T_i: in descending order, up to the last tied time.
    last = np.searchsorted(-t_desc, -t_desc, side="right") - 1
    terms = e_desc * (log_cum[last] - s_desc)
    return float(terms.sum() / len(s))


def c_index(scores: Any, y: Any, *, chunk: int = 4096) -> float:
    """Harrell's concordance index of risk scores (higher = earlier death), lifelines' rule for ties.

    A pair (i, j) is admissible when patient i died first: E_i = 1 and (T_i < T_j, or T_i = T_j with j censored;
    two deaths at the same time are not compared). It is concordant when s_i > s_j, and a tie in s counts 1/2.
    This equals ``lifelines.utils.concordance_index(T, -scores, E)``. NaN when no pair is admissible or a score
    is not finite. Pairwise in NumPy, ``chunk`` rows of deaths at a time (memory ``chunk * n``).
    """
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk: must be a positive integer, got {chunk!r}")
    s, e, t = _scores_and_labels(scores, y)
    if not np.isfinite(s).all():
        return math.nan
    deaths = np.flatnonzero(e == 1)
    censored = e == 0
    admissible = concordant = ties = 0
    for start in range(0, len(deaths), chunk):
        i = deaths[start:start + chunk]
        ti, si = t[i][:, None], s[i][:, None]
        pair = (ti < t[None, :]) | ((ti == t[None, :]) & censored[None, :])
        admissible += int(pair.sum())
        concordant += int((pair & (si > s[None, :])).sum())
        ties += int((pair & (si == s[None, :])).sum())
    if admissible == 0:
        return math.nan
    return (concordant + 0.5 * ties) / admissible


def comparable_pairs(y: Any) -> int:
    """How many pairs of patients a C-index on ``y`` compares (the admissible pairs of :func:`c_index`): its
    resolution is 1 / that number."""
    s, e, t = _scores_and_labels(np.zeros(len(np.asarray(y))), y)
    deaths = e == 1
    later = (t[deaths][:, None] < t[None, :]) | ((t[deaths][:, None] == t[None, :]) & (e == 0)[None, :])
    return int(later.sum())


def kaplan_meier(time: Any, event: Any):
    """The Kaplan-Meier product-limit estimate: a DataFrame with one row per distinct time, ascending.

    Columns: ``time``, ``at_risk`` (patients with T >= time), ``events`` (deaths at time; 0 at a time where
    patients were only censored) and ``survival``, S(time) = prod over times u <= time of (1 - events / at_risk).
    S is 1 before the first time.
    """
    import pandas as pd

    time = np.asarray(time, dtype=np.float64).reshape(-1)
    event = np.asarray(event, dtype=np.float64).reshape(-1)
    if len(time) != len(event):
        raise ValueError(f"time and event: lengths must match, got {len(time)} and {len(event)}")
    if not np.isfinite(time).all():
        raise ValueError("time: must be finite")
    if not np.isin(event, (0.0, 1.0)).all():
        raise ValueError("event: must be 0 or 1")
    times, index = np.unique(time, return_inverse=True)
    events = np.bincount(index, weights=event, minlength=len(times)).astype(np.int64)
    at_risk = np.cumsum(np.bincount(index, minlength=len(times))[::-1])[::-1]  # patients with T >= time
    survival = np.cumprod(1.0 - events / at_risk)
    return pd.DataFrame({"time": times, "at_risk": at_risk.astype(np.int64), "events": events,
                         "survival": survival})
