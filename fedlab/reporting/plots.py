"""Figures: each function computes a DataFrame, draws on ``ax`` (or a new
figure) and returns ``(fig, ax, df)``. None of them saves; ``save_figure``
is the separate last step.

One style for every figure of the package (:data:`STYLE`, applied by
``fl.setup()`` and by these functions): constrained layout, so legends and
labels never overlap the next subplot; legends with titles; markers and line
styles that keep identical runs visible on top of each other; wherever several
seeds were run, bands or error bars of the 95 % Student's t interval of the mean
over the seeds (:func:`fedlab.reporting.stats.interval`), said in the legend; a readable
resolution.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .stats import summary_table


STYLE = {
    "figure.constrained_layout.use": True,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": "small",
    "legend.title_fontsize": "small",
    "legend.framealpha": 0.85,
    "axes.titlesize": "medium",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def apply_style() -> None:
    """Makes :data:`STYLE` matplotlib's default (``fl.setup()`` calls it)."""
    import matplotlib

    matplotlib.rcParams.update(STYLE)


def _axis(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _look(i: int) -> dict:
    """The i-th line's marker and line style: overlapping runs stay visible."""
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)]}


def axis_label(column: str) -> str:
    """A column name as an axis label with its unit."""
    units = {"round": "round", "eval_accuracy": "test accuracy (share correct)",
             "eval_loss": "test loss (cross-entropy)", "train_loss": "training loss (cross-entropy)",
             "epsilon": "epsilon (at the run's delta)", "cumulative_bytes": "bytes sent (down + up)",
             "seconds_per_round": "seconds per round", "clients_per_round": "clients per round",
             "sim_hours": "simulated wall-clock hours", "sim_elapsed_seconds": "simulated wall-clock seconds",
             "noise_multiplier": "noise multiplier z", "eval_c_index": "test C-index (0.5 = a constant)",
             "mean_site_c_index": "C-index, mean over the sites (0.5 = a constant)"}
    for prefix, attack in (("attack_", "loss-threshold attack"), ("calibrated_attack_", "calibrated attack")):
        units.update({prefix + "auc": f"{attack}: AUC (0.5 = chance)",
                      prefix + "tpr_at_0.01_fpr": f"{attack}: TPR at 1 % FPR",
                      prefix + "tpr_at_0.001_fpr": f"{attack}: TPR at 0.1 % FPR"})
    return units.get(column, column.replace("_", " "))


INTERVAL_NOTE = "mean, 95 % t-interval over seeds"


def interval_errors(mean, low, high) -> np.ndarray:
    """Error bars (2 x n: below, above) from each mean to its interval's bounds; none where either is undefined
    (one seed, or no seed where the metric is defined)."""
    mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
    below, above = mean - low, high - mean
    return np.vstack([np.where(np.isnan(below), 0, below), np.where(np.isnan(above), 0, above)])


def _with_intervals(data: pd.DataFrame, keys: Sequence[str], value: str) -> pd.DataFrame:
    """:func:`fedlab.reporting.stats.summary_table`, with one seed's interval drawn as the mean itself (nothing to draw)."""
    table = summary_table(data, list(keys), value)
    one = table["count"] <= 1
    table.loc[one, "ci_low"], table.loc[one, "ci_high"], table.loc[one, "std"] = (table.loc[one, "mean"],
                                                                                    table.loc[one, "mean"], 0.0)
    return table


def learning_curve_table(history: pd.DataFrame, metric: str = "eval_accuracy",
                         hue: Optional[Sequence[str] | str] = None, x: str = "round") -> pd.DataFrame:
    """Mean, standard deviation and 95 % t-interval (``ci_low``, ``ci_high``) of ``metric`` per (hue..., round)
    over seeds; with another ``x`` (simulated time, bytes), also its mean per round."""
    hue = [hue] if isinstance(hue, str) else list(hue or [])
    for column in (metric, x):
        if column not in history.columns:
            raise ValueError(f"{'metric' if column == metric else 'x'}: {column!r} is not a column; columns are "
                             f"{', '.join(history.columns)}")
    data = history.dropna(subset=[metric])
    table = _with_intervals(data, hue + ["round"], metric)
    if x != "round":
        table[x] = data.groupby(hue + ["round"], dropna=False, sort=True)[x].mean().to_numpy()
    return table


def plot_learning_curves(history: pd.DataFrame, *, metric: str = "eval_accuracy",
                         hue: Optional[Sequence[str] | str] = None, ax=None, title: Optional[str] = None,
                         x: str = "round"):
    """One line per value of ``hue`` (mean over seeds, band = its 95 % t-interval) against ``x`` (the round, or a
    column such as simulated hours, averaged over seeds per round)."""
    fig, ax = _axis(ax)
    table = learning_curve_table(history, metric, hue, x)
    hue_cols = [hue] if isinstance(hue, str) else list(hue or [])
    groups = table.groupby(hue_cols, dropna=False) if hue_cols else [((), table)]
    for i, (key, group) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(str(v) for v in key) or metric
        look = _look(i)
        ax.plot(group[x], group["mean"], ms=3.5, markevery=max(1, len(group) // 12), label=label,
                color=f"C{i % 10}", marker=look["marker"], linestyle=look["linestyle"])
        if (group["count"] > 1).any():
            ax.fill_between(group[x], group["ci_low"], group["ci_high"], alpha=0.2, color=f"C{i % 10}")
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(metric))
    if title:
        ax.set_title(title)
    several = bool((table["count"] > 1).any())
    if hue_cols or several:
        ax.legend(title=", ".join(hue_cols) + (f" ({INTERVAL_NOTE})" if several else ""), fontsize="small")
    return fig, ax, table


def plot_label_distribution(report: pd.DataFrame, *, ax=None, max_clients: int = 50, title: Optional[str] = None):
    """Stacked bars: examples of each label held by each client (the partition report)."""
    import matplotlib.pyplot as plt

    fig, ax = _axis(ax, figsize=(8, 3.5))
    table = report.pivot(index="client", columns="label", values="count").fillna(0)
    table = table.iloc[:max_clients]
    bottom = np.zeros(len(table))
    colors = plt.get_cmap("tab10" if table.shape[1] <= 10 else "tab20")
    for i, label in enumerate(table.columns):
        ax.bar(table.index, table[label], bottom=bottom, color=colors(i % colors.N), label=str(label), width=0.85)
        bottom += table[label].to_numpy()
    ax.set_xlabel("client")
    ax.set_ylabel("examples held")
    if title:
        ax.set_title(title)
    ax.legend(title="label", fontsize="x-small", ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig, ax, table


def save_figure(fig, name: str, directory: Optional[str | pathlib.Path]) -> Optional[pathlib.Path]:
    """Writes ``directory/name.png`` (150 dpi); does nothing when ``directory`` is None.

    No metadata that changes between runs (matplotlib's version string is left
    out), so an unchanged figure gives an unchanged file; written through a
    temporary file and a rename.
    """
    if directory is None:
        return None
    path = pathlib.Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png", metadata={"Software": None})
    tmp.replace(path)
    return path


def save_table(df: pd.DataFrame, name: str, directory: Optional[str | pathlib.Path]) -> Optional[pathlib.Path]:
    """Writes ``directory/name.csv``; does nothing when ``directory`` is None."""
    if directory is None:
        return None
    path = pathlib.Path(directory) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def plot_metric_vs(table: pd.DataFrame, *, x: str, y: str = "eval_accuracy", hue: Optional[str] = "algorithm",
                   logx: bool = False, ax=None, title: Optional[str] = None, chance: Optional[float] = None):
    """Mean of ``y`` over seeds against ``x``, one line per ``hue``, error bars = the 95 % t-interval of the mean
    over seeds (said in the legend's title).

    Rows whose ``x`` is infinite (epsilon of a run without noise) have no place on the axis: each ``hue``'s is
    drawn as a dashed horizontal line at its mean (its interval a band), labelled ``x = ∞``, never joined to the
    finite points. ``chance``: what an attacker or a model that learns nothing scores (0.5 for an AUC), drawn
    dotted and kept in view.
    """
    fig, ax = _axis(ax)
    keys = ([hue] if hue else []) + [x]
    stats = _with_intervals(table, keys, y)
    groups = stats.groupby(hue, sort=False) if hue else [(y, stats)]
    several = bool((stats["count"] > 1).any())
    numeric = pd.api.types.is_numeric_dtype(stats[x])
    unplaced = False
    for i, (name, group) in enumerate(groups):
        group = group.sort_values(x)
        infinite = np.isinf(group[x].to_numpy(float)) if numeric else np.zeros(len(group), bool)
        look, color = _look(i), f"C{i % 10}"
        shown = group[~infinite]
        spread = np.vstack([shown["mean"] - shown["ci_low"], shown["ci_high"] - shown["mean"]])
        if len(shown):
            ax.errorbar(shown[x], shown["mean"], yerr=spread if several else None,
                        ms=4.5, capsize=3, label=str(name), color=color, **look)
        for _, row in group[infinite].iterrows():
            unplaced = True
            where = f"{x.replace('_', ' ')} = {'∞' if row[x] > 0 else '−∞'}"
            ax.axhline(row["mean"], color=color, ls="--", lw=1.2, label=f"{name}, {where}" if hue else where)
            if row["count"] > 1:
                ax.axhspan(row["ci_low"], row["ci_high"], color=color, alpha=0.12, lw=0)
    if logx:
        ax.set_xscale("log")
    if chance is not None:
        ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance ({chance:g})")
        low, high = ax.get_ylim()
        pad = 0.05 * (high - low) if high > low else 0.01
        ax.set_ylim(min(low, chance - pad), max(high, chance + pad))
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    if title:
        ax.set_title(title)
    if hue or several or unplaced or chance is not None:
        ax.legend(title=(hue.replace("_", " ") if hue else "") + (f" ({INTERVAL_NOTE})" if several else ""),
                  fontsize="small")
    return fig, ax, stats


def plot_comparison(table: pd.DataFrame, *, metric: Optional[str] = None, ax=None, title: Optional[str] = None,
                    chance: Optional[float] = None):
    """A :func:`fedlab.compare` table (one metric: ``metric``, needed when the table holds several) as points with
    their 95 % intervals, one row per method (and site, for a by-site table), the highest mean on top; ``chance``
    draws what a constant scores (0.5 for balanced accuracy and AUC). A row whose metric is undefined is listed
    and marked so."""
    rows = table
    if "metric" in rows and rows["metric"].nunique() > 1:
        if metric is None:
            raise ValueError(f"metric: the table holds {', '.join(rows['metric'].unique())}; name the one to draw")
        rows = rows[rows["metric"] == metric]
    fig, ax = _axis(ax, figsize=(6.5, 0.35 * len(rows) + 1.5))
    rows = rows.sort_values("mean", na_position="first")  # drawn bottom up: the highest mean on top
    label = (rows["method"] + ((" · " + rows["site"].astype(str)) if "site" in rows else "")).to_numpy()
    y = np.arange(len(rows))
    mean = rows["mean"].to_numpy(float)
    ax.errorbar(mean, y, xerr=interval_errors(mean, rows["ci_low"], rows["ci_high"]), fmt="o", capsize=3, color="C0")
    ax.set_yticks(y, [f"{name} (undefined)" if np.isnan(m) else name for name, m in zip(label, mean)])
    if chance is not None:
        ax.axvline(chance, color="k", ls=":", lw=1, label=f"a constant ({chance:g})")
        ax.legend(fontsize="small", loc="lower right")
    shown = metric or (rows["metric"].iloc[0] if "metric" in rows and len(rows) else "")
    n = int(rows["n"].max()) if len(rows) else 0
    kind = rows["interval"].iloc[0] if len(rows) and "interval" in rows else "t 95%"
    ax.set_xlabel(f"{axis_label(shown)} (mean, {kind} interval over {n} seeds)")
    if title:
        ax.set_title(title)
    return fig, ax, rows


def plot_site_comparison(table: pd.DataFrame, *, metric: str, methods: Optional[dict] = None, ax=None,
                         title: Optional[str] = None, chance: Optional[float] = None):
    """A by-site :func:`fedlab.compare` table (``by_site=True``) as grouped bars: one group per site (its test
    size and prevalence under its name), one bar per method (``methods``: label shown -> method in the table),
    error bars its 95 % interval over seeds; a site where the metric is undefined (one class in its test set)
    is marked so instead of a bar."""
    fig, ax = _axis(ax, figsize=(8, 4))
    rows = table[table["metric"] == metric]
    methods = methods or {m: m for m in rows["method"].unique()}
    sites = list(dict.fromkeys(rows["site"]))
    width = 0.8 / max(1, len(methods))
    undefined = {s for s in sites if rows[rows["site"] == s]["mean"].isna().all()}  # marked once, below
    for i, (label, method) in enumerate(methods.items()):
        part = rows[rows["method"] == method].set_index("site").reindex(sites)
        mean = part["mean"].to_numpy(float)
        x = np.arange(len(sites)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, np.nan_to_num(mean), width=width, yerr=interval_errors(mean, part["ci_low"], part["ci_high"]),
               capsize=2, label=label, color=f"C{i % 10}")
        for xi, m, site in zip(x, mean, sites):  # a bar of height 0 would read as a score of 0
            if np.isnan(m) and site not in undefined:
                ax.text(xi, 0.02, "n/a", ha="center", rotation=90, fontsize="x-small")
    info = rows.drop_duplicates("site").set_index("site")
    names = [f"{s}\n(n={int(info.loc[s, 'num_test'])}, {100 * info.loc[s, 'prevalence']:.0f} % positive)"
             if "prevalence" in info else s for s in sites]
    ax.set_xticks(np.arange(len(sites)), names)
    for j, s in enumerate(sites):
        if s in undefined:
            ax.text(j, 0.05, "undefined:\none class\nin the test set", ha="center", fontsize="x-small")
    if chance is not None:
        ax.axhline(chance, color="k", ls=":", lw=1)
    n = int(rows["n"].max()) if len(rows) else 0
    ax.set_ylabel(f"{axis_label(metric)}, site's own test set")
    ax.set_ylim(0, 1.12)
    ax.legend(title=f"mean, 95 % interval over {n} seeds" + ("; dotted: a constant" if chance is not None else ""),
              fontsize="small", loc="upper center", ncol=min(4, len(methods)))
    if title:
        ax.set_title(title)
    return fig, ax, rows


def plot_images(images: Sequence[np.ndarray], image_shape: tuple[int, int], *, titles: Optional[Sequence[str]] = None,
                axes=None):
    """A row of flat images reshaped to ``image_shape`` (for example one per client)."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, len(images), figsize=(1.8 * len(images), 2.0))
    axes = np.atleast_1d(axes)
    for i, (ax, image) in enumerate(zip(axes, images)):
        ax.imshow(np.asarray(image).reshape(image_shape), cmap="gray")
        ax.set_xticks([]), ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize="small")
    return axes[0].figure, axes, None


def plot_site_accuracy(history: Optional[pd.DataFrame], *, ax=None, site_names: Optional[Sequence[str]] = None,
                       excluded: Sequence[str] = (), title: Optional[str] = None, metric: str = "accuracy"):
    """Bars of the latest ``site_<metric>_<site>`` columns of a run (the global model per site; ``metric``:
    ``accuracy``, or any per-site metric of the data's task, e.g. ``c_index``).

    Sites in ``excluded`` (left out of training, still evaluated) are hatched and marked.
    """
    fig, ax = _axis(ax, figsize=(5, 3.5))
    label = metric.replace("_", " ").replace("c index", "C-index")
    title = f"{label} on each site's own test set" if title is None else title
    prefix = f"site_{metric}_"
    table = pd.DataFrame(columns=["site", metric])
    if history is not None and len(history):
        columns = [c for c in history.columns if c.startswith(prefix)]
        evaluated = history.dropna(subset=columns) if columns else history.iloc[0:0]
        if len(evaluated):
            last = evaluated.iloc[-1]
            table = pd.DataFrame({"site": [c[len(prefix):] for c in columns],
                                  metric: [float(last[c]) for c in columns]})
    sites = list(table["site"]) if len(table) else list(site_names or [])
    values = list(table[metric]) if len(table) else [0.0] * len(sites)
    for i, (site, value) in enumerate(zip(sites, values)):
        left_out = site in excluded
        ax.bar(i, value, color="0.85" if left_out else f"C{i}", edgecolor=f"C{i}", hatch="//" if left_out else None)
        if len(table):
            ax.text(i, value + 0.01, f"{value:.2f}", ha="center", fontsize="small")
        if left_out:
            ax.text(i, 0.04, "left out", ha="center", rotation=90, fontsize="x-small", va="bottom")
    ax.set_xticks(range(len(sites)), sites, rotation=20 if max(map(len, sites), default=0) > 8 else 0,
                  ha="right" if max(map(len, sites), default=0) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{label} (own test set)")
    ax.set_title(title, fontsize="medium")
    return fig, ax, table


def plot_protocol_costs(table: pd.DataFrame, *, axes=None):
    """Bytes per client (left) and the server's seconds (right) against the clients in a round, one colour per
    protocol, one line style per vector length (log-log; ``table`` as :func:`fedlab.studies.analysis.protocol_costs` gives
    it). Hollow markers: server seconds extrapolated from timed clients, not measured."""
    import matplotlib.pyplot as plt

    if axes is None:
        with plt.rc_context(STYLE):
            fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    protocols = list(dict.fromkeys(table.protocol))
    sizes = sorted(table.vector_length.unique())
    for i, protocol in enumerate(protocols):
        for j, size in enumerate(sizes):
            rows = table[(table.protocol == protocol) & (table.vector_length == size)].sort_values("clients")
            if rows.empty:
                continue
            style = dict(color=f"C{i}", linestyle=LINESTYLES[j % len(LINESTYLES)], marker=MARKERS[i % len(MARKERS)])
            axes[0].plot(rows.clients, rows.bytes_per_client, label=f"{protocol}, {size:,} values", **style)
            server = rows[rows.server_seconds > 0]
            if len(server):
                hollow = {} if server.server_seconds_measured.all() else {"markerfacecolor": "none"}
                axes[1].plot(server.clients, server.server_seconds, label=f"{protocol}, {size:,} values",
                             **style, **hollow)
    for ax, label in ((axes[0], "bytes per client (sent + received)"), (axes[1], "server seconds per round")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients in the round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small")
    axes[1].set_title("hollow: extrapolated from timed clients", fontsize="small")
    return axes[0].figure, axes, table


def plot_kaplan_meier(curves: pd.DataFrame, *, ax=None, title: Optional[str] = None):
    """Kaplan-Meier survival curves as steps, one per ``region`` (columns region, time_years, at_risk, survival, as
    :func:`fedlab.studies.tcga.region_survival` gives them). A curve ends at its last time observed; it drops to 0 where
    the last patient still followed died."""
    fig, ax = _axis(ax, figsize=(7, 4))
    for i, (region, curve) in enumerate(curves.groupby("region", sort=False)):
        ax.step(np.r_[0.0, curve.time_years], np.r_[1.0, curve.survival], where="post", color=f"C{i}",
                label=f"{region} (n={int(curve.at_risk.iloc[0])})")
    ax.set_xlabel("years since diagnosis")
    ax.set_ylabel("share still alive (Kaplan-Meier)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig, ax, curves


def plot_round_time(table: pd.DataFrame, *, ax=None, title: Optional[str] = None):
    """Seconds per round against clients per round, one line per execution (log-log).

    ``table``: columns execution, clients_per_round, seconds_per_round (as
    :func:`fedlab.experiment.sweeps.round_times` returns). A dotted line of slope 1
    through each execution's first point shows linear growth.
    """
    fig, ax = _axis(ax)
    for i, (name, group) in enumerate(table.groupby("execution", sort=False)):
        group = group.sort_values("clients_per_round")
        ax.plot(group.clients_per_round, group.seconds_per_round, marker="o", color=f"C{i}", label=name)
        k0, s0 = group.clients_per_round.iloc[0], group.seconds_per_round.iloc[0]
        ax.plot(group.clients_per_round, s0 * group.clients_per_round / k0, ls=":", color=f"C{i}", alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="clients per round", ylabel="seconds per round")
    ax.set_title(title or "round time (dotted: linear in K)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return fig, ax, table


def plot_secagg_cost(table: pd.DataFrame, *, axes=None):
    """What the secure aggregation protocols cost against the clients in a round, one colour per protocol (log-log).

    ``table``: as :func:`fedlab.protection.secagg.measure_cost` returns it, or several of them (one per seed) stacked: each
    point is then the mean over the repeats with its 95 % t-interval (said in the legends; a lower end below
    zero, which a log axis cannot show, is drawn at the axis). Left: the
    bytes a client sends and receives besides its masked vector (keys,
    encrypted shares, unmasking shares), without dropouts; middle: a client's
    seconds without dropouts; right: the server's seconds at every dropout rate
    measured (line style), the costly part being the masks of clients that
    dropped out. Dotted: slope 1 (left, middle) and 2 (right) through SecAgg's
    first point, its known growth: linear per client, quadratic at the server.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        with plt.rc_context(STYLE):
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    table = table.assign(overhead_bytes=table.bytes_per_client
                         - np.ceil(table.vector_length * table.modulus_bits / 8))
    repeats = int(table.groupby(["protocol", "clients", "dropout_rate"]).size().max()) if len(table) else 1

    def draw(ax, rows, column, i, label, linestyle="-"):
        stats = _with_intervals(rows, ["clients"], column).sort_values("clients")
        spread = None
        if repeats > 1:
            low = np.maximum(stats["ci_low"], 1e-3 * stats["mean"])  # a log axis has no room at or below 0
            spread = np.vstack([stats["mean"] - low, stats["ci_high"] - stats["mean"]])
        ax.errorbar(stats["clients"], stats["mean"], yerr=spread, color=f"C{i}", marker=MARKERS[i % len(MARKERS)],
                    linestyle=linestyle, label=label, capsize=3 if spread is not None else 0)
        return stats

    calm = table[table.dropout_rate == 0]
    panels = [(axes[0], "overhead_bytes", "bytes per client besides its masked vector", 1),
              (axes[1], "client_seconds", "seconds per client", 1)]
    for ax, column, label, slope in panels:
        for i, (name, group) in enumerate(calm.groupby("protocol", sort=False)):
            stats = draw(ax, group, column, i, name)
            if i == 0:
                n0, v0 = stats["clients"].iloc[0], stats["mean"].iloc[0]
                ax.plot(stats["clients"], v0 * stats["clients"] / n0, ls=":", color="grey")
        ax.set(ylabel=label)
    for i, (name, group) in enumerate(table.groupby("protocol", sort=False)):
        for j, (rate, rows) in enumerate(group.groupby("dropout_rate")):
            stats = draw(axes[2], rows, "server_seconds", i, f"{name}, dropout {rate:g}",
                         LINESTYLES[j % len(LINESTYLES)])
            if i == 0 and j == 0:
                n0, v0 = stats["clients"].iloc[0], stats["mean"].iloc[0]
                axes[2].plot(stats["clients"], v0 * (stats["clients"] / n0) ** 2, ls=":", color="grey")
    axes[2].set(ylabel="server seconds")
    note = f"mean, 95 % t-interval over {repeats} repeats" if repeats > 1 else None
    for ax in axes:
        ax.set(xscale="log", yscale="log", xlabel="clients in the round")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small", title=note)
    axes[0].set_title("keys and shares (dotted: linear in n)")
    axes[1].set_title("client (dotted: linear in n)")
    axes[2].set_title("server (dotted: quadratic in n)")
    return axes[0].figure, axes, table


def plot_interval_heatmap(table: pd.DataFrame, *, index: str, columns: str, ax=None, title: Optional[str] = None,
                          rows: Optional[Sequence] = None, cols: Optional[Sequence] = None, vmin: float = 0.0,
                          vmax: float = 1.0, cmap: str = "RdYlGn", digits: int = 2):
    """A summary over seeds (``mean``, ``ci_low``, ``ci_high`` and ``n`` per value of ``index`` and ``columns``:
    :func:`fedlab.summarize` or :func:`fedlab.summarize_paired`) as a grid coloured by the mean, every cell
    printing its mean and 95 % t-interval over seeds (said in the title). ``rows``, ``cols``: their order
    (default: as they first appear). Returns ``(fig, ax, the means as a grid)``."""
    rows = list(dict.fromkeys(table[index])) if rows is None else list(rows)
    cols = list(dict.fromkeys(table[columns])) if cols is None else list(cols)
    fig, ax = _axis(ax, figsize=(1.45 * len(cols) + 2, 0.8 * len(rows) + 1.6))
    cells = table.set_index([index, columns])
    grid = cells["mean"].unstack(columns).reindex(index=rows, columns=cols)
    ax.imshow(grid.to_numpy(float), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) not in cells.index:
                continue
            cell = cells.loc[(r, c)]
            low, high = float(cell["ci_low"]), float(cell["ci_high"])
            text = f"{cell['mean']:.{digits}f}" + ("" if np.isnan(low) else f"\n[{low:.{digits}f}, {high:.{digits}f}]")
            ax.text(j, i, text, ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], rotation=25, ha="right")
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set(xlabel=columns.replace("_", " "), ylabel=index.replace("_", " "))
    ax.grid(False)
    seeds = table["n"] if "n" in table else table["count"]  # summarize_paired's n, summarize's count
    ax.set_title((f"{title}\n" if title else "") + f"mean [95 % t-interval over {int(seeds.max())} seeds]")
    return fig, ax, grid
