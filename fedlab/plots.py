"""Figures: each function computes a DataFrame, draws on ``ax`` (or a new
figure) and returns ``(fig, ax, df)``. None of them saves; ``save_figure``
is the separate last step.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd


def _axis(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def learning_curve_table(history: pd.DataFrame, metric: str = "eval_accuracy",
                         hue: Optional[Sequence[str] | str] = None) -> pd.DataFrame:
    """Mean and standard deviation of ``metric`` per (hue..., round) over seeds."""
    hue = [hue] if isinstance(hue, str) else list(hue or [])
    if metric not in history.columns:
        raise ValueError(f"metric: {metric!r} is not a column; columns are {', '.join(history.columns)}")
    data = history.dropna(subset=[metric])
    table = data.groupby(hue + ["round"], dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
    return table.fillna({"std": 0.0})


def plot_learning_curves(history: pd.DataFrame, *, metric: str = "eval_accuracy",
                         hue: Optional[Sequence[str] | str] = None, ax=None, title: Optional[str] = None):
    """One line per value of ``hue`` (mean over seeds, band = one standard deviation)."""
    fig, ax = _axis(ax)
    table = learning_curve_table(history, metric, hue)
    hue_cols = [hue] if isinstance(hue, str) else list(hue or [])
    groups = table.groupby(hue_cols, dropna=False) if hue_cols else [((), table)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c}={v}" for c, v in zip(hue_cols, key)) or metric
        ax.plot(group["round"], group["mean"], marker="o" if len(group) < 15 else None, ms=3, label=label)
        if (group["count"] > 1).any():
            ax.fill_between(group["round"], group["mean"] - group["std"], group["mean"] + group["std"], alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel(metric.replace("_", " "))
    if title:
        ax.set_title(title)
    if hue_cols:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
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
    ax.set_ylabel("examples")
    if title:
        ax.set_title(title)
    ax.legend(title="label", fontsize="x-small", ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
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
                   logx: bool = False, ax=None, title: Optional[str] = None):
    """Mean of ``y`` over seeds against ``x``, one line per ``hue``, error bars = one standard deviation."""
    fig, ax = _axis(ax)
    keys = ([hue] if hue else []) + [x]
    stats = table.groupby(keys, dropna=False)[y].agg(["mean", "std", "count"]).reset_index().fillna({"std": 0.0})
    groups = stats.groupby(hue, sort=False) if hue else [(y, stats)]
    for name, group in groups:
        group = group.sort_values(x)
        ax.errorbar(group[x], group["mean"], yerr=group["std"], marker="o", ms=4, capsize=3, label=str(name))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    if title:
        ax.set_title(title)
    if hue:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig, ax, stats


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
                       title: str = "accuracy on each site's own test set"):
    """Bars of the latest ``site_accuracy_<site>`` columns of a run (the global model per site)."""
    fig, ax = _axis(ax, figsize=(5, 3.5))
    table = pd.DataFrame(columns=["site", "accuracy"])
    if history is not None and len(history):
        columns = [c for c in history.columns if c.startswith("site_accuracy_")]
        evaluated = history.dropna(subset=columns) if columns else history.iloc[0:0]
        if len(evaluated):
            last = evaluated.iloc[-1]
            table = pd.DataFrame({"site": [c[len("site_accuracy_"):] for c in columns],
                                  "accuracy": [float(last[c]) for c in columns]})
    if len(table):
        ax.bar(table["site"], table["accuracy"], color=[f"C{i}" for i in range(len(table))])
        for i, v in enumerate(table["accuracy"]):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize="small")
    elif site_names:
        ax.bar(list(site_names), [0] * len(site_names))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize="medium")
    return fig, ax, table


def plot_round_time(table: pd.DataFrame, *, ax=None, title: Optional[str] = None):
    """Seconds per round against clients per round, one line per execution (log-log).

    ``table``: columns execution, clients_per_round, seconds_per_round (as
    :func:`fedlab.distributed.round_times` returns). A dotted line of slope 1
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
