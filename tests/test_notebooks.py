"""Every notebook runs top to bottom in its fast setting and writes its figures and tables."""

import json

import pytest

from fedlab import reproduce

NOTEBOOKS = reproduce.notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_fast_twice_against_the_same_cache(path, tmp_path):
    """The second run reads every finished run back from the cache (a re-run after a kernel restart)."""
    prefix = path.name[:2]
    tables = []
    for attempt in ("first", "second"):
        figures, results = tmp_path / attempt / "figures", tmp_path / attempt / "results"
        reproduce.run_notebook(path, fast=True, figures_dir=figures, results_dir=results,
                               output_dir=tmp_path / attempt / "out", cache_dir=tmp_path / "cache", timeout=900)
        assert list(figures.glob(f"{prefix}_*.png")), "the notebook saved no figure"
        assert list(results.glob(f"{prefix}_*.csv")), "the notebook saved no table"
        tables.append({p.name: p.read_text() for p in sorted(results.glob("*.csv"))})
    assert tables[0].keys() == tables[1].keys()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one papermill parameters cell"
