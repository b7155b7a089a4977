"""Nothing waits forever: a TFF call, a panel's run and a lock each end past their bound with one line saying what
was waited for and where the waiting thread stood; and the next call or Run works."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

import fedlab as fl
from fedlab.core import runtime


def test_the_wait_limit_is_read_from_the_environment_and_checked(monkeypatch):
    monkeypatch.delenv(runtime.WAIT_LIMIT_VARIABLE, raising=False)
    assert runtime.wait_limit() == runtime.DEFAULT_WAIT_LIMIT_S
    monkeypatch.setenv(runtime.WAIT_LIMIT_VARIABLE, "2.5")
    assert runtime.wait_limit() == 2.5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        monkeypatch.setenv(runtime.WAIT_LIMIT_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"^{runtime.WAIT_LIMIT_VARIABLE}: must be a finite number"):
            runtime.wait_limit()


def test_a_held_lock_is_waited_for_within_the_limit(monkeypatch):
    monkeypatch.setenv(runtime.WAIT_LIMIT_VARIABLE, "0.2")
    lock = threading.Lock()
    with runtime.held(lock, "the test's lock"):
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="waited 0.2 s for the test's lock"):
            with runtime.held(lock, "the test's lock"):
                pass
        assert time.monotonic() - started < 5
    with runtime.held(lock, "the test's lock"):  # released by both
        pass


def test_where_names_the_innermost_frame_and_the_callers_own_code():
    release = threading.Event()

    def waiting_for_the_release():
        release.wait(30)

    thread = threading.Thread(target=waiting_for_the_release)
    thread.start()
    try:
        time.sleep(0.2)
        line = runtime.where(thread)
        assert "\n" not in line and "in wait" in line and "waiting_for_the_release" in line
    finally:
        release.set()
        thread.join()
    assert runtime.where(thread) == "nowhere (the thread has ended)"


def _worker_pids():
    return [pid for pid, cmd in runtime._children() if cmd.endswith("worker_binary")]


@pytest.mark.slow
def test_a_tff_call_to_a_frozen_worker_ends_at_the_limit_and_the_next_call_starts_a_new_worker(monkeypatch):
    tff = runtime.tff()
    import tensorflow as tf

    @tff.tensorflow.computation(tf.float32)
    def double(x):
        return x * 2.0

    assert double(1.5) == 3.0
    frozen = _worker_pids()
    assert frozen, "TFF's local worker is not a child of this process"
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # alive, listening, and never answering
    monkeypatch.setenv(runtime.WAIT_LIMIT_VARIABLE, "3")
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        double(2.0)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("a TFF call had no answer within 3 s (FEDLAB_WAIT_LIMIT_S); TFF's event loop was at ")
    assert not set(frozen) & set(_worker_pids()), "the frozen workers were not stopped"
    monkeypatch.delenv(runtime.WAIT_LIMIT_VARIABLE)
    assert double(4.0) == 8.0  # a new worker


def _register_gated(name: str, gate: threading.Event) -> None:
    @fl.register_dataset(name, replace=True)
    def gated(*, seed, test_fraction):
        """Digits, once the test opens the gate: a loader that hangs until then."""
        gate.wait(120)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, 8)).astype(np.float32)
        return fl.Dataset.from_arrays(name, x, (x[:, 0] > 0).astype(np.int32), seed=seed,
                                      test_fraction=test_fraction)


@pytest.mark.slow
def test_a_panel_run_that_finishes_no_round_within_the_limit_says_where_it_stood_and_run_works_again(
        tmp_path, monkeypatch):
    gate = threading.Event()
    _register_gated("gated_for_the_wait_test", gate)
    monkeypatch.setenv(runtime.WAIT_LIMIT_VARIABLE, "2")
    from fedlab.notebook import widgets

    def slow_where(thread, _where=widgets.where):  # widens the window a loaded machine opened now and then: the
        time.sleep(1.5)  # watcher once marked the run inactive before its error was set, and wait() returned None
        return _where(thread)

    monkeypatch.setattr(widgets, "where", slow_where)
    panel = fl.ExperimentPanel(fl.ExperimentConfig(dataset="gated_for_the_wait_test", num_clients=4,
                                                   clients_per_round=2, rounds=2, seed=1), ["rounds"],
                               results_cache=tmp_path)
    panel.run_button.click()
    stuck = panel._thread
    started = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        panel.wait()  # no timeout given: the wait limit still bounds it
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert message.startswith("the panel's run finished no round in ") and "\n" not in message
    assert "FEDLAB_WAIT_LIMIT_S=2" in message and "gated" in message, message
    assert "stalled" in panel.status.value and not panel.run_button.disabled and panel.stop_button.disabled
    gate.set()  # the stuck run goes on, finds its stop set, and its late updates are ignored
    stuck.join(300)
    assert not stuck.is_alive() and "stalled" in panel.status.value and panel.history is None
    monkeypatch.delenv(runtime.WAIT_LIMIT_VARIABLE)
    panel.run_button.click()
    history = panel.wait(timeout=300)
    assert panel.error is None and list(history["round"]) == [1, 2]


def test_a_panel_wait_with_a_timeout_says_where_the_run_stood(tmp_path):
    gate = threading.Event()
    _register_gated("gated_for_the_timeout_test", gate)
    panel = fl.ExperimentPanel(fl.ExperimentConfig(dataset="gated_for_the_timeout_test", num_clients=4,
                                                   clients_per_round=2, rounds=1, seed=1), ["rounds"])
    panel.run_button.click()
    try:
        with pytest.raises(TimeoutError, match=r"still going after 0.5 s \(round 0 of 1\); its thread is at .*gated"):
            panel.wait(timeout=0.5)
    finally:
        gate.set()
    panel.wait(timeout=300)


def _ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def _service_manager():
    import gc

    return next(o for o in gc.get_objects() if type(o).__name__ == "ServiceManager" and getattr(o, "_stub", None)
                and o._process is not None and o._process.poll() is None)


@pytest.mark.slow
def test_tffs_restart_of_a_worker_that_ignores_sigint_is_bounded():
    """A Jupyter kernel ignores SIGINT between cells, so a worker TFF starts then (a panel's run after a click)
    inherits SIG_IGN. When TFF's service manager finds that worker's channel not ready, it sends SIGINT and waits
    for it without a limit: with TFF's own ``os`` the call below waits forever; fedlab's follows with SIGKILL."""
    import grpc

    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

    tff = runtime.tff()
    import tensorflow as tf

    @tff.tensorflow.computation(tf.float32)
    def double(x):
        return x * 2.0

    runtime.stop_local_workers()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the kernel does between cells
    try:
        assert double(1.0) == 2.0  # TFF starts a worker now: it inherits SIGINT ignored
    finally:
        signal.signal(signal.SIGINT, previous)
    manager = _service_manager()
    worker = manager._process.pid
    assert _ignores_sigint(worker)

    # TFF's own os: the call waits on the worker it signalled, and goes on only once something else kills it
    fedlab_os, executor_factory.os = executor_factory.os, os
    # the channel went idle while the worker lives, and TFF builds a new executor (as after a retried error)
    manager._stub._channel_status = grpc.ChannelConnectivity.IDLE
    context = runtime.current_context()
    context.executor_factory.clean_up_executor({})
    caller = threading.Thread(target=runtime.run_in_context, args=(context, double, 3.0),
                              daemon=True)
    try:
        caller.start()
        caller.join(10)
        assert caller.is_alive(), "TFF's restart did not wait on the worker that ignores SIGINT"
    finally:
        os.kill(worker, signal.SIGKILL)
        caller.join(60)
        executor_factory.os = fedlab_os
    assert not caller.is_alive()

    runtime.stop_local_workers()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert double(1.0) == 2.0
    finally:
        signal.signal(signal.SIGINT, previous)
    manager = _service_manager()
    worker = manager._process.pid
    assert _ignores_sigint(worker)
    manager._stub._channel_status = grpc.ChannelConnectivity.IDLE
    context.executor_factory.clean_up_executor({})
    started = time.monotonic()
    assert double(4.0) == 8.0  # fedlab's os: SIGINT, then SIGKILL after the grace, a new worker
    assert time.monotonic() - started < runtime.STOP_GRACE_S + 30
    assert worker not in _worker_pids()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_program_started_through_the_trampoline_gets_the_chosen_signal_when_its_starting_thread_ends(tmp_path):
    import subprocess

    said = tmp_path / "said"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(said)!r}, 'w').write('term'), sys.exit(0)))\n"
             f"open({str(said)!r} + '.ready', 'w').close()\n"
             "time.sleep(120)\n")
    started = {}

    def start():  # the signal comes when this thread ends, as for LocalWorkers started from a widget's thread
        started["process"] = subprocess.Popen(runtime.dying_with_parent([sys.executable, "-c", child], signal.SIGTERM))
        deadline = time.monotonic() + 60
        while not os.path.exists(str(said) + ".ready") and time.monotonic() < deadline:
            time.sleep(0.02)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join(timeout=90)
    try:
        assert os.path.exists(str(said) + ".ready"), "the child did not start"
        assert started["process"].wait(timeout=60) == 0  # it handled SIGTERM (not killed by SIGKILL)
        assert said.read_text() == "term"
    finally:
        started["process"].kill()
        started["process"].wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_trampoline_whose_parent_ended_before_the_signal_was_set_does_not_run_the_program(tmp_path, monkeypatch):
    import subprocess

    ran = tmp_path / "ran"
    with monkeypatch.context() as m:  # as if the process that built the command had ended: the child's parent differs
        m.setattr(os, "getpid", lambda: 1)
        command = runtime.dying_with_parent([sys.executable, "-c", f"open({str(ran)!r}, 'w').close()"])
    assert subprocess.run(command, timeout=60).returncode == 1
    assert not ran.exists()
    program = command[len(runtime.dying_with_parent([])):]  # the trampoline's own words removed
    assert subprocess.run(runtime.dying_with_parent(program), timeout=60).returncode == 0 and ran.exists()
