"""Waiting for a measurement's processes to be gone before the next measurement starts (benchmarks only)."""

from __future__ import annotations

import os
import time


def wait_until_gone(group: int, what: str, limit: float = 60.0, settle: float = 5.0) -> None:
    """Returns once no process of the session ``group`` is left (TFF's worker binary ends after the process that
    started it), then ``settle`` seconds more for the machine to settle; SystemExit naming ``what`` after
    ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            time.sleep(settle)
            return
        time.sleep(0.1)
    raise SystemExit(f"{what} were still there {limit:g} s later")
