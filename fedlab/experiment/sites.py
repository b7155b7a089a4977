"""The driver's side of a federation of site processes: it reaches each site, never a record.

``run_experiment(config, sites={"cleveland": "host:8001", ...})`` (the CLI:
``run --sites cleveland=host:8001,...``) runs the config's clients at the
sites (``python -m fedlab site``, :mod:`fedlab.experiment.site_service`), each of which
holds its own records. The driver learns what a site tells every
coordinator (rows, features, classes, label balance: :meth:`Federation.connect`),
sends the model, and receives updates (or, with secure aggregation, masked
ones) and test-set scores. It opens no data file: started with no data path
at all, it runs (``tests/test_sites.py``).

Mutual TLS is the driver's setting for workers (:func:`fedlab.workers.distributed.use_worker_tls`,
``run --tls-*``): a site refuses a driver whose certificate its CA did not sign.
A site that is down at the start is named in one line; one that stops
answering during a round is a :class:`SiteLostError` (the checkpoint keeps the
rounds before it; with the site restarted, the same run resumes), or under
secure aggregation a dropout of the protocol.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import warnings
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..workers import wire
from .config import ExperimentConfig
from ..workers.distributed import (WorkerLostError, WorkerTLS, WorkerUnreachableError, channel_ready, connection_error,
                          grpc_channel, parse_worker, port_answers, worker_tls)
from ..models.models import ModelSpec
from ..core.runtime import wait_limit
from ..data.tasks import TASKS
from ..core.validation import ConfigError, FedlabWarning

SERVICE = "fedlab.Site"
CONNECT_TIMEOUT_S = 10.0
# A call may build the site's TFF computations first (about 10 s) and then train: bounded, never forever.
CALL_TIMEOUT_S = 600.0


class SiteError(RuntimeError):
    """A site refused a call or failed in it; the message is the site's own line."""

    def __init__(self, worker: str, message: str):
        super().__init__(message)
        self.worker = worker


class SiteUnreachableError(WorkerUnreachableError):
    pass


class SiteLostError(WorkerLostError):
    pass


@dataclasses.dataclass(frozen=True)
class SiteJob:
    """What the driver asks of one site in a round: train client ``client`` (the site's number) for round
    ``round``, at most ``steps`` local steps (the round's schedule; -1: all)."""

    site: "SiteLink"
    config: str  # the run's config, JSON: the site builds the same computation and split from it
    client: int
    round: int
    steps: int = -1
    links: tuple = ()  # every site of the federation, by client number (a protocol's other participants)
    tolerant: bool = False  # a site lost in this round is left out (straggler_policy drop or partial)

    def other(self, client: int) -> "SiteJob":
        """The same round's call to another site (one that takes part in a protocol but sends no update)."""
        return dataclasses.replace(self, site=self.links[client], client=client, steps=-1)


class SiteLink:
    """One site's address and gRPC channel (with the driver's TLS setting when it was made)."""

    def __init__(self, name: str, address: str, tls: Optional[WorkerTLS]) -> None:
        parse_worker(address)
        self.name, self.address, self._tls = name, address, tls
        self._channel = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SiteLink({self.name!r}, {self.address!r})"

    def ready(self, timeout: float) -> bool:
        return channel_ready(self.address, timeout, self._tls)

    def unreachable_message(self, timeout: float) -> str:
        host, port = parse_worker(self.address)
        where = f"site {self.name!r} at {self.address}"
        if port_answers(self.address):
            if self._tls is None:
                return (f"{where}: the port answers but no plaintext connection was made within {timeout:g} s; if the "
                        "site runs with --tls-cert, give this driver --tls-cert/--tls-key/--tls-ca too")
            why = connection_error(self.address, self._tls)
            return (f"{where}: the TLS handshake failed{f' ({why})' if why else ''}: the site refuses a driver whose "
                    f"certificate its CA did not sign; check that {self._tls.cert} is signed by the site's --tls-ca "
                    f"and that the site's certificate names {host}")
        return (f"{where}: no site answered within {timeout:g} s. Start it there: python -m fedlab site --name "
                f"{self.name} --data PATH --port {port}")

    def call(self, method: str, header: Mapping, arrays: Mapping = (), timeout: float = CALL_TIMEOUT_S):
        """(header, arrays) of the site's answer; :class:`SiteLostError` if it stops answering,
        :class:`SiteError` with the site's own line if it refuses."""
        import grpc

        with self._lock:
            if self._channel is None:
                self._channel = grpc_channel(self.address, self._tls)
            channel = self._channel
        try:
            answer = channel.unary_unary(f"/{SERVICE}/{method}")(wire.encode(header, arrays),
                                                                  timeout=min(timeout, wait_limit()))
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise SiteLostError(self.address, (
                    f"site {self.name!r} at {self.address} stopped answering ({code.name} in {method}). Restart it "
                    "and run the same experiment again with the same checkpoint folder to resume")) from None
            raise SiteError(self.address, f"site {self.name!r}: {err.details()}") from None
        return wire.decode(answer)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


def call_all(fn: Callable, items: Sequence) -> list:
    """``fn`` of every item, the sites called at once (a thread each), in order; the first error is raised
    after every call has ended (each call is bounded by its own timeout)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="fedlab-site") as pool:
        futures = [pool.submit(fn, item) for item in items]
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]


def parse_sites(text) -> dict[str, str]:
    """``"name=host:port,..."`` or a mapping to ``{name: address}``; ValueError naming what is wrong."""
    if isinstance(text, str):
        pairs = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, sep, address = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"each site must be 'name=host:port', got {item!r}")
            if name.strip() in pairs:
                raise ValueError(f"site {name.strip()!r} is listed twice")
            pairs[name.strip()] = address.strip()
    elif isinstance(text, Mapping):
        pairs = {str(k): str(v) for k, v in text.items()}
    else:
        raise ValueError(f"must be a mapping name -> 'host:port' or 'name=host:port,...', got {type(text).__name__}")
    if not pairs:
        raise ValueError("no site given; give name=host:port,...")
    for name, address in pairs.items():
        try:
            parse_worker(address)
        except ValueError as err:
            raise ValueError(f"site {name!r}: {err}") from None
    if len(set(pairs.values())) != len(pairs):
        raise ValueError("two sites have the same address")
    return pairs


def refusal(config: ExperimentConfig) -> Optional[tuple[str, str]]:
    """(field, why) when ``config`` cannot run on site processes, else None: checked before any site is called."""
    entry = config.algorithm_entry
    if config.partition != "natural":
        return "partition", "must be 'natural' with sites: each site is one client, holding its own records"
    if TASKS[config_task(config)].name != "classification":
        return "dataset", "site processes run classification data here: the pooled C-index needs every site's risks"
    if not runs_at_sites(entry):
        from ..algorithms.algorithms import ALGORITHMS

        able = ", ".join(name for name in ALGORITHMS.names() if runs_at_sites(ALGORITHMS[name]))
        return "algorithm", (f"{config.algorithm!r} cannot run on sites yet: sites train in the compiled client "
                             f"loop and keep no per-client state between rounds ({able} do)")
    checks = [("workers", bool(config.workers), "sites are the workers here"),
              ("finetune_epochs", config.finetune_epochs > 0, "fine-tuning evaluation is not run at sites yet"),
              ("eval_per_client", config.eval_per_client, "per-site scores are reported as site_<metric>_<name>"),
              ("local_test_fraction", config.local_test_fraction > 0, "a site tests on its own test split"),
              ("validation_fraction", config.validation_fraction > 0, "tuning runs in simulation"),
              ("feature_noise", config.feature_noise > 0, "a site's records are what it holds"),
              ("attacker_fraction", config.attacker_fraction > 0, "attacks are simulated, not run by hospitals"),
              ("async_concurrency", config.async_concurrency > 0, "FedBuff runs in simulation"),
              ("dp", config.user_level_dp and config.secure_protocol != "none",
               "user-level DP on a secure protocol runs in simulation for now (a round of one site is summed "
               "without the protocol there)"),
              ("secure_aggregation", config.secure_aggregation and config.secure_protocol == "none",
               "the simulated secure sum hides nothing across processes: give secure_protocol='secagg' or 'secaggplus'")]
    for field, refused, why in checks:
        if refused:
            return field, f"cannot be used with sites: {why}"
    return None


def runs_at_sites(entry) -> bool:
    """Whether an algorithm's round is the sites' training, then the driver's aggregation and server step."""
    return getattr(entry.on_arrays, "takes_round_builders", False) and not (entry.in_driver or entry.normalized)


def config_task(config: ExperimentConfig) -> str:
    from ..data.data import DATASETS

    return DATASETS[config.dataset].task


class Federation:
    """The sites of one run: their links, what each told the driver, and calls to all of them at once."""

    def __init__(self, sites) -> None:
        tls = worker_tls()
        self.links = [SiteLink(name, address, tls) for name, address in parse_sites(sites).items()]
        self.infos: list[dict] = []

    @property
    def key(self) -> str:
        """Part of the result cache's key: a federation's numbers equal the simulation's only within float32."""
        return "sites:" + ",".join(sorted(link.name for link in self.links))

    def connect(self, config: ExperimentConfig, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Checks every site answers, asks what it holds for this config's split, and orders the sites as the
        data set's clients; one line naming the first site that is down or does not fit."""
        refused = refusal(config)
        if refused is not None:
            raise ConfigError(*refused)
        for link in self.links:
            if not link.ready(timeout):
                raise SiteUnreachableError(link.address, link.unreachable_message(timeout))
        header = {"config": config.to_json()}
        infos = self.map(lambda link: link.call("Describe", header, timeout=timeout * 6)[0], self.links)
        for link, info in zip(self.links, infos):
            if info["site"] != link.name:
                raise ConfigError("sites", f"{link.address} is site {info['site']!r}, not {link.name!r}")
            if info["dataset"] != config.dataset:
                raise ConfigError("sites", f"site {link.name!r} holds {info['dataset']!r} data, the config "
                                           f"asks for {config.dataset!r}")
        names = infos[0]["site_names"]
        missing = [n for n in names if n not in {i["site"] for i in infos}]
        if missing or len(infos) != len(names):
            raise ConfigError("sites", f"{config.dataset} has the sites {', '.join(names)}; a federation of its "
                                       f"natural clients needs each once (missing: {', '.join(missing) or 'none'})")
        if sorted(i["index"] for i in infos) != list(range(len(names))):
            raise ConfigError("sites", "the sites do not number the data set's clients 0.."
                                       f"{len(names) - 1} once each: " + ", ".join(f"{i['site']} {i['index']}"
                                                                                    for i in infos))
        if len({i["features"] for i in infos}) != 1:
            raise ConfigError("sites", "the sites hold different numbers of features: "
                                       + ", ".join(f"{i['site']} {i['features']}" for i in infos))
        if config.num_clients != len(names):
            raise ConfigError("num_clients", f"must be {len(names)}, the number of sites")
        order = sorted(range(len(infos)), key=lambda k: infos[k]["index"])
        self.links = [self.links[k] for k in order]
        self.infos = [infos[k] for k in order]

    def spec(self, config: ExperimentConfig) -> ModelSpec:
        info = self.infos[0]
        shape = tuple(info["image_shape"]) if info.get("image_shape") else None
        return ModelSpec(config.model, int(info["features"]), int(info["num_classes"]), shape, config.freeze_layers,
                         info["task"])

    @property
    def sizes(self) -> list[int]:
        return [int(i["train_rows"]) for i in self.infos]

    @property
    def names(self) -> list[str]:
        return [link.name for link in self.links]

    def map(self, fn: Callable, items: Sequence) -> list:
        return call_all(fn, items)

    def evaluate(self, config: ExperimentConfig, weights: Sequence[np.ndarray], eval_metric: str) -> dict:
        """The global model scored at every site on its own test split: pooled ``eval_loss`` and
        ``eval_<metric>`` (weighted by the sites' test rows, as one pooled test set gives them), each site's
        ``site_<metric>_<name>``, their means ``mean_site_<metric>`` over the sites where they are defined, and
        ``sites_evaluated``. Where a round goes on without a lost site (a secure protocol's dropout,
        ``straggler_policy`` drop or partial), one that stops answering is left out of the evaluation with a
        warning naming it: its scores are NaN and the pooled ones are those of the other sites."""
        header = {"config": config.to_json()}
        arrays = wire.pack_list(weights, "weights")
        tolerant = config.straggler_policy != "wait" or config.secure_protocol in ("secagg", "secaggplus")

        def score(link: SiteLink):
            try:
                return link.call("Evaluate", header, arrays)[0]
            except SiteLostError:
                if not tolerant:
                    raise
                return None

        answers = self.map(score, self.links)
        lost = [link.name for link, a in zip(self.links, answers) if a is None]
        if lost:
            warnings.warn(f"fedlab: site(s) {', '.join(lost)} did not answer the evaluation: their scores are NaN "
                          "and the pooled scores are those of the other sites", FedlabWarning, stacklevel=3)
        answered = [a for a in answers if a is not None]
        rows = np.array([a["rows"] for a in answered], np.float64)
        nan = float("nan")
        out = {"eval_loss": float(np.dot(rows, [a["loss"] for a in answered]) / rows.sum()) if answered else nan,
               f"eval_{eval_metric}": float(np.dot(rows, [a["metric"] for a in answered]) / rows.sum())
               if answered else nan, "sites_evaluated": len(answered)}
        for metric in next((list(a["scores"]) for a in answered), []):
            values = [nan if a is None or a["scores"].get(metric) is None else float(a["scores"][metric])
                      for a in answers]
            out.update({f"site_{metric}_{link.name}": v for link, v in zip(self.links, values)})
            defined = [v for v in values if not np.isnan(v)]
            out[f"mean_site_{metric}"] = float(np.mean(defined)) if defined else nan
        return out

    def close(self) -> None:
        for link in self.links:
            link.close()


@dataclasses.dataclass(frozen=True)
class SiteClients:
    """The runner's view of the clients when they are sites: how many records each trains on, no record."""

    federation: Federation

    @property
    def sizes(self) -> list[int]:
        return self.federation.sizes

    attackers: frozenset = frozenset()

    def inputs(self, config: ExperimentConfig, round_num: int, client: int) -> SiteJob:
        links = tuple(self.federation.links)
        return SiteJob(links[client], config.to_json(), client, round_num, links=links,
                       tolerant=config.straggler_policy != "wait")
