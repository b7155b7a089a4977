"""Privacy accounting for user-level DP-FedAvg: epsilon after some rounds, and its inverse.

A DP-FedAvg round is a Poisson-subsampled Gaussian mechanism: each client
joins with probability ``q = clients_per_round / num_clients``, its update is
clipped to L2 norm C, and Gaussian noise of standard deviation ``z * C`` is
added to the sum (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", arXiv:1710.06963). Epsilon is reported at
``delta`` for the add-or-remove-one-client relation, with Google's
``dp-accounting`` library (RDP or PLD). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .validation import ConfigError, integer, number, one_of

ACCOUNTANTS = ("rdp", "pld")


class PrivacyParameterError(ConfigError):
    """A privacy parameter is outside what is allowed; ``field`` names it."""


def _check(noise_multiplier: Optional[float], sampling_probability: float, rounds: int, delta: float,
           accountant: str) -> None:
    try:
        if noise_multiplier is not None:
            number("noise_multiplier", noise_multiplier, 0.0)
        try:
            number("sampling_probability", sampling_probability, 0.0, 1.0, low_open=True)
        except ConfigError as err:
            raise ConfigError("sampling_probability", f"{err.message} (clients_per_round / num_clients)") from None
        integer("rounds", rounds, 1)
        number("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
        one_of("accountant", accountant, ACCOUNTANTS)
    except ConfigError as err:
        raise PrivacyParameterError(err.field, err.message) from None


def _accountant(name: str):
    import dp_accounting

    if name == "rdp":
        return dp_accounting.rdp.RdpAccountant()
    return dp_accounting.pld.PLDAccountant()


def _round_event(noise_multiplier: float, sampling_probability: float):
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon after ``rounds`` Poisson-sampled Gaussian rounds (inf when there is no noise)."""
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant)
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(_round_event(noise_multiplier, sampling_probability), int(rounds))
    return float(acc.get_epsilon(delta))


def epsilon_by_round(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
                     accountant: str = "rdp", at: Optional[Sequence[int]] = None) -> np.ndarray:
    """Epsilon after each of rounds 1..``rounds`` (NaN for rounds not in ``at``, when given).

    RDP composes additively, so round r's RDP is r times one round's and
    every round costs one conversion. PLD has no such shortcut (about a second
    per round asked for), so pass ``at`` to ask for a few rounds only.
    """
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant)
    if noise_multiplier == 0:
        return np.full(rounds, math.inf)
    wanted = set(range(1, rounds + 1)) if at is None else {int(r) for r in at}
    out = np.full(rounds, np.nan)
    if accountant == "rdp":
        acc = _accountant(accountant)
        event = _round_event(noise_multiplier, sampling_probability)
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        acc.compose(event, 1)
        orders, one_round = acc._orders, acc._rdp  # noqa: SLF001 - the accountant's own RDP curve
        for r in sorted(wanted):
            out[r - 1] = compute_epsilon(orders, r * one_round, delta)[0]
        return out
    for r in sorted(wanted):  # a fresh self-composition per round is far faster than composing one by one
        out[r - 1] = epsilon(noise_multiplier, sampling_probability, r, delta, accountant)
    return out


def noise_multiplier_for(target_epsilon: float, sampling_probability: float, rounds: int, delta: float,
                         accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` is at most ``target_epsilon``."""
    import dp_accounting

    _check(None, sampling_probability, rounds, delta, accountant)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise PrivacyParameterError("target_epsilon", f"must be > 0, got {target_epsilon!r}")
    def calibrate(name, bracket):
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(name),
            lambda z: dp_accounting.SelfComposedDpEvent(_round_event(z, sampling_probability), int(rounds)),
            target_epsilon, delta, bracket_interval=bracket, tol=1e-4,
        ))

    z_rdp = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(1e-3, 1.0))
    if accountant == "rdp":
        return z_rdp
    # PLD is tighter, so its z lies below RDP's; a tiny z would make PLD's grid huge.
    return calibrate("pld", dp_accounting.ExplicitBracketInterval(z_rdp / 4, z_rdp))


def record_level_epsilons(noise_multiplier: float, sizes: Sequence[int], batch_size: int,
                          steps_per_round: Sequence[int], participation: np.ndarray, delta: float,
                          accountant: str = "rdp", at: Optional[Sequence[int]] = None) -> np.ndarray:
    """Record-level epsilon of every client after every round: an array (rounds, clients).

    DP-SGD in client k is a Poisson-subsampled Gaussian mechanism per step with
    q_k = batch_size / n_k (Abadi et al. 2016), composed over every step the
    client has taken: ``steps_per_round[k]`` in each round it took part in
    (``participation``, booleans of shape (rounds, clients)). Zero before a
    client's first step; infinite without noise. ``at``: rounds to compute
    (others NaN; PLD costs about a second per point).
    """
    participation = np.asarray(participation, bool)
    rounds, clients = participation.shape
    out = np.full((rounds, clients), np.nan)
    wanted = np.arange(1, rounds + 1) if at is None else np.asarray(sorted(set(at)), int)
    for k in range(clients):
        q = min(1.0, batch_size / sizes[k])
        steps = np.cumsum(participation[:, k]) * int(steps_per_round[k])
        needed = sorted({int(steps[r - 1]) for r in wanted if steps[r - 1] > 0})
        curve = {}
        if needed:
            values = epsilon_by_round(noise_multiplier, q, max(needed), delta, accountant, at=needed)
            curve = {s: values[s - 1] for s in needed}
        for r in wanted:
            s = int(steps[r - 1])
            out[r - 1, k] = 0.0 if s == 0 else curve[s]
    return out
