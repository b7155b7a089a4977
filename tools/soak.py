"""The soak: the browser, notebook and site-process tests N times in a row from one clean clone; passes,
failures, stalls.

A suite that passes once is evidence, not proof: an intermittent hang shows only when the same tests run
again and again. This clones the checkout's committed HEAD beside it (``../soak-clone``, so that ../shared
resolves as in CI), builds its environment once (``make env browser``), then runs
``pytest tests/test_browser.py tests/test_notebooks.py tests/test_sites.py`` ``--runs`` times. While they run, ``--load`` busy
processes keep the other cores as busy as the rest of the suite keeps CI's second pytest worker. A failure whose
message says a test stalled (its watchdog or the browser test's stall detection fired) counts as a stall; its
report of every thread's stack is in the clone's build/test-artifacts/stalls/.

    make soak                   # 5 runs
    make soak RUNS=10 LOAD=0    # 10 runs on a quiet machine
"""

from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ["tests/test_browser.py", "tests/test_notebooks.py", "tests/test_sites.py"]  # the sites: processes
STALL_WORDS = ("stalled", "still ran after", "did not finish within", "FEDLAB_WAIT_LIMIT_S")  # fedlab's waits name it


def _busy() -> None:
    while True:
        pass


def outcomes(junit: pathlib.Path) -> dict[str, str]:
    """test id -> passed / failed / stalled / skipped, from pytest's JUnit XML."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            text = (problem.get("message") or "") + (problem.text or "")
            found[name] = "stalled" if any(w in text for w in STALL_WORDS) else "failed"
        elif case.find("skipped") is not None:
            found[name] = "skipped"
        else:
            found[name] = "passed"
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--runs", type=int, default=5, help="how many times in a row (default 5)")
    parser.add_argument("--load", type=int, default=1, help="busy processes beside the tests (default 1)")
    parser.add_argument("--clone", type=pathlib.Path, default=ROOT.parent / "soak-clone")
    parser.add_argument("-k", default=None, help="pytest -k expression, to soak some notebooks only")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.load < 0:
        parser.error("--runs must be >= 1 and --load >= 0")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    shutil.rmtree(args.clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(args.clone)], check=True)
    print(f"[soak] {args.runs} runs of {' '.join(TESTS)} in a clean clone of {head} ({args.clone}), "
          f"{args.load} busy process(es) beside them", flush=True)
    built = subprocess.run(["make", "-s", "env", "browser"], cwd=args.clone, capture_output=True, text=True)
    if built.returncode:
        print(built.stdout[-3000:] + built.stderr[-3000:], flush=True)
        return 1
    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for p in load:
        p.start()
    totals = {"passed": 0, "failed": 0, "stalled": 0, "skipped": 0}
    runs_failed = 0
    try:
        for run in range(1, args.runs + 1):
            junit = args.clone / "build" / f"soak-{run}.xml"
            started = time.monotonic()
            cmd = [str(args.clone / ".venv" / "bin" / "python"), "-m", "pytest", *TESTS, "-q", "-p",
                   "no:cacheprovider", f"--junitxml={junit}"] + (["-k", args.k] if args.k else [])
            proc = subprocess.run(cmd, cwd=args.clone, capture_output=True, text=True)
            seen = outcomes(junit) if junit.exists() else {}
            counts = {k: sum(v == k for v in seen.values()) for k in totals}
            for k in totals:
                totals[k] += counts[k]
            bad = {name: v for name, v in seen.items() if v in ("failed", "stalled")}
            if proc.returncode or bad or not seen:
                runs_failed += 1
            print(f"[soak] run {run}/{args.runs}: {counts['passed']} passed, {counts['failed']} failed, "
                  f"{counts['stalled']} stalled, {counts['skipped']} skipped in {time.monotonic() - started:.0f} s"
                  + "".join(f"\n    {v}: {name}" for name, v in bad.items()), flush=True)
            if not seen:
                print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
    finally:
        for p in load:
            p.terminate()
    print(f"[soak] {args.runs - runs_failed} of {args.runs} runs passed; tests: {totals['passed']} passed, "
          f"{totals['failed']} failed, {totals['stalled']} stalled, {totals['skipped']} skipped", flush=True)
    return 1 if runs_failed else 0


if __name__ == "__main__":
    sys.exit(main())
