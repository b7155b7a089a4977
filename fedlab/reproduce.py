"""Runs every notebook top to bottom with papermill: what `make figures` calls.

Each notebook has a ``parameters`` cell. Its defaults are the full setting;
``fast=True`` injects the notebook's ``FAST`` parameters so the test suite
finishes in minutes. ``figures_dir`` and ``results_dir`` tell the notebook
where its last cells save figures and tables; ``cache_dir`` holds finished
runs, so an interrupted reproduce picks up where it stopped.
"""

from __future__ import annotations

import pathlib
import time
from typing import Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebooks(only: Optional[Sequence[str]] = None) -> list[pathlib.Path]:
    """Notebooks in order; ``only`` keeps those whose name starts with one of its prefixes."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
        if not found:
            raise ValueError(f"only: no notebook matches {', '.join(only)}")
    return found


def run_notebook(path: pathlib.Path, *, fast: bool, figures_dir: pathlib.Path, results_dir: pathlib.Path,
                 output_dir: pathlib.Path, cache_dir: pathlib.Path = ROOT / "build" / "cache",
                 timeout: int = 3600) -> pathlib.Path:
    """Executes ``path`` into ``output_dir`` (the committed notebook stays without outputs)."""
    import papermill

    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / path.name
    papermill.execute_notebook(
        str(path), str(out),
        parameters={"fast": fast, "figures_dir": str(figures_dir), "results_dir": str(results_dir),
                    "cache_dir": str(cache_dir)},
        cwd=str(path.parent), kernel_name="python3", progress_bar=False, execution_timeout=timeout,
    )
    return out


def reproduce(*, fast: bool = False, only: Optional[Sequence[str]] = None,
              figures_dir: pathlib.Path = ROOT / "figures", results_dir: pathlib.Path = ROOT / "results",
              output_dir: pathlib.Path = ROOT / "build" / "notebooks") -> list[pathlib.Path]:
    written = []
    for path in notebooks(only):
        t0 = time.time()
        print(f"[reproduce] {path.name} ({'fast' if fast else 'full'}) ...", flush=True)
        written.append(run_notebook(path, fast=fast, figures_dir=pathlib.Path(figures_dir).resolve(),
                                    results_dir=pathlib.Path(results_dir).resolve(),
                                    output_dir=pathlib.Path(output_dir).resolve()))
        print(f"[reproduce] {path.name} done in {time.time() - t0:.0f} s", flush=True)
    return written
