"""``reproduce`` runs notebooks side by side, each in a process of its own, except those that report wall-clock
time: they run alone, first. A failure stops new starts and is raised naming the notebook and its log."""

import json
import pathlib
import subprocess
import sys
import threading
import time

import nbformat
import pandas as pd
import pytest

from fedlab.notebook import reproduce


def test_every_notebook_that_reports_wall_clock_time_runs_alone():
    timed = {reproduce.owner(name) for name in reproduce.TIMING_FIGURES}
    for path in sorted(reproduce.RESULTS.glob("*.csv")):
        if any(reproduce.TIMING.match(column) for column in pd.read_csv(path, nrows=0).columns):
            timed.add(reproduce.owner(path.name))
    assert timed == reproduce.TIMES_ITSELF  # none missing, none run alone without reason


def names(*prefixes):
    return [pathlib.Path(f"{p}_notebook.ipynb") for p in prefixes]


class Recorder:
    """Stands in for running a notebook: records when each started and ended, sleeps, fails where asked."""

    def __init__(self, fail=()):
        self.spans, self.fail, self.lock = {}, set(fail), threading.Lock()

    def __call__(self, path):
        start = time.monotonic()
        time.sleep(0.1 if path.name[:2] in self.fail else 0.4)  # a failure comes while the others still run
        with self.lock:
            self.spans[path.name[:2]] = (start, time.monotonic())
        if path.name[:2] in self.fail:
            raise RuntimeError(f"{path.name} failed")
        return pathlib.Path("out") / path.name

    def overlap(self, a, b):
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return s1 < e2 and s2 < e1


def test_timed_notebooks_run_first_and_alone_the_others_two_at_a_time():
    run, lines = Recorder(), []
    paths = names("01", "02", "03", "04", "05", "06", "07", "08")
    written = reproduce.schedule(paths, 2, run, say=lines.append)
    assert written == [pathlib.Path("out") / p.name for p in paths]  # notebook order
    assert set(run.spans) == {p.name[:2] for p in paths}
    for timed in ("04", "05", "06"):
        assert not any(run.overlap(timed, other) for other in run.spans if other != timed)
        assert all(run.spans[timed][1] <= run.spans[other][0] for other in ("01", "02", "03", "07", "08"))
    together = ["01", "02", "03", "07", "08"]
    assert run.overlap("01", "02")
    for i, a in enumerate(together):  # never three at once
        for b in together[i + 1:]:
            for c in together[together.index(b) + 1:]:
                assert not (run.overlap(a, b) and run.overlap(a, c) and run.overlap(b, c))
    assert lines[0] == "[reproduce] 04_notebook.ipynb (full), alone: it reports wall-clock time ..."
    assert "[reproduce] 02_notebook.ipynb (full), beside 01_notebook.ipynb ..." in lines
    assert sum(line.endswith(" s") and " done in " in line for line in lines) == 8


def test_one_job_runs_every_notebook_one_after_the_other():
    run = Recorder()
    reproduce.schedule(names("01", "02", "04"), 1, run, say=lambda line: None)
    assert not run.overlap("01", "02") and not run.overlap("01", "04") and not run.overlap("02", "04")


def test_a_failure_stops_new_starts_lets_the_running_finish_and_is_raised():
    run = Recorder(fail={"01"})
    with pytest.raises(RuntimeError, match="01_notebook.ipynb failed"):
        reproduce.schedule(names("01", "02", "03", "07"), 2, run, say=lambda line: None)
    assert set(run.spans) == {"01", "02"}  # 02 was running beside 01 and finished; 03 and 07 never started


def test_a_timed_notebook_that_fails_stops_everything_after_it():
    run = Recorder(fail={"04"})
    with pytest.raises(RuntimeError, match="04_notebook.ipynb failed"):
        reproduce.schedule(names("01", "02", "04", "05"), 2, run, say=lambda line: None)
    assert set(run.spans) == {"04"}


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True, "2"])
def test_a_bad_job_count_is_refused_before_any_notebook_runs(monkeypatch, jobs):
    monkeypatch.setattr(reproduce, "schedule", lambda *a, **k: pytest.fail("a notebook was run"))
    with pytest.raises(ValueError, match="^jobs: a whole number of notebooks run at a time, at least 1"):
        reproduce.reproduce(jobs=jobs, fast=True)


def test_the_command_line_refuses_a_bad_job_count_in_one_line():
    for value, said in (("0", "--jobs: notebooks run at a time, at least 1 (got 0)"),
                        ("two", "argument --jobs: expected an integer, got 'two'")):
        done = subprocess.run([sys.executable, "-m", "fedlab", "reproduce", "--fast", "--jobs", value],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert said.removeprefix("argument ") in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def tiny_notebook(path: pathlib.Path, body: str) -> pathlib.Path:
    """A notebook with a parameters cell (what reproduce injects into) and one cell of its own."""
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("fast = False\nfigures_dir = results_dir = cache_dir = None")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(body)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))
    return path


STAMP = """import json, pathlib, time
start = time.time(); time.sleep(3)
pathlib.Path(results_dir, "{name}.json").write_text(json.dumps([start, time.time(), fast]))
"""


def test_two_notebooks_run_side_by_side_in_processes_of_their_own(monkeypatch, tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("01_first", "02_second"):
        tiny_notebook(folder / f"{name}.ipynb", STAMP.replace("{name}", name))
    monkeypatch.setattr(reproduce, "NOTEBOOKS", folder)
    results = tmp_path / "results"
    results.mkdir()
    written = reproduce.reproduce(fast=True, jobs=2, figures_dir=tmp_path / "figures", results_dir=results,
                                  output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert written == [tmp_path / "out" / "01_first.ipynb", tmp_path / "out" / "02_second.ipynb"]
    assert all(path.exists() and (tmp_path / "out" / f"{path.stem}.log").exists() for path in written)
    (s1, e1, fast1), (s2, e2, fast2) = (json.loads((results / f"{n}.json").read_text())
                                        for n in ("01_first", "02_second"))
    assert fast1 is fast2 is True  # the parameters reached each notebook
    assert s1 < e2 and s2 < e1  # side by side
    assert "beside 01_first.ipynb" in capsys.readouterr().out


def test_a_notebook_that_fails_in_its_process_is_named_with_its_error_and_log(tmp_path):
    path = tiny_notebook(tmp_path / "09_broken.ipynb", "raise ValueError('no such data set: mnist6k')")
    with pytest.raises(reproduce.NotebookFailed) as failure:
        reproduce.run_notebook_process(path, fast=True, figures_dir=tmp_path, results_dir=tmp_path,
                                       output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    message = str(failure.value)
    assert message.startswith("09_broken.ipynb failed (exit code 1; its output: ")
    assert str(tmp_path / "out" / "09_broken.log") in message and "mnist6k" in message
