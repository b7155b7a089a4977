"""Experiments on TFF worker services: other processes or other machines.

TFF's local runtime is a C++ executor service (``worker_binary``) driven over
gRPC. The same service runs anywhere: ``python -m fedlab worker --port P``
starts one, and a config with ``workers=("host:port", ...)`` runs on them
through TFF's mergeable-computation context, which splits each round's
clients into one sub-round per worker, runs the client work and the partial
aggregation on each worker, and merges the partial sums. Nothing here is a
runtime of fedlab's own.

Security: a plain worker is an unauthenticated gRPC service: whoever reaches the port can run any
TensorFlow graph on that machine, so ``python -m fedlab worker`` listens on 127.0.0.1 unless given ``--host``.
With ``--tls-cert/--tls-key/--tls-ca`` the worker accepts only mutual-TLS connections whose client
certificate chains to the CA: TFF's worker then listens on a loopback port behind a gRPC proxy
(:mod:`fedlab.workers.tls_proxy`) that terminates TLS. The driver chooses its client certificate with
:func:`use_worker_tls` (the CLI: ``run --tls-cert/--tls-key/--tls-ca``); it is a setting of this process,
not of the experiment, so results and the result cache are the same with and without TLS.

Failures: TFF retries an unavailable worker forever. fedlab checks every
worker before a run (:class:`WorkerUnreachableError`) and turns a worker that
stops answering mid-run into :class:`WorkerLostError` after ``timeout``
seconds; with a checkpoint, the same run started again resumes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import ipaddress
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Optional, Sequence

from ..core import runtime
from ..core.ports import free_port, listening_addresses
from ..core.validation import ConfigError

DEFAULT_HOST = "127.0.0.1"
ALL_INTERFACES = ("*", "0.0.0.0", "::")
CONNECT_TIMEOUT_S = 10.0
GRPC_OPTIONS = [  # as TFF's own local runtime sets them
    ("grpc.max_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_receive_message_length", 2 * 1000 * 1000 * 1000),
    ("grpc.max_send_message_length", 2 * 1000 * 1000 * 1000),
]


class WorkerError(RuntimeError):
    """A TFF worker could not be used; ``worker`` is its ``host:port``."""

    def __init__(self, worker: str, message: str):
        super().__init__(message)
        self.worker = worker


class WorkerUnreachableError(WorkerError):
    pass


class WorkerLostError(WorkerError):
    pass


# Addresses -------------------------------------------------------------------
# A host name as DNS has them (letters, digits, '-', and '_' as container names use it), dot-separated labels.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


def parse_worker(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[v6]:port"`` for IPv6) to ``(host, port)``; ValueError names what is wrong.

    The host must be a host name or an IP address: a URL (``http://host:80``)
    or a name with a space would be accepted by gRPC and then never answer.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(f"each worker must be 'host:port', got {text!r}")
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        raise ValueError(f"each worker must be 'host:port', got {text!r} (no host)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"worker {text!r}: port must be an integer in 1..65535")
    if not _HOST_NAME.fullmatch(host) or len(host) > 253:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            hint = (" (no scheme such as http://)" if "://" in text
                    else " (a host name has no spaces)" if " " in host else "")
            raise ValueError(f"each worker must be 'host:port' with a host name or an IP address ('[v6]:port' "
                             f"for IPv6), got {text!r}{hint}") from None
    return host, int(port)


def parse_workers(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"h1:p1,h2:p2"`` or a sequence of ``"host:port"`` to a validated tuple."""
    items = [w.strip() for w in text.split(",")] if isinstance(text, str) else list(text)
    items = [w for w in items if w]
    for w in items:
        parse_worker(w)
    if len(set(items)) != len(items):
        raise ValueError(f"workers are listed twice: {', '.join(sorted({w for w in items if items.count(w) > 1}))}")
    return tuple(items)


def _target(worker: str) -> str:
    host, port = parse_worker(worker)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# TLS ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WorkerTLS:
    """PEM files for mutual TLS: this side's certificate and key, and the CA that signed the other side's.

    On the driver: the client certificate (:func:`use_worker_tls`); on a worker: the server certificate
    (``python -m fedlab worker --tls-*``). Read once, by :meth:`load`.
    """

    cert: pathlib.Path
    key: pathlib.Path
    ca: pathlib.Path
    pem: tuple = dataclasses.field(repr=False, default=())  # (cert, key, ca) bytes

    @classmethod
    def load(cls, cert, key, ca) -> Optional["WorkerTLS"]:
        """None if all three are None; ConfigError (field ``tls_cert`` ...) if one is missing or unreadable."""
        given = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
        if all(v is None for v in given.values()):
            return None
        for field, value in given.items():
            if value is None or not str(value).strip():
                present = ", ".join("--" + f.replace("_", "-") for f, v in given.items() if v is not None)
                raise ConfigError(field, "missing; mutual TLS needs --tls-cert, --tls-key and --tls-ca together "
                                         f"(got only {present})")
        pem = []
        for field, value in given.items():
            path = pathlib.Path(value).expanduser()
            try:
                data = path.read_bytes()
            except OSError as err:
                raise ConfigError(field, f"cannot read {path}: {err.strerror or err}") from None
            marker = b"PRIVATE KEY-----" if field == "tls_key" else b"-----BEGIN CERTIFICATE-----"
            if marker not in data:
                kind = "a PEM private key" if field == "tls_key" else "a PEM certificate"
                raise ConfigError(field, f"{path} is not {kind} (python -m fedlab certs DIR makes a set)")
            pem.append(data)
        return cls(pathlib.Path(cert), pathlib.Path(key), pathlib.Path(ca), tuple(pem))


_CLIENT_TLS: Optional[WorkerTLS] = None


def use_worker_tls(cert=None, key=None, ca=None) -> Optional[WorkerTLS]:
    """From now on, connect to workers with mutual TLS: client ``cert``, its ``key``, and the ``ca`` of the workers.

    Paths of PEM files (``python -m fedlab certs DIR`` makes a set: client.pem, client-key.pem, ca.pem), or a
    :class:`WorkerTLS`; ``use_worker_tls(None)`` goes back to plaintext. A setting of this process, not of the
    experiment: the numbers, and the cached results, are the same either way. Returns the previous setting.
    """
    global _CLIENT_TLS
    previous = _CLIENT_TLS
    _CLIENT_TLS = cert if isinstance(cert, WorkerTLS) else WorkerTLS.load(cert, key, ca)
    return previous


def worker_tls() -> Optional[WorkerTLS]:
    """The client TLS setting of :func:`use_worker_tls` (None: plaintext)."""
    return _CLIENT_TLS


def grpc_channel(worker: str, tls: Optional[WorkerTLS]):
    import grpc

    if tls is None:
        return grpc.insecure_channel(_target(worker), GRPC_OPTIONS)
    cert, key, ca = tls.pem
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(_target(worker), credentials, GRPC_OPTIONS)


# Checking workers --------------------------------------------------------------
def worker_ready(worker: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True if a gRPC connection to ``worker`` becomes ready within ``timeout`` seconds.

    With :func:`use_worker_tls` set, that includes the TLS handshake, both certificates checked.
    """
    return channel_ready(worker, timeout, _CLIENT_TLS)


def channel_ready(worker: str, timeout: float, tls: Optional[WorkerTLS]) -> bool:
    import grpc

    channel = grpc_channel(worker, tls)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def port_answers(worker: str, timeout: float = 2.0) -> bool:
    """True if something accepts a TCP connection on ``worker``'s port."""
    host, port = parse_worker(worker)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def connection_error(worker: str, tls: Optional[WorkerTLS]) -> str:
    """gRPC's own words on why a connection to ``worker`` fails (an SSL error, for a failed handshake)."""
    import grpc

    channel = grpc_channel(worker, tls)
    try:
        channel.unary_unary("/fedlab.Probe/Probe")(b"", timeout=5.0)
        return ""
    except grpc.RpcError as err:
        return " ".join(str(err.details() or "").split()) if err.code() == grpc.StatusCode.UNAVAILABLE else ""
    finally:
        channel.close()


def _unreachable_message(worker: str, timeout: float) -> str:
    host, port = parse_worker(worker)
    tls = _CLIENT_TLS
    if port_answers(worker):
        if tls is None:
            return (f"worker {worker}: the port answers but no plaintext gRPC connection was made within "
                    f"{timeout:g} s. If the worker runs with --tls-cert (mutual TLS), give this side --tls-cert, "
                    "--tls-key and --tls-ca too (in Python: fedlab.workers.distributed.use_worker_tls); otherwise check "
                    f"that port {port} is a TFF worker (python -m fedlab worker)")
        why = connection_error(worker, tls)
        return (f"worker {worker}: the port answers but the TLS handshake failed within {timeout:g} s"
                f"{f' ({why})' if why else ''}. Check that the worker runs with --tls-cert/--tls-key/--tls-ca, "
                f"that its certificate is signed by {tls.ca} and names {host} (python -m fedlab certs DIR --hosts "
                f"{host}), and that {tls.cert} is signed by the CA the worker was given as --tls-ca")
    return (f"worker {worker}: no TFF worker answered within {timeout:g} s. Check that "
            f"`python -m fedlab worker --port {port}{' --tls-cert ...' if tls is not None else ''}` is running on "
            f"{host} ({'with --host set to an address this machine can reach' if host not in ('127.0.0.1', 'localhost', '::1') else 'on this machine'}), "
            "that no firewall blocks the port, and that it runs TFF 0.87.0 like this side")


def check_workers(workers: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raises :class:`WorkerUnreachableError` for the first worker that does not answer (or refuses TLS)."""
    for worker in workers:
        if not worker_ready(worker, timeout):
            raise WorkerUnreachableError(worker, _unreachable_message(worker, timeout))


# Execution context -------------------------------------------------------------
def _guarded_stub(worker: str, timeout: float, tls: Optional[WorkerTLS] = None):
    """TFF's gRPC stub for ``worker``, turning "worker gone" into :class:`WorkerLostError`.

    TFF marks UNAVAILABLE as retryable and retries forever; a run would hang.
    When a call fails, the worker gets ``timeout`` seconds to answer again.
    If it does, TFF's own retry of the sub-round proceeds; if not, the run
    stops with an error that names the worker.
    """
    import grpc
    from tensorflow_federated.python.core.impl.executors import executors_errors, remote_executor_grpc_stub

    from tensorflow_federated.python.core.impl.executors import remote_executor_stub

    channel = grpc_channel(worker, tls)
    inner = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)

    def guard(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except (grpc.RpcError, executors_errors.RetryableError) as err:
                if channel_ready(worker, timeout, tls):
                    raise
                raise WorkerLostError(worker, (
                    f"worker {worker} stopped answering during the run and did not come back within "
                    f"{timeout:g} s ({type(err).__name__}). Restart it (`python -m fedlab worker --port "
                    f"{parse_worker(worker)[1]}`) and run the same experiment again with the same checkpoint "
                    "folder to resume")) from None
        return call

    class GuardedStub(remote_executor_stub.RemoteExecutorStub):
        get_executor = staticmethod(guard(inner.get_executor))
        create_value = staticmethod(guard(inner.create_value))
        create_struct = staticmethod(guard(inner.create_struct))
        create_call = staticmethod(guard(inner.create_call))
        create_selection = staticmethod(guard(inner.create_selection))
        compute = staticmethod(guard(inner.compute))
        dispose = staticmethod(guard(inner.dispose))
        dispose_executor = staticmethod(guard(inner.dispose_executor))
        _stub = inner._stub  # the generated gRPC stub: tff_speedups._dispose_now sends through it with a deadline

        @property
        def is_ready(self) -> bool:
            return inner.is_ready

    stub = GuardedStub()
    return stub


def _async_context(worker: str, timeout: float, tls: Optional[WorkerTLS]):
    from tensorflow_federated.python.core.backends.native import compiler
    from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
    from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
    from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
    from tensorflow_federated.python.core.impl.executors import remote_executor
    from tensorflow_federated.python.core.impl.types import placements

    stub = _guarded_stub(worker, timeout, tls)

    def stack_fn(cardinalities):  # as tff's local_cpp_executor_factory, with a stub of ours
        cardinalities.setdefault(placements.CLIENTS, 0)
        executor = remote_executor.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    return async_execution_context.AsyncExecutionContext(
        executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn),
        compiler_fn=compiler.desugar_and_transform_to_native,
        transform_args=tensorflow_computation.transform_args,
        transform_result=tensorflow_computation.transform_result,
    )


def execution_context(workers: tuple[str, ...], timeout: float = CONNECT_TIMEOUT_S, secure_sums: bool = False):
    """TFF's mergeable-computation context over ``workers``: one sub-round per worker.

    ``secure_sums``: TFF's secure-sum intrinsics, which its worker does not implement, are first replaced by their
    plain bodies (the clipping, quantisation and modular sum done in the clear), as TFF's test backend does for
    the local runtime (:func:`fedlab.core.runtime.simulated_secure_sums`): the numbers of secure aggregation, each
    worker adding its own clients' share, without its cryptography.

    Cached: TFF compiles a computation once per context, so a second run on
    the same workers reuses the compiled form. Connects with the TLS setting
    of :func:`use_worker_tls` at the time of the call.
    """
    return _execution_context(tuple(workers), timeout, _CLIENT_TLS, bool(secure_sums))


@functools.lru_cache(maxsize=8)
def _execution_context(workers: tuple[str, ...], timeout: float, tls: Optional[WorkerTLS], secure_sums: bool = False):
    contexts = [_async_context(w, timeout, tls) for w in workers]
    if not secure_sums:
        return runtime.tff().backends.native.create_mergeable_comp_execution_context(contexts)
    from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
    from tensorflow_federated.python.core.backends.test import compiler as test_compiler
    from tensorflow_federated.python.core.impl.computation import computation_impl
    from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context

    def compile_secure_sums_in_the_clear(comp):
        # the replacement is rebuilt from its proto, which keeps no Python containers (ModelWeights, the state's
        # named tuples): the original's type gives them back to the results
        plain = computation_impl.ConcreteComputation.with_type(
            test_compiler.replace_secure_intrinsics_with_bodies(comp), comp.type_signature)
        return mergeable_comp_compiler.compile_to_mergeable_comp_form(plain)

    return mergeable_comp_execution_context.MergeableCompExecutionContext(
        async_contexts=contexts, compiler_fn=compile_secure_sums_in_the_clear)


@contextlib.contextmanager
def on_workers(workers: Sequence[str], timeout: float = CONNECT_TIMEOUT_S, secure_sums: bool = False):
    """Installs the context for ``workers`` (no-op for none) after checking each answers; ``secure_sums``: TFF's
    secure sums simulated in the clear (:func:`execution_context`)."""
    workers = tuple(workers)
    if not workers:
        yield
        return
    check_workers(workers, timeout)
    with runtime.tff().framework.get_context_stack().install(execution_context(workers, timeout, secure_sums)):
        yield


# Starting workers ----------------------------------------------------------------
def worker_binary() -> pathlib.Path:
    """Path of TFF's worker binary, found without importing TFF (which takes ~15 s)."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or spec.origin is None:
        raise RuntimeError("tensorflow_federated is not installed: `make env` installs it")
    path = pathlib.Path(spec.origin).parent / "data" / "worker_binary"
    if not path.is_file():
        raise RuntimeError(f"TFF's worker binary is missing at {path}")
    return path


def _bind_shim() -> pathlib.Path:
    """Builds (once) the preload library that makes the worker listen on one address."""
    source = pathlib.Path(__file__).with_name("_bind_shim.c")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "fedlab"
    library = cache / f"bind_shim-{digest}.so"
    if library.exists():
        return library
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError(
            "--host: TFF's worker always listens on every interface; fedlab restricts it with a small preloaded "
            "library that needs a C compiler (cc) to build once, and none was found. Install one, or pass "
            "--host '*' to accept every interface (only on a private network)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        built = pathlib.Path(tmp) / library.name
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(built), str(source), "-ldl"], check=True)
        built.replace(library)
    return library


def resolve_host(host: str) -> Optional[str]:
    """The address to listen on; None for every interface."""
    if not host.strip():
        raise ValueError("--host: must name an address (127.0.0.1, a private address, or '*' for every interface)")
    if host in ALL_INTERFACES:
        return None
    if host == "localhost":
        return DEFAULT_HOST
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        try:
            address = socket.gethostbyname(host)
        except OSError:
            raise ValueError(f"--host: {host!r} is neither an IP address nor a name this machine resolves") from None
        return None if address in ("0.0.0.0", "::") else address


def serve(port: int, host: str = DEFAULT_HOST, *, max_concurrent_calls: int = -1, ready_timeout: float = 60.0,
          tls: Optional[WorkerTLS] = None) -> int:
    """Runs one TFF worker service until SIGINT/SIGTERM; returns its exit status.

    Prints one line once the worker listens (``listening on HOST port PORT``). With ``tls`` (the
    worker's certificate, key and the clients' CA), TFF's worker listens on a free loopback port and
    a mutual-TLS proxy (:mod:`fedlab.workers.tls_proxy`) on ``host:port``; stopping one stops both.
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"--port: must be an integer in 1..65535, got {port}")
    address = resolve_host(host)
    if listening_addresses(port):
        raise ValueError(f"--port: {port} is already in use on this machine")
    # Behind the proxy, TFF's worker must be reachable from this machine only: the proxy is its only client.
    inner_port, inner_address = (port, address) if tls is None else (free_port(), DEFAULT_HOST)
    env = runtime.worker_environment()  # FEDLAB_WORKER_INTRAOP_THREADS, as for the local runtime's worker
    if inner_address is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [str(_bind_shim()), env.get("LD_PRELOAD", "")]))
        env["FEDLAB_BIND_HOST"] = inner_address
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Started before the proxy's gRPC threads exist: forking a process with gRPC threads makes gRPC complain.
    process = subprocess.Popen(
        [str(worker_binary()), f"--port={inner_port}", f"--max_concurrent_computation_calls={max_concurrent_calls}"],
        env=env, stdin=subprocess.DEVNULL, preexec_fn=_default_signals)

    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        if process.poll() is None:
            process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + ready_timeout
    while not listening_addresses(inner_port):
        if process.poll() is not None:
            print(f"fedlab worker: TFF's worker exited with status {process.returncode} before listening",
                  file=sys.stderr)
            return process.returncode or 1
        if time.monotonic() > deadline:
            process.kill()
            print(f"fedlab worker: TFF's worker did not listen on port {inner_port} within {ready_timeout:g} s",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    proxy = None
    if tls is not None:
        from . import tls_proxy

        listen = f"[::]:{port}" if address is None else _target(f"{address}:{port}")
        cert, key, ca = tls.pem
        try:
            proxy = tls_proxy.start(listen, f"127.0.0.1:{inner_port}", cert=cert, key=key, ca=ca)
        except RuntimeError as err:
            process.kill()
            print(f"fedlab worker: the TLS proxy {err}", file=sys.stderr)
            return 1
    try:
        for listener, wanted_address in ((inner_port, inner_address), (port, address)):
            bound = sorted(set(listening_addresses(listener)))
            wanted = "::" if wanted_address is None else wanted_address
            if bound != [wanted] and not (wanted_address is None and bound in (["::"], ["0.0.0.0"], ["0.0.0.0", "::"])):
                process.kill()
                what = "TFF's worker" if listener == inner_port else "the TLS proxy"
                print(f"fedlab worker: {what} listens on {', '.join(bound)}, not only on {wanted}; stopped it",
                      file=sys.stderr)
                return 1
        shown = "every interface" if address is None else address
        if tls is None:
            print(f"fedlab worker: TFF worker service listening on {shown} port {port} (pid {process.pid}); "
                  "Ctrl-C or SIGTERM stops it", flush=True)
        else:
            print(f"fedlab worker: TFF worker service listening on {shown} port {port} with mutual TLS "
                  f"(clients need a certificate from {tls.ca}; TFF's worker on 127.0.0.1 port {inner_port}, "
                  f"pid {process.pid}); Ctrl-C or SIGTERM stops it", flush=True)
        if address is None and tls is None:
            print("fedlab worker: warning: anyone who reaches this port can run TensorFlow graphs here; "
                  "keep it on a private network, or use --tls-cert/--tls-key/--tls-ca", file=sys.stderr, flush=True)
        status = process.wait()
    finally:
        if proxy is not None:
            proxy.stop(grace=1.0).wait()
    return 0 if stopping else status


class LocalWorkers:
    """``n`` worker services on this machine (``python -m fedlab worker``), for notebooks and tests.

    ``with LocalWorkers(2) as workers: run_experiment(config.replace(workers=workers.addresses))``;
    ``tls``: the workers' own certificate, key and the clients' CA (:class:`WorkerTLS`), for mutual TLS
    (the driver then needs :func:`use_worker_tls`).
    """

    def __init__(self, n: int, *, ports: Optional[Sequence[int]] = None, host: str = DEFAULT_HOST,
                 ready_timeout: float = 60.0, tls: Optional[WorkerTLS] = None):
        if ports is None:
            ports = [free_port() for _ in range(n)]
        if len(ports) != n:
            raise ValueError(f"ports: need {n}, got {len(ports)}")
        self.host = host
        self.tls = tls
        self.ports = list(ports)
        self.processes: list[subprocess.Popen] = []
        self._log_dir = pathlib.Path(tempfile.mkdtemp(prefix="fedlab-workers-"))
        atexit.register(self.stop)  # a kernel restart must not leave workers behind
        try:
            for port in self.ports:
                self.processes.append(self.start(port))
            for port in self.ports:
                self.wait_ready(port, ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(f"{self.host}:{p}" for p in self.ports)

    def start(self, port: int) -> subprocess.Popen:
        log = self._log_dir / f"worker-{port}.log"
        tls_args = [] if self.tls is None else \
            ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca)]
        with open(log, "ab") as out:
            # SIGTERM when this thread ends, so that the worker stops TFF's worker behind it; through the trampoline,
            # not preexec_fn: no fork() of this process, which may have gRPC's and a sweep's threads running
            process = subprocess.Popen(
                runtime.dying_with_parent([sys.executable, "-m", "fedlab", "worker", "--port", str(port), "--host",
                                           self.host, *tls_args], signal.SIGTERM),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(pathlib.Path(__file__).resolve().parents[2]))
        return process

    def wait_ready(self, port: int, timeout: float = 60.0) -> None:
        worker = f"{self.host}:{port}"
        deadline = time.monotonic() + timeout
        # A TLS worker opens its port once TFF's worker behind it listens; this side may hold no client certificate.
        ready = (lambda: bool(listening_addresses(port))) if self.tls is not None else \
            (lambda: channel_ready(worker, 1.0, None))
        while not ready():
            time.sleep(0.05)
            if time.monotonic() > deadline:
                raise WorkerUnreachableError(worker, f"local worker {worker} did not start; its log: "
                                                     f"{self._log_dir / f'worker-{port}.log'}")

    def kill(self, index: int) -> None:
        """Stops worker ``index`` abruptly (SIGKILL to the worker binary too): a crashed machine."""
        runtime.kill_tree(self.processes[index])

    def restart(self, index: int, timeout: float = 60.0) -> None:
        port = self.ports[index]
        deadline = time.monotonic() + timeout
        while listening_addresses(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.processes[index] = self.start(port)
        self.wait_ready(port, timeout)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(self.processes.index(process))

    def __enter__(self) -> "LocalWorkers":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _default_signals() -> None:
    """In the worker's child process: default SIGINT/SIGTERM even if this process was started with them ignored
    (``cmd &`` in a script ignores SIGINT, and exec keeps ignored signals ignored); dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    runtime.die_with_parent(signal.SIGKILL)
