"""Tables read off histories: rounds to a target, final metrics, summaries over seeds, accounting."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .accounting import epsilon
from .stats import interval


def rounds_to_target(history: pd.DataFrame, target: float, by: Sequence[str],
                     metric: str = "eval_accuracy") -> pd.DataFrame:
    """First round at which ``metric`` reaches ``target``, per group of ``by`` and seed.

    A run that never reaches it gets NaN in ``rounds`` and ``reached`` False;
    ``rounds_budget`` is the rounds it had.
    """
    rows = []
    for key, run in history.groupby(list(by) + ["seed"], dropna=False, sort=True):
        run = run.dropna(subset=[metric]).sort_values("round")
        hit = run[run[metric] >= target]
        rows.append({**dict(zip(list(by) + ["seed"], key)),
                     "rounds": float(hit["round"].iloc[0]) if len(hit) else np.nan,
                     "reached": bool(len(hit)),
                     "rounds_budget": int(run["round"].max()),
                     f"final_{metric}": float(run[metric].iloc[-1]),
                     f"best_{metric}": float(run[metric].max())})
    return pd.DataFrame(rows)


def final_metrics(history: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The last evaluated round of each run (one row per group of ``by`` and seed)."""
    evaluated = history.dropna(subset=["eval_accuracy"])
    return evaluated.sort_values("round").groupby(list(by) + ["seed"], dropna=False).tail(1).reset_index(drop=True)


def summarize(table: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation, count and the 95 % t-interval of the mean (``ci_low``, ``ci_high``) of ``value``
    over seeds, per group of ``by`` (:func:`fedlab.stats.interval`; NaN bounds where a group has one seed)."""
    rows = []
    for key, group in table.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = group[value].to_numpy(float)
        mean, low, high, n = interval(values)
        rows.append({**dict(zip(by, key)), "mean": mean,
                     "std": float(np.nanstd(values, ddof=1)) if n > 1 else np.nan, "count": n,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "count", "ci_low", "ci_high"])


def accounting_table(noise_multipliers: Sequence[float], clients_per_round: Sequence[int], *, num_clients: int,
                     rounds: int, delta: float, accountant: str = "rdp") -> pd.DataFrame:
    """Epsilon for each (noise multiplier, clients per round): accounting only, nothing is trained."""

    return pd.DataFrame([{"noise_multiplier": z, "clients_per_round": k, "num_clients": num_clients,
                          "rounds": rounds, "delta": delta,
                          "epsilon": epsilon(z, k / num_clients, rounds, delta, accountant)}
                         for z in noise_multipliers for k in clients_per_round])
