"""Quiet periods (``fedlab.core.quiet_periods``): while one process measures wall-clock time, the fedlab runs of every
other process sharing ``FEDLAB_QUIET_DIR`` are paused between rounds; the measurement waits for a round going on to
end, and every wait is bounded and says what it waited for. Asserted on the order of events, never on durations."""

import os
import pathlib
import subprocess
import sys
import textwrap
import time

import pytest

from fedlab.core import quiet_periods

# A stand-in run in a process of its own: "rounds" of ROUND_S seconds; each round's end time is appended to ENDS,
# then the run passes its pause point. Its first line is written once it is past the gate. It stops when STOP exists.
RUN = textwrap.dedent("""
    import pathlib, sys, time
    from fedlab.core.quiet_periods import run_slot
    ends, stop, round_s = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3])
    slot = run_slot()
    with open(ends, "a") as out:
        out.write(f"start {time.time()!r}\\n")
        out.flush()
        try:
            while not stop.exists():
                time.sleep(round_s)  # the round's work
                out.write(f"end {time.time()!r}\\n")
                out.flush()
                slot.pause_point()
        finally:
            slot.close()
""")

# A measurement in a process of its own: writes its window ("in", "out") to OUT, holding for HOLD seconds.
MEASURE = textwrap.dedent("""
    import pathlib, sys, time
    from fedlab.core.quiet_periods import measuring_time
    out, hold = pathlib.Path(sys.argv[1]), float(sys.argv[2])
    with measuring_time("a measurement in another process"):
        start = time.time()
        time.sleep(hold)
        end = time.time()
    out.write_text(f"{start!r} {end!r}")
""")


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    folder = tmp_path / "quiet"
    monkeypatch.setenv(quiet_periods.QUIET_DIR_VARIABLE, str(folder))
    monkeypatch.delenv(quiet_periods.HELD_VARIABLE, raising=False)
    return folder


def start(script: str, *args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stderr=subprocess.PIPE,
                            text=True)


def events(path: pathlib.Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    text = path.read_text()
    whole = text[:text.rfind("\n") + 1]  # a line being written is left for the next look
    return [(kind, float(at)) for kind, at in (line.split() for line in whole.splitlines())]


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"waited {limit} s for {what}"
        time.sleep(0.02)


def ends(path: pathlib.Path) -> list[float]:
    return [at for kind, at in events(path) if kind == "end"]


def finish(process: subprocess.Popen, stop: pathlib.Path) -> str:
    stop.write_text("")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err


def test_without_the_folder_nothing_waits_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(quiet_periods.QUIET_DIR_VARIABLE, raising=False)
    slot = quiet_periods.run_slot()
    with quiet_periods.measuring_time("nothing"):
        slot.pause_point()
    slot.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("round_s", [0.01, 0.5])
def test_no_round_of_another_process_ends_during_a_measurement_and_the_run_goes_on_after(quiet, tmp_path, round_s):
    log, stop = tmp_path / "ends", tmp_path / "stop"
    run = start(RUN, log, stop, round_s)
    wait_for(lambda: len(ends(log)) >= 3, "three rounds before the measurement")
    asked = time.time()
    with quiet_periods.measuring_time("a test measurement"):
        held = time.time()
        time.sleep(1.0)  # a round of 0.01 s would end about a hundred times meanwhile
        released = time.time()
    wait_for(lambda: any(t > released for t in ends(log)), "a round after the measurement")
    finish(run, stop)
    times = ends(log)
    assert not [t for t in times if held <= t <= released]  # paused throughout
    assert [t for t in times if t > released]  # and went on
    if round_s == 0.5:  # a round was going on when the measurement was asked for: it ended before it began
        assert [t for t in times if t < held]
    line = (quiet / quiet_periods.LOG).read_text().splitlines()[-1]
    start_at, end_at = map(float, line.split()[:2])
    assert asked <= start_at <= held and released <= end_at
    assert line.endswith(f"process {os.getpid()}: a test measurement")


def test_a_run_asked_for_during_a_measurement_starts_after_it(quiet, tmp_path):
    log, stop = tmp_path / "ends", tmp_path / "stop"
    with quiet_periods.measuring_time("a test measurement"):
        elsewhere = {k: v for k, v in os.environ.items() if k != quiet_periods.HELD_VARIABLE}  # not one of ours
        run = start(RUN, log, stop, 0.01, env=elsewhere)
        time.sleep(3.0)  # the process starts and waits at the gate
        released = time.time()
    wait_for(lambda: events(log), "the run's start")
    finish(run, stop)
    assert events(log)[0][0] == "start" and events(log)[0][1] > released


def test_two_measurements_in_two_processes_do_not_overlap(quiet, tmp_path):
    window = tmp_path / "window"
    other = start(MEASURE, window, 1.0)
    wait_for(lambda: (quiet / quiet_periods.GATE).exists() and (quiet / quiet_periods.GATE).read_text(),
             "the other process's measurement")
    with quiet_periods.measuring_time("a test measurement"):
        mine = (time.time(), time.time())
    _, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    theirs = tuple(map(float, window.read_text().split()))
    assert theirs[1] <= mine[0]  # it held the gate first: this one began once it had ended


def test_a_process_started_during_a_measurement_belongs_to_it(quiet, tmp_path):
    log, stop = tmp_path / "ends", tmp_path / "stop"
    with quiet_periods.measuring_time("a test measurement"):
        assert os.environ[quiet_periods.HELD_VARIABLE] == "1"
        slot = quiet_periods.run_slot()  # this process's own run: no wait, no lock
        slot.pause_point()
        slot.close()
        run = start(RUN, log, stop, 0.01)
        wait_for(lambda: len(ends(log)) >= 3, "rounds of a process started within the measurement")
    finish(run, stop)
    assert quiet_periods.HELD_VARIABLE not in os.environ


def test_a_run_waits_no_longer_than_the_wait_limit_and_says_for_what(quiet, tmp_path):
    log, stop = tmp_path / "ends", tmp_path / "stop"
    env = dict(os.environ, FEDLAB_WAIT_LIMIT_S="1")  # a process of another notebook's
    env.pop(quiet_periods.HELD_VARIABLE, None)
    with quiet_periods.measuring_time("a test measurement"):
        run = start(RUN, log, stop, 0.01, env=env)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 1 and not events(log)
    assert (f"TimeoutError: fedlab waited 1 s for a test measurement (process {os.getpid()}) in another process to "
            f"end (the quiet period of FEDLAB_QUIET_DIR={quiet}) (FEDLAB_WAIT_LIMIT_S)") in err


def test_a_measurement_waits_no_longer_than_the_wait_limit_for_a_round_to_end(quiet, tmp_path, monkeypatch):
    log, stop = tmp_path / "ends", tmp_path / "stop"
    run = start(RUN, log, stop, 2.0)  # a round of two seconds
    wait_for(lambda: events(log), "the run's start")
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "0.5")
    said = (r"^fedlab waited 0.5 s for the runs of other processes to reach the end of a round before measuring a "
            r"test measurement \(FEDLAB_WAIT_LIMIT_S\)$")
    with pytest.raises(TimeoutError, match=said):
        with quiet_periods.measuring_time("a test measurement"):
            pytest.fail("measured while a round was going on")
    assert not (quiet / quiet_periods.GATE).read_text()  # the gate is open again: the run goes on
    wait_for(lambda: ends(log), "the run's next round")
    finish(run, stop)


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
        os.killpg(parent.pid, 9)  # the child, in the parent's session


def test_a_fedlab_run_pauses_between_rounds_and_the_pause_is_in_no_rounds_seconds(quiet, tmp_path):
    import fedlab as fl

    window, seen, gate = tmp_path / "window", {}, quiet / quiet_periods.GATE

    def callback(row, history):
        seen[int(row["round"])] = time.time()
        if row["round"] == 2:  # another process asks to measure; this round's record is not over yet
            seen["measurer"] = start(MEASURE, window, 2.0)
            wait_for(lambda: gate.exists() and gate.read_text(), "the other process to close the gate")

    config = fl.ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=4, seed=3)
    history = fl.run_experiment(config, progress=False, callback=callback)
    _, err = seen["measurer"].communicate(timeout=60)
    assert seen["measurer"].returncode == 0, err
    began, ended = map(float, window.read_text().split())
    assert seen[2] < began and ended < seen[3] < seen[4]  # round 3 began after the measurement
    assert history.seconds.iloc[2] < ended - began  # the pause (at least 2 s) is not round 3's time
