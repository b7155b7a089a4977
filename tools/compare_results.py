"""How far regenerated results moved from a committed version: the tolerance argument of a regeneration.

    python tools/compare_results.py [--ref HEAD] [--results results]

For every CSV of results/ at git revision REF and in RESULTS (a regenerated folder; benchmarks/ excepted), rows
matched by position as ``reproduce --check`` matches them: how many values differ and the three columns with the
largest absolute differences (wall-clock columns excepted, as ``reproduce --check`` does), and the text columns that
differ. Files on one side only are named. Prints both sides' ``numerics.json`` and one Markdown table; exits 0 (a
difference is what it reports, not an error; a bad REF is an error). For a change meant to move results in their
last digits (a thread count, a kernel), this is the record of how far they moved.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedlab.notebook.reproduce import TIMING  # noqa: E402


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True)


def committed_names(ref: str) -> list[str]:
    """The CSVs directly in results/ at ``ref``."""
    listing = git("ls-tree", "--name-only", f"{ref}:results").stdout.decode().splitlines()
    return [name for name in listing if name.endswith(".csv")]


def committed(ref: str, name: str) -> bytes:
    return git("show", f"{ref}:results/{name}").stdout


def as_numbers(column: pd.Series):
    """The column as floats if every value that is not missing reads as a number, else None."""
    numbers = pd.to_numeric(column, errors="coerce")
    return None if (numbers.isna() & column.notna()).any() else numbers.to_numpy(float)


def differences(old: pd.DataFrame, new: pd.DataFrame) -> dict:
    """Values compared and differing, the largest difference of each numeric column, the text columns that differ."""
    notes = []
    if set(old.columns) != set(new.columns):
        notes.append(f"columns differ: {sorted(set(old.columns) ^ set(new.columns))}")
    if old.shape[0] != new.shape[0]:
        notes.append(f"rows {old.shape[0]} against {new.shape[0]}")
        return {"notes": notes}
    compared = differing = 0
    gaps, text = {}, []
    for column in [c for c in old.columns if c in new.columns and not TIMING.search(c)]:
        x, y = as_numbers(old[column]), as_numbers(new[column])
        compared += len(old)
        if x is not None and y is not None:
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                differing += int((~same).sum())
                gap = np.abs(x[~same] - y[~same])
                gaps[column] = float(np.inf if np.isnan(gap).any() else gap.max())  # NaN against a number: inf
        else:
            changed = int((old[column].astype(str) != new[column].astype(str)).sum())
            if changed:
                differing += changed
                text.append(column)
    return {"compared": compared, "differing": differing, "gaps": gaps, "text": text, "notes": notes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD")
    parser.add_argument("--results", type=pathlib.Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    if git("rev-parse", "--verify", "--quiet", f"{args.ref}^{{commit}}").returncode != 0:
        raise SystemExit(f"--ref: {args.ref!r} is not a commit of this repository")
    folder = args.results.resolve()
    for side, text in ((args.ref, git("show", f"{args.ref}:results/numerics.json").stdout.decode()),
                       (str(folder), (folder / "numerics.json").read_text() if (folder / "numerics.json").exists()
                        else "")):
        print(f"numerics.json at {side}: {' '.join(text.split()) or 'none'}")
    print()
    print("| file | values differing | largest differences (column) | text columns differing |")
    print("|---|---|---|---|")
    before, after = set(committed_names(args.ref)), {p.name for p in folder.glob("*.csv")}
    for name in sorted(before | after):
        if name not in after:
            print(f"| {name} | missing from {folder.name}/ | | |")
            continue
        if name not in before:
            print(f"| {name} | new (not at {args.ref}) | | |")
            continue
        d = differences(pd.read_csv(io.BytesIO(committed(args.ref, name)), float_precision="round_trip"),
                        pd.read_csv(folder / name, float_precision="round_trip"))
        notes = "; ".join(d["notes"])
        if "compared" not in d:
            print(f"| {name} | {notes} | | |")
            continue
        top = sorted(d["gaps"].items(), key=lambda item: -item[1])[:3]
        largest = (", ".join(f"{gap:.3g} ({column})" for column, gap in top)
                   or ("–" if d["differing"] else "identical"))
        print(f"| {name} | {d['differing']} of {d['compared']}{f' ({notes})' if notes else ''} | {largest} | "
              f"{', '.join(d['text']) or '–'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
