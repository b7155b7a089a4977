"""Tables read off histories: rounds to a target, final metrics, summaries over seeds, accounting."""

from __future__ import annotations

from collections.abc import Mapping

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..protection.accounting import epsilon
from ..experiment.runner import evaluated_rows
from ..reporting.stats import interval, paired_difference, summary_table


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


def _require(table: pd.DataFrame, columns: Sequence[str], what: str = "") -> None:
    """Refuses a table without one of ``columns``, in one line that names it (``what``: whose table it should be)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}; columns are {', '.join(map(str, table.columns))}"
                         + (f" ({what})" if what else ""))


def _check_rounds(rounds: pd.DataFrame, by: list, reference: Optional[str], needs: Sequence[str]) -> None:
    """:func:`rounds_to_target`'s table, grouped by ``by``, paired with ``reference``: refused in one line if not."""
    if not by:
        raise ValueError("by: must name at least one column (the method, say), got none")
    _require(rounds, [*by, "seed", *needs], "fedlab.rounds_to_target's table")
    if reference is not None and "method" not in by:
        raise ValueError(f"by: must include 'method' to pair runs with the reference {reference!r}, got {by}")
    if reference is not None and reference not in set(rounds["method"]):
        raise ValueError(f"reference: {reference!r} is not a method of the table "
                         f"({', '.join(map(str, rounds['method'].unique()))})")
    repeated = rounds.duplicated([*by, "seed"])
    if repeated.any():
        key = dict(zip(by, rounds.loc[repeated.idxmax(), by]))
        raise ValueError(f"by: several runs of {key} share a seed; add the column that tells them apart")


def speedups(rounds: pd.DataFrame, by: Sequence[str], reference: str) -> pd.DataFrame:
    """Each run's speedup over the ``reference`` method, per seed: :func:`rounds_to_target`'s table (one row per
    run) with ``reference_rounds``, the first crossing of the reference's run at the same seed and the same other
    ``by`` values (``by`` holds ``method``), and ``speedup``, that over the run's own first crossing (NaN unless
    both reached the target; the reference's own runs: 1 where it reached).

    Speedups at the same seeds pair: :func:`summarize_paired` over them compares the speedup of one method on two
    partitions, say, seed by seed (``method="partition"``).
    """
    by = list(by)
    if reference is None:
        raise ValueError("reference: must name the method to take speedups over, got None")
    _check_rounds(rounds, by, reference, ["rounds"])
    others = [c for c in by if c != "method"]
    ref = rounds.loc[rounds["method"] == reference, [*others, "seed", "rounds"]]
    runs = rounds.drop(columns=["reference_rounds", "speedup"], errors="ignore").merge(
        ref.rename(columns={"rounds": "reference_rounds"}), on=[*others, "seed"], how="left")
    return runs.assign(speedup=runs["reference_rounds"].astype(float) / runs["rounds"].astype(float))


def summarize_rounds_to_target(rounds: pd.DataFrame, by: Sequence[str], *,
                                reference: Optional[str] = None) -> pd.DataFrame:
    """:func:`rounds_to_target`'s table (each seed's first crossing, one row per run) summarized over seeds.

    One row per group of ``by`` and ``metric``: ``rounds`` is the mean first-crossing round over the seeds that
    reached the target, with its 95 % t-interval (``ci_low``, ``ci_high``, :func:`fedlab.reporting.stats.interval`) and
    ``n`` those seeds; ``seeds`` counts the runs and ``reached`` those that reached the target. Seeds that never
    reached it are left out of the mean, so a mean over fewer seeds than were run is flattering: read it with
    ``reached``.

    ``reference``: a value of the ``method`` column (which ``by`` must hold). Each run is paired with the
    reference's run at the same seed and the same other ``by`` values, where both reached the target: on the
    ``rounds`` row, the paired difference (run minus reference, in rounds: ``diff``, ``diff_ci_low``,
    ``diff_ci_high``, ``n_pairs``, ``p_value``, :func:`fedlab.reporting.stats.paired_difference`); and a ``speedup`` row,
    the reference's rounds over the run's per seed (:func:`speedups`), its mean and interval (``n``: the pairs).
    Both are :func:`summarize_paired` over the seeds.
    """
    by = list(by)
    _check_rounds(rounds, by, reference, ["rounds", "reached"])
    method = "method" if "method" in by else by[-1]  # without a reference, any column of by can be the "method"
    table = rounds if reference is None else speedups(rounds, by, reference)
    values = ["rounds"] if reference is None else ["rounds", "speedup"]
    summary = summarize_paired(table, by, values, method=method, reference=reference)
    summary = summary.rename(columns={"method": method})
    paired = ["diff", "diff_ci_low", "diff_ci_high", "n_pairs", "p_value"]
    if reference is not None:  # a speedup is already relative to the reference: no difference from it
        summary[paired] = summary[paired].where(summary["metric"] == "rounds")
    groups = rounds.groupby(by, dropna=False, sort=False)
    counts = rounds.assign(_order=groups.ngroup()).groupby(by, dropna=False, sort=False).agg(
        seeds=("seed", "size"), reached=("reached", "sum"), _order=("_order", "first")).reset_index()
    summary = summary.merge(counts.astype({"reached": int}), on=by, how="left")
    summary = summary.sort_values(["_order", "metric"], kind="stable").reset_index(drop=True)  # as before: by group
    columns = [*by, "metric", "mean", "ci_low", "ci_high", "n", "seeds", "reached", "interval"]
    return summary[columns + (["reference", *paired] if reference is not None else [])]


def fastest_to_target(summary: pd.DataFrame, by=(), *, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """The fastest method in each group of ``by`` (a column or a list; none: the whole table) of a
    :func:`summarize_rounds_to_target` table: the one that reached the target at the most seeds, then at the
    lowest mean first round over them (ties: the first in the table). ``exclude``: methods not to choose (the
    reference, say). Returns their ``rounds`` rows, indexed by ``by``.

    The rule is a choice, not a finding: a lowest mean can be indistinguishable from the next one. Quote the
    chosen method with its interval and in words its paired interval supports (:func:`fedlab.compared`), or rank
    every method against it (:func:`summarize_paired` with ``reference``, :func:`fedlab.ranking`).
    """
    by = [by] if isinstance(by, str) else list(by)
    _require(summary, [*by, "method", "metric", "mean", "reached"], "fedlab.summarize_rounds_to_target's table")
    rows = summary[(summary["metric"] == "rounds") & ~summary["method"].isin(list(exclude))]
    if not len(rows):
        raise ValueError(f"exclude: leaves no method to choose from (methods: "
                         f"{', '.join(map(str, summary['method'].unique()))})")
    groups = rows.groupby(by, dropna=False, sort=False) if by else [((), rows)]
    chosen = rows.loc[[group.sort_values(["reached", "mean"], ascending=[False, True], kind="stable",
                                         na_position="last").index[0] for _, group in groups]]
    return chosen.set_index(by) if by else chosen.reset_index(drop=True)


def final_metrics(history: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The last evaluated round of each run (one row per group of ``by`` and seed)."""
    evaluated = evaluated_rows(history)
    return evaluated.sort_values("round").groupby(list(by) + ["seed"], dropna=False).tail(1).reset_index(drop=True)


def at_time(history: pd.DataFrame, seconds, by: Sequence[str], time: str = "sim_elapsed_seconds") -> pd.DataFrame:
    """The last evaluated row of each run (group of ``by`` and seed) at or before ``seconds`` of simulated time:
    runs compared at equal time, not at equal rounds. ``seconds``: one number, or a mapping seed -> number (each
    seed's own time, e.g. when another policy's run of that seed ended). A run with no evaluation by then is left
    out with a warning naming it."""
    import warnings

    evaluated = evaluated_rows(history).sort_values("round")
    rows = []
    for key, run in evaluated.groupby(list(by) + ["seed"], dropna=False, sort=False):
        limit = seconds[run["seed"].iloc[0]] if isinstance(seconds, (Mapping, pd.Series)) else seconds
        before = run[run[time] <= float(limit) * (1 + 1e-12)]
        if before.empty:
            warnings.warn(f"at_time: run {key} has no evaluated round by {float(limit):g} s", stacklevel=2)
            continue
        rows.append(before.iloc[-1])
    return pd.DataFrame(rows).reset_index(drop=True)


def time_to_target(history: pd.DataFrame, target: float, by: Sequence[str], metric: str = "eval_accuracy",
                   time: str = "sim_elapsed_seconds") -> pd.DataFrame:
    """Simulated seconds until ``metric`` first reaches ``target`` (evaluated rows), per group of ``by`` and seed:
    ``seconds`` (NaN if never), ``reached``, ``seconds_budget`` (when the run ended)."""
    rows = []
    for key, run in evaluated_rows(history).groupby(list(by) + ["seed"], dropna=False, sort=True):
        run = run.dropna(subset=[metric]).sort_values("round")
        hit = run[run[metric] >= target]
        rows.append({**dict(zip(list(by) + ["seed"], key)),
                     "seconds": float(hit[time].iloc[0]) if len(hit) else np.nan, "reached": bool(len(hit)),
                     "seconds_budget": float(run[time].max())})
    return pd.DataFrame(rows)


def protocol_costs(secagg: pd.DataFrame, ckks: pd.DataFrame) -> pd.DataFrame:
    """What each way of summing the clients' updates costs one client and the server in a round, per clients in the
    round and values in the update. Bytes are what a client sends and receives: plain float32, its update up and the
    model down (8 bytes a value); SecAgg and SecAgg+ (:func:`fedlab.secagg_cost` without dropouts, the mean over its
    repeats, at the vector length and ring it measured), the protocol's messages (keys, shares, the masked vector)
    and the model down in float32; CKKS (:func:`fedlab.he_cost`), its ciphertexts up and the encrypted mean down
    (the sites apply the mean themselves), with the server's seconds extrapolated from timed clients. Columns:
    protocol, clients, vector_length, bytes_per_client, bytes_per_value_sent_received, client_seconds,
    server_seconds, server_seconds_measured (False where extrapolated), max_error (CKKS: the decrypted mean's
    largest error, measured)."""
    calm = secagg[secagg.dropout_rate == 0].groupby(["protocol", "clients", "vector_length"], as_index=False)[
        ["bytes_per_client", "client_seconds", "server_seconds"]].mean()
    calm = calm.assign(bytes_per_client=calm.bytes_per_client + 4 * calm.vector_length, server_seconds_measured=True,
                       max_error=0.0)
    he = ckks.rename(columns={"server_seconds_extrapolated": "server_seconds"}).assign(server_seconds_measured=False)
    sizes = sorted(set(calm.vector_length) | set(he.vector_length))
    plain = pd.DataFrame([{"protocol": "plain float32", "clients": n, "vector_length": d, "bytes_per_client": 8 * d,
                           "client_seconds": 0.0, "server_seconds": 0.0, "server_seconds_measured": True,
                           "max_error": 0.0}
                          for d in sizes for n in sorted(set(he.clients) | set(calm.clients))])
    columns = ["protocol", "clients", "vector_length", "bytes_per_client", "client_seconds", "server_seconds",
               "server_seconds_measured", "max_error"]
    table = pd.concat([plain, calm[columns], he[columns]], ignore_index=True)
    table.insert(4, "bytes_per_value_sent_received", table.bytes_per_client / table.vector_length)
    return table.sort_values(["vector_length", "clients", "protocol"], kind="stable").reset_index(drop=True)


def summarize(table: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation, count and the 95 % t-interval of the mean (``ci_low``, ``ci_high``) of ``value``
    over seeds, per group of ``by`` (:func:`fedlab.reporting.stats.summary_table`; NaN bounds where a group has one seed)."""
    return summary_table(table, list(by), value)


def summarize_paired(table: pd.DataFrame, by: Sequence[str], value: str | Sequence[str], *, method: str = "method",
                     reference: Optional[str] = None, higher_is_better: bool = True, interval_method: str = "t",
                     confidence: float = 0.95) -> pd.DataFrame:
    """:func:`summarize` in :func:`fedlab.compare`'s shape, with each method's difference from a reference paired
    over seeds: what a notebook quotes (:func:`fedlab.quote`, :func:`fedlab.compared`, :func:`fedlab.ranking`).

    ``by`` holds the ``method`` column (what is compared: an algorithm, a defence, a policy) and any other grouping
    (the alpha, the attack). One row per group, method and ``value`` (a column, or a list of them; ``metric``
    names it): ``mean`` over seeds, its 95 % t-interval (``ci_low``, ``ci_high``; ``n`` seeds,
    :func:`fedlab.reporting.stats.interval`) and, with ``reference``, the difference from the reference in the same group,
    paired over the seeds both have: ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``n_pairs``, ``p_value``
    (:func:`fedlab.reporting.stats.paired_difference`). ``reference="best"``: in each group and metric, the method with the
    highest mean, or the lowest with ``higher_is_better=False`` (a loss, rounds, seconds; the ``reference``
    column names it). ``interval_method``: ``"t"`` or ``"bootstrap"`` (:mod:`fedlab.reporting.stats`), at ``confidence``.

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
    _require(table, [*by, "seed", *values])
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
            stats = {m: interval(s.to_numpy(float), confidence=confidence, method=interval_method)
                     for m, s in series.items()}
            ref = reference
            if reference == "best":
                means = {m: st[0] if higher_is_better else -st[0] for m, st in stats.items() if not np.isnan(st[0])}
                ref = max(means, key=means.get) if means else None  # ties: the first in the table
            for m, seeds in series.items():
                mean, low, high, n = stats[m]
                row = {**context, "method": m, "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                       "n": n, "interval": f"{interval_method} {confidence:.0%}"}
                if reference is not None and (ref is None or m == ref or ref not in series):
                    row.update(reference=ref, diff=np.nan, diff_ci_low=np.nan, diff_ci_high=np.nan, n_pairs=0,
                               p_value=np.nan)
                elif reference is not None:
                    pairs = pd.concat([seeds.rename("run"), series[ref].rename("reference")], axis=1, join="inner")
                    row.update(reference=ref, **paired_difference(pairs["run"], pairs["reference"],
                                                                  confidence=confidence, method=interval_method))
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
