"""The numbers a notebook's text quotes, formatted from its own results, so the text cannot drift from them.

A notebook's "What the full setting shows" is a cell that builds its Markdown from the tables it just computed
(:func:`findings`), quoting each number with :func:`quote` (a mean with its 95 % interval, or a paired
difference with its interval and p-value), :func:`compared` (the difference in the words its interval
supports), :func:`ranking` (every method against a reference, the best say, in those words), :func:`tally`
(many rows' intervals against chance) or :func:`number`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from .stats import no_spread

# ranking's groups for a difference without an interval (_unspread)
_SAME = "the same difference at every seed"
_ONE_SEED = "on one seed only (no interval)"
_NO_INTERVAL = "with no interval"


def interval_text(mean: float, low: float = math.nan, high: float = math.nan, digits: int = 3) -> str:
    """``0.780 [0.771, 0.789]``; the mean alone when there is no interval (one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "undefined"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _needs(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table: has no column {missing[0]!r}, which {what} needs (a fedlab.compare or "
                         f"fedlab.summarize_paired table{' with a reference' if 'diff' in missing[0] else ''})")


def _select(table: pd.DataFrame, metric: Optional[str], site: Optional[str]) -> pd.DataFrame:
    """The rows of ``metric`` (when the table has several) and ``site`` (None: every one)."""
    if metric is not None and "metric" in table:
        table = table[table["metric"] == metric]
    return table if site is None else table[table["site"] == site]


def _row(table: pd.DataFrame, method: str, metric: Optional[str], site: Optional[str]) -> pd.Series:
    _needs(table, ["method", "mean"], "a quote")
    rows = _select(table[table["method"] == method], metric, site)
    if len(rows) != 1:
        raise ValueError(f"method: {len(rows)} rows of the table match method={method!r}, metric={metric!r}, "
                         f"site={site!r}; exactly one must")
    return rows.iloc[0]


def quote(table: pd.DataFrame, method: str, metric: Optional[str] = None, *, site: Optional[str] = None,
          digits: int = 3, difference: bool = False) -> str:
    """One row of a :func:`fedlab.compare` (or :func:`fedlab.summarize`) table as text: the mean and its 95 %
    interval, or with ``difference`` the paired difference from the reference, its interval and p-value."""
    if difference:
        _needs(table, ["diff", "diff_ci_low", "diff_ci_high", "p_value"], "a difference")
    row = _row(table, method, metric, site)
    if not difference:
        return interval_text(float(row["mean"]), float(row.get("ci_low", math.nan)),
                             float(row.get("ci_high", math.nan)), digits)
    diff = float(row["diff"])
    if math.isnan(diff):  # no seed where both are defined (a run that never reached a target, say)
        return "undefined"
    text = f"{diff:+.{digits}f}"
    if not math.isnan(float(row["diff_ci_low"])):
        text += f" [{row['diff_ci_low']:+.{digits}f}, {row['diff_ci_high']:+.{digits}f}]"
    p = float(row["p_value"])
    return text + ("" if math.isnan(p) else f" (p = {p:.2g})")


def compared(table: pd.DataFrame, method: str, metric: Optional[str] = None, *, site: Optional[str] = None,
             digits: int = 3) -> str:
    """A method against the table's reference in words the interval supports: "above <reference> by +0.031
    [+0.010, +0.052] (p = 0.02)" when the paired interval excludes 0, "below ..." likewise, else "not
    distinguishable from <reference> (+0.008 [-0.015, +0.031] (p = 0.4))". A difference without an interval is
    said as such: the same at every seed ("below <reference> by -1.0 at each of the 3 seeds (no spread, so no
    interval)"), on one seed alone ("+3.0 from <reference> on the one seed where both are defined (no interval)"),
    or in a table that does not count its pairs (no ``n_pairs``): "+3.0 from <reference> (no interval)"."""
    _needs(table, ["reference", "diff", "diff_ci_low", "diff_ci_high", "p_value"], "a comparison")
    row = _row(table, method, metric, site)
    low, high = float(row["diff_ci_low"]), float(row["diff_ci_high"])
    change = quote(table, method, metric, site=site, digits=digits, difference=True)
    if math.isnan(float(row["diff"])):
        return f"not comparable with {row['reference']} (no seed where both are defined)"
    unspread = _unspread(row, digits)
    if unspread is not None:
        group, words = unspread
        return words.format(reference=row["reference"]) + (" (no spread, so no interval)" if group == _SAME
                                                           else " (no interval)")
    if not math.isnan(low) and low > 0:
        return f"above {row['reference']} by {change}"
    if not math.isnan(high) and high < 0:
        return f"below {row['reference']} by {change}"
    return f"not distinguishable from {row['reference']} ({change})"


def _pairs(row: pd.Series) -> int:
    """The seeds a row's difference is paired over; 0 when the table does not say (no ``n_pairs``, None or NaN)."""
    n = row.get("n_pairs")
    return 0 if n is None or pd.isna(n) else int(n)


def _unspread(row: pd.Series, digits: int) -> Optional[tuple[str, str]]:
    """(:func:`ranking`'s group, the words, with ``{reference}`` to fill) for a defined difference without an
    interval, else None: one pair; pairs that all differ by the same amount (no p-value either: the seeds agree, so
    there is no spread to test against, and "not distinguishable" would misreport them); or a table that does not
    say how many pairs (no ``n_pairs``) and gives neither an interval nor a p-value."""
    diff, n, no_p = float(row["diff"]), _pairs(row), math.isnan(float(row["p_value"]))
    if math.isnan(diff) or not math.isnan(float(row["diff_ci_low"])):
        return None
    if n == 1:
        return _ONE_SEED, f"{diff:+.{digits}f} from {{reference}} on the one seed where both are defined"
    if n >= 2 and no_p:
        mean = float(row.get("mean", math.nan))
        mean = 0.0 if math.isnan(mean) else mean
        if no_spread(np.array([mean, mean - diff])):  # 0 up to the rounding of the means it was taken from
            return _SAME, f"the same as {{reference}} at each of the {n} seeds"
        side = "above" if diff > 0 else "below"
        return _SAME, f"{side} {{reference}} by {diff:+.{digits}f} at each of the {n} seeds"
    if n == 0 and no_p:
        return _NO_INTERVAL, f"{diff:+.{digits}f} from {{reference}}"
    return None


def interval_table(table: pd.DataFrame, *, index: Union[str, Sequence[str]] = "method",
                   columns: Union[str, Sequence[str]] = "metric", digits: int = 3) -> pd.DataFrame:
    """A comparison or summary table as text cells "mean [low, high]", ``index`` by ``columns`` (a column, or a
    list of them; rows and columns in the order they first appear): what a notebook shows."""
    keys = [k for part in (index, columns) for k in ([part] if isinstance(part, str) else list(part))]
    _needs(table, ["mean", *keys], "an interval table")
    text = table.assign(shown=[interval_text(float(r["mean"]), float(r.get("ci_low", math.nan)),
                                             float(r.get("ci_high", math.nan)), digits)
                               for _, r in table.iterrows()])
    shown = text.pivot(index=index, columns=columns, values="shown")

    def order(keys):
        keys = [keys] if isinstance(keys, str) else list(keys)
        return list(dict.fromkeys(text[keys[0]] if len(keys) == 1 else text[keys].itertuples(index=False, name=None)))

    return shown.loc[order(index), order(columns)]


def ranking(table: pd.DataFrame, metric: Optional[str] = None, *, site: Optional[str] = None,
            digits: int = 3) -> str:
    """Every method of ``table`` against its reference, grouped by what the paired interval supports: "fedyogi
    0.897 [0.852, 0.942]; not distinguishable from it: scaffold (-0.014 [-0.050, +0.022], p = 0.3); below it:
    fedavg (-0.058 [-0.090, -0.026], p = 0.01)" (within a group, the largest difference first). Differences
    without an interval are grouped and worded as :func:`compared` says them: "the same difference at every
    seed: fedprox (below fedyogi by -0.010 at each of the 3 seeds)", "on one seed only (no interval)" and "with no
    interval" (a table without ``n_pairs``). With the reference chosen as the best (:func:`fedlab.summarize_paired`
    with ``reference="best"``) this is a ranking that claims no more than the seeds support. Each interval is a
    95 % interval of its own, not corrected for the number of comparisons."""
    _needs(table, ["method", "diff", "diff_ci_low", "diff_ci_high", "p_value"], "a ranking")
    rows = _select(table, metric, site)
    references = rows["reference"].dropna().unique() if "reference" in rows else []
    if len(references) != 1:
        raise ValueError(f"table: must compare with one reference (metric={metric!r}, site={site!r}), got "
                         f"{len(references)}")
    reference = references[0]
    groups: dict[str, list] = {"above it": [], "not distinguishable from it": [], "below it": [], _SAME: [],
                               _ONE_SEED: [], _NO_INTERVAL: [],
                               "not comparable with it (no seed where both are defined)": []}
    for _, row in rows[rows["method"] != reference].sort_values("diff", ascending=False).iterrows():
        diff, low, high = float(row["diff"]), float(row["diff_ci_low"]), float(row["diff_ci_high"])
        unspread = _unspread(row, digits)
        if unspread is not None:
            group, words = unspread
            groups[group].append(f"{row['method']} ({words.format(reference=reference)})")
            continue
        where = ("not comparable with it (no seed where both are defined)" if math.isnan(diff) else
                 "above it" if low > 0 else "below it" if high < 0 else "not distinguishable from it")
        change = f"{diff:+.{digits}f}"
        if not (math.isnan(low) or math.isnan(high)):
            change += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
        if not math.isnan(float(row["p_value"])):
            change += f", p = {float(row['p_value']):.2g}"
        groups[where].append(f"{row['method']} ({change})" if not math.isnan(diff) else str(row["method"]))
    parts = [f"{reference} {quote(table, reference, metric, site=site, digits=digits)}"]
    return "; ".join(parts + [f"{where}: {', '.join(names)}" for where, names in groups.items() if names])


def tally(table: pd.DataFrame, value: float, *, difference: bool = False, digits: int = 3) -> str:
    """Where the rows' 95 % intervals lie against ``value`` (chance, say), in words: "means from 0.497 to 0.513;
    95 % interval above 0.5 in 2 of 18, below 0.5 in 0, holding 0.5 in 16" (and "undefined in n" for rows
    without an interval). ``difference``: the rows' paired differences (``diff``, ``diff_ci_low``,
    ``diff_ci_high``) instead of their means. Claims no more than each row's own interval supports."""
    names = ("diff", "diff_ci_low", "diff_ci_high") if difference else ("mean", "ci_low", "ci_high")
    _needs(table, names, "a tally")
    mean, low, high = (table[c].astype(float) for c in names)
    defined = int((low.notna() & high.notna()).sum())
    above, below = int((low > value).sum()), int((high < value).sum())
    sign = "+" if difference else ""
    span = (f"{'differences' if difference else 'means'} from {mean.min():{sign}.{digits}f} to "
            f"{mean.max():{sign}.{digits}f}" if mean.notna().any() else "undefined")
    text = (f"{span}; 95 % interval above {value:g} in {above} of {len(table)}, below {value:g} in {below}, "
            f"holding {value:g} in {defined - above - below}")
    return text + (f", undefined in {len(table) - defined}" if defined < len(table) else "")


def number(value: float, digits: int = 3) -> str:
    """A single number as the text quotes it."""
    return "undefined" if value is None or math.isnan(float(value)) else f"{float(value):.{digits}f}"


def findings(text: str) -> None:
    """Shows ``text`` as Markdown in a notebook (printed elsewhere)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)
