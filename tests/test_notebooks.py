"""Every notebook runs top to bottom in its fast setting and writes its figures and tables."""

import json
import pathlib
import re

import pytest

from fedlab.notebook import reproduce

# One pytest-xdist worker runs these: the browser test and the notebook test share one results cache
# (the first and the second run of every notebook).
pytestmark = pytest.mark.xdist_group("notebooks")

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
        noise = library_noise(run / "out" / path.name)
        assert not noise, f"library log lines or warnings in the cell outputs: {noise[:3]}"
        tables.append(_tables(results))
    assert tables[0].keys() == tables[1].keys()
    for name in tables[0]:
        problem = reproduce.compare_tables(tables[0][name], tables[1][name])
        assert problem is None, f"{name}: {problem}"


# A TensorFlow/absl C++ log line, or a Python warning raised by a library (fedlab's own warnings are allowed).
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |[IWEF]\d{4} \d\d:\d\d:\d\d|WARNING:|"
                      r"To enable the following instructions)", re.M)
# A Python warning as Python prints it, "<file>:<line>: <Category>: <message>", or any line naming a warning category:
# told apart by its category, not by where Python attributes it. A library's warning is often attributed to fedlab's
# file that called the library (pandas and matplotlib point past their own frames), so a line that mentions fedlab
# can still be a library's; fedlab's own warnings are FedlabWarning or one of its subclasses.
WARNING_LINE = re.compile(r"^.*?\b(?P<category>[A-Z]\w*Warning): .*$", re.M)


def fedlab_warning_categories() -> frozenset:
    """Names of fedlab's own warning categories: FedlabWarning and its subclasses (importing fedlab loads every
    module that defines one)."""
    import fedlab  # noqa: F401
    from fedlab.core.validation import FedlabWarning

    found, todo = set(), [FedlabWarning]
    while todo:
        category = todo.pop()
        found.add(category.__name__)
        todo += category.__subclasses__()
    return frozenset(found)


FEDLAB_WARNINGS = fedlab_warning_categories()


def noise_in(text: str) -> list:
    """The library log lines and library warnings in a cell's output text."""
    return [m.group(0) for m in LOG_LINE.finditer(text)] + [
        m.group(0) for m in WARNING_LINE.finditer(text) if m.group("category") not in FEDLAB_WARNINGS]


def library_noise(executed) -> list:
    """Lines of an executed notebook's outputs that are library log noise, not results."""
    found = []
    for cell in json.loads(pathlib.Path(executed).read_text())["cells"]:
        for output in cell.get("outputs", []):
            found += noise_in("".join(output.get("text", "")) if output.get("output_type") == "stream" else "")
    return found


def _tables(folder):
    return {p.name: p for p in sorted(folder.glob("*.csv"))}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one papermill parameters cell"
