"""Ports for fedlab's and TFF's workers: taken outside the ephemeral range, and a worker that cannot listen is an
error, not a wait without end."""

import socket
import subprocess
import threading
import time

import pytest

from fedlab.core import ports, runtime
from fedlab.workers.distributed import worker_binary


@pytest.fixture
def taken_port():
    """A port held by an outgoing connection's local end, as any program's connection can take a released port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    yield client.getsockname()[1]
    for s in (client, accepted, server):
        s.close()


def test_free_ports_are_below_the_ephemeral_range_bindable_and_not_given_twice():
    low, _ = ports.ephemeral_range()
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == 50
    assert all(10_000 <= p < low for p in given)
    for p in given[:5]:
        with socket.socket() as s:
            s.bind(("0.0.0.0", p))


def test_a_released_ephemeral_port_can_be_taken_by_a_connection_and_then_no_server_binds_it(taken_port):
    """Why fedlab does not take ports from the kernel (bind to 0): the race the workers lost."""
    low, high = ports.ephemeral_range()
    assert low <= taken_port <= high
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("0.0.0.0", taken_port))


def test_worker_start_returns_once_the_worker_listens():
    port = ports.free_port()
    process = runtime._PopenDyingWithParent([str(worker_binary()), f"--port={port}"])
    try:
        assert ports.listening_addresses(port)
    finally:
        process.kill()
        process.wait()


def test_worker_that_cannot_bind_its_port_is_one_error_at_once(taken_port):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"exited with status \d+ before listening on port {taken_port}"):
        runtime._PopenDyingWithParent([str(worker_binary()), f"--port={taken_port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert time.monotonic() - start < 30


def test_tff_call_whose_worker_cannot_start_fails_and_the_next_call_runs(taken_port, monkeypatch):
    """Through TFF's own service manager, which waited forever for a worker that had exited (a notebook hung),
    and which then still runs the next call."""
    import tensorflow as tf

    t = runtime.tff()
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

    low, _ = ports.ephemeral_range()
    assert executor_factory.portpicker.pick_unused_port() < low

    @t.tensorflow.computation
    def one():
        return tf.constant(1)

    assert one() == 1  # a worker runs: TFF's service manager holds it, and restarts from it below
    runtime.stop_local_workers()
    monkeypatch.setattr(ports, "free_port", lambda *a, **k: taken_port)
    outcome, context = [], runtime.current_context()

    def call():  # in a thread: before the fix this call never returned
        try:
            outcome.append(runtime.run_in_context(context, one))
        except RuntimeError as err:
            outcome.append(err)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert outcome, "the TFF call still waits for a worker that exited 60 s ago"
    assert isinstance(outcome[0], RuntimeError) and f"port {taken_port}" in str(outcome[0])
    monkeypatch.undo()
    assert one() == 1  # TFF's service manager signalled the worker it held before, already gone: no error
    runtime.stop_local_workers()
    assert one() == 1
