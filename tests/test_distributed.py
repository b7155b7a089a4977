"""Runs on TFF worker services (python -m fedlab worker): issue #8.

Local workers listen on loopback ports; the network-namespace test puts a
worker behind a veth interface so the traffic crosses a real interface.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest

from fedlab import ExperimentConfig, final_weights, run_experiment
from fedlab.experiment.config import ConfigError
from fedlab.workers.distributed import (
    LocalWorkers,
    WorkerLostError,
    WorkerUnreachableError,
    check_workers,
    listening_addresses,
    parse_workers,
)
from fedlab.core.ports import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=4, rounds=4)
COMPARED = ["train_loss", "train_accuracy", "eval_loss", "eval_accuracy"]


def assert_same_numbers(a, b):
    # Workers sum each sub-round's updates before merging them: float32
    # additions in another order, so equal to rounding, not bit for bit.
    assert list(a["round"]) == list(b["round"])
    np.testing.assert_allclose(a[COMPARED].to_numpy(float), b[COMPARED].to_numpy(float), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def workers():
    with LocalWorkers(2) as w:
        yield w


def test_worker_addresses_are_validated_before_anything_runs():
    assert parse_workers("a:1, b:2") == ("a:1", "b:2")
    assert parse_workers("[::1]:80") == ("[::1]:80",)
    for bad, words in [("nohost", "host:port"), ("h:0", "1..65535"), ("h:x", "1..65535"), (":5", "no host"),
                       ("h:1,h:1", "twice")]:
        with pytest.raises(ValueError, match=words):
            parse_workers(bad)
    assert FAST.replace(workers=["h:1"]).workers == ("h:1",)  # a list (as JSON gives it) becomes a tuple
    with pytest.raises(ConfigError, match="workers"):
        FAST.replace(workers="h:1")  # a string, not a sequence of addresses


def test_workers_are_not_part_of_the_experiment():
    on_workers = FAST.replace(workers=("h:1",))
    assert on_workers.fingerprint() == FAST.fingerprint()  # same cached result
    assert "workers" not in on_workers.experiment_dict()


def test_worker_listens_on_loopback_only_by_default(workers):
    for port in workers.ports:
        assert listening_addresses(port) == ["127.0.0.1"]
    others = [a for a in _own_ipv4_addresses() if not a.startswith("127.")]
    for address in others:  # the same port, reached through another interface: refused
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, workers.ports[0])) != 0, address


def test_two_workers_give_the_local_numbers(workers):
    local = run_experiment(FAST, progress=False)
    remote = run_experiment(FAST.replace(workers=workers.addresses), progress=False)
    assert_same_numbers(local, remote)
    assert "workers" not in remote.columns


SPLIT = ExperimentConfig(dataset="digits", model="2nn", num_clients=6, clients_per_round=3, rounds=2, local_steps=2)
SPLIT_ON_WORKERS = {  # rounds split in the driver: clients' work on the workers, the Python stage here
    "scaffold": dict(algorithm="scaffold"),
    "ditto": dict(algorithm="ditto"),
    "qffl": dict(algorithm="qffl"),
    "sign flip": dict(attack="sign_flip", attacker_fraction=0.34),
    "fedper on SecAgg+": dict(algorithm="fedper", secure_aggregation=True, secure_protocol="secaggplus",
                              quantization_bits=8),
    "DP on SecAgg": dict(dp="fixed", noise_multiplier=0.5, clip_norm=1.0, secure_aggregation=True,
                         secure_protocol="secagg", quantization_bits=12),
    "CKKS": dict(secure_aggregation=True, secure_protocol="ckks"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SPLIT_ON_WORKERS)
def test_split_rounds_and_protocols_on_two_workers_give_the_local_numbers(workers, name):
    # 3 clients on 2 workers (2 + 1; Poisson-sampled under DP): each client's update must come back as that
    # client's, in order
    config = SPLIT.replace(**SPLIT_ON_WORKERS[name])
    local = run_experiment(config, progress=False)
    remote = run_experiment(config.replace(workers=workers.addresses), progress=False)
    assert_same_numbers(local, remote)
    for a, b in zip(final_weights(local), final_weights(remote)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


TFF_SECURE_SUMS = {  # TFF's secure-sum intrinsics, which its worker lacks, run in the clear on each worker's clients
    "8-bit": dict(secure_aggregation=True, quantization_bits=8),
    "32-bit": dict(secure_aggregation=True),
    "DP on it": dict(dp="fixed", noise_multiplier=0.5, clip_norm=1.0, secure_aggregation=True, quantization_bits=12),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", TFF_SECURE_SUMS)
def test_tffs_secure_sums_on_two_workers_give_the_local_numbers(workers, name, monkeypatch):
    from tensorflow_federated.python.core.backends.test import compiler as test_compiler

    config = SPLIT.replace(**TFF_SECURE_SUMS[name])
    local = run_experiment(config, progress=False)
    replaced, replace = [], test_compiler.replace_secure_intrinsics_with_bodies
    monkeypatch.setattr(test_compiler, "replace_secure_intrinsics_with_bodies",
                        lambda comp: replaced.append(comp) or replace(comp))
    remote = run_experiment(config.replace(workers=workers.addresses), progress=False)
    assert replaced  # the workers' context compiled the secure sums in the clear (the local one is TFF's own)
    assert remote.clients_this_round.max() >= 2  # a round split between the two workers
    assert_same_numbers(local, remote)
    for a, b in zip(final_weights(local), final_weights(remote)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    if config.quantization_bits:  # rounded to b bits there: not the same clipped, unweighted mean in floats
        floats = run_experiment(config.replace(secure_aggregation=False, quantization_bits=0, robust="clip",
                                               client_weighting="uniform"), progress=False)
        assert not np.allclose(final_weights(remote)[0], final_weights(floats)[0], rtol=0, atol=1e-6)


def test_workers_results_are_merged_and_concatenated_in_the_workers_order():
    # TFF 0.87 took them in the order the workers finished: a split round's updates came back permuted
    import asyncio

    from fedlab.core.runtime import tff

    tff()  # installs fedlab's fixes of TFF's runtime
    from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context as m

    class Worker:  # a worker's context, answering after its delay
        def __init__(self, delay):
            self.delay = delay

        async def invoke(self, comp, arg):
            await asyncio.sleep(self.delay)
            return comp(arg)

    class Comp:  # up to merge: [the worker's clients]; merge: concatenation; after merge: the worker's own part
        up_to_merge = staticmethod(lambda arg: [arg])
        merge = staticmethod(lambda pair: pair[0] + pair[1])
        after_merge = staticmethod(lambda arg: arg[0])

    workers = [Worker(0.3), Worker(0.0), Worker(0.1)]  # the first finishes last, the second first
    merged, _ = asyncio.run(m._invoke_merge_in_async_pool(Comp, ["a", "b", "c"], workers))
    assert merged == ["a", "b", "c"]
    assert asyncio.run(m._invoke_after_merge_in_async_pool(Comp, merged, ["a", "b", "c"], workers)) == ["a", "b", "c"]


def test_each_worker_is_given_its_own_clients_wherever_their_argument_sits():
    # TFF 0.87 split an argument struct by its last element's counters: both workers got clients [1, 2]
    from fedlab.core.runtime import tff

    t = tff()
    from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context as m

    clients_first = t.StructType([t.FederatedType(np.float32, t.CLIENTS), t.FederatedType(np.float32, t.SERVER)])
    parts = m._split_value_into_subrounds([[1.0, 2.0, 3.0], 7.0], clients_first, 2)
    assert [list(p[0]) for p in parts] == [[1.0, 2.0], [3.0]] and [p[1] for p in parts] == [7.0, 7.0]
    nested = t.StructType([t.StructType([t.FederatedType(np.float32, t.CLIENTS)]),
                           t.FederatedType(np.float32, t.SERVER)])
    parts = m._split_value_into_subrounds([[[1.0, 2.0, 3.0]], 7.0], nested, 2)
    assert [list(p[0][0]) for p in parts] == [[1.0, 2.0], [3.0]]


def test_unreachable_worker_is_named_before_the_run():
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(WorkerUnreachableError, match=f"worker {dead}.*python -m fedlab worker --port"):
        check_workers([dead], timeout=1.0)


def test_cli_reports_unreachable_worker_in_one_line(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "fedlab", "run", "--workers", dead, "--out", str(tmp_path),
                           "--rounds", "1", "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"worker {dead}: no TFF worker answered" in proc.stderr
    assert not (tmp_path / "history.csv").exists()


def test_killed_worker_is_reported_and_the_run_resumes(workers, tmp_path):
    config = FAST.replace(rounds=6, workers=workers.addresses)
    victim = workers.addresses[1]

    def kill_after_round_3(row, history):
        if row["round"] == 3:
            workers.kill(1)

    with pytest.raises(WorkerLostError, match=rf"worker {victim} stopped answering.*round 4.*holds rounds 1-3") as err:
        run_experiment(config, checkpoint_dir=tmp_path, progress=False, callback=kill_after_round_3)
    assert err.value.worker == victim
    workers.restart(1)
    resumed = run_experiment(config, checkpoint_dir=tmp_path, progress=False)
    assert_same_numbers(resumed, run_experiment(FAST.replace(rounds=6), progress=False))


def test_worker_command_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fedlab", "worker", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1 port {port}" in line, line
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert listening_addresses(port) == []  # the TFF worker under it is gone too
    finally:
        if proc.poll() is None:
            proc.kill()


def _own_ipv4_addresses() -> list[str]:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [a for a in out.split() if a.count(".") == 3]


# Across a network interface ------------------------------------------------------
def _can_make_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and \
        subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


@contextlib.contextmanager
def _namespace_host():
    """A second host: network namespace ``ns`` at 10.213.0.2, reached from here (10.213.0.1) over veth."""
    tag = uuid.uuid4().hex[:6]
    ns, here, there = f"fedlab-{tag}", f"fl{tag}a", f"fl{tag}b"
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", here, "type", "veth", "peer", "name", there)
        run("ip", "link", "set", there, "netns", ns)
        run("ip", "addr", "add", "10.213.0.1/24", "dev", here)
        run("ip", "link", "set", here, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", "10.213.0.2/24", "dev", there)
        run("ip", "netns", "exec", ns, "ip", "link", "set", there, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.skipif(not _can_make_netns(), reason="needs root and iproute2 for a network namespace")
def test_worker_on_another_network_host(tmp_path):
    port = free_port()
    with _namespace_host() as ns:
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "fedlab", "worker", "--port", str(port)]
        on_loopback = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert "listening on 127.0.0.1" in on_loopback.stdout.readline()
            # the default address keeps it off the wire: not reachable from this host
            with pytest.raises(WorkerUnreachableError):
                check_workers([f"10.213.0.2:{port}"], timeout=2.0)
        finally:
            on_loopback.terminate()
            on_loopback.wait(timeout=30)
        # deploy/worker.sh: the recipe the README gives for a worker on another machine
        remote = subprocess.Popen(["ip", "netns", "exec", ns, os.path.join(ROOT, "deploy", "worker.sh"),
                                   "10.213.0.2", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            assert "listening on 10.213.0.2" in remote.stdout.readline()
            history = run_experiment(FAST.replace(workers=(f"10.213.0.2:{port}",)), progress=False)
        finally:
            remote.terminate()
            assert remote.wait(timeout=30) == 0
    assert_same_numbers(history, run_experiment(FAST, progress=False))
