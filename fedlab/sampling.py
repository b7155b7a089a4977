"""Which clients take part in a round: a function of ``(sampling_seed, round)``.

K of N without replacement; with user-level DP on, Poisson sampling instead (each client
joins with probability K/N), as the privacy accounting assumes.
"""

from __future__ import annotations

import numpy as np

from .config import ExperimentConfig


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
