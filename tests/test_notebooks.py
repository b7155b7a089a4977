"""Every notebook runs top to bottom in its fast setting and writes its figures and tables."""

import json

import pytest

from fedlab import reproduce

NOTEBOOKS = reproduce.notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_fast(path, tmp_path):
    figures, results = tmp_path / "figures", tmp_path / "results"
    reproduce.run_notebook(path, fast=True, figures_dir=figures, results_dir=results, output_dir=tmp_path / "out",
                           cache_dir=tmp_path / "cache", timeout=900)
    prefix = path.name[:2]
    assert list(figures.glob(f"{prefix}_*.png")), "the notebook saved no figure"
    assert list(results.glob(f"{prefix}_*.csv")), "the notebook saved no table"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one papermill parameters cell"
