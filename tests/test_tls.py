"""Mutual TLS between the driver and its workers (python -m fedlab worker --tls-*, fedlab.workers.distributed.use_worker_tls).

One TLS worker for the module (TFF's worker on a loopback port behind fedlab.workers.tls_proxy); certificates are made
fresh in a temporary folder by fedlab.workers.certs, a second set from another CA plays the stranger.
"""

import ipaddress
import os
import stat
import subprocess
import sys

import grpc
import pytest

from fedlab import run_experiment
from fedlab.workers.certs import make_certs
from fedlab.workers.distributed import (
    LocalWorkers,
    WorkerTLS,
    WorkerUnreachableError,
    check_workers,
    listening_addresses,
    use_worker_tls,
    worker_ready,
    worker_tls,
)
from fedlab.core.ports import free_port

from test_distributed import FAST, ROOT, assert_same_numbers

EXECUTOR = "/tensorflow_federated.v0.ExecutorGroup/"
# one xdist worker for the whole module: the TLS worker fixture starts once
pytestmark = pytest.mark.xdist_group("tls")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A complete set from another CA: its client certificate is valid, just not for our workers."""
    return make_certs(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture(scope="module")
def tls_worker(certs):
    with LocalWorkers(1, tls=WorkerTLS.load(certs["server.pem"], certs["server-key.pem"], certs["ca.pem"])) as w:
        yield w.addresses[0]


@pytest.fixture(autouse=True)
def plaintext_afterwards():
    yield
    use_worker_tls(None)


def _pem(path) -> bytes:
    return open(path, "rb").read()


def _call(channel, method=EXECUTOR + "Dispose", timeout=5.0):
    """The status of one raw call (Dispose of nothing: harmless) on ``channel``."""
    try:
        channel.unary_unary(method)(b"", timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
    finally:
        channel.close()


def _client(certs, ca=None, key=True):
    ca = _pem(ca or certs["ca.pem"])
    if not key:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=_pem(certs["client-key.pem"]),
                                        certificate_chain=_pem(certs["client.pem"]))


# A run ---------------------------------------------------------------------------------------------
def test_run_over_tls_gives_the_local_numbers(tls_worker, certs):
    use_worker_tls(cert=certs["client.pem"], key=certs["client-key.pem"], ca=certs["ca.pem"])
    assert worker_tls().cert == certs["client.pem"] and "BEGIN" not in repr(worker_tls())  # no key in reprs
    remote = run_experiment(FAST.replace(workers=(tls_worker,)), progress=False)
    assert_same_numbers(run_experiment(FAST, progress=False), remote)
    assert FAST.replace(workers=(tls_worker,)).fingerprint() == FAST.fingerprint()  # TLS is not in the config


def test_proxy_passes_the_workers_status_through(tls_worker, certs):
    channel = lambda: grpc.secure_channel(tls_worker, _client(certs))  # noqa: E731
    assert _call(channel()) == grpc.StatusCode.OK
    # The worker's own refusals come back unchanged, by the unary path and by the streaming path
    assert _call(channel(), EXECUTOR + "NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED
    assert _call(channel(), "/some.Other/Service") == grpc.StatusCode.UNIMPLEMENTED
    status = _call(channel(), EXECUTOR + "Compute")  # an empty request names no value
    assert status not in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), status


# Refusals -------------------------------------------------------------------------------------------
def test_client_without_certificate_is_refused(tls_worker, certs):
    channel = grpc.secure_channel(tls_worker, _client(certs, key=False))
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=2)
    assert _call(channel) == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(tls_worker, certs, stranger):
    # the stranger trusts our CA, so only the worker's check of the client certificate can stop it
    use_worker_tls(cert=stranger["client.pem"], key=stranger["client-key.pem"], ca=certs["ca.pem"])
    assert not worker_ready(tls_worker, timeout=2)
    with pytest.raises(WorkerUnreachableError, match=f"worker {tls_worker}: the port answers but the TLS handshake"):
        check_workers([tls_worker], timeout=2)


def test_worker_with_a_certificate_from_another_ca_is_refused_by_the_driver(tls_worker, certs, stranger):
    use_worker_tls(cert=certs["client.pem"], key=certs["client-key.pem"], ca=stranger["ca.pem"])
    with pytest.raises(WorkerUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
        check_workers([tls_worker], timeout=2)


def test_plaintext_to_a_tls_worker_is_refused(tls_worker):
    assert _call(grpc.insecure_channel(tls_worker)) == grpc.StatusCode.UNAVAILABLE
    assert worker_tls() is None and not worker_ready(tls_worker, timeout=2)
    with pytest.raises(WorkerUnreachableError, match="no plaintext gRPC.*--tls-cert, --tls-key and --tls-ca"):
        check_workers([tls_worker], timeout=2)


# The command line ------------------------------------------------------------------------------------
def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "fedlab", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.mark.parametrize("given, missing", [
    (("--tls-cert",), "--tls-key"),
    (("--tls-cert", "--tls-key"), "--tls-ca"),
    (("--tls-key", "--tls-ca"), "--tls-cert"),
])
def test_tls_options_go_together(certs, given, missing):
    files = {"--tls-cert": "server.pem", "--tls-key": "server-key.pem", "--tls-ca": "ca.pem"}
    options = [x for option in given for x in (option, str(certs[files[option]]))]
    for command in (["worker", "--port", str(free_port())],
                    ["run", "--workers", f"127.0.0.1:{free_port()}", "--out", os.devnull]):
        proc = _cli(*command, *options)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"fedlab {command[0]}: error: {missing}: "
                                                                       "missing"), proc.stderr


def test_unreadable_or_wrong_tls_file_is_one_line(certs, tmp_path):
    absent = tmp_path / "absent.pem"
    proc = _cli("worker", "--port", str(free_port()), "--tls-cert", str(certs["server.pem"]),
                "--tls-key", str(absent), "--tls-ca", str(certs["ca.pem"]))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"--tls-key: cannot read {absent}" in proc.stderr
    proc = _cli("run", "--workers", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "o"),
                "--tls-cert", str(certs["client-key.pem"]), "--tls-key", str(certs["client-key.pem"]),
                "--tls-ca", str(certs["ca.pem"]))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--tls-cert:" in proc.stderr and "not a PEM certificate" in proc.stderr
    proc = _cli("run", "--out", str(tmp_path / "o"), "--tls-cert", str(certs["client.pem"]),
                "--tls-key", str(certs["client-key.pem"]), "--tls-ca", str(certs["ca.pem"]))
    assert proc.returncode == 2 and "for runs on --workers" in proc.stderr, proc.stderr


def test_tls_worker_command_stops_both_on_sigterm(certs):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fedlab", "worker", "--port", str(port),
                             "--tls-cert", str(certs["server.pem"]), "--tls-key", str(certs["server-key.pem"]),
                             "--tls-ca", str(certs["ca.pem"])], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1 port {port} with mutual TLS" in line, line
        # TFF's worker behind the proxy: plaintext, so on loopback only (the proxy is its only client)
        inner = int(line.split("TFF's worker on 127.0.0.1 port ")[1].split(",")[0])
        assert listening_addresses(port) == ["127.0.0.1"] and listening_addresses(inner) == ["127.0.0.1"]
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert listening_addresses(port) == [] and listening_addresses(inner) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_certs_command_makes_a_ca_and_certificates_that_verify(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = tmp_path / "certs"
    proc = _cli("certs", str(folder), "--hosts", "worker-0.example,10.0.0.11")
    assert proc.returncode == 0, proc.stderr
    assert "--tls-cert" in proc.stdout and str(folder / "client.pem") in proc.stdout
    load = lambda name: x509.load_pem_x509_certificate((folder / name).read_bytes())  # noqa: E731
    ca, server, client = load("ca.pem"), load("server.pem"), load("client.pem")
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["worker-0.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.11")]
    eku = lambda cert: list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)  # noqa: E731
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH] and eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca-key.pem", "server-key.pem", "client-key.pem"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600, key
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    before = (folder / "ca.pem").read_bytes()
    proc = _cli("certs", str(folder))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--force" in proc.stderr, proc.stderr
    assert (folder / "ca.pem").read_bytes() == before
    assert _cli("certs", str(folder), "--force").returncode == 0
    assert (folder / "ca.pem").read_bytes() != before
