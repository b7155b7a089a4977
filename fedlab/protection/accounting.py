"""Privacy accounting for user-level DP-FedAvg: epsilon after some rounds, and its inverse.

A DP-FedAvg round is a Poisson-subsampled Gaussian mechanism: each client
joins with probability ``q = clients_per_round / num_clients``, its update is
clipped to L2 norm C, and Gaussian noise of standard deviation ``z * C`` is
added to the sum (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", arXiv:1710.06963). Epsilon is reported at
``delta`` for the add-or-remove-one-client relation, with Google's
``dp-accounting`` library (RDP or PLD). Nothing here imports TensorFlow.

What the library cannot do is refused up front, in one line naming the
parameter: PLD keeps the privacy-loss distribution on a grid of 1e-4 steps,
so little noise (the grid of one round grows as 1/z^2) or many rounds (the
composed grid grows with them) would need terabytes (:func:`check_pld`).
Rounds and noise are bounded as :class:`~fedlab.experiment.config.ExperimentConfig`
bounds them, so what ``fedlab privacy`` answers is what ``fedlab run`` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np

from ..core.validation import ConfigError, integer, number, one_of

ACCOUNTANTS = ("rdp", "pld")
MAX_ROUNDS = 1_000_000  # ExperimentConfig.rounds allows no more: neither does the accounting of rounds
MAX_NOISE_MULTIPLIER = 1e4  # likewise ExperimentConfig.noise_multiplier
LEAST_SEARCHED_NOISE = 1e-3  # noise_multiplier_for searches [this, MAX_NOISE_MULTIPLIER]
# dp-accounting's PLDAccountant: losses on a grid of this step, tails below e^-50 cut, composition by FFT with
# tails below 1e-15 cut (its defaults, which _accountant keeps).
PLD_STEP = 1e-4
PLD_TAIL = 1e-15
MAX_PLD_ROUND_POINTS = 2**22  # one round's grid: built point by point (about 10 us each, 200 bytes)
MAX_PLD_POINTS = 2**25  # the composed grid: FFT arrays of about 80 bytes a point, so about 3 GB


class PrivacyParameterError(ConfigError):
    """A privacy parameter is outside what is allowed; ``field`` names it."""


UNITS = ("rounds", "steps")  # what is composed: DP-FedAvg rounds (user level) or DP-SGD steps (record level)


def _check(noise_multiplier: Optional[float], sampling_probability: float, rounds: int, delta: float,
           accountant: str, unit: str = "rounds") -> None:
    try:
        if noise_multiplier is not None:
            number("noise_multiplier", noise_multiplier, 0.0, MAX_NOISE_MULTIPLIER)
        try:
            number("sampling_probability", sampling_probability, 0.0, 1.0, low_open=True)
        except ConfigError as err:
            raise ConfigError("sampling_probability", f"{err.message} (clients_per_round / num_clients)") from None
        one_of("unit", unit, UNITS)
        # A run takes at most MAX_ROUNDS rounds; its DP-SGD steps (rounds x steps per round) are not bounded so.
        integer(unit, rounds, 1, MAX_ROUNDS if unit == "rounds" else None)
        number("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
        one_of("accountant", accountant, ACCOUNTANTS)
    except ConfigError as err:
        raise PrivacyParameterError(err.field, err.message) from None
    if accountant == "pld" and noise_multiplier:
        check_pld(noise_multiplier, sampling_probability, rounds, unit)


def _accountant(name: str):
    import dp_accounting

    if name == "rdp":
        return _rdp_accountant()
    return dp_accounting.pld.PLDAccountant()


def _rdp_accountant():
    """dp-accounting's RDP accountant, but an RDP value below zero is zero.

    RDP is never negative; for much noise and a small sampling rate
    (q/z below about 1e-7) the library's sums cancel to about -1e-12 and
    ``get_epsilon`` then refuses ("Renyi divergence cannot be negative").
    Raising those values to zero only moves them toward the truth.
    """
    import dp_accounting

    class RdpAccountant(dp_accounting.rdp.RdpAccountant):
        def get_epsilon_and_optimal_order(self, target_delta):
            self._rdp = np.maximum(self._rdp, 0.0)
            return super().get_epsilon_and_optimal_order(target_delta)

        def get_epsilon(self, target_delta):
            return self.get_epsilon_and_optimal_order(target_delta)[0]

    return RdpAccountant()


# What the PLD accountant can hold ------------------------------------------------------------------------
def _pld_round_points(noise_multiplier: float, sampling_probability: float) -> list[float]:
    """Grid points of one round's privacy-loss distribution, for each one dp-accounting builds (removal, and
    addition when q < 1), from the library's own connect-the-dots bounds: nothing is allocated."""
    from dp_accounting.pld import privacy_loss_mechanism as plm

    kinds = [plm.AdjacencyType.REMOVE] + ([plm.AdjacencyType.ADD] if sampling_probability < 1 else [])
    points = []
    for kind in kinds:
        try:
            with np.errstate(all="ignore"):  # per thread (warnings.catch_warnings is not)
                bounds = plm.GaussianPrivacyLoss(noise_multiplier, sampling_prob=sampling_probability,
                                                 adjacency_type=kind).connect_dots_bounds()
                n = (bounds.epsilon_upper - bounds.epsilon_lower) / PLD_STEP + 2
        except (ArithmeticError, ValueError):
            n = math.inf
        points.append(float(n) if math.isfinite(n) else math.inf)
    return points


@functools.lru_cache(maxsize=64)
def _pld_shape(noise_multiplier: float, sampling_probability: float):
    """(points of one round, coarse copies of its distributions as (losses, probabilities)), or no copies when one
    round is already too large. The copies have about 2000 points; the composed grid's size is estimated on them
    with the Chernoff bounds dp-accounting itself truncates with (``common.compute_self_convolve_bounds``)."""
    ones = _pld_round_points(noise_multiplier, sampling_probability)
    if max(ones) > MAX_PLD_ROUND_POINTS:
        return ones, None
    from dp_accounting.pld import privacy_loss_distribution as pld

    with np.errstate(all="ignore"):
        coarse = pld.from_gaussian_mechanism(noise_multiplier, sampling_prob=sampling_probability,
                                             value_discretization_interval=max(ones) * PLD_STEP / 2000)
    pmfs = [coarse._pmf_remove] + ([coarse._pmf_add] if sampling_probability < 1 else [])  # noqa: SLF001
    shapes = []
    for pmf in pmfs:
        dense = pmf.to_dense_pmf()
        shapes.append((np.arange(dense.size) * dense._discretization, np.asarray(dense._probs)))  # noqa: SLF001
    return ones, shapes


def pld_points(noise_multiplier: float, sampling_probability: float, count: int) -> float:
    """About how many grid points dp-accounting's PLD accountant needs for ``count`` compositions (rounds or
    steps) of the Poisson-subsampled Gaussian: the largest array it allocates (within a factor of about 2)."""
    from scipy import special

    ones, shapes = _pld_shape(float(noise_multiplier), float(sampling_probability))
    if shapes is None or count == 1:
        return max(ones)
    log_bound = math.log(2 / PLD_TAIL)
    points = 0.0
    for one, (losses, probs) in zip(ones, shapes):
        span = one * PLD_STEP  # one round's range of losses; the library's orders are 1..20 over it
        orders = np.arange(1, 21) / span
        with np.errstate(all="ignore"):
            up = special.logsumexp(orders[:, None] * losses, b=probs, axis=1)
            down = special.logsumexp(-orders[:, None] * losses, b=probs, axis=1)
        high = min(float(np.min((count * up + log_bound) / orders)), count * span)
        low = max(float(np.max((count * down + log_bound) / -orders)), 0.0)
        points = max(points, (high - low) / PLD_STEP + 1)
    return points


def _pld_fits(noise_multiplier: float, sampling_probability: float, count: int) -> bool:
    _, shapes = _pld_shape(float(noise_multiplier), float(sampling_probability))
    return shapes is not None and pld_points(noise_multiplier, sampling_probability, count) <= MAX_PLD_POINTS


@functools.lru_cache(maxsize=64)
def least_pld_noise(sampling_probability: float, count: int) -> float:
    """The smallest noise multiplier (3 digits, rounded up) whose ``count`` compositions the PLD accountant holds;
    inf if not even ``MAX_NOISE_MULTIPLIER`` is enough."""
    if not _pld_fits(MAX_NOISE_MULTIPLIER, sampling_probability, count):
        return math.inf
    low, high = math.log(1e-9), math.log(MAX_NOISE_MULTIPLIER)
    for _ in range(40):  # bisection in log z: the grids shrink as z grows
        mid = (low + high) / 2
        low, high = (low, mid) if _pld_fits(math.exp(mid), sampling_probability, count) else (mid, high)
    z = math.exp(high)
    digits = 2 - math.floor(math.log10(z))
    return math.ceil(z * 10**digits) / 10**digits


def _most_pld_compositions(noise_multiplier: float, sampling_probability: float) -> int:
    low, high = 1, 2
    while pld_points(noise_multiplier, sampling_probability, high) <= MAX_PLD_POINTS:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if pld_points(noise_multiplier, sampling_probability, mid) <= MAX_PLD_POINTS \
            else (low, mid)
    return low


def check_pld(noise_multiplier: float, sampling_probability: float, count: int, unit: str = "rounds") -> None:
    """Refuses what dp-accounting's PLD accountant could not hold in memory, naming the parameter to change.

    One round's grid spans the privacy losses the noise allows (about 0.5/z^2,
    in steps of 1e-4: 35 PiB at z = 1e-6); composing ``count`` rounds widens
    it. Both are estimated without allocating (:func:`pld_points`) and
    bounded by ``MAX_PLD_ROUND_POINTS`` and ``MAX_PLD_POINTS``.
    """
    z, q = float(noise_multiplier), float(sampling_probability)
    if z == 0 or _pld_fits(z, q, count):
        return
    least = least_pld_noise(q, count)
    one = max(_pld_shape(z, q)[0])
    if one > MAX_PLD_ROUND_POINTS:
        if math.isinf(least):  # more noise would still leave too many compositions: say the first thing to change
            least, count = least_pld_noise(q, 1), 1
        what = f"{count} {unit}" if count != 1 else f"1 {unit[:-1]}"
        raise PrivacyParameterError(
            "noise_multiplier", f"must be >= {least:.3g} with accountant='pld' at sampling probability {q:.3g} and "
                                f"{what}: with less noise its privacy-loss grid is too large to compute (one round "
                                f"alone {one:.3g} points, at most {MAX_PLD_ROUND_POINTS}); use accountant='rdp', "
                                f"got {z:g}")
    most = _most_pld_compositions(z, q)
    more_noise = f" or noise_multiplier >= {least:.3g}" if math.isfinite(least) else ""
    raise PrivacyParameterError(
        unit, f"must be <= {most} with accountant='pld' at noise_multiplier={z:g} and sampling probability {q:.3g}: "
              f"more would make its privacy-loss grid exceed {MAX_PLD_POINTS} points (here "
              f"{pld_points(z, q, count):.3g}); use accountant='rdp'{more_noise}, got {count}")


def _round_event(noise_multiplier: float, sampling_probability: float):
    import dp_accounting

    return dp_accounting.PoissonSampledDpEvent(sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
            accountant: str = "rdp", *, unit: str = "rounds") -> float:
    """Epsilon after ``rounds`` Poisson-sampled Gaussian rounds (inf when there is no noise).

    ``unit="steps"``: ``rounds`` counts DP-SGD steps (record level), which a
    run may take more of than its ``MAX_ROUNDS`` rounds.
    """
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant, unit)
    if noise_multiplier == 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(_round_event(noise_multiplier, sampling_probability), int(rounds))
    return float(acc.get_epsilon(delta))


def epsilon_by_round(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
                     accountant: str = "rdp", at: Optional[Sequence[int]] = None, *,
                     unit: str = "rounds") -> np.ndarray:
    """Epsilon after each of rounds 1..``rounds`` (NaN for rounds not in ``at``, when given).

    RDP composes additively, so round r's RDP is r times one round's and
    every round costs one conversion. PLD has no such shortcut (about a second
    per round asked for), so pass ``at`` to ask for a few rounds only.
    """
    _check(noise_multiplier, sampling_probability, rounds, delta, accountant, unit)
    wanted = None if at is None else tuple(sorted({int(r) for r in at}))
    compute = _epsilon_by_round if unit == "rounds" else _epsilon_by_round.__wrapped__  # steps: one client's own
    return compute(float(noise_multiplier), float(sampling_probability), int(rounds), float(delta),
                   accountant, wanted, unit).copy()


@functools.lru_cache(maxsize=256)
def _epsilon_by_round(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float,
                      accountant: str, at: Optional[tuple], unit: str) -> np.ndarray:
    """:func:`epsilon_by_round`, computed once per process for each setting of user-level DP: a sweep's seeds share
    it (it took 0.1 to 0.6 s a run, a sixth of a small DP run). Record-level DP's (``unit="steps"``), one per
    client and each as long as its steps, is not kept."""
    if noise_multiplier == 0:
        out = np.full(rounds, math.inf)
        out.flags.writeable = False
        return out
    wanted = set(range(1, rounds + 1)) if at is None else set(at)
    out = np.full(rounds, np.nan)
    if accountant == "rdp":
        acc = _accountant(accountant)
        event = _round_event(noise_multiplier, sampling_probability)
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        acc.compose(event, 1)
        # the accountant's own RDP curve, raised to >= 0 as _rdp_accountant does
        orders, one_round = acc._orders, np.maximum(acc._rdp, 0.0)  # noqa: SLF001
        for r in sorted(wanted):
            out[r - 1] = compute_epsilon(orders, r * one_round, delta)[0]
    else:
        for r in sorted(wanted):  # a fresh self-composition per round is far faster than composing one by one
            out[r - 1] = epsilon(noise_multiplier, sampling_probability, r, delta, accountant, unit=unit)
    out.flags.writeable = False
    return out


def noise_multiplier_for(target_epsilon: float, sampling_probability: float, rounds: int, delta: float,
                         accountant: str = "rdp", *, unit: str = "rounds") -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` is at most ``target_epsilon``.

    The search covers noise multipliers from ``LEAST_SEARCHED_NOISE`` to
    ``MAX_NOISE_MULTIPLIER`` (with PLD, from the least its grid can hold); a
    target outside what they give is refused, saying the range.
    """
    import dp_accounting

    _check(None, sampling_probability, rounds, delta, accountant, unit)
    try:
        number("target_epsilon", target_epsilon, 0.0, low_open=True)
    except ConfigError as err:
        raise PrivacyParameterError(err.field, err.message) from None
    q, target = float(sampling_probability), float(target_epsilon)

    def rdp_epsilon(z: float) -> float:
        return epsilon(z, q, rounds, delta, "rdp", unit=unit)

    def calibrate(name, bracket):
        return float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(name),
            lambda z: dp_accounting.SelfComposedDpEvent(_round_event(z, q), int(rounds)),
            target, delta, bracket_interval=bracket, tol=1e-4,
        ))

    least = rdp_epsilon(MAX_NOISE_MULTIPLIER)
    if accountant == "rdp":
        most = rdp_epsilon(LEAST_SEARCHED_NOISE)
        if not least <= target <= most:
            bound, z, which = (f"<= {most:.6g}", LEAST_SEARCHED_NOISE, "the least noise searched") if target > most \
                else (f">= {least:.6g}", MAX_NOISE_MULTIPLIER, "the most allowed")
            raise PrivacyParameterError("target_epsilon", f"must be {bound} at these settings (what "
                                                          f"noise_multiplier={z:g}, {which}, gives), got {target:g}")
        return calibrate("rdp", dp_accounting.LowerEndpointAndGuess(LEAST_SEARCHED_NOISE, 1.0))
    # PLD is tighter, so its z lies below RDP's; below least_pld_noise its grid is too large to compute.
    floor = max(least_pld_noise(q, int(rounds)), LEAST_SEARCHED_NOISE)
    if math.isinf(floor):  # too many compositions for PLD whatever the noise: that error
        check_pld(MAX_NOISE_MULTIPLIER, q, int(rounds), unit)
    out_of_reach = PrivacyParameterError(
        "target_epsilon", f"cannot be reached with accountant='pld' at these settings: it needs a noise_multiplier "
                          f"below {floor:.3g}, and with less noise PLD's privacy-loss grid is too large to compute; "
                          f"use accountant='rdp', got {target:g}")
    if target > rdp_epsilon(floor):  # PLD's epsilon is below RDP's: less noise than floor would be needed
        raise out_of_reach
    z_rdp = (calibrate("rdp", dp_accounting.LowerEndpointAndGuess(LEAST_SEARCHED_NOISE, 1.0)) if target >= least
             else MAX_NOISE_MULTIPLIER)
    high = z_rdp
    for low in dict.fromkeys((max(high / 4, floor), floor)):  # z_rdp / 4 first, as before; then all PLD holds
        try:
            return calibrate("pld", dp_accounting.ExplicitBracketInterval(low, high))
        except (ValueError, dp_accounting.mechanism_calibration.NoOptimumFoundError):
            reached = epsilon(high, q, rounds, delta, "pld", unit=unit)
            if reached > target:  # PLD's grid of 1e-4 steps resolves epsilon no finer
                raise PrivacyParameterError(
                    "target_epsilon", f"must be >= {reached:.6g} with accountant='pld' at these settings (what "
                                      f"noise_multiplier={high:g}"
                                      f"{', the most allowed,' if high == MAX_NOISE_MULTIPLIER else ''} gives), "
                                      f"got {target:g}") from None
            high = low
    raise out_of_reach


def record_level_epsilons(noise_multiplier: float, sizes: Sequence[int], batch_size,
                          steps_per_round: Sequence[int], participation: np.ndarray, delta: float,
                          accountant: str = "rdp", at: Optional[Sequence[int]] = None) -> np.ndarray:
    """Record-level epsilon of every client after every round: an array (rounds, clients).

    DP-SGD in client k is a Poisson-subsampled Gaussian mechanism per step with
    q_k = batch_size / n_k (Abadi et al. 2016; ``batch_size`` one for all, or each client's: a full batch is
    q = 1, no subsampling), composed over every step the
    client has taken: ``steps_per_round[k]`` in each round it took part in
    (``participation``, booleans of shape (rounds, clients)). Zero before a
    client's first step; infinite without noise. ``at``: rounds to compute
    (others NaN; PLD costs about a second per point).
    """
    participation = np.asarray(participation, bool)
    rounds, clients = participation.shape
    out = np.full((rounds, clients), np.nan)
    wanted = np.arange(1, rounds + 1) if at is None else np.asarray(sorted(set(at)), int)
    batches = np.broadcast_to(np.asarray(batch_size, float), (clients,))
    for k in range(clients):
        q = min(1.0, batches[k] / sizes[k])
        steps = np.cumsum(participation[:, k]) * int(steps_per_round[k])
        needed = sorted({int(steps[r - 1]) for r in wanted if steps[r - 1] > 0})
        curve = {}
        if needed:
            values = epsilon_by_round(noise_multiplier, q, max(needed), delta, accountant, at=needed,
                                      unit="steps")
            curve = {s: values[s - 1] for s in needed}
        for r in wanted:
            s = int(steps[r - 1])
            out[r - 1, k] = 0.0 if s == 0 else curve[s]
    return out


# Distributed DP: Skellam shares summed securely (Agarwal et al. 2021) -------------------------------------
DDP_CLIP_PROBABILITY = 1e-4  # TFF's DistributedDpSumFactory's modclip_prob: a coordinate's chance to wrap around
DDP_MAX_SCALE = 1e6  # TFF's MAX_SCALE_FACTOR
DDP_ORDERS = tuple(range(2, 129))  # every integer order: the subsampling bound below needs them all
DDP_LEEWAY = 1e-5  # TFF's slack on the norm bound (float32 arithmetic after rounding)


@dataclasses.dataclass(frozen=True)
class DdpParameters:
    """What distributed DP with Skellam shares is built from (:func:`ddp_parameters`); values in the scaled
    (integer) domain unless said."""

    dim: int  # values each client sends, before padding
    padded_dim: int  # padded to even for the random rotation (TFF's 'dft')
    bits: int  # b: the secure sum is mod 2^b
    scale: float  # s: a clipped, rotated update times s is rounded to integers
    l2_bound: float  # Delta_2: L2 norm of a client's rounded update (clip C, scaled, rounding's worst case)
    l1_bound: float  # Delta_1: its L1 norm
    share_variance: float  # the Skellam variance each of the population's shares adds
    total_variance: float  # mu: the variance every share together adds to each coordinate of the sum
    population: int  # N: every client that may be sampled sends a share every round

    @property
    def effective_noise_multiplier(self) -> float:
        """sqrt(mu) / Delta_2: the noise relative to the rounded update's bound (z C s / Delta_2 for the config's
        z; below z by the rounding's share of the bound, so fewer bits cost privacy)."""
        return math.sqrt(self.total_variance) / self.l2_bound


def ddp_stddevs(clip_probability: float = DDP_CLIP_PROBABILITY) -> float:
    """k: the standard deviations of the noisy sum that the b-bit range holds (TFF's ``_clip_prob_to_num_stddevs``)."""
    from scipy.special import erfcinv

    return math.sqrt(2) * float(erfcinv(clip_probability))


def ddp_parameters(noise_multiplier: float, clip: float, bits: int, expected_clients: float, population: int,
                   dim: int) -> DdpParameters:
    """The scale, norm bounds and share variance of distributed DP, as TFF 0.87's ``DistributedDpSumFactory``
    computes them (``_build_aggregation_factory``: 'dft' rotation, beta = 0, modclip_prob 1e-4), with the noise
    split over the population's N shares instead of the expected K clients' (:mod:`fedlab.aggregators.distributed_dp`).

    The scale s solves 2^b = 2k sqrt(C^2 K^2 / d + K / (4 s^2) + (z C)^2) s (Kairouz et al. 2021, Sec. 4; K
    clients' rounded values and noise of total variance (z C)^2 held within k standard deviations), capped at
    1e6; the rounded update's L2 bound is (C + sqrt(d) / s + 1e-5) s, its L1 bound ceil(Delta_2 min(sqrt(d),
    Delta_2)).
    """
    padded = max(2, math.ceil(max(1, dim) / 2) * 2)
    k, K, C, z = ddp_stddevs(), float(expected_clients), float(clip), float(noise_multiplier)
    scale = math.sqrt(2.0 ** (2 * bits) - K * k ** 2) / (2 * k * math.sqrt(C ** 2 * K ** 2 / padded + (z * C) ** 2))
    scale = min(scale, DDP_MAX_SCALE)
    inflated = C + math.sqrt(padded) / scale  # beta = 0: every coordinate moves less than one step
    l2 = (inflated + DDP_LEEWAY) * scale
    total = (z * C * scale) ** 2
    return DdpParameters(dim=int(dim), padded_dim=padded, bits=int(bits), scale=scale, l2_bound=l2,
                         l1_bound=float(math.ceil(l2 * min(math.sqrt(padded), l2))), share_variance=total / population,
                         total_variance=total, population=int(population))


def ddp_check(bits: int, expected_clients: float, population: int) -> Optional[tuple[str, str]]:
    """(field, why) when distributed DP cannot run with these, else None: the b-bit range must hold K clients' values
    within k standard deviations (TFF's checks), and the simulated secure sum adds N values below 2^b in int32."""
    k = ddp_stddevs()
    if bits < math.log2(max(expected_clients, 1)) or 4.0 ** bits < expected_clients * k ** 2:
        least = next(b for b in range(1, 64) if b >= math.log2(max(expected_clients, 1))
                     and 4.0 ** b >= expected_clients * k ** 2)
        return "quantization_bits", (f"must be at least {least} with dp='distributed' and {expected_clients:g} "
                                     f"clients a round, got {bits}: the sum's 2^b values must hold the clients' "
                                     f"noisy values within {k:.2f} standard deviations")
    if population * (2 ** bits - 1) >= 2 ** 31:
        return "quantization_bits", (f"must be at most {int(math.log2(2 ** 31 / population + 1))} with "
                                     f"dp='distributed' and {population} clients: each sends a share below 2^b "
                                     "and the simulated secure sum adds them in 32-bit integers")
    return None


def skellam_rdp(params: DdpParameters, orders: Sequence[int] = DDP_ORDERS, *, displaced: bool = False) -> np.ndarray:
    """RDP of one release of the sum under Skellam noise of variance mu at integer ``orders`` (Agarwal, Kairouz and
    Liu 2021, "The Skellam Mechanism for Differentially Private Federated Learning", Thm 3.5):
    alpha Delta_2^2 / (2 mu) + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu)).
    ``displaced``: one user moves the sum by twice the bounds (over-selection, :func:`fedlab.aggregators.aggregation.dp_sensitivity`)."""
    alpha = np.asarray(orders, float)
    factor = 2.0 if displaced else 1.0
    l2, l1, mu = factor * params.l2_bound, factor * params.l1_bound, params.total_variance
    if mu == 0:
        return np.full(alpha.shape, math.inf)
    return alpha * l2 ** 2 / (2 * mu) + np.minimum(((2 * alpha - 1) * l2 ** 2 + 6 * l1) / (4 * mu ** 2),
                                                   3 * l1 / (2 * mu))


def poisson_subsampled_rdp(rdp: np.ndarray, orders: Sequence[int], q: float) -> np.ndarray:
    """RDP of a mechanism with RDP ``rdp`` at integer ``orders`` >= 2 run on a Poisson sample at rate ``q``: the
    general upper bound of Zhu and Wang 2019 ("Poisson Subsampled Renyi Differential Privacy", Thm 6),
    1/(a-1) log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2) + 3 sum_{l=3}^a C(a,l) (1-q)^(a-l) q^l
    e^((l-1) eps(l))], never above the mechanism's own. Needs the RDP at every integer order up to the largest."""
    from scipy.special import gammaln, logsumexp

    orders = [int(a) for a in orders]
    curve = dict(zip(orders, np.asarray(rdp, float)))
    if q >= 1:
        return np.asarray(rdp, float)
    out = []
    for a in orders:
        if not all(l in curve for l in range(2, a + 1)):
            raise ValueError(f"orders: the subsampled bound at order {a} needs every integer order from 2 to it")
        if q <= 0:
            out.append(0.0)
            continue
        log_q, log_1q = math.log(q), math.log1p(-q)
        terms = [(a - 1) * log_1q + math.log(a * q - q + 1),
                 gammaln(a + 1) - gammaln(3) - gammaln(a - 1) + 2 * log_q + (a - 2) * log_1q + curve[2]]
        terms += [math.log(3) + gammaln(a + 1) - gammaln(l + 1) - gammaln(a - l + 1) + (a - l) * log_1q
                  + l * log_q + (l - 1) * curve[l] for l in range(3, a + 1)]
        out.append(min(float(logsumexp(terms)) / (a - 1), curve[a]))
    return np.maximum(np.asarray(out), 0.0)


def general_bound_epsilon(noise_multiplier: float, sampling_probability: float, rounds: int, delta: float) -> float:
    """Epsilon of ``rounds`` Poisson-subsampled Gaussian rounds under the bound distributed DP's accounting uses
    (:func:`poisson_subsampled_rdp` on the Gaussian's RDP, alpha / (2 z^2), at :data:`DDP_ORDERS`), not
    dp-accounting's exact one: central DP measured with the same ruler as :func:`ddp_epsilon_by_round`."""
    _check(noise_multiplier, sampling_probability, rounds, delta, "rdp", "rounds")
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    curve = np.asarray(DDP_ORDERS, float) / (2 * float(noise_multiplier) ** 2)
    one_round = poisson_subsampled_rdp(curve, DDP_ORDERS, sampling_probability)
    return float(compute_epsilon(DDP_ORDERS, rounds * one_round, delta)[0])


def ddp_epsilon_by_round(params: DdpParameters, sampling_probability: float, rounds: int, delta: float, *,
                         displaced: bool = False) -> np.ndarray:
    """Epsilon after each of rounds 1..``rounds`` of distributed DP (RDP: :func:`skellam_rdp` of one round's sum,
    Poisson-subsampled at the rate a user joins a round, composed over rounds, converted at ``delta`` by
    dp-accounting's ``compute_epsilon``); infinite without noise."""
    _check(1.0, sampling_probability, rounds, delta, "rdp", "rounds")
    if params.total_variance == 0:
        return np.full(rounds, math.inf)
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    one_round = poisson_subsampled_rdp(skellam_rdp(params, DDP_ORDERS, displaced=displaced), DDP_ORDERS,
                                       sampling_probability)
    return np.array([compute_epsilon(DDP_ORDERS, r * one_round, delta)[0] for r in range(1, rounds + 1)])
