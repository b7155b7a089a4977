"""The watchdog every test runs beside (tests/stalls.py): a stall is reported with what each process was doing."""

import subprocess
import sys
import time

import pytest

import stalls

CHILD = "import time\ndef waiting_in_the_child():\n    time.sleep(120)\nwaiting_in_the_child()\n"


def test_a_stalled_test_gets_its_childrens_python_stacks_its_own_and_is_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(stalls, "ARTIFACTS", tmp_path)
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    native = subprocess.Popen(["sleep", "120"])
    try:
        time.sleep(1.0)  # the child is in its function
        dog = stalls.Watchdog(1.0, "the watchdog's own test").start()
        started = time.monotonic()
        with pytest.raises(stalls.Stalled):
            time.sleep(120)  # what a stuck test does; the watchdog's signal ends it
        dog.cancel()
        assert time.monotonic() - started < 90
        assert child.wait(timeout=30) == -9, "the stalled test's child was not stopped"
    finally:
        child.kill()
        native.kill()
        native.wait()
    message = dog.message
    assert message.startswith("the watchdog's own test still ran after 1 s (its limit)")
    assert "waiting_in_the_child" in message, "no Python stack of the child"
    assert "this test process" in message and "test_a_stalled_test_gets" in message, "no stack of the test itself"
    # what the test waited for first, so that a log cut in its middle keeps it; native stacks, long, last
    assert (message.index("waiting_in_the_child") < message.index("this test process")
            < message.index(f"== process {native.pid}: sleep 120")), message
    assert list(tmp_path.glob("*.txt")), "the report was not saved"


def test_a_cancelled_watchdog_never_fires():
    dog = stalls.Watchdog(0.5, "quick").start()
    dog.cancel()
    time.sleep(1.0)
    assert dog.message is None


@pytest.mark.skipif(stalls.GDB is None, reason="gdb is not installed: native stacks fall back to /proc")
def test_a_native_process_is_shown_with_its_native_stack():
    child = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.5)
        shown = stalls.stacks(child.pid)
    finally:
        child.kill()
        child.wait()
    assert "sleep" in shown and "#0" in shown, shown


def test_without_tools_each_thread_shows_where_it_waits_in_the_kernel():
    child = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.5)
        shown = stalls.wait_channels(child.pid)
    finally:
        child.kill()
        child.wait()
    assert "thread" in shown and "waiting in" in shown, shown
