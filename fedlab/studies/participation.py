"""Who takes part: each client's device and how often the rounds of a config use it, without training.

The schedule of a run is a function of the config alone (seeds, devices,
policy), so who is selected, who completes and who is dropped can be read
before or after training; the runner uses the same :class:`~fedlab.experiment.sampling.Scheduler`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..experiment.clients import Clients, dataset_for, spec_for
from ..experiment.config import ExperimentConfig
from ..experiment.sampling import Scheduler, work_of
from ..systems.systems import client_seconds


def _scheduler(config: ExperimentConfig) -> tuple[Scheduler, Clients]:
    data = dataset_for(config)
    spec = spec_for(config, data)
    clients = Clients.for_config(config, spec)
    return Scheduler(config, [len(x) for x in clients.x], spec.tensor_sizes(), clients.attackers), clients


def _device_table(config: ExperimentConfig, scheduler: Scheduler, clients: Clients) -> pd.DataFrame:
    """Each client's device, examples held, and round_seconds: download, round 1's local work and upload on it."""
    table = scheduler.devices.table()
    table.insert(1, "examples", [len(x) for x in clients.x])
    everyone = np.arange(config.num_clients)
    work = [work_of(len(x), scheduler.config_of(c), 1).examples for c, x in enumerate(clients.x)]
    table["round_seconds"] = sum(client_seconds(scheduler.devices, everyone, work, scheduler.bytes_down,
                                                scheduler.bytes_up))
    return table


def async_participation(config: ExperimentConfig) -> pd.DataFrame:
    """FedBuff's schedule per client (``async_concurrency`` > 0), without training: its device, examples held,
    round_seconds (one job on its device), jobs_started, jobs_lost, updates_used (by the config's ``rounds``
    server steps), share_of_updates, and mean_staleness of its used updates."""
    if not config.async_concurrency:
        raise ValueError("async_concurrency: must be > 0 for async_participation (use participation_table)")
    scheduler, clients = _scheduler(config)
    plan = scheduler.asynchronous(config.rounds)
    last = plan.steps[-1].time
    jobs = [j for j in plan.jobs if j.start < last or j.id in {i for s in plan.steps for i in s.jobs}]
    used = {j: t for s in plan.steps for j, t in zip(s.jobs, s.staleness)}
    table = _device_table(config, scheduler, clients)
    client = np.array([j.client for j in jobs], np.int64)
    table["jobs_started"] = np.bincount(client, minlength=config.num_clients)
    table["jobs_lost"] = np.bincount(client[[j.lost and j.finish <= last for j in jobs]],  # noticed by then
                                     minlength=config.num_clients)
    used_clients = np.array([plan.jobs[j].client for j in used], np.int64)
    table["updates_used"] = np.bincount(used_clients, minlength=config.num_clients)
    table["share_of_updates"] = table.updates_used / max(len(used), 1)
    staleness = np.bincount(used_clients, weights=list(used.values()), minlength=config.num_clients)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["mean_staleness"] = np.where(table.updates_used > 0, staleness / np.maximum(table.updates_used, 1),
                                           np.nan)
    return table


def async_steps_within(config: ExperimentConfig, seconds: float) -> int:
    """How many FedBuff server steps the config's schedule takes before ``seconds`` of simulated time have passed
    (at least 1): the ``rounds`` to give an asynchronous run to compare it with another at equal time."""
    if not config.async_concurrency:
        raise ValueError("async_concurrency: must be > 0 for async_steps_within")
    if not np.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds: must be a finite number >= 0, got {seconds}")
    scheduler, _ = _scheduler(config)
    steps = 64
    while True:
        plan = scheduler.asynchronous(steps)
        if plan.steps[-1].time >= seconds:
            return max(1, sum(s.time <= seconds for s in plan.steps))
        steps *= 2


def participation_table(config: ExperimentConfig) -> pd.DataFrame:
    """One row per client: its device (examples_per_second, down_mbps, up_mbps, availability), examples held,
    round_seconds (download, the local work of round 1 and upload on its device), rounds_selected,
    rounds_completed, rounds_dropped, and completed_share (of the rounds it was selected in)."""
    if config.async_concurrency:
        raise ValueError("async_concurrency: a FedBuff config has no rounds to select in; use async_participation")
    scheduler, clients = _scheduler(config)
    selected = np.zeros(config.num_clients, np.int64)
    completed = np.zeros(config.num_clients, np.int64)
    for r in range(1, config.rounds + 1):
        schedule = scheduler.round(r)
        selected[schedule.selected] += 1
        completed[schedule.completed] += 1
    table = _device_table(config, scheduler, clients)
    table["rounds_selected"] = selected
    table["rounds_completed"] = completed
    table["rounds_dropped"] = selected - completed
    with np.errstate(invalid="ignore", divide="ignore"):
        table["completed_share"] = np.where(selected > 0, completed / np.maximum(selected, 1), np.nan)
    return table
