"""Every notebook runs top to bottom in its fast setting and writes its figures and tables."""

import json

import pytest

from fedlab import reproduce

NOTEBOOKS = reproduce.notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_fast_twice_against_the_same_cache(path, tmp_path, notebook_cache, notebook_runs):
    """Twice against one results cache: the second run reads finished runs back (a re-run after a kernel restart).

    When the browser test already ran this notebook against the session's cache, that was the first run;
    otherwise both runs happen here. The tables the two runs write must be the same.
    """
    prefix = path.name[:2]
    tables = []
    if path.name in notebook_runs:
        tables.append(_tables(notebook_runs[path.name]))
    while len(tables) < 2:
        run = tmp_path / f"run{len(tables)}"
        figures, results = run / "figures", run / "results"
        reproduce.run_notebook(path, fast=True, figures_dir=figures, results_dir=results, output_dir=run / "out",
                               cache_dir=notebook_cache, timeout=900)
        assert list(figures.glob(f"{prefix}_*.png")), "the notebook saved no figure"
        assert list(results.glob(f"{prefix}_*.csv")), "the notebook saved no table"
        tables.append(_tables(results))
    assert tables[0].keys() == tables[1].keys()
    for name in tables[0]:
        problem = reproduce.compare_tables(tables[0][name], tables[1][name])
        assert problem is None, f"{name}: {problem}"


def _tables(folder):
    return {p.name: p for p in sorted(folder.glob("*.csv"))}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one papermill parameters cell"
