"""Which clients take part in a round: a function of ``(sampling_seed, round)`` and the devices.

K of N without replacement; with user-level DP on, Poisson sampling instead (each client
joins with probability K/N, or is asked with min(1, over_selection x K/N) of which the first K
are used), as the privacy accounting assumes. With a device profile
(:mod:`fedlab.systems.systems`) only online clients can be selected, ``over_selection`` asks more
than K, and the straggler policy decides whose update is used (:class:`Scheduler`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..aggregators.aggregation import round_bytes
from .clients import attacker_config, plan_size
from ..systems.asynchronous import AsyncPlan, plan
from .config import ExperimentConfig
from ..systems.systems import Devices, RoundSchedule, Work, devices_for, over_selected, schedule_round, step_sizes


def poisson_sample(num_clients: int, sampling_probability: float, rng: np.random.Generator) -> np.ndarray:
    """Clients that join a round, each independently with ``sampling_probability`` (sorted ids)."""
    return np.flatnonzero(rng.random(num_clients) < sampling_probability)


def sample_clients(config: ExperimentConfig, round_num: int) -> np.ndarray:
    """The clients of round ``round_num`` (1-based), sorted.

    With DP on a round may have more or fewer than K clients, or none.
    Excluded clients never take part.
    """
    rng = np.random.default_rng([config.seeds["sampling"], round_num])
    if config.user_level_dp:
        chosen = poisson_sample(config.num_clients, config.sampling_probability, rng)
        return np.setdiff1d(chosen, config.exclude_clients)
    eligible = np.setdiff1d(np.arange(config.num_clients), config.exclude_clients)
    return np.sort(rng.choice(eligible, size=config.clients_per_round, replace=False))


def work_of(n: int, config: ExperimentConfig, round_num: int) -> Work:
    """The local steps (examples in each) of a client holding ``n`` examples in round ``round_num``,
    as :func:`fedlab.experiment.clients.client_plan` lays them out (carried-over epochs included)."""
    epochs, batch, cap = plan_size(n, config)
    if not config.carry_epochs:
        sizes = step_sizes(n, batch, epochs)
        return Work(sizes if cap < 0 else sizes[:cap])
    per_epoch = -(-n // batch)
    start = (round_num - 1) * cap
    first, last = start // per_epoch, (start + cap - 1) // per_epoch
    skip = start - first * per_epoch
    return Work(step_sizes(n, batch, last - first + 1)[skip: skip + cap])


class Scheduler:
    """The rounds of one run on its devices: who is selected, who completes, how long each round lasts.

    ``client_sizes``: examples each client holds; ``tensor_sizes``: the
    model's (trainable, non-trainable) tensor sizes, for the bytes moved.
    With the ``uniform`` profile, ``wait``, no over-selection and no dropout,
    the completed clients are exactly :func:`sample_clients`' choice.
    """

    def __init__(self, config: ExperimentConfig, client_sizes: Sequence[int], tensor_sizes: tuple,
                 attackers: frozenset = frozenset()):
        self.config = config
        self.attackers = attackers
        self.client_sizes = [int(n) for n in client_sizes]
        self.num_weights = int(sum(tensor_sizes[0]))  # trainable weights: what a client's update holds
        self.devices: Devices = devices_for(config.device_profile, config.num_clients, config.seeds["systems"])
        one = round_bytes(config, *tensor_sizes, clients=1, population_shares=False)  # one client's own upload
        self.bytes_down, self.bytes_up = one["bytes_down"], one["bytes_up"]
        self._rounds: dict[int, RoundSchedule] = {}

    def round(self, round_num: int) -> RoundSchedule:
        """Round ``round_num``'s schedule (computed once per scheduler)."""
        if round_num not in self._rounds:
            self._rounds[round_num] = self._schedule(round_num)
        return self._rounds[round_num]

    def _schedule(self, round_num: int) -> RoundSchedule:
        config = self.config
        rng = np.random.default_rng([config.seeds["sampling"], round_num])
        systems = np.random.default_rng([config.seeds["systems"], round_num, 1])
        online = systems.random(config.num_clients) < self.devices.availability
        leaves = systems.random(config.num_clients) < config.dropout_rate  # goes offline mid-round
        tiebreak = systems.random(config.num_clients)  # equal finishing times: a random one first
        if config.user_level_dp:  # Poisson at q (with over-selection, the rate of being asked; the first K used)
            chosen = np.setdiff1d(poisson_sample(config.num_clients, config.sampling_probability, rng),
                                  config.exclude_clients)
            selected = chosen[online[chosen]]
            keep = config.clients_per_round if config.over_selection > 1 else None
        else:
            eligible = np.setdiff1d(np.arange(config.num_clients), config.exclude_clients)
            eligible = eligible[online[eligible]]
            size = over_selected(config.clients_per_round, config.over_selection, len(eligible))
            selected, keep = np.sort(rng.choice(eligible, size=size, replace=False)), config.clients_per_round
        work = [work_of(self.client_sizes[c], self.config_of(int(c)), round_num) for c in selected]
        return schedule_round(self.devices, selected, work, keep=len(selected) if keep is None else keep,
                              policy=config.straggler_policy, deadline=config.round_deadline,
                              offline=leaves[selected], bytes_down=self.bytes_down, bytes_up=self.bytes_up,
                              tiebreak=tiebreak[selected])

    def asynchronous(self, steps: int) -> AsyncPlan:
        """FedBuff's schedule of ``steps`` server steps on these devices (:func:`fedlab.systems.asynchronous.plan`):
        client c's k-th job does the work of its round k."""
        config = self.config
        eligible = np.setdiff1d(np.arange(config.num_clients), config.exclude_clients)
        return plan(self.devices, steps=steps, concurrency=config.async_concurrency,
                    buffer=config.effective_async_buffer,
                    work=lambda c, k: work_of(self.client_sizes[c], self.config_of(int(c)), k),
                    bytes_down=self.bytes_down, bytes_up=self.bytes_up,
                    seed=(config.seeds["sampling"], config.seeds["systems"]), dropout_rate=config.dropout_rate,
                    eligible=eligible)

    def config_of(self, client: int) -> ExperimentConfig:
        """The config client ``client`` trains with (an attacker trains ``attack_boost`` times longer)."""
        return attacker_config(self.config) if client in self.attackers else self.config

    def participation(self) -> np.ndarray:
        """(rounds, clients) bool: which clients' updates each round used."""
        used = np.zeros((self.config.rounds, self.config.num_clients), bool)
        for r in range(1, self.config.rounds + 1):
            used[r - 1, self.round(r).completed] = True
        return used
