"""Tables read off histories: rounds to a target, final metrics, summaries over seeds, accounting."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .accounting import epsilon
from .stats import interval, paired_difference


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


def summarize_rounds_to_target(rounds: pd.DataFrame, by: Sequence[str], *,
                                reference: Optional[str] = None) -> pd.DataFrame:
    """:func:`rounds_to_target`'s table (each seed's first crossing, one row per run) summarized over seeds.

    One row per group of ``by`` and ``metric``: ``rounds`` is the mean first-crossing round over the seeds that
    reached the target, with its 95 % t-interval (``ci_low``, ``ci_high``, :func:`fedlab.stats.interval`) and
    ``n`` those seeds; ``seeds`` counts the runs and ``reached`` those that reached the target. Seeds that never
    reached it are left out of the mean, so a mean over fewer seeds than were run is flattering: read it with
    ``reached``.

    ``reference``: a value of the ``method`` column (which ``by`` must hold). Each run is paired with the
    reference's run at the same seed and the same other ``by`` values, where both reached the target: on the
    ``rounds`` row, the paired difference (run minus reference, in rounds: ``diff``, ``diff_ci_low``,
    ``diff_ci_high``, ``n_pairs``, ``p_value``, :func:`fedlab.stats.paired_difference`); and a ``speedup`` row,
    the reference's rounds over the run's per seed, its mean and interval (``n``: the pairs).
    """
    by = list(by)
    if reference is not None and "method" not in by:
        raise ValueError(f"by: must include 'method' to pair runs with the reference {reference!r}, got {by}")
    if reference is not None and reference not in set(rounds["method"]):
        raise ValueError(f"reference: {reference!r} is not a method of the table "
                         f"({', '.join(map(str, rounds['method'].unique()))})")
    others = [c for c in by if c != "method"]
    rows = []
    for key, group in rounds.groupby(by, dropna=False, sort=False):
        key = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        per_seed = group.set_index("seed")["rounds"].astype(float)
        if per_seed.index.duplicated().any():
            raise ValueError(f"by: several runs of {key} share a seed; add the column that tells them apart")
        counts = {"seeds": int(len(per_seed)), "reached": int(group["reached"].sum()), "interval": "t 95%"}
        mean, low, high, n = interval(per_seed.to_numpy())
        row = {**key, "metric": "rounds", "mean": mean, "ci_low": low, "ci_high": high, "n": n, **counts}
        if reference is None:
            rows.append(row)
            continue
        same = rounds["method"] == reference
        for column in others:
            same &= rounds[column] == key[column]
        ref = rounds[same].set_index("seed")["rounds"].astype(float)
        pairs = pd.concat([per_seed.rename("run"), ref.rename("reference")], axis=1, join="inner")
        if key["method"] == reference:
            row.update(reference=reference, diff=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, n_pairs=0,
                       p_value=np.nan)
        else:
            row.update(reference=reference, **paired_difference(pairs["run"], pairs["reference"]))
        mean, low, high, n = interval((pairs["reference"] / pairs["run"]).to_numpy())
        rows += [row, {**key, "metric": "speedup", "mean": mean, "ci_low": low, "ci_high": high, "n": n, **counts,
                       "reference": reference}]
    columns = [*by, "metric", "mean", "ci_low", "ci_high", "n", "seeds", "reached", "interval"]
    if reference is not None:
        columns += ["reference", "diff", "diff_ci_low", "diff_ci_high", "n_pairs", "p_value"]
    return pd.DataFrame(rows, columns=columns)


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


def summarize_paired(table: pd.DataFrame, by: Sequence[str], value: str | Sequence[str], *, method: str = "method",
                     reference: Optional[str] = None) -> pd.DataFrame:
    """:func:`summarize` in :func:`fedlab.compare`'s shape, with each method's difference from a reference paired
    over seeds: what a notebook quotes (:func:`fedlab.quote`, :func:`fedlab.compared`, :func:`fedlab.ranking`).

    ``by`` holds the ``method`` column (what is compared: an algorithm, a defence, a policy) and any other grouping
    (the alpha, the attack). One row per group, method and ``value`` (a column, or a list of them; ``metric``
    names it): ``mean`` over seeds, its 95 % t-interval (``ci_low``, ``ci_high``; ``n`` seeds,
    :func:`fedlab.stats.interval`) and, with ``reference``, the difference from the reference in the same group,
    paired over the seeds both have: ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``n_pairs``, ``p_value``
    (:func:`fedlab.stats.paired_difference`). ``reference="best"``: in each group and metric, the method with the
    highest mean (the ``reference`` column names it).

    Rows that share a group, method and seed are averaged first (one row per client, say: a seed counts once, with
    its mean over clients); leave no column out of ``by`` that tells runs apart. The method column is called
    ``method`` in the result.
    """
    by = list(by)
    values = [value] if isinstance(value, str) else list(value)
    if method not in by:
        raise ValueError(f"by: must include the method column {method!r}, got {by}")
    if method != "method" and "method" in by:
        raise ValueError(f"by: holds a column 'method' besides the method column {method!r}; rename one")
    missing = [c for c in [*by, "seed", *values] if c not in table.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}; columns are {', '.join(map(str, table.columns))}")
    if reference not in (None, "best") and reference not in set(table[method]):
        raise ValueError(f"reference: {reference!r} is not a value of {method!r} "
                         f"({', '.join(map(str, table[method].unique()))}), nor 'best'")
    others = [c for c in by if c != method]
    per_seed = table.groupby([*by, "seed"], dropna=False, sort=False, observed=True)[values].mean()
    level = others[0] if len(others) == 1 else others  # one level: scalar keys, as pandas will keep them
    groups = per_seed.groupby(level=level, dropna=False, sort=False) if others else [((), per_seed)]
    rows = []
    for key, group in groups:
        context = dict(zip(others, key if isinstance(key, tuple) else (key,)))
        for metric in values:
            series = {m: s.droplevel(by) for m, s in group[metric].groupby(level=method, dropna=False, sort=False)}
            stats = {m: interval(s.to_numpy(float)) for m, s in series.items()}
            ref = reference
            if reference == "best":
                means = {m: st[0] for m, st in stats.items() if not np.isnan(st[0])}
                ref = max(means, key=means.get) if means else None  # ties: the first in the table
            for m, seeds in series.items():
                mean, low, high, n = stats[m]
                row = {**context, "method": m, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                       "n": n, "interval": "t 95%"}
                if reference is not None and (ref is None or m == ref or ref not in series):
                    row.update(reference=ref, diff=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, n_pairs=0,
                               p_value=np.nan)
                elif reference is not None:
                    pairs = pd.concat([seeds.rename("run"), series[ref].rename("reference")], axis=1, join="inner")
                    row.update(reference=ref, **paired_difference(pairs["run"], pairs["reference"]))
                rows.append(row)
    columns = [("method" if c == method else c) for c in by] + ["metric", "mean", "ci_low", "ci_high", "n", "interval"]
    if reference is not None:
        columns += ["reference", "diff", "diff_ci_low", "diff_ci_high", "n_pairs", "p_value"]
    return pd.DataFrame(rows, columns=columns)


def accounting_table(noise_multipliers: Sequence[float], clients_per_round: Sequence[int], *, num_clients: int,
                     rounds: int, delta: float, accountant: str = "rdp") -> pd.DataFrame:
    """Epsilon for each (noise multiplier, clients per round): accounting only, nothing is trained."""

    return pd.DataFrame([{"noise_multiplier": z, "clients_per_round": k, "num_clients": num_clients,
                          "rounds": rounds, "delta": delta,
                          "epsilon": epsilon(z, k / num_clients, rounds, delta, accountant)}
                         for z in noise_multipliers for k in clients_per_round])
