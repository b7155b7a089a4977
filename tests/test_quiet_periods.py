"""Quiet periods (``fedlab.core.quiet_periods``): while one process measures wall-clock time, the fedlab runs of every
other process sharing ``FEDLAB_QUIET_DIR`` are paused between rounds; the measurement waits for a round going on to
end, and every wait is bounded and says what it waited for. Asserted on the order of events, never on durations."""

import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from fedlab.core import quiet_periods

# A stand-in run in a process of its own. It writes "ready" before it asks for its slot and "start" once past the
# gate; then "rounds": each writes "begin", waits (ROUND_S seconds, or, with ROUND_S "go", until the file GO exists,
# which it then removes, or STOP), writes "end" and passes its pause point. It stops when STOP exists, or after two
# minutes whatever happens (a failed test leaves nothing behind).
RUN = textwrap.dedent("""
    import os, pathlib, sys, time
    from fedlab.core.quiet_periods import run_slot
    log, stop, round_s = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
    go, deadline = log.with_name("go"), time.time() + 120
    with open(log, "a") as out:
        def say(kind):
            out.write(f"{kind} {time.time()!r}\\n")
            out.flush()
        say("ready")
        slot = run_slot()
        say("start")
        try:
            while not stop.exists() and time.time() < deadline:
                say("begin")
                if round_s == "go":
                    while not go.exists() and not stop.exists() and time.time() < deadline:
                        time.sleep(0.01)
                    go.unlink(missing_ok=True)
                else:
                    time.sleep(float(round_s))  # the round's work
                say("end")
                slot.pause_point()
        finally:
            slot.close()
""")

# A measurement in a process of its own: writes "in" to OUT once it holds the quiet period, waits until the file
# RELEASE exists (two minutes at most), writes "out" and ends it.
MEASURE = textwrap.dedent("""
    import pathlib, sys, time
    from fedlab.core.quiet_periods import measuring_time
    out, release = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with measuring_time("a measurement in another process"):
        out.write_text(f"in {time.time()!r}\\n")
        deadline = time.time() + 120
        while not release.exists() and time.time() < deadline:
            time.sleep(0.01)
        with open(out, "a") as more:
            more.write(f"out {time.time()!r}\\n")
""")


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    folder = tmp_path / "quiet"
    monkeypatch.setenv(quiet_periods.QUIET_DIR_VARIABLE, str(folder))
    monkeypatch.delenv(quiet_periods.HELD_VARIABLE, raising=False)
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "60")  # a broken exemption fails in a minute, not half an hour
    return folder


def elsewhere(**changes) -> dict:
    """The environment of another notebook's process: not started within this one's measurement."""
    env = {k: v for k, v in os.environ.items() if k != quiet_periods.HELD_VARIABLE}
    return {**env, **changes}


def start(script: str, *args, env=None) -> subprocess.Popen:
    """The stand-in in a process of its own; what it writes to stderr goes to a file (``process.err``, read by
    :func:`said`), so that nothing blocks on a full pipe."""
    err = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env or elsewhere(), stderr=err)
    process.err = err
    return process


def said(process: subprocess.Popen) -> str:
    """What the stand-in wrote to stderr (kept once its file is closed)."""
    if not process.err.closed:
        process.err.seek(0)
        process.said = process.err.read().decode(errors="replace")
        process.err.close()
    return process.said


def events(path: pathlib.Path, kind: str = None) -> list:
    """The times written to ``path`` (of ``kind`` only, when given); a line still being written is left out."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = [line.split() for line in text[:text.rfind("\n") + 1].splitlines()]
    return [float(at) if kind else (k, float(at)) for k, at in lines if kind in (None, k)]


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"waited {limit} s for {what}"
        time.sleep(0.02)


@contextlib.contextmanager
def ended(process: subprocess.Popen, *files: pathlib.Path):
    """Whatever happens in the block, the stand-in ends after it: ``files`` (its STOP or RELEASE) written, then
    killed if it has not ended within a minute."""
    try:
        yield process
    finally:
        for path in files:
            path.write_text("")
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)
        finally:
            said(process)  # read now, then closed


def after(condition, then) -> threading.Thread:
    """``then()`` on a thread of its own once ``condition()`` holds (a minute at most)."""
    def wait_then():
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)
        then()
    thread = threading.Thread(target=wait_then, daemon=True)
    thread.start()
    return thread


def test_without_the_folder_neither_side_waits_for_a_measurement(quiet, tmp_path, monkeypatch):
    window, release = tmp_path / "window", tmp_path / "release"
    with ended(start(MEASURE, window, release), release):  # holds a quiet period of the folder until released
        wait_for(lambda: events(window, "in"), "the other process's measurement")
        monkeypatch.delenv(quiet_periods.QUIET_DIR_VARIABLE)
        slot = quiet_periods.run_slot()  # with the folder, this would wait for the other's release
        slot.pause_point()
        with quiet_periods.measuring_time("nothing"):
            pass
        slot.close()
        assert not events(window, "out")


@pytest.mark.parametrize("round_s", ["0.01", "go"])
def test_no_round_of_another_process_ends_during_a_measurement_and_the_run_goes_on_after(quiet, tmp_path, round_s):
    log, stop, go = tmp_path / "events", tmp_path / "stop", tmp_path / "go"
    with ended(start(RUN, log, stop, round_s), stop):
        if round_s == "go":  # a round going on when the measurement is asked for: it ends once the gate is closed
            wait_for(lambda: events(log, "begin"), "the run's first round")
            after(lambda: (quiet / quiet_periods.WHAT).exists(), lambda: go.write_text(""))
        else:
            wait_for(lambda: len(events(log, "end")) >= 3, "three rounds before the measurement")
        asked = time.time()
        with quiet_periods.measuring_time("a test measurement"):
            held = time.time()
            time.sleep(1.0)  # a round of 0.01 s would end about a hundred times meanwhile
            released = time.time()
        if round_s == "go":
            go.write_text("")  # the next round may end
        wait_for(lambda: any(t > released for t in events(log, "end")), "a round after the measurement")
    ends = events(log, "end")
    assert not [t for t in ends if held <= t <= released]  # paused throughout
    if round_s == "go":  # the measurement began once the round going on had ended
        assert [t for t in ends if asked < t <= held]
    line = (quiet / quiet_periods.LOG).read_text().splitlines()[-1]
    start_at, end_at = map(float, line.split()[:2])
    assert asked <= start_at <= held and released <= end_at
    assert line.endswith(f"process {os.getpid()}: a test measurement")


def test_a_run_asked_for_during_a_measurement_starts_after_it(quiet, tmp_path):
    log, stop = tmp_path / "events", tmp_path / "stop"
    with ended(start(RUN, log, stop, "0.01"), stop):
        with quiet_periods.measuring_time("a test measurement"):
            wait_for(lambda: events(log, "ready"), "the run to ask for its slot")
            time.sleep(0.5)
            assert not events(log, "start")  # waiting at the gate
            released = time.time()
        wait_for(lambda: events(log, "start"), "the run's start")
    assert events(log, "start")[0] > released


def test_two_measurements_in_two_processes_do_not_overlap(quiet, tmp_path):
    window, release = tmp_path / "window", tmp_path / "release"
    with ended(start(MEASURE, window, release), release) as other:
        wait_for(lambda: events(window, "in"), "the other process's measurement")
        threading.Timer(0.5, lambda: release.write_text("")).start()
        with quiet_periods.measuring_time("a test measurement"):
            mine = time.time()
    assert other.returncode == 0
    assert events(window, "out")[0] <= mine  # it held the quiet period first: this one began once it had ended


def test_a_process_started_during_a_measurement_belongs_to_it(quiet, tmp_path):
    log, stop = tmp_path / "events", tmp_path / "stop"
    with quiet_periods.measuring_time("a test measurement"):
        assert os.environ[quiet_periods.HELD_VARIABLE] == "1"
        slot = quiet_periods.run_slot()  # this process's own run: no wait, no lock
        slot.pause_point()
        slot.close()
        with ended(start(RUN, log, stop, "0.01", env=dict(os.environ)), stop):  # started now: it inherits the mark
            wait_for(lambda: len(events(log, "end")) >= 3, "rounds of a process started within the measurement")
    assert quiet_periods.HELD_VARIABLE not in os.environ


def test_a_run_waits_no_longer_than_the_wait_limit_and_says_for_what(quiet, tmp_path):
    log, stop = tmp_path / "events", tmp_path / "stop"
    with quiet_periods.measuring_time("a test measurement"):
        with ended(start(RUN, log, stop, "0.01", env=elsewhere(FEDLAB_WAIT_LIMIT_S="1"))) as run:
            run.wait(timeout=60)
    err = said(run)
    assert run.returncode == 1 and not events(log, "start")
    assert (f"TimeoutError: fedlab waited 1 s for a test measurement (process {os.getpid()}) in another process to "
            f"end (the quiet period of FEDLAB_QUIET_DIR={quiet}) (FEDLAB_WAIT_LIMIT_S)") in err


def test_a_measurement_waits_no_longer_than_the_wait_limit_for_a_round_to_end(quiet, tmp_path, monkeypatch):
    log, stop = tmp_path / "events", tmp_path / "stop"
    with ended(start(RUN, log, stop, "go"), stop):  # a round that ends when told
        wait_for(lambda: events(log, "begin"), "the run's first round")
        monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "0.5")
        said = (r"^fedlab waited 0.5 s for the runs of other processes to reach the end of a round before measuring "
                r"a test measurement \(FEDLAB_WAIT_LIMIT_S\)$")
        with pytest.raises(TimeoutError, match=said):
            with quiet_periods.measuring_time("a test measurement"):
                pytest.fail("measured while a round was going on")
        assert not (quiet / quiet_periods.WHAT).exists()  # the gate is open again
        (tmp_path / "go").write_text("")
        wait_for(lambda: events(log, "end"), "the run's round to end")


def test_a_stop_ends_a_pause_at_once(quiet, tmp_path):
    window, release = tmp_path / "window", tmp_path / "release"
    slot = quiet_periods.run_slot()
    try:
        with ended(start(MEASURE, window, release), release):
            stop = threading.Event()
            wait_for(lambda: (quiet / quiet_periods.WHAT).exists(), "the other process to close the gate")
            after(lambda: events(window, "in"), stop.set)  # once the other process measures
            slot.pause_point(stop)  # lets the other process measure; returns once stopped, its measurement going on
            assert stop.is_set() and events(window, "in") and not events(window, "out")
    finally:
        slot.close()


def test_a_measurement_within_a_run_of_the_same_thread_is_refused(quiet):
    slot = quiet_periods.run_slot()
    try:
        with pytest.raises(RuntimeError, match=r"^measuring a test measurement: a quiet period cannot begin within "
                                               r"a run of the same thread"):
            with quiet_periods.measuring_time("a test measurement"):
                pass
        inner = quiet_periods.run_slot()  # a run within the run (its callback's): the outer slot stands for both
        inner.pause_point()
        inner.close()
    finally:
        slot.close()
    with quiet_periods.measuring_time("a test measurement"):  # once the run has ended
        pass


def test_a_slot_that_could_not_open_leaves_this_thread_free_to_measure(quiet, tmp_path, monkeypatch):
    window, release = tmp_path / "window", tmp_path / "release"
    with ended(start(MEASURE, window, release), release):
        wait_for(lambda: events(window, "in"), "the other process's measurement")
        monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "0.2")
        with pytest.raises(TimeoutError):
            quiet_periods.run_slot()  # gave up waiting at the gate
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "60")
    with quiet_periods.measuring_time("a test measurement"):  # not refused as if within a run
        pass


# A run that forks (as a sweep's pool does) and is then killed: its child lives on with copies of its descriptors.
FORK_AND_DIE = textwrap.dedent("""
    import os, signal, sys, time
    from fedlab.core.quiet_periods import run_slot
    slot = run_slot()
    if os.fork() == 0:
        time.sleep(20.0)
        os._exit(0)
    print("forked", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_forked_child_does_not_keep_the_lock_of_a_run_killed_before_it(quiet, monkeypatch):
    parent = subprocess.Popen([sys.executable, "-c", FORK_AND_DIE], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout.readline() == "forked\n"
        parent.wait(timeout=60)
        monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "5")
        with quiet_periods.measuring_time("a test measurement"):  # the child's copies were closed in the child
            pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, 9)  # the child, in the parent's session


def test_a_fedlab_run_pauses_between_rounds_and_the_pause_is_in_no_rounds_seconds(quiet, tmp_path):
    import fedlab as fl

    window, release, seen = tmp_path / "window", tmp_path / "release", {}

    def callback(row, history):
        seen[int(row["round"])] = time.time()
        if row["round"] == 2:  # another process asks to measure; this round's record is not over yet
            seen["measurer"] = start(MEASURE, window, release)
            wait_for(lambda: (quiet / quiet_periods.WHAT).exists(), "the other process to close the gate")
            threading.Timer(1.0, lambda: release.write_text("")).start()

    config = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=4, seed=3)
    try:
        history = fl.run_experiment(config, progress=False, callback=callback)
    finally:
        if "measurer" in seen:
            with ended(seen["measurer"], release):
                pass
    assert seen["measurer"].returncode == 0, said(seen["measurer"])
    (began,), (over,) = events(window, "in"), events(window, "out")
    assert seen[2] < began and over < seen[3] < seen[4]  # round 3 began after the measurement
    assert history.seconds.iloc[2] <= seen[3] - over  # its seconds count from after the pause


def test_a_run_does_not_pause_after_its_last_round(quiet, tmp_path):
    import fedlab as fl

    window, release, seen = tmp_path / "window", tmp_path / "release", {}

    def callback(row, history):
        if row["round"] == 3:  # the last: another process asks to measure
            seen["measurer"] = start(MEASURE, window, release)
            wait_for(lambda: (quiet / quiet_periods.WHAT).exists(), "the other process to close the gate")

    config = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=3, seed=4)
    try:
        fl.run_experiment(config, progress=False, callback=callback)
        assert not events(window, "out")  # returned while the measurement went on: it never waited for its end
    finally:
        if "measurer" in seen:
            with ended(seen["measurer"], release):
                pass
    assert seen["measurer"].returncode == 0, said(seen["measurer"])


def test_a_stop_ends_a_runs_pause_and_its_wait_to_start(quiet, tmp_path):
    import fedlab as fl
    from fedlab.experiment.runner import RunStopped

    window, release, seen, stop = tmp_path / "window", tmp_path / "release", {}, threading.Event()

    def callback(row, history):
        if row["round"] == 2:  # another process measures; the run pauses, then is stopped during the pause
            seen["measurer"] = start(MEASURE, window, release)
            wait_for(lambda: (quiet / quiet_periods.WHAT).exists(), "the other process to close the gate")
            after(lambda: events(window, "in"), stop.set)

    config = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=4, seed=5)
    try:
        with pytest.raises(RunStopped) as stopped:
            fl.run_experiment(config, progress=False, callback=callback, stop=stop)
        assert stopped.value.round == 2 and not events(window, "out")  # stopped within the measurement
        stop.clear()  # the measurement still goes on: a new run waits to start, and is stopped there
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(RunStopped) as waiting:
            fl.run_experiment(config.replace(seed=6), progress=False, stop=stop)
        assert waiting.value.waiting and waiting.value.round == 0 and not events(window, "out")
        assert str(waiting.value) == ("stopped before its first round, while it waited for a measurement in another "
                                      "process to end")
    finally:
        if "measurer" in seen:
            with ended(seen["measurer"], release):
                pass
    assert seen["measurer"].returncode == 0, said(seen["measurer"])
    with quiet_periods.measuring_time("a test measurement"):  # the stopped runs left no slot behind in this thread
        pass


# A sweep's worker process starting (fedlab.experiment.pool's initializer), TFF's import replaced by a stand-in that
# writes "begin" and "end" around half a second.
WORKER = textwrap.dedent("""
    import pathlib, sys, time
    import fedlab.core.runtime as runtime
    from fedlab.experiment import pool
    log = pathlib.Path(sys.argv[1])
    with open(log, "a") as out:
        def say(kind):
            out.write(f"{kind} {time.time()!r}\\n")
            out.flush()
        def imported():
            say("begin")
            time.sleep(0.5)
            say("end")
        runtime.tff = imported
        say("ready")
        pool._start_worker()
""")


def test_a_sweeps_worker_does_not_import_tff_during_a_measurement(quiet, tmp_path):
    log = tmp_path / "events"
    with ended(start(WORKER, log)) as worker:
        with quiet_periods.measuring_time("a test measurement"):
            wait_for(lambda: events(log, "ready"), "the worker to start")
            time.sleep(0.5)
            assert not events(log, "begin")  # waiting at the gate
            released = time.time()
        worker.wait(timeout=60)
    assert worker.returncode == 0, said(worker)
    assert events(log, "begin")[0] > released


def test_a_measurement_waits_for_a_workers_import_of_tff(quiet, tmp_path):
    log = tmp_path / "events"
    with ended(start(WORKER, log)) as worker:
        wait_for(lambda: events(log, "begin"), "the worker's import")
        with quiet_periods.measuring_time("a test measurement"):
            held = time.time()
        worker.wait(timeout=60)
    assert worker.returncode == 0, said(worker)
    assert events(log, "end")[0] <= held
