"""A site process: one hospital's records, kept in its process, trained on when a driver asks.

``python -m fedlab site --dataset heart_disease --name cleveland --data PATH --port 8001 [--tls-*]``
reads the site's own file with the data set's registered site loader
(:mod:`fedlab.data.site_data`), prints what it serves, and answers a driver
(:mod:`fedlab.experiment.sites`) over gRPC: what it holds (sizes and label balance), a
round's training (the model in, an update out), the global model's scores on
its test split (metrics out), and the client role of the SecAgg/SecAgg+
protocol (its keys, masks and shares stay here). No call returns a record.

Each call names the run's config; the site builds the same TFF computation
from it as the driver (:func:`fedlab.experiment.processes.get_site_process`) and the same
client inputs as the simulation gives that client (:func:`fedlab.experiment.clients.client_inputs`).

Security: without ``--tls-*`` anyone who reaches the port can ask for updates
computed on the records, so the site listens on 127.0.0.1 unless given
``--host``. With ``--tls-cert/--tls-key/--tls-ca`` it accepts only drivers
whose client certificate its CA signed (``python -m fedlab certs`` makes a set).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from typing import Callable, Optional

import numpy as np

from ..protection import ckks, secagg
from ..workers import wire
from .clients import client_inputs, planned_inputs
from .config import ExperimentConfig
from ..workers.distributed import GRPC_OPTIONS, DEFAULT_HOST, WorkerTLS, resolve_host
from ..core import runtime
from ..core.ports import free_port, listening_addresses
from ..core.runtime import wait_limit
from ..aggregators.seeded import round_seed
from ..data.site_data import SiteData, load_site
from .sites import SERVICE, SiteUnreachableError, refusal
from ..core.validation import ConfigError

ROUNDS_KEPT = 4  # protocol rounds whose client role a site keeps (a round's role ends at its unmasking)


class SiteRefusal(ValueError):
    """A call the site will not answer; its one line goes back to the driver."""


class _Role:
    """This site's client role in one protocol round, and the stage it is at: each stage once, in order."""

    STAGES = ("advertise_keys", "share_keys", "masked_input", "unmask")

    def __init__(self, client, setup) -> None:
        self.client, self.setup, self.stage = client, setup, 0

    def expect(self, stage: str) -> None:
        """Refuses ``stage`` unless it is the next one."""
        if self.STAGES.index(stage) != self.stage + 1:
            raise SiteRefusal(f"{stage}: out of order (this round is at {self.STAGES[self.stage]})")

    def advance(self, stage: str) -> None:
        """Moves on to ``stage``, once its message has been checked."""
        self.expect(stage)
        self.stage = self.STAGES.index(stage)


class Site:
    """One site's records and its answers to a driver's calls (each: header, arrays -> header, arrays)."""

    def __init__(self, dataset: str, name: str, directory, ckks_secret: Optional[bytes] = None,
                 reproducible: bool = False) -> None:
        self.dataset, self.name, self.directory = dataset, name, directory
        self.ckks_secret = ckks_secret  # the sites' shared CKKS secret context (secure_protocol="ckks")
        self.reproducible = reproducible  # accepts the driver's seeds for its own noise and encryption
        self.records = load_site(dataset, name, directory, seed=0, test_fraction=None)  # fails here, in one line
        self._roles: "collections.OrderedDict[tuple, _Role]" = collections.OrderedDict()  # SecAgg, per (run, round)
        self._encrypted: "collections.OrderedDict[tuple, bool]" = collections.OrderedDict()  # CKKS: decrypted yet?
        self._templates: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # process -> its ModelWeights
        # Every call runs on this one thread: TFF's context stack and the graphs Keras models are made in are
        # per thread, and a model made on one thread fails on another once TFF has built a computation.
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedlab-site-tff")

    def start_runtime(self) -> None:
        """TFF set up on the site's call thread (before the port opens: a site that answers is ready)."""
        from ..core.runtime import setup

        self._thread.submit(setup, quiet=True).result(timeout=wait_limit())

    def answer(self, method: Callable, header: dict, arrays: dict):
        """``method(header, arrays)`` on the call thread, waited for at most the wait limit."""
        future = self._thread.submit(method, header, arrays)
        try:
            return future.result(timeout=wait_limit())
        except concurrent.futures.TimeoutError:
            raise RuntimeError(f"the call did not end within {wait_limit():g} s (FEDLAB_WAIT_LIMIT_S)") from None

    # What a call is about ---------------------------------------------------------------------------------
    def _config(self, header: dict) -> ExperimentConfig:
        try:
            config = ExperimentConfig.from_dict(json.loads(header["config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SiteRefusal(f"the call carries no valid config ({err})") from None
        if config.dataset != self.dataset:
            raise SiteRefusal(f"this site holds {self.dataset!r} data; the run's config asks for {config.dataset!r}")
        refused = refusal(config)
        if refused is not None:
            raise SiteRefusal(f"{refused[0]}: {refused[1]}")
        seeded = [what for what, used in (("DP-SGD's noise (dp='example')", config.dp == "example"),
                                          ("CKKS encryption", config.secure_protocol == "ckks")) if used]
        if seeded and config.noise_source == "seeded" and not self.reproducible:
            raise SiteRefusal(f"noise_source='seeded' would take {' and '.join(seeded)} at this site from seeds the "
                              "driver knows (it could remove the noise, or read the plaintexts): use "
                              "noise_source='unseeded', or start the site with --reproducible to check a "
                              "federation against the simulation (never with records that need protecting)")
        if config.user_level_dp and config.noise_multiplier > 0 and config.noise_source == "seeded" \
                and not self.reproducible:
            raise SiteRefusal("noise_source='seeded' would draw the server's user-level DP noise from seeds this "
                              "site reads in the config (it could remove the noise from the models it receives): use "
                              "noise_source='unseeded', or start the site with --reproducible to check a "
                              "federation against the simulation (never with records that need protecting)")
        return config

    def _data(self, config: ExperimentConfig) -> SiteData:
        return load_site(self.dataset, self.name, self.directory, seed=config.seeds["data"],
                         test_fraction=config.test_fraction)

    def _spec(self, config: ExperimentConfig, site: SiteData):
        from .clients import spec_for

        return spec_for(config, site.data)

    def _inputs(self, config: ExperimentConfig, header: dict):
        site = self._data(config)
        client = int(header["client"])
        if client != site.index:
            raise SiteRefusal(f"this is site {self.name!r}, client {site.index}; the driver asked for client {client}")
        spec = self._spec(config, site)
        inputs = client_inputs(site.data.x_train, spec.prepare_labels(site.data.y_train), config,
                               int(header["round"]), client)
        return spec, planned_inputs(inputs, int(header["steps"]))

    def _weights(self, process, arrays: dict):
        """The model the call carries, in the containers ``process`` takes (their types found once per process:
        ``initialize`` runs a TFF computation)."""
        from ..core.runtime import tff

        template = self._templates.get(process)
        if template is None:
            template = self._templates[process] = process.get_model_weights(process.initialize())
        return tff().learning.models.ModelWeights(
            trainable=type(template.trainable)(wire.unpack_list(arrays, "trainable")),
            non_trainable=type(template.non_trainable)(wire.unpack_list(arrays, "non_trainable")))

    # Calls ------------------------------------------------------------------------------------------------
    def describe(self, header: dict, arrays: dict):
        site = self._data(self._config(header)) if "config" in header else self.records
        return site.describe(), {}

    def _trained(self, config: ExperimentConfig, header: dict, arrays: dict) -> tuple:
        """(process, update, weight, unfinalized metrics leaves) of this site's client for the call's round,
        trained from the model the call carries."""
        from .processes import get_site_process

        spec, inputs = self._inputs(config, header)
        process = get_site_process(config, spec)
        update, weight, leaves = process.train_jobs(self._weights(process, arrays), header["learning_rate"],
                                                    [inputs])[0]
        return process, update, weight, leaves

    def _config_of(self, header: dict, *protocols: Optional[str]) -> ExperimentConfig:
        """The call's config (:meth:`_config`), refused when the call does not fit the run's secure protocol: an
        update leaves only as the run's protocol sends it (in the clear only without secure aggregation)."""
        config = self._config(header)
        protocol = config.secure_protocol if config.secure_aggregation else None
        if protocol not in protocols:
            raise SiteRefusal(f"this run's updates leave as {protocol or 'plain updates'}, not by this call")
        return config

    def train(self, header: dict, arrays: dict):
        _, update, weight, leaves = self._trained(self._config_of(header, None), header, arrays)
        return {"weight": float(weight)}, {**wire.pack_list(update, "update"), **wire.pack_list(leaves, "metrics")}

    def evaluate(self, header: dict, arrays: dict):
        from .evaluation import Evaluator

        config = self._config(header)
        site = self._data(config)
        spec = self._spec(config, site)
        # a Keras model of its own each time: one made before TFF built a computation (the next run's) fails
        evaluator = Evaluator(spec).load(wire.unpack_list(arrays, "weights"))
        loss, metric = evaluator.evaluate(site.data.x_test, site.data.y_test)
        scores = spec.task_entry.scores(evaluator.logits(site.data.x_test), site.data.y_test, spec.num_classes)
        scores = {k: (None if np.isnan(v) else float(v)) for k, v in scores.items()}
        return {"rows": int(len(site.data.y_test)), "loss": float(loss), "metric": float(metric),
                "scores": scores}, {}

    # SecAgg's client role: this site's keys, masks and shares never leave it -------------------------------
    def secure_train(self, header: dict, arrays: dict):
        """Round 0 of the protocol for this site: trains and encodes its update (``trains``), or, for a
        participant the round's schedule drops, makes its keys only."""
        from .processes import get_site_process

        config = self._config_of(header, "secagg", "secaggplus")
        spec, inputs = self._inputs(config, header)
        process = get_site_process(config, spec)
        vector, leaves = (process.encode_jobs(self._weights(process, arrays), header["learning_rate"],
                                              [inputs])[0] if header.get("trains", True) else (None, ()))
        protocol = process.protocol
        setup = secagg.make_setup([int(u) for u in header["participants"]], process.length, protocol.modulus_bits,
                                  protocol.protocol, int(header["graph_seed"]))
        role = _Role(secagg.new_client(int(header["client"]), vector, setup), setup)  # vector None: drops out
        channel_pk, mask_pk = role.client.advertise_keys()  # stage 0, advertise_keys
        self._remember(self._roles, (header["run"], int(header["round"])), role)
        return {"seconds": role.client.seconds}, {"channel_pk": np.frombuffer(channel_pk, np.uint8),
                                                  "mask_pk": np.frombuffer(mask_pk, np.uint8),
                                                  **wire.pack_list(leaves, "metrics")}

    @staticmethod
    def _remember(table: collections.OrderedDict, key: tuple, value) -> None:
        table[key] = value
        while len(table) > ROUNDS_KEPT:
            table.popitem(last=False)

    def _role(self, header: dict, stage: str) -> "_Role":
        """The open protocol round's client role, if ``stage`` is its next (each stage once, in order; the caller
        checks the message, then advances)."""
        role = self._roles.get((header.get("run"), int(header.get("round", -1))))
        if role is None:
            raise SiteRefusal("no protocol round of that run is open at this site (restarted since?)")
        role.expect(stage)
        return role

    def share_keys(self, header: dict, arrays: dict):
        role = self._role(header, "share_keys")
        channel, mask = wire.unpack_bytes(arrays, "channel"), wire.unpack_bytes(arrays, "mask")
        if set(channel) != set(mask) or not set(channel) <= role.setup.graph[role.client.id]:
            raise SiteRefusal("ShareKeys: the keys are not those of this site's neighbours")
        role.advance("share_keys")
        before = role.client.seconds
        ciphertexts = role.client.share_keys({v: (channel[v], mask[v]) for v in channel})
        return {"seconds": role.client.seconds - before}, wire.pack_bytes(ciphertexts, "cipher")

    def masked_input(self, header: dict, arrays: dict):
        role = self._role(header, "masked_input")
        inbox = wire.unpack_bytes(arrays, "mail")
        if not set(inbox) <= role.setup.graph[role.client.id]:
            raise SiteRefusal("MaskedInput: shares from clients that are not this site's neighbours")
        if len(inbox) + 1 < role.setup.threshold:  # fewer would leave this site's input all but unmasked
            raise SiteRefusal(f"MaskedInput: {len(inbox)} neighbours' shares, the threshold is {role.setup.threshold}")
        role.advance("masked_input")
        before = role.client.seconds
        y = role.client.masked_input(inbox)
        return {"seconds": role.client.seconds - before}, {"y": y}

    def unmask(self, header: dict, arrays: dict):
        role = self._role(header, "unmask")
        survivors = {int(s) for s in header["survivors"]}
        alive = (survivors | {role.client.id}) & role.setup.group(role.client.id)  # this site's input arrived too
        if len(alive) < role.setup.threshold:
            raise SiteRefusal(f"Unmask: {len(alive)} of this site's group survive, the threshold is "
                              f"{role.setup.threshold}")
        role.advance("unmask")
        before = role.client.seconds
        b_shares, s_shares = role.client.unmask(survivors)
        self._roles.pop((header["run"], int(header["round"])), None)
        return {"seconds": role.client.seconds - before}, {**wire.pack_bytes(b_shares, "b"),
                                                           **wire.pack_bytes(s_shares, "s")}

    # CKKS: this site encrypts its update, and decrypts the weighted mean, with the sites' secret context -------
    def _secret(self) -> bytes:
        if self.ckks_secret is None:
            raise SiteRefusal(f"site {self.name} holds no CKKS secret context: start it with --ckks-secret FILE "
                              "(python -m fedlab keys ckks DIR makes the sites' shared one)")
        return self.ckks_secret

    def homomorphic_train(self, header: dict, arrays: dict):
        """Trains, then encrypts the update with the sites' secret context; the randomness is the OS's, or, for a
        run with seeded noise at a ``--reproducible`` site, the simulation's seed (from the config, not the call)."""
        secret = self._secret()
        config = self._config_of(header, "ckks")
        process, update, weight, leaves = self._trained(config, header, arrays)
        vector, answer, chunks = process.flatten(update), {"weight": float(weight)}, []
        largest = process.beyond_range(vector)
        if weight > 0 and largest is not None:
            answer["largest"] = largest  # the driver leaves it out, with a warning
        elif weight > 0:
            round_num, client = int(header["round"]), int(header["client"])
            seed = process.round_seed(round_seed(config.seeds["noise"], round_num))
            start = time.perf_counter()
            chunks = ckks.encrypt(vector, secret, seed=None if seed is None else [*seed, client])
            answer["seconds"] = time.perf_counter() - start
            self._remember(self._encrypted, (header["run"], round_num), False)
        return answer, {**wire.pack_bytes(dict(enumerate(chunks)), "ct"), **wire.pack_list(leaves, "metrics")}

    def decrypt(self, header: dict, arrays: dict):
        """The weighted mean of a round this site encrypted for, decrypted once, and only a mean of 2 or more
        clients (what the driver says: a driver that lies could still ask for one client's update; the trust
        model is an honest-but-curious driver)."""
        secret = self._secret()
        key = (header.get("run"), int(header.get("round", -1)))
        if self._encrypted.get(key) is not False:
            raise SiteRefusal("no round of that run is waiting for its mean here (decrypted already, or this site "
                              "sent no update in it)")
        if int(header.get("included", 0)) < 2:
            raise SiteRefusal("a mean of fewer than 2 clients would be one client's update: not decrypted")
        self._encrypted[key] = True
        chunks = wire.unpack_bytes(arrays, "ct")
        start = time.perf_counter()
        mean = ckks.decrypt([chunks[k] for k in sorted(chunks)], int(header["length"]), secret)
        return {"seconds": time.perf_counter() - start}, {"mean": mean}

    def public_context(self, header: dict, arrays: dict):
        return {}, {"context": np.frombuffer(ckks.public_context_of(self._secret()), np.uint8)}

    def handlers(self) -> dict[str, Callable]:
        return {"Describe": self.describe, "Train": self.train, "Evaluate": self.evaluate,
                "SecureTrain": self.secure_train, "ShareKeys": self.share_keys, "MaskedInput": self.masked_input,
                "Unmask": self.unmask, "HomomorphicTrain": self.homomorphic_train, "Decrypt": self.decrypt,
                "PublicContext": self.public_context}


def _rpc(name: str, method: Callable, site: Site):
    """A gRPC handler around ``method``: a refusal is one line back to the driver (INVALID_ARGUMENT), any other
    failure one line back (INTERNAL) and its traceback on the site's stderr."""
    import grpc

    def handle(request: bytes, context) -> bytes:
        try:
            header, arrays = wire.decode(request)
            answer, out = site.answer(method, header, arrays)
            return wire.encode(answer, out)
        except (SiteRefusal, ConfigError, wire.MessageError) as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:  # noqa: BLE001 - the driver gets one line, the site's log the traceback
            traceback.print_exc(file=sys.stderr)
            context.abort(grpc.StatusCode.INTERNAL, f"{name} failed at site {site.name}: {type(err).__name__}: {err}")

    return grpc.unary_unary_rpc_method_handler(handle)


def start(site: Site, port: int, host: str = DEFAULT_HOST, tls: Optional[WorkerTLS] = None, threads: int = 8):
    """A started gRPC server answering for ``site`` on ``host:port``; returns (server, bound port)."""
    import grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fedlab-site"),
                         options=GRPC_OPTIONS + [("grpc.so_reuseport", 0)])  # never share the port
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {name: _rpc(name, fn, site) for name, fn in site.handlers().items()}),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        bound = server.add_insecure_port(address)
    else:
        cert, key, ca = tls.pem
        bound = server.add_secure_port(address, grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True))
    if bound == 0:
        raise OSError(f"cannot listen on {address} (in use, or not an address of this machine)")
    server.start()
    return server, bound


def serve(dataset: str, name: str, directory, port: int, host: str = DEFAULT_HOST,
          tls: Optional[WorkerTLS] = None, ckks_secret=None, reproducible: bool = False) -> int:
    """The ``python -m fedlab site`` command: checks its arguments and loads the site's records (one line for
    either), prints what it serves, answers until SIGTERM or SIGINT."""
    if not 1 <= port <= 65535:
        raise ValueError(f"--port: must be an integer in 1..65535, got {port}")
    address = resolve_host(host)
    loopback = address is not None and ipaddress.ip_address(address).is_loopback
    if tls is None and not loopback:
        raise ValueError(f"--host: {host} is reachable from other machines, and without --tls-cert/--tls-key/--tls-ca "
                         "anyone who reaches it could ask for updates computed on this site's records")
    if listening_addresses(port):
        raise ValueError(f"--port: {port} is already in use on this machine")
    secret = None if ckks_secret is None else ckks.read_secret_context(ckks_secret)
    site = Site(dataset, name, directory, secret, reproducible)
    site.start_runtime()
    try:
        server, bound = start(site, port, address or "0.0.0.0", tls)
    except OSError as err:
        raise ValueError(f"--port: {err}") from None
    info = site.records.describe()
    labels = ", ".join(f"{k}: {v}" for k, v in info["label_counts"].items())
    print(f"site {name} ({dataset}): {info['train_rows'] + info['test_rows']} records ({info['train_rows']} train, "
          f"{info['test_rows']} test at data seed 0), {info['features']} features, training labels {labels}; "
          f"serving on {host}:{bound} {'with mutual TLS' if tls else 'WITHOUT TLS (this machine only)'}"
          f"{'; --reproducible: accepts seeded noise' if reproducible else ''}", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2.0).wait(5.0)
    # a TFF call still running on the site's call thread would hold a normal exit; its worker dies with us
    sys.stdout.flush()
    os._exit(0)


class LocalSites:
    """Site processes on this machine (``python -m fedlab site``), one per name, for notebooks and tests.

    ``with LocalSites(["cleveland", ...], data=PATH) as sites: run_experiment(config, sites=sites.addresses)``;
    ``tls``: the sites' certificate, key and the drivers' CA (:class:`WorkerTLS`), for mutual TLS (the driver
    then needs :func:`fedlab.workers.distributed.use_worker_tls`). Each site reads only its own file under ``data``.
    """

    def __init__(self, names, *, data, dataset: str = "heart_disease", host: str = DEFAULT_HOST,
                 tls: Optional[WorkerTLS] = None, ckks_secret=None, reproducible: bool = False,
                 ready_timeout: float = 120.0) -> None:

        self.names, self.data, self.dataset, self.host, self.tls = list(names), data, dataset, host, tls
        self.ckks_secret, self.reproducible = ckks_secret, reproducible
        self.ports = {name: free_port() for name in self.names}
        self.processes: dict = {}
        self.log_dir = pathlib.Path(tempfile.mkdtemp(prefix="fedlab-sites-"))
        atexit.register(self.stop)  # a kernel restart must not leave sites behind
        try:
            for name in self.names:
                self.processes[name] = self._start(name)
            for name in self.names:
                self.wait_ready(name, ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def addresses(self) -> dict[str, str]:
        return {name: f"{self.host}:{port}" for name, port in self.ports.items()}

    def _start(self, name: str):
        tls_args = [] if self.tls is None else \
            ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key), "--tls-ca", str(self.tls.ca)]
        if self.ckks_secret is not None:
            tls_args += ["--ckks-secret", str(self.ckks_secret)]
        if self.reproducible:
            tls_args.append("--reproducible")
        command = [sys.executable, "-m", "fedlab", "site", "--dataset", self.dataset, "--name", name, "--data",
                   str(self.data), "--port", str(self.ports[name]), "--host", self.host, *tls_args]
        with open(self.log_dir / f"{name}.log", "ab") as out:
            # through runtime's trampoline, not preexec_fn: no fork() of a process full of gRPC threads (whose
            # fork handlers would log into a notebook), and the site dies with this process
            return subprocess.Popen(runtime.dying_with_parent(command), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=str(pathlib.Path(__file__).resolve().parents[2]))

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, name: str, timeout: float = 120.0) -> None:
        """Until site ``name`` says it serves (its port open); its own error line if it exits first."""
        deadline = time.monotonic() + timeout
        while "serving on" not in self.log(name):
            process = self.processes[name]
            if process.poll() is not None:
                last = (self.log(name).strip().splitlines() or ["(no output)"])[-1]
                raise SiteUnreachableError(self.addresses[name], f"site {name} exited at start: {last}")
            if time.monotonic() > deadline:
                raise SiteUnreachableError(self.addresses[name], f"site {name} did not start within {timeout:g} s; "
                                                                 f"its log: {self.log_dir / f'{name}.log'}")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """Stops site ``name`` abruptly (SIGKILL, its TFF worker too): a hospital's machine that crashed."""
        runtime.kill_tree(self.processes[name])

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Starts site ``name`` again on its port (after :meth:`kill`)."""
        deadline = time.monotonic() + timeout
        while listening_addresses(self.ports[name]) and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.log_dir / f"{name}.log").write_bytes(b"")
        self.processes[name] = self._start(name)
        self.wait_ready(name, timeout)

    def stop(self) -> None:
        """Stops every site (SIGTERM, then SIGKILL after 15 s) and removes their logs."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(name)
        atexit.unregister(self.stop)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalSites":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
