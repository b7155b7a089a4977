"""The numbers a notebook's text quotes, formatted from its own results, so the text cannot drift from them.

A notebook's "What the full setting shows" is a cell that builds its Markdown from the tables it just computed
(:func:`findings`), quoting each number with :func:`quote` (a mean with its 95 % interval, or a paired
difference with its interval and p-value), :func:`compared` (the difference in the words its interval
supports) or :func:`number`.
"""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd


def interval_text(mean: float, low: float = math.nan, high: float = math.nan, digits: int = 3) -> str:
    """``0.780 [0.771, 0.789]``; the mean alone when there is no interval (one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "undefined"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _row(table: pd.DataFrame, method: str, metric: Optional[str], site: Optional[str]) -> pd.Series:
    rows = table[table["method"] == method]
    if metric is not None and "metric" in rows:
        rows = rows[rows["metric"] == metric]
    if site is not None:
        rows = rows[rows["site"] == site]
    if len(rows) != 1:
        raise ValueError(f"method: {len(rows)} rows of the table match method={method!r}, metric={metric!r}, "
                         f"site={site!r}; exactly one must")
    return rows.iloc[0]


def quote(table: pd.DataFrame, method: str, metric: Optional[str] = None, *, site: Optional[str] = None,
          digits: int = 3, difference: bool = False) -> str:
    """One row of a :func:`fedlab.compare` (or :func:`fedlab.summarize`) table as text: the mean and its 95 %
    interval, or with ``difference`` the paired difference from the reference, its interval and p-value."""
    row = _row(table, method, metric, site)
    if not difference:
        return interval_text(float(row["mean"]), float(row.get("ci_low", math.nan)),
                             float(row.get("ci_high", math.nan)), digits)
    diff = float(row["diff"])
    text = f"{diff:+.{digits}f}"
    if not math.isnan(float(row["diff_ci_low"])):
        text += f" [{row['diff_ci_low']:+.{digits}f}, {row['diff_ci_high']:+.{digits}f}]"
    p = float(row["p_value"])
    return text + ("" if math.isnan(p) else f" (p = {p:.2g})")


def compared(table: pd.DataFrame, method: str, metric: Optional[str] = None, *, site: Optional[str] = None,
             digits: int = 3) -> str:
    """A method against the table's reference in words the interval supports: "above <reference> by +0.031
    [+0.010, +0.052] (p = 0.02)" when the paired interval excludes 0, "below ..." likewise, else "not
    distinguishable from <reference> (+0.008 [-0.015, +0.031], p = 0.4)"."""
    row = _row(table, method, metric, site)
    low, high = float(row["diff_ci_low"]), float(row["diff_ci_high"])
    change = quote(table, method, metric, site=site, digits=digits, difference=True)
    if not math.isnan(low) and low > 0:
        return f"above {row['reference']} by {change}"
    if not math.isnan(high) and high < 0:
        return f"below {row['reference']} by {change}"
    return f"not distinguishable from {row['reference']} ({change})"


def number(value: float, digits: int = 3) -> str:
    """A single number as the text quotes it."""
    return "undefined" if value is None or math.isnan(float(value)) else f"{float(value):.{digits}f}"


def findings(text: str) -> str:
    """Shows ``text`` as Markdown in a notebook (printed elsewhere) and returns it."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return text
    except ImportError:
        pass
    print(text)
    return text
