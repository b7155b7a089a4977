"""Asynchronous buffered aggregation on the simulated clock: FedBuff's schedule (no TensorFlow here).

FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS, arXiv:2106.06639), Algorithm 1: the server keeps
``concurrency`` clients training at once; a client that is free starts on the
model version current at that moment and reports when its device is done;
whenever ``buffer`` updates have arrived the server steps, each update
``Delta_i`` scaled by a staleness weight ``s(tau_i)``, ``tau_i`` the number of
server steps since the version the client started on, and the sum divided by
the buffer size. fedlab passes the scaled updates through the config's
aggregator (the mean, weighted by the config's ``client_weighting``), so with
``client_weighting="uniform"`` a step is the paper's
``(1/K) sum_i s(tau_i) Delta_i``.

The schedule is a function of the config alone (devices, seeds, the clients'
work), computed here before any training (:func:`plan`): which client starts
when, on which version, when it reports, and which updates each server step
takes. Rules, in the order they apply:

* at time 0, ``concurrency`` clients start on version 0;
* a client reports at start + download + compute + upload seconds on its
  device (:func:`fedlab.systems.systems.client_seconds`); with ``dropout_rate`` a job
  is lost instead (the client went offline; the server notices at the time it
  would have reported, and the slot is freed);
* the reports at one instant are taken in order of a random tie-break; each
  joins the buffer, and the server steps as soon as the buffer holds ``buffer``
  updates (so a step's updates are the ``buffer`` earliest reports);
* after every report at an instant has been taken (and the steps they caused),
  each freed slot starts a new job on the version then current: a client
  drawn at random among those not training, each with probability
  proportional to its device's availability.

A client's ``k``-th job trains on the data order of "round" ``k``
(:meth:`fedlab.experiment.clients.Clients.inputs`), so with ``concurrency = buffer =
num_clients`` on equal devices every client starts every version once, and
the run is synchronous FedAvg with full participation
(``tests/test_asynchronous.py``).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.registry import Registry, decorator
from .systems import Devices, Work, client_seconds
from ..core.validation import ConfigError

# Staleness weights -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StalenessWeighting:
    """``weight(staleness)``: the factor an update that is ``staleness`` server steps old is scaled by."""

    name: str
    weight: Callable[[np.ndarray], np.ndarray]


STALENESS: Registry[StalenessWeighting] = Registry("staleness weighting", "async_staleness")


def register_staleness(name: str, *, paper: Optional[str] = None, replace: bool = False):
    """Registers ``weight(staleness: int array) -> float array`` (1 at staleness 0, by convention) under ``name``."""
    return decorator(STALENESS, name, lambda fn: StalenessWeighting(name, fn), paper=paper, replace=replace)


@register_staleness("polynomial", paper="Nguyen et al. 2022, AISTATS, arXiv:2106.06639 (FedBuff), s(t) = 1/sqrt(1+t)")
def _polynomial(staleness: np.ndarray) -> np.ndarray:
    """FedBuff's 1/sqrt(1 + staleness): an update 3 steps old counts half."""
    return 1.0 / np.sqrt(1.0 + np.asarray(staleness, np.float64))


@register_staleness("constant")
def _constant(staleness: np.ndarray) -> np.ndarray:
    """1 at every staleness: the buffer's plain mean."""
    return np.ones(np.shape(staleness), np.float64)


def staleness_weights(name: str, staleness: Sequence[int]) -> np.ndarray:
    """The registered weighting ``name`` at ``staleness``; ValueError if it gives a weight that is not finite or
    not positive."""
    weights = np.asarray(STALENESS[name].weight(np.asarray(staleness, np.int64)), np.float64)
    if weights.shape != np.shape(staleness) or not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError(f"async_staleness {name!r}: must give one finite weight > 0 per update, got {weights!r}")
    return weights


# The schedule ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One client's local training: started at ``start`` seconds on model ``version``, its ``number``-th job
    (1-based; the data order of that "round"), reporting at ``finish`` unless ``lost``."""

    id: int
    client: int
    number: int
    version: int
    start: float
    finish: float
    lost: bool


@dataclasses.dataclass(frozen=True)
class ServerStep:
    """Server step ``version`` (it makes model version ``version`` from ``version - 1``) at ``time`` seconds:
    the jobs whose updates it takes, in order of arrival, their staleness, and what happened since the last step."""

    version: int
    time: float
    jobs: tuple[int, ...]
    staleness: tuple[int, ...]
    started: int  # jobs started since the previous step
    lost: int  # jobs lost since the previous step
    in_flight: int  # jobs training right after this step (started, neither reported nor lost)


@dataclasses.dataclass(frozen=True)
class AsyncPlan:
    jobs: tuple[Job, ...]
    steps: tuple[ServerStep, ...]

    def started_on(self, version: int) -> list[Job]:
        """The jobs that start on ``version`` and report (lost jobs train nothing the server sees)."""
        return [j for j in self.jobs if j.version == version and not j.lost]

    def pending_after(self, version: int) -> list[int]:
        """Ids of the jobs started on a version <= ``version`` whose update a later step takes, sorted."""
        later = {j for s in self.steps if s.version > version for j in s.jobs}
        return sorted(j.id for j in self.jobs if j.version <= version and j.id in later)


def plan(devices: Devices, *, steps: int, concurrency: int, buffer: int, work: Callable[[int, int], Work],
         bytes_down: float, bytes_up: float, seed: Sequence[int], dropout_rate: float = 0.0,
         eligible: Optional[Sequence[int]] = None) -> AsyncPlan:
    """FedBuff's schedule for ``steps`` server steps (see the module's rules).

    ``work(client, number)``: the local steps of ``client``'s ``number``-th
    job; ``seed``: integers for the draws (who starts, tie-breaks, losses);
    ``eligible``: the clients that may train (None: all).
    """
    clients = np.arange(len(devices)) if eligible is None else np.asarray(sorted(eligible), np.int64)
    if not 1 <= concurrency <= len(clients):
        raise ConfigError("async_concurrency", f"must be between 1 and the {len(clients)} eligible clients, "
                                               f"got {concurrency}")
    if not 1 <= buffer <= concurrency:
        raise ConfigError("async_buffer", f"must be between 1 and async_concurrency={concurrency}, got {buffer}")
    rng = np.random.default_rng([*seed, 0xA5])
    jobs: list[Job] = []
    heap: list[tuple[float, float, int]] = []  # (finish, tie-break, job id)
    busy: set[int] = set()
    counts: dict[int, int] = {}
    availability = np.asarray(devices.availability, np.float64)
    online = int((availability[clients] > 0).sum())
    if online < concurrency:
        raise ConfigError("async_concurrency", f"must be at most the {online} eligible clients whose devices are ever "
                                               f"online (availability > 0), got {concurrency}")
    version, now = 0, 0.0

    def start() -> None:
        idle = np.array([c for c in clients if c not in busy], np.int64)
        p = availability[idle] / availability[idle].sum()  # > 0: fewer are training than can be online
        client = int(rng.choice(idle, p=p))
        counts[client] = counts.get(client, 0) + 1
        down, compute, up = client_seconds(devices, [client], [work(client, counts[client]).examples],
                                           bytes_down, bytes_up)
        lost = bool(rng.random() < dropout_rate)
        job = Job(len(jobs), client, counts[client], version, now, now + float(down[0] + compute[0] + up[0]), lost)
        jobs.append(job)
        busy.add(client)
        heapq.heappush(heap, (job.finish, float(rng.random()), job.id))

    for _ in range(concurrency):
        start()
    if not 0 <= dropout_rate < 1:
        raise ConfigError("dropout_rate", f"must be in [0, 1) with async_concurrency > 0, got {dropout_rate}")
    server_steps: list[ServerStep] = []
    buffered: list[int] = []
    started, lost = concurrency, 0
    while len(server_steps) < steps:
        now = heap[0][0]
        freed = 0
        while heap and heap[0][0] == now:
            _, _, job_id = heapq.heappop(heap)
            job = jobs[job_id]
            busy.discard(job.client)
            freed += 1
            if job.lost:
                lost += 1
                continue
            buffered.append(job_id)
            if len(buffered) == buffer:
                version += 1
                server_steps.append(ServerStep(version, now, tuple(buffered),
                                               tuple(version - 1 - jobs[j].version for j in buffered),
                                               started, lost, 0))
                started, lost, buffered = 0, 0, []
        for _ in range(freed):
            start()
            started += 1
        for i in range(len(server_steps) - 1, -1, -1):  # who is training once the instant's slots are refilled
            if server_steps[i].time != now:
                break
            server_steps[i] = dataclasses.replace(server_steps[i], in_flight=len(heap))
        if not math.isfinite(now):
            raise ValueError("async: a client's device never finishes (infinite time)")
    return AsyncPlan(tuple(jobs), tuple(server_steps[:steps]))
