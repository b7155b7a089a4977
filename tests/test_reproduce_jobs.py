"""``reproduce`` runs notebooks side by side, each in a process of its own, the longest first; what a notebook reports
in wall-clock time it measures in a quiet period, with the other notebook's runs paused. A failure stops new starts
and is raised naming the notebook and its log."""

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import nbformat
import pandas as pd
import pytest

import fedlab as fl
from fedlab.core.runtime import process_alive, usable_cores
from fedlab.notebook import reproduce

# What fedlab measures in a quiet period (fedlab.core.quiet_periods.measures_time), and how a notebook calls it.
MEASURED = {"fl.secagg_cost(": fl.secagg_cost, "fl.he_cost(": fl.he_cost, "fl.round_times(": fl.round_times,
            "fl.crosssilo.sites_against_simulation(": fl.crosssilo.sites_against_simulation,
            "with fl.measuring_time(": None}


def test_every_notebook_that_reports_wall_clock_time_measures_it_in_a_quiet_period():
    timed = {reproduce.owner(name) for name in reproduce.TIMING_FIGURES}
    for path in sorted(reproduce.RESULTS.glob("*.csv")):
        if any(reproduce.TIMING.match(column) for column in pd.read_csv(path, nrows=0).columns):
            timed.add(reproduce.owner(path.name))
    measuring = set()
    for path in reproduce.notebooks():
        code = "\n".join(cell.source for cell in nbformat.read(str(path), as_version=4).cells
                         if cell.cell_type == "code")
        if any(call in code for call in MEASURED):
            measuring.add(path.name[:2])
    assert timed == measuring  # none missing, none pausing the other notebook without reason
    assert all(getattr(function, "measures_time", None) for function in MEASURED.values() if function is not None)


def names(*prefixes):
    return [pathlib.Path(f"{p}_notebook.ipynb") for p in prefixes]


class Recorder:
    """Stands in for running a notebook: records when each started and ended. Notebook 01 waits (at most 30 s) until
    02 has started, so the two overlap whatever the machine's load; one in ``fail`` raises, and 02 then ends only once
    the failure has been said (at most 30 s)."""

    def __init__(self, fail=(), both=True):
        self.spans, self.fail, self.lock, self.both = {}, set(fail), threading.Lock(), both
        self.started = {name: threading.Event() for name in ("01", "02")}
        self.release, self.lines = threading.Event(), []

    def say(self, line):
        """The schedule's lines; once a failure is said, 02 may end."""
        self.lines.append(line)
        if "FAILED" in line:
            self.release.set()

    def __call__(self, path, stop):
        name, start = path.name[:2], time.monotonic()
        if name in self.started:
            self.started[name].set()
        if name == "01":
            assert self.started["02"].wait(timeout=30)
        if name == "02" and not self.fail and self.both:  # each waits for the other: they overlap
            assert self.started["01"].wait(timeout=30)
        if name == "02" and self.fail:
            assert self.release.wait(timeout=30)
        time.sleep(0.05)
        with self.lock:
            self.spans[name] = (start, time.monotonic())
        if name in self.fail:
            raise RuntimeError(f"{path.name} failed")
        return pathlib.Path("out") / path.name

    def overlap(self, a, b):
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return s1 < e2 and s2 < e1


def test_notebooks_start_longest_first_two_at_a_time():
    run, lines = Recorder(), []
    paths = names("01", "02", "03", "04", "05", "06", "07", "08")
    written = reproduce.schedule(paths, 2, run, say=lines.append)
    assert written == [pathlib.Path("out") / p.name for p in paths]  # notebook order
    assert set(run.spans) == {p.name[:2] for p in paths}
    starts = [line.split()[1][:2] for line in lines if line.endswith(" ...")]
    assert starts == list(reproduce.LONGEST_FIRST)
    assert run.overlap("01", "02")
    every = sorted(run.spans)
    for i, a in enumerate(every):  # never three at once
        for b in every[i + 1:]:
            for c in every[every.index(b) + 1:]:
                assert not (run.overlap(a, b) and run.overlap(a, c) and run.overlap(b, c))
    assert lines[0] == "[reproduce] 05_notebook.ipynb (full) ..."
    assert lines[1].startswith("[reproduce] 01_notebook.ipynb (full)")  # beside 05, unless 05 had already ended
    assert sum(re.fullmatch(r"\[reproduce\] 0\d_notebook.ipynb done in \d+ s", line) is not None
               for line in lines) == 8


def test_notebooks_not_in_the_order_start_last_in_theirs():
    order = reproduce.starting_order(names("12", "03", "11", "05"))
    assert [p.name[:2] for p in order] == ["05", "03", "12", "11"]


def test_one_job_runs_every_notebook_one_after_the_other():
    run = Recorder(both=False)
    run.started["02"].set()  # 01 would otherwise wait for 02, which cannot start before 01 ends
    reproduce.schedule(names("01", "02", "04"), 1, run, say=lambda line: None)
    assert not run.overlap("01", "02") and not run.overlap("01", "04") and not run.overlap("02", "04")


def test_a_failure_stops_new_starts_lets_the_running_finish_and_is_raised():
    run = Recorder(fail={"01"})
    lines = run.lines
    with pytest.raises(RuntimeError, match="01_notebook.ipynb failed"):
        reproduce.schedule(names("01", "02", "03", "07"), 2, run, say=run.say)
    assert set(run.spans) == {"01", "02"}  # 02 was running beside 01 and finished; 03 and 07 never started
    said = next(line for line in lines if "FAILED" in line)
    assert re.fullmatch(r"\[reproduce\] 01_notebook.ipynb FAILED after \d+ s: 01_notebook.ipynb failed; waiting "
                        r"for 02_notebook.ipynb; not starting 07_notebook.ipynb, 03_notebook.ipynb", said)
    done = next(line for line in lines if line.startswith("[reproduce] 02_notebook.ipynb done in "))
    assert lines.index(said) < lines.index(done)  # said as it happened, not once 02 had ended


def test_an_interruption_stops_the_running_notebooks_and_starts_no_other():
    seen_stop, started, lock = [], [], threading.Lock()

    def run(path, stop):
        with lock:
            started.append(path.name[:2])
            if len(started) == 2:  # both running: Ctrl-C
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        seen_stop.append(stop.wait(timeout=30))  # a notebook that runs until told to stop
        raise reproduce.NotebookFailed(f"{path.name}: stopped")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        began = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            reproduce.schedule(names("01", "02", "03"), 2, run, say=lambda line: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(started) == ["01", "02"] and seen_stop == [True, True]
    assert time.monotonic() - began < 25


def test_an_interrupted_notebook_is_said_interrupted():
    lines = []

    def run(path, stop):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reproduce.schedule(names("04", "05"), 1, run, say=lines.append)
    assert re.fullmatch(r"\[reproduce\] 05_notebook.ipynb FAILED after \d+ s: interrupted; not starting "
                        r"04_notebook.ipynb", lines[-1])


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


MEET = """import json, os, pathlib, time
mine, other = pathlib.Path(results_dir, "{name}.started"), pathlib.Path(results_dir, "{other}.started")
mine.write_text("")
deadline = time.time() + 120
while not other.exists() and time.time() < deadline:  # runs only if the other notebook runs at the same time
    time.sleep(0.1)
pathlib.Path(results_dir, "{name}.json").write_text(json.dumps([other.exists(), fast,
                                                                 os.environ.get("FEDLAB_QUIET_DIR"),
                                                                 os.environ.get("FEDLAB_SWEEP_PROCESSES")]))
"""


def test_two_notebooks_run_side_by_side_in_processes_of_their_own(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("FEDLAB_SWEEP_PROCESSES", raising=False)
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, other in (("01_first", "02_second"), ("02_second", "01_first")):
        tiny_notebook(folder / f"{name}.ipynb", MEET.replace("{name}", name).replace("{other}", other))
    monkeypatch.setattr(reproduce, "NOTEBOOKS", folder)
    results = tmp_path / "results"
    results.mkdir()
    written = reproduce.reproduce(fast=True, jobs=2, figures_dir=tmp_path / "figures", results_dir=results,
                                  output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert written == [tmp_path / "out" / "01_first.ipynb", tmp_path / "out" / "02_second.ipynb"]
    assert all(path.exists() and (tmp_path / "out" / f"{path.stem}.log").exists() for path in written)
    for name in ("01_first", "02_second"):
        met, fast, quiet, processes = json.loads((results / f"{name}.json").read_text())
        assert met is True and fast is True  # both ran at once, and the parameters reached each
        assert quiet == str(tmp_path / "out" / reproduce.QUIET_FOLDER)  # where they meet for quiet periods
        assert processes == str(max(1, usable_cores() // 2))  # the cores shared out between the two
    out = capsys.readouterr().out
    assert "beside" in out
    assert f"its sweeps on {max(1, usable_cores() // 2)} process" in out


def test_the_cores_are_shared_out_between_the_notebooks_sweeps_unless_the_caller_chose(monkeypatch, tmp_path):
    monkeypatch.delenv("FEDLAB_SWEEP_PROCESSES", raising=False)
    monkeypatch.setattr(reproduce, "usable_cores", lambda: 8)
    assert reproduce.notebook_environment(2, tmp_path) == {"FEDLAB_QUIET_DIR": str(tmp_path / "quiet"),
                                                           "FEDLAB_SWEEP_PROCESSES": "4"}
    assert reproduce.notebook_environment(3, tmp_path)["FEDLAB_SWEEP_PROCESSES"] == "2"
    monkeypatch.setattr(reproduce, "usable_cores", lambda: 2)
    assert reproduce.notebook_environment(2, tmp_path)["FEDLAB_SWEEP_PROCESSES"] == "1"
    assert reproduce.notebook_environment(3, tmp_path)["FEDLAB_SWEEP_PROCESSES"] == "1"  # never none
    monkeypatch.setenv("FEDLAB_SWEEP_PROCESSES", "2")  # the caller's own, inherited as it is
    assert reproduce.notebook_environment(2, tmp_path) == {"FEDLAB_QUIET_DIR": str(tmp_path / "quiet")}
    monkeypatch.setattr(reproduce, "schedule", lambda *a, **k: pytest.fail("a notebook was run"))
    for bad in ("0", "²", "1.5"):
        monkeypatch.setenv("FEDLAB_SWEEP_PROCESSES", bad)
        for jobs in (1, 2):  # said before any notebook starts, whichever way they run
            with pytest.raises(ValueError, match=r"^FEDLAB_SWEEP_PROCESSES: must be a whole number of processes "
                                                 rf">= 1, got '{bad}'$"):
                reproduce.reproduce(jobs=jobs, fast=True, output_dir=tmp_path)
    kept = tmp_path / "check" / "the last check's output"
    kept.parent.mkdir()
    kept.write_text("")
    with pytest.raises(ValueError, match=r"^FEDLAB_SWEEP_PROCESSES: "):
        reproduce.check(jobs=2, scratch=tmp_path / "check")
    assert kept.exists()  # said before the last check's output is removed


def test_no_notebook_to_run_side_by_side_runs_none(monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "NOTEBOOKS", tmp_path)  # an installed package without its notebooks
    assert reproduce.reproduce(fast=True, jobs=2, output_dir=tmp_path / "out") == []
    with pytest.raises(ValueError, match=r"^jobs: a whole number of notebooks run at a time, at least 1 \(got 0\)$"):
        reproduce.notebook_environment(0, tmp_path)


@pytest.mark.parametrize("only, share", [(["01"], 1), (["01", "02"], 2), (["01", "02", "03"], 2)])
def test_a_notebook_gets_the_cores_shared_out_between_those_that_can_run_beside_it(monkeypatch, tmp_path, only,
                                                                                   share):
    monkeypatch.delenv("FEDLAB_SWEEP_PROCESSES", raising=False)
    monkeypatch.setattr(reproduce, "usable_cores", lambda: 4)
    given = []
    monkeypatch.setattr(reproduce, "run_notebook_process",
                        lambda path, **kwargs: given.append(kwargs["environ"]) or path)
    reproduce.reproduce(fast=True, jobs=2, only=only, figures_dir=tmp_path, results_dir=tmp_path,
                        output_dir=tmp_path, cache_dir=tmp_path)
    assert len(given) == len(only)
    assert {environ["FEDLAB_SWEEP_PROCESSES"] for environ in given} == {str(4 // share)}  # alone: every core


def test_a_notebook_that_fails_in_its_process_is_named_with_its_error_and_log(tmp_path):
    path = tiny_notebook(tmp_path / "09_broken.ipynb", "raise ValueError('no such data set: mnist6k')")
    with pytest.raises(reproduce.NotebookFailed) as failure:
        reproduce.run_notebook_process(path, fast=True, figures_dir=tmp_path, results_dir=tmp_path,
                                       output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    message = str(failure.value)
    assert message.startswith("09_broken.ipynb failed (exit code 1; its output: ")
    assert str(tmp_path / "out" / "09_broken.log") in message and "mnist6k" in message


def out_dirs(tmp_path):
    return dict(fast=True, figures_dir=tmp_path, results_dir=tmp_path, output_dir=tmp_path / "out",
                cache_dir=tmp_path / "cache")


def test_a_notebook_process_that_goes_silent_is_stopped_and_said(monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "_child_command", lambda request: [sys.executable, "-c", "import time; "
                                                                      "time.sleep(120)"])
    began = time.monotonic()
    with pytest.raises(reproduce.NotebookFailed, match=r"^09_silent.ipynb: nothing written to its log or executed "
                                                        r"notebook for 6 s \(a cell may take 1 s\); stopped"):
        reproduce.run_notebook_process(tiny_notebook(tmp_path / "09_silent.ipynb", "pass"), timeout=1,
                                       silence_slack=5, **out_dirs(tmp_path))
    assert time.monotonic() - began < 30


def test_a_notebook_process_that_keeps_writing_is_not_silent(monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "_child_command", lambda request: [
        sys.executable, "-c", "import time\nfor i in range(100): print(i); time.sleep(0.2)"])  # 20 s, a line each 0.2 s
    done = reproduce.run_notebook_process(tiny_notebook(tmp_path / "09_busy.ipynb", "pass"), timeout=1,
                                          silence_slack=5, **out_dirs(tmp_path))
    assert done == tmp_path / "out" / "09_busy.ipynb"
    assert (tmp_path / "out" / "09_busy.log").read_text().split()[-1] == "99"


def test_a_notebook_process_told_to_stop_stops(monkeypatch, tmp_path):
    monkeypatch.setattr(reproduce, "_child_command", lambda request: [sys.executable, "-c", "import time; "
                                                                      "time.sleep(120)"])
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    began = time.monotonic()
    with pytest.raises(reproduce.NotebookFailed, match=r"^09_stopped.ipynb: stopped \(reproduce was interrupted\)"):
        reproduce.run_notebook_process(tiny_notebook(tmp_path / "09_stopped.ipynb", "pass"), stop=stop,
                                       **out_dirs(tmp_path))
    assert time.monotonic() - began < 30


SUBREAPER = """import ctypes, os, subprocess, sys, time
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER: orphans come here
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
deadline = time.time() + 300
while time.time() < deadline:  # reaps its descendants until none is left
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
"""


def test_a_notebook_process_killed_outright_leaves_no_kernel_behind(tmp_path):
    # SIGKILL gives papermill no chance to shut its kernel down, and under a subreaper (a container's init, a
    # service manager) ipykernel's own check for a dead parent (parent pid 1) never fires: the kernel must be told
    path = tiny_notebook(tmp_path / "09_sleeps.ipynb", "import os, pathlib, time\n"
                         "pathlib.Path(results_dir, 'kernel.pid').write_text(str(os.getpid()))\ntime.sleep(300)")
    request = json.dumps({"path": str(path), "fast": True, "figures_dir": str(tmp_path), "results_dir": str(tmp_path),
                          "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), "timeout": 600})
    reaper = subprocess.Popen([sys.executable, "-c", SUBREAPER, *reproduce._child_command(request)],
                              stdout=subprocess.PIPE, text=True, cwd=reproduce.ROOT)
    child = kernel = None
    try:
        line = reaper.stdout.readline()
        assert line.strip().isdigit(), f"the subreaper did not start the notebook process: {line!r}"
        child = int(line)
        pid_file, deadline = tmp_path / "kernel.pid", time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), "the notebook's kernel did not start its cell within 120 s"
        kernel = int(pid_file.read_text())
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process_alive(kernel) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not process_alive(kernel), "the kernel outlived its notebook process by 30 s"
        assert reaper.wait(timeout=30) == 0
    finally:  # whatever failed, nothing is left running
        for pid in (child, kernel, reaper.pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        reaper.wait(timeout=30)
        reaper.stdout.close()


FLAKY_START = """import json, pathlib, sys
request = json.loads(sys.argv[1])
tries = pathlib.Path(request["output_dir"], "tries")
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
executed = pathlib.Path(request["output_dir"], pathlib.Path(request["path"]).name)
if len(tries.read_text()) == 1:
    print("zmq.error.ZMQError: Address already in use"); sys.exit(1)  # the kernel never ran a cell
executed.write_text("{}")
"""


def test_a_kernel_that_ran_no_cell_is_started_once_more(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reproduce, "_child_command", lambda request: [sys.executable, "-c", FLAKY_START, request])
    done = reproduce.run_notebook_process(tiny_notebook(tmp_path / "09_flaky.ipynb", "pass"), **out_dirs(tmp_path))
    assert done == tmp_path / "out" / "09_flaky.ipynb" and (tmp_path / "out" / "tries").read_text() == "xx"
    assert "09_flaky.ipynb: its kernel ran no cell (exit code 1); starting it again" in capsys.readouterr().out


FIRST_START_FAILS = """import os, pathlib, sys
marker = pathlib.Path(os.environ["FEDLAB_TEST_MARKER"])
if not marker.exists():
    marker.write_text("")
    sys.exit(1)  # the first kernel dies before it runs anything
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


def test_a_real_kernel_that_died_at_start_is_started_once_more(monkeypatch, tmp_path):
    """papermill marks every cell "completed" when it gives up, even if its kernel never started: what tells a
    kernel that ran no cell is that no cell has a start time."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (tmp_path / "kernel.py").write_text(FIRST_START_FAILS)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, str(tmp_path / "kernel.py"), "-f",
                                                           "{connection_file}"], "display_name": "Python 3",
                                                  "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("FEDLAB_TEST_MARKER", str(tmp_path / "died-once"))
    path = tiny_notebook(tmp_path / "09_late.ipynb", "open('ran', 'w').write('yes')")
    done = reproduce.run_notebook_process(path, **out_dirs(tmp_path))
    assert (tmp_path / "died-once").exists() and (tmp_path / "ran").read_text() == "yes"
    assert "[reproduce] started again (attempt 2)" in (tmp_path / "out" / "09_late.log").read_text()
    assert done.exists()


def test_a_notebook_that_failed_in_a_cell_is_not_started_again(tmp_path):
    path = tiny_notebook(tmp_path / "09_broken.ipynb", "open('tries', 'a').write('x'); raise ValueError('bad')")
    with pytest.raises(reproduce.NotebookFailed, match="ValueError: bad"):
        reproduce.run_notebook_process(path, **out_dirs(tmp_path))
    assert (tmp_path / "tries").read_text() == "x"  # papermill runs the notebook in its folder


def test_the_command_line_says_a_failed_notebook_in_one_line(monkeypatch, capsys):
    from fedlab import __main__ as cli

    def fail(**kwargs):
        raise reproduce.NotebookFailed("01_fedavg.ipynb failed (exit code 1; its output: x.log): ValueError: bad")
    monkeypatch.setattr(reproduce, "reproduce", fail)
    assert cli.main(["reproduce", "--fast"]) == 1
    assert capsys.readouterr().err == ("fedlab reproduce: error: 01_fedavg.ipynb failed (exit code 1; its output: "
                                       "x.log): ValueError: bad\n")


def test_a_line_that_cannot_be_said_is_a_failure_not_a_lost_notebook():
    def say(line):
        if line.startswith("[reproduce] 02_notebook.ipynb (full)"):
            raise OSError("the terminal went away")

    with pytest.raises(OSError, match="the terminal went away"):
        reproduce.schedule(names("01", "02", "03"), 2, lambda path, stop: pathlib.Path("out") / path.name, say=say)
