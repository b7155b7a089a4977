"""Who takes part: each client's device and how often the rounds of a config use it, without training.

The schedule of a run is a function of the config alone (seeds, devices,
policy), so who is selected, who completes and who is dropped can be read
before or after training; the runner uses the same :class:`~fedlab.sampling.Scheduler`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .clients import Clients, dataset_for, spec_for
from .config import ExperimentConfig
from .sampling import Scheduler, work_of
from .systems import client_seconds


def participation_table(config: ExperimentConfig) -> pd.DataFrame:
    """One row per client: its device (examples_per_second, down_mbps, up_mbps, availability), examples held,
    round_seconds (download, the local work of round 1 and upload on its device), rounds_selected,
    rounds_completed, rounds_dropped, and completed_share (of the rounds it was selected in)."""
    data = dataset_for(config)
    spec = spec_for(config, data)
    clients = Clients.for_config(config, spec)
    scheduler = Scheduler(config, [len(x) for x in clients.x], spec.tensor_sizes(), clients.attackers)
    selected = np.zeros(config.num_clients, np.int64)
    completed = np.zeros(config.num_clients, np.int64)
    for r in range(1, config.rounds + 1):
        schedule = scheduler.round(r)
        selected[schedule.selected] += 1
        completed[schedule.completed] += 1
    table = scheduler.devices.table()
    table.insert(1, "examples", [len(x) for x in clients.x])
    everyone = np.arange(config.num_clients)
    work = [work_of(len(x), scheduler.config_of(c), 1).examples for c, x in enumerate(clients.x)]
    table["round_seconds"] = sum(client_seconds(scheduler.devices, everyone, work, scheduler.bytes_down,
                                                scheduler.bytes_up))
    table["rounds_selected"] = selected
    table["rounds_completed"] = completed
    table["rounds_dropped"] = selected - completed
    with np.errstate(invalid="ignore", divide="ignore"):
        table["completed_share"] = np.where(selected > 0, completed / np.maximum(selected, 1), np.nan)
    return table
