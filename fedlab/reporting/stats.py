"""Intervals and paired differences over seeds: how fedlab reports a number with its uncertainty.

A comparison of federated methods rests on a handful of seeds. Every mean is
given with a 95 % interval, and every difference between two methods is
paired over the same seeds (same data split, same initial weights, same
client orders) and tested with a paired t-test. Computed with ``scipy.stats``:

* ``t``: Student's t interval of the mean, ``mean ± t(n-1) · s / sqrt(n)``
  (the default: seeds are few, and the t interval says so by widening), with
  Student's t from ``scipy.special`` (``stdtrit``, ``stdtr``);
* ``bootstrap``: the percentile bootstrap of the mean
  (``scipy.stats.bootstrap``, 9999 resamples, a fixed generator), which
  assumes nothing about the shape but is too narrow with three seeds.

With one value there is no interval (NaN), never a zero-width one; a mean of
identical values (a constant baseline) has a zero-width one, and a difference
that is the same for every pair has none (no spread to test against).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

METHODS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 9999


def no_spread(x: np.ndarray) -> bool:
    """Whether the values are equal up to float rounding (0.8 - 0.7 and 0.7 - 0.6 differ in the last bit)."""
    return float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def interval(values: Sequence[float], *, confidence: float = 0.95, method: str = "t",
             seed: int = 0) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of ``values`` (NaNs left out): the ``confidence`` interval of their mean."""
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be between 0 and 1, got {confidence!r}")
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    if no_spread(x):  # every seed gave the same number (a constant baseline)
        return mean, mean, mean, n
    if method == "t":
        from scipy import special

        half = float(special.stdtrit(n - 1, (1 + confidence) / 2)) * float(x.std(ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        from scipy import stats

        result = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                                 method="percentile", random_state=np.random.default_rng(seed))
        low, high = result.confidence_interval
    return mean, float(low), float(high), n


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      method: str = "t", seed: int = 0) -> dict:
    """``a - b`` paired element by element (the same seed, the same site): its mean, interval and the two-sided
    p-value of the paired t-test (what ``scipy.stats.ttest_rel`` computes); pairs with a NaN on either side are
    left out. Pairs that all differ by the same amount have no interval and no p-value (NaN)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a and b: must pair up one to one, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    mean, low, high, n = interval(d, confidence=confidence, method=method, seed=seed)
    p = math.nan
    if n >= 2 and no_spread(d):
        # every pair differs by the same amount (two seeds, the same one-patient gap): no spread to test against;
        # a zero-width interval and p = 0 would claim a certainty that a handful of seeds cannot give
        low = high = math.nan
    elif n >= 2:  # the paired t-test (scipy.stats.ttest_rel's statistic, without its warning on near-ties)
        from scipy import special

        t = mean / (float(d.std(ddof=1)) / math.sqrt(n))
        p = float(2 * special.stdtr(n - 1, -abs(t)))
    return {"diff": mean, "diff_ci_low": low, "diff_ci_high": high, "n_pairs": n, "p_value": p}


def summary_table(data: pd.DataFrame, by: Sequence[str], value: str, *, confidence: float = 0.95,
                  method: str = "t") -> pd.DataFrame:
    """Per group of ``by``: ``mean``, ``std``, ``count`` and the interval of the mean (``ci_low``, ``ci_high``)
    of ``value`` over the group's rows (its seeds), groups in sorted order. One row: NaN bounds and std."""
    by = list(by)
    missing = [c for c in [*by, value] if c not in data.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}; columns are {', '.join(map(str, data.columns))}")
    rows = []
    for key, group in data.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group[value].to_numpy(float)
        mean, low, high, n = interval(values, confidence=confidence, method=method)
        rows.append({**dict(zip(by, key)), "mean": mean,
                     "std": float(np.nanstd(values, ddof=1)) if n > 1 else math.nan, "count": n,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "count", "ci_low", "ci_high"])
