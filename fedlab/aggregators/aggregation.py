"""Model-update aggregators: DP, secure aggregation, compression, robust defences, and their byte cost.

All are TFF's own ``tff.aggregators`` factories, built by named functions
(:func:`dp_aggregator`, :func:`secure_aggregator`,
:func:`compression_aggregator`, :func:`robust_aggregator`) that
:func:`make_aggregator` composes for a config, as TFF's
``model_update_aggregator`` does. Each is registered in :data:`AGGREGATORS`
under the value a config names it by: ``dp="fixed"``/``"adaptive"`` (role
``dp``), ``robust="clip"``/``"zeroing"`` (role ``robust``), and the
``secure`` and ``compression`` encodings. A user adds a defence with
``@fl.register_aggregator("name", role="robust")`` on
``build(clip_norm, inner_factory) -> factory``.

* **User-level DP** (McMahan et al. 2018): TFF's ``DifferentiallyPrivateFactory``,
  fixed clipping or adaptive clipping to a quantile (Andrew et al. 2021).

* **Secure aggregation** (Bonawitz et al. 2017): the server learns only the sum.
  With ``quantization_bits`` b > 0 each client's update is L2-clipped to C,
  scaled by (2^(b-1) - 1) / C and rounded to integers (``DiscretizationFactory``),
  then summed modulo 2^(b + ceil(log2 K)) (``SecureModularSumFactory``), enough
  for K clients never to overflow. With b = 0, TFF's ``SecureSumFactory`` clips
  every coordinate to [-C, C] and quantises it to 32 bits. The mean is
  unweighted: weighting before a bounded secure sum would break its range.
* **Homomorphic aggregation** (Cheon et al. 2017, CKKS): ``secure_protocol="ckks"``
  encrypts float updates; the server takes their weighted mean on ciphertexts
  without the key (:mod:`fedlab.protection.ckks`, :mod:`fedlab.rounds.homomorphic_rounds`).
* **Compression**: uniform quantisation of each tensor to b bits between its
  min and max (``EncodedSumFactory.quantize_above_threshold``), weighted mean;
  with a median, a trimmed mean or Krum, the server decodes each client's
  quantised update and takes the statistic of them. Under user-level DP the
  clipped updates are quantised and each tensor scaled back to no longer than
  it was (:func:`compressed_record_sum`): the clip still bounds every update.
* **Robustness**: ``clipping_factory`` (L2-clip every update to C) or
  ``zeroing_factory`` (drop any update whose norm exceeds C).

TFF 0.87 cannot put compression inside secure aggregation (its discretisation
replaces the sum); that combination is refused when the config is made.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Optional

from ..core.registry import Registry, decorator
from .robust import CoordinateMedianFactory, KrumFactory, TrimmedMeanFactory, fraction_count
from ..core.runtime import tff
from ..rounds.homomorphic_rounds import HomomorphicMean
from ..rounds.secure_rounds import ProtocolSum
from .distributed_dp import distributed_skellam
from .seeded import quantizing_sum, seeded_gaussian, seeded_quantizing
from ..protection.accounting import DdpParameters, ddp_parameters
from ..protection.skellam_shares import SkellamShares
from ..core.validation import SettingWarning

ROLES = ("dp", "robust", "secure", "compression")


@dataclasses.dataclass(frozen=True)
class AggregatorBuilder:
    """A registered aggregator: ``role`` says which config field selects it and how ``build`` is called.

    dp: ``build(noise_multiplier, clients_per_round, clip_norm, target_quantile, *, seeded)``;
    robust: ``build(clip_norm, inner_factory)``; secure and compression:
    ``build(settings)`` with a :class:`SumSettings`. Each returns a ``tff.aggregators`` factory (a protocol's
    builder: a :class:`~fedlab.rounds.secure_rounds.ProtocolSum` or
    :class:`~fedlab.rounds.homomorphic_rounds.HomomorphicMean`). None is given the experiment's config:
    :func:`make_aggregator` reads it and hands each builder its own settings.
    """

    name: str
    role: str
    build: Callable
    fraction: bool = False  # robust: build also takes fraction= (config.robust_fraction)
    replaces_mean: bool = False  # robust: a statistic of the updates themselves, not a filter before the mean
    # robust statistic: sensitivity(fraction, most_updates) bounds, in units of the clip C, how far one update of
    # norm <= C added to or removed from a round's updates moves it (user-level DP's noise is z x that x C)
    sensitivity: Optional[Callable[[float, int], float]] = None
    # dp: the builder is the secure sum as well (distributed DP: each client adds a share of the noise), called as
    # build(noise_multiplier, clients_per_round, clip_norm, target_quantile, *, settings) with a SumSettings
    distributed: bool = False


AGGREGATORS: Registry[AggregatorBuilder] = Registry("aggregator", "robust")


@dataclasses.dataclass(frozen=True)
class SumSettings:
    """What a secure or compression aggregator is built from (``build(settings)``), read from the config by
    :func:`sum_settings`."""

    bits: int  # quantization_bits: b-bit codes (0: a secure sum's 32-bit coordinates; CKKS: floats)
    clip_norm: float  # C: every update is L2-clipped to it before a b-bit code
    cohort: int  # the most updates one sum holds (cohort_size): a ring's modulus must hold them all
    seeded: bool  # the randomness (stochastic rounding, CKKS's encryption) from the run's seeds
    run_digest: str = ""  # seeded: the config's fingerprint, in CKKS's encryption seed


def sum_settings(config) -> SumSettings:
    """The :class:`SumSettings` of ``config``'s secure or compression aggregator."""
    seeded = config.noise_source == "seeded"
    return SumSettings(bits=int(config.quantization_bits), clip_norm=float(config.clip_norm),
                       cohort=cohort_size(config), seeded=seeded,
                       run_digest=config.fingerprint() if seeded and config.secure_aggregation
                       and config.secure_protocol == "ckks" else "")


def register_aggregator(name: str, *, role: str = "robust", paper: Optional[str] = None, replace: bool = False,
                        fraction: bool = False, replaces_mean: bool = False,
                        sensitivity: Optional[Callable[[float, int], float]] = None, distributed: bool = False):
    """Registers an aggregator builder under ``name`` for ``role`` (see :class:`AggregatorBuilder`).

    Robust builders: ``fraction=True`` if ``build`` also takes ``fraction=`` (the config's
    ``robust_fraction``); ``replaces_mean=True`` if it computes a statistic of the individual
    updates (median, Krum), which secure aggregation hides; such a statistic runs under user-level
    DP only with ``sensitivity(fraction, most_updates)``: the bound, in units of the clip C, on how far
    one update of norm at most C added or removed moves it, with at most ``most_updates`` in a round.
    DP builders: ``distributed=True`` if the builder sums the clients' noised values securely itself (distributed
    DP: ``build(..., settings=SumSettings)``, run with ``secure_aggregation=True``).
    """
    if role not in ROLES:
        raise ValueError(f"role: must be one of {', '.join(ROLES)}; got {role!r}")
    if distributed and role != "dp":
        raise ValueError(f"distributed: is for a DP builder (role='dp'), got role={role!r}")
    if sensitivity is not None and not replaces_mean:
        raise ValueError("sensitivity: is for a statistic of the updates (replaces_mean=True); a filter before the "
                         "mean keeps the mean's")
    return decorator(AGGREGATORS, name,
                     lambda build: AggregatorBuilder(name, role, build, fraction=fraction, replaces_mean=replaces_mean,
                                                     sensitivity=sensitivity, distributed=distributed),
                     paper=paper, replace=replace)


def names(role: str) -> tuple[str, ...]:
    """The registered aggregator names for ``role`` (the values a config field takes besides "none")."""
    return tuple(e.name for e in AGGREGATORS.entries() if e.component.role == role)


def secure_modulus(bits: int, clients_per_round: int) -> int:
    """Modulus for K clients' b-bit symmetric integers to sum without wrapping around."""
    return 2 ** (bits + math.ceil(math.log2(max(clients_per_round, 1))))


def quantization_error_bound(bits: int, clip_norm: float, clients: int) -> float:
    """Largest per-coordinate error of a secure b-bit sum of ``clients`` values (deterministic rounding)."""
    scale = (2 ** (bits - 1) - 1) / clip_norm
    return clients * 0.5 / scale


def _surviving_coordinates(bits: int, num_weights: int) -> float:
    """Expected nonzero coordinates of an update of norm C spread over ``num_weights`` weights like a Gaussian
    vector (coordinates of deviation C / sqrt(d)), after rounding to the secure sum's step C / (2^(b-1) - 1)."""
    half_step = 0.5 / (2 ** (bits - 1) - 1)  # in units of C: a coordinate below it rounds to 0
    return num_weights * math.erfc(half_step * math.sqrt(num_weights) / math.sqrt(2))


def vanishing_updates(config, num_weights: int) -> Optional[str]:
    """Why a secure b-bit sum would round every client update of a model with ``num_weights`` weights to zero,
    or None.

    Each update is L2-clipped to C and each coordinate rounded to the nearest
    multiple of C / (2^(b-1) - 1) (``DiscretizationFactory``, deterministic
    rounding): one below half that step becomes 0. Even at the full norm C an
    update spread over d weights has coordinates of about C / sqrt(d); when
    fewer than one of them is expected to survive, every round's sum is zero
    and the model never moves (a 650-weight logistic regression: 2 and 3 bits
    train nothing, 4 bits train). C cancels out: only b and d decide.
    """
    bits = config.quantization_bits
    values = values_summed(config, num_weights)
    if distributed_dp(config):  # stochastic rounding: unbiased, a small coordinate survives in expectation
        return None
    if not (config.secure_aggregation and bits) or _surviving_coordinates(bits, values) >= 1:
        return None
    levels = 2 ** (bits - 1) - 1
    step, surviving = config.clip_norm / levels, _surviving_coordinates(bits, values)
    enough = next((b for b in range(bits + 1, 17) if _surviving_coordinates(b, values) >= 1), None)
    advice = f"use quantization_bits >= {enough}" if enough else "no bit width up to 16 keeps them"
    return (f"{bits} bits with secure aggregation round each coordinate of a client's update to a multiple of "
            f"clip_norm/{levels} = {step:.3g}, so one below {step / 2:.3g} becomes 0; an update of norm "
            f"clip_norm={config.clip_norm:g} spread over the model's {num_weights} weights"
            f"{' and as many control-variate values' if config.algorithm_entry.side_sums else ''}"
            f"{' and its share of the weights' if config.algorithm_entry.own_weighting else ''} has coordinates of "
            "about "
            f"{config.clip_norm / math.sqrt(values):.3g}, of which {surviving:.2g} are expected to survive: "
            f"every update is expected to sum to zero and the model not to train; {advice}")


def warn_if_updates_vanish(config, spec) -> None:
    """Warns, before a run, when :func:`vanishing_updates` says its secure sums will all be zero."""
    if not (config.secure_aggregation and config.quantization_bits):
        return
    message = vanishing_updates(config, spec.num_parameters())
    if message is not None:
        warnings.warn(SettingWarning("quantization_bits", message), stacklevel=3)


# The named builders ----------------------------------------------------------------------------------


@register_aggregator("fixed", role="dp", paper="McMahan et al. 2018, arXiv:1710.06963")
def dp_fixed(noise_multiplier: float, clients_per_round: float, clip_norm: float, target_quantile: float = 0.5, *,
             seeded: bool = True, record_sum=None, statistic=None, sensitivity: float = 1.0):
    """User-level DP mean: clip each update to C, add Gaussian noise z*C to the sum, divide by the expected K.

    ``record_sum``: the factory that sums the clipped updates (TFF's secure sum: :func:`secure_record_sum`; or
    the compressed sum: :func:`compressed_record_sum`); the server adds the noise to the sum it returns.
    ``statistic``: a robust statistic of the clipped updates instead of their mean, noised at z x
    ``sensitivity`` x C (:func:`dp_statistic`).
    """
    if seeded or statistic is not None:
        return seeded_gaussian(noise_multiplier=noise_multiplier, clients_per_round=clients_per_round,
                               clip=clip_norm, record_sum=record_sum, statistic=statistic, sensitivity=sensitivity,
                               fresh=not seeded)
    if record_sum is None:
        return tff().aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=float(noise_multiplier), clients_per_round=float(clients_per_round),
            clip=float(clip_norm))
    import tensorflow_privacy as tfp

    # what gaussian_fixed builds, with the clipped records summed by record_sum
    query = tfp.NormalizedQuery(tfp.GaussianSumQuery(l2_norm_clip=float(clip_norm),
                                                     stddev=float(clip_norm) * float(noise_multiplier)),
                                denominator=float(clients_per_round))
    return tff().aggregators.DifferentiallyPrivateFactory(query, record_aggregation_factory=record_sum)


@register_aggregator("adaptive", role="dp", paper="Andrew et al. 2021, arXiv:1905.03871")
def dp_adaptive(noise_multiplier: float, clients_per_round: float, clip_norm: float, target_quantile: float = 0.5,
                *, seeded: bool = True, record_sum=None, statistic=None, sensitivity: float = 1.0):
    """User-level DP mean with the clip norm adapted to a quantile of the update norms (starting at C).

    ``record_sum``: the factory that sums the clipped updates (:func:`compressed_record_sum`, or a secure sum,
    whose fixed range the clients' updates then reach in units of the first clip: :func:`seeded_gaussian`);
    ``statistic``: a robust statistic of the clipped updates instead of their mean (:func:`dp_statistic`).
    """
    count_stddev = adaptive_count_stddev(noise_multiplier, clients_per_round)
    in_units = record_sum is not None and not getattr(record_sum, "keeps_norm", False)  # a secure sum's range
    if seeded or statistic is not None or in_units:
        return seeded_gaussian(noise_multiplier=noise_multiplier, clients_per_round=clients_per_round,
                               clip=clip_norm, adaptive=True, target_quantile=target_quantile,
                               clipped_count_stddev=count_stddev, record_sum=record_sum, statistic=statistic,
                               sensitivity=sensitivity, fresh=not seeded)
    if record_sum is None:
        return tff().aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(
            noise_multiplier=float(noise_multiplier), clients_per_round=float(clients_per_round),
            initial_l2_norm_clip=float(clip_norm), target_unclipped_quantile=float(target_quantile),
            clipped_count_stddev=count_stddev)
    import tensorflow_privacy as tfp
    from tensorflow_federated.python.aggregators.differential_privacy import adaptive_clip_noise_params

    # what gaussian_adaptive builds, with the clipped records (and their below-the-clip bits) summed by record_sum
    value_noise, count_noise = adaptive_clip_noise_params(float(noise_multiplier), float(clients_per_round),
                                                          count_stddev)
    query = tfp.QuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip=float(clip_norm), noise_multiplier=value_noise,
        target_unclipped_quantile=float(target_quantile), learning_rate=0.2, clipped_count_stddev=count_noise,
        expected_num_records=float(clients_per_round), geometric_update=True)
    return tff().aggregators.DifferentiallyPrivateFactory(
        tfp.NormalizedQuery(query, denominator=float(clients_per_round)), record_aggregation_factory=record_sum)


@register_aggregator("distributed", role="dp", distributed=True,
                     paper="Kairouz et al. 2021, arXiv:2102.06387; Agarwal et al. 2021, arXiv:2110.04995")
def dp_distributed(noise_multiplier: float, clients_per_round: float, clip_norm: float, target_quantile: float = 0.5,
                   *, settings: SumSettings):
    """Distributed DP: each client clips its update to C, rounds it to integers and adds its Skellam share of the
    noise; TFF's secure sum of b-bit values adds them, and the server sees only the noised sum, divided by the
    expected K (:mod:`fedlab.aggregators.distributed_dp`). Every client that may be sampled (``settings.cohort``)
    adds a share every round, so the sum carries noise of variance (z C s)^2 whoever was sampled."""
    del target_quantile  # a fixed clip: the scale s is sized for it
    return distributed_skellam(skellam_shares(noise_multiplier, clients_per_round, clip_norm, settings))


def skellam_shares(noise_multiplier: float, clients_per_round: float, clip_norm: float,
                   settings: SumSettings) -> SkellamShares:
    """Distributed DP's settings: the config's z, K and C, the sum's bits, every client that may be sampled adding
    a share (``settings.cohort``), the clients' keys fresh unless seeded."""
    return SkellamShares(noise_multiplier=float(noise_multiplier), clip=float(clip_norm), bits=settings.bits,
                         expected_clients=float(clients_per_round), population=settings.cohort,
                         fresh=not settings.seeded)


def distributed_dp(config) -> bool:
    """Whether ``config``'s user-level DP is distributed (its builder sums the clients' noise shares securely)."""
    return config.user_level_dp and AGGREGATORS[config.dp].distributed


def ddp_parameters_of(config, num_weights: int) -> DdpParameters:
    """The scale, bounds and noise of ``config``'s distributed DP for a model of ``num_weights`` weights (the values
    each client sends: :func:`values_summed`)."""
    return ddp_parameters(config.noise_multiplier, config.clip_norm, config.quantization_bits,
                          config.clients_per_round, cohort_size(config), values_summed(config, num_weights))


def adaptive_count_stddev(noise_multiplier: float, clients_per_round: float) -> float:
    """The noise s of an adaptive clip's count of clients below the clip (:func:`dp_adaptive`).

    The clipped-count query shares the budget: TFF raises the update noise to (z^-2 - (2 s)^-2)^-1/2 for count
    noise s. Its default s = 0.05 K leaves nothing for small K; s >= z caps the update noise at z / sqrt(3/4),
    about 1.15 z."""
    return max(0.05 * float(clients_per_round), float(noise_multiplier))


def adaptive_noise_split(noise_multiplier: float, clients_per_round: float) -> tuple[float, float]:
    """(z_v, s): the update noise multiplier and the count's noise of an adaptive clip at the config's z, composed
    back to z (z_v^-2 + (2 s)^-2 = z^-2; Andrew et al. 2021, TFF's ``adaptive_clip_noise_params``); z = 0: (0, s)."""
    s = adaptive_count_stddev(noise_multiplier, clients_per_round)
    z = float(noise_multiplier)
    return ((z ** -2 - (2 * s) ** -2) ** -0.5 if z > 0 else 0.0), s


def dp_aggregator(*, mode: str, noise_multiplier: float, clients_per_round: float, clip_norm: float,
                  target_quantile: float = 0.5, seeded: bool = True, record_sum=None, statistic=None,
                  sensitivity: float = 1.0):
    """The DP aggregator registered as ``mode`` ("fixed", "adaptive", or a user's).

    ``seeded``: noise from the run's noise seed and the round (:mod:`fedlab.aggregators.seeded`); False: fresh
    noise every run (TFF's own factory where it has one). ``record_sum``: the sum of the clipped updates under
    the noise (a secure sum; or :func:`compressed_record_sum`). ``statistic``, ``sensitivity``: a robust
    statistic of the clipped updates instead of their mean, and its bound (:func:`dp_statistic`); a builder
    that takes neither is refused by the config.
    """
    entry = AGGREGATORS[mode]
    if entry.role != "dp":
        raise ValueError(f"dp: must be one of {', '.join(names('dp'))}; got {mode!r}")
    extra = {}
    if record_sum is not None:
        extra["record_sum"] = record_sum
    if statistic is not None:
        extra.update(statistic=statistic, sensitivity=sensitivity)
    return entry.build(noise_multiplier, clients_per_round, clip_norm, target_quantile, seeded=seeded, **extra)


def secure_record_sum(settings: SumSettings):
    """TFF's secure sum of updates already L2-clipped to C: the b-bit discretised modular sum, or, with b = 0, the
    32-bit secure sum of coordinates clipped to [-C, C] (what :func:`secure_aggregator` averages)."""
    agg = tff().aggregators
    if settings.bits:
        from tensorflow_federated.python.aggregators.discretization import DiscretizationFactory

        return DiscretizationFactory(
            agg.SecureModularSumFactory(secure_modulus(settings.bits, settings.cohort), symmetric_range=True),
            scale_factor=(2 ** (settings.bits - 1) - 1) / settings.clip_norm)
    return agg.SecureSumFactory(upper_bound_threshold=float(settings.clip_norm),
                                lower_bound_threshold=-float(settings.clip_norm))


def compressed_record_sum(settings: SumSettings):
    """The sum of user-level DP's clipped updates, each compressed to ``quantization_bits`` bits as
    :func:`compression_aggregator` compresses (stochastic rounding, seeded by default) and then scaled tensor by
    tensor to no longer than it was: the clip C still bounds every update, so the noise and the accounting are
    those of DP alone (:func:`fedlab.aggregators.seeded.quantizing_sum`). The rounding's variance lengthens a
    tensor more often than not, so the scale shortens the updates a little at 8 bits and noticeably at 1 or 2
    (as a lower server learning rate would)."""
    return quantizing_sum(settings.bits, fresh=not settings.seeded)


def dp_sensitivity(config, num_weights: int) -> float:
    """The L2 sensitivity of user-level DP's sum: clip_norm, plus, under a secure sum, its rounding; twice that
    with over-selection.

    A secure sum adds each client's update rounded coordinate by coordinate: b bits round to the nearest
    multiple of C / (2^(b-1) - 1) (``DiscretizationFactory``, deterministic), 32 bits to the nearest of
    2C / (2^32 - 1) (``secure_quantized_sum``), each coordinate off by at most half a step. One client added or
    removed therefore moves the sum by at most C + sqrt(d) * step / 2 for d values sent (the model's weights, as
    many again for SCAFFOLD's control variates, one more for q-FFL's share: :func:`values_summed`), and by at
    most 2C (rounding never more than doubles a coordinate); the Gaussian noise z * C is then z * C / the smaller of
    the two (:func:`accounting_noise_multiplier`).

    With ``over_selection`` > 1 the round asks clients at rate min(1, over_selection x K / N) (Poisson) and uses
    the first K to finish, on devices drawn without looking at the data. A user added to the round can then
    displace another, whose update leaves the sum as theirs enters: one user moves the sum by at most twice one
    update's bound (and the Poisson rate is the rate of being asked, :attr:`ExperimentConfig.sampling_probability`).
    """
    bound = float(config.clip_norm)
    if config.user_level_dp and config.secure_aggregation:
        clip = bound
        step = clip / (2 ** (config.quantization_bits - 1) - 1) if config.quantization_bits else 2 * clip / (2 ** 32 - 1)
        # rounding to the nearest multiple never more than doubles a coordinate (below half a step it gives 0), so
        # the rounded update's norm is also at most 2C: the better of the two bounds
        values = values_summed(config, num_weights)  # the values rounded
        bound = min(clip + math.sqrt(values) * step / 2, 2 * clip)
    displaced = config.user_level_dp and config.over_selection > 1
    return 2 * bound if displaced else bound


def values_summed(config, num_weights: int) -> int:
    """How many values a client sends through a sum that hides its update (a secure sum's, user-level DP's), all
    clipped together: the update's ``num_weights``, those an algorithm sends beside it (SCAFFOLD's control variates,
    ``side_sums``) and q-FFL's share of the weights (``own_weighting``, :mod:`fedlab.algorithms.qffl`)."""
    entry = config.algorithm_entry
    return num_weights * (1 + entry.side_sums) + int(bool(entry.own_weighting))


def accounting_noise_multiplier(config, num_weights: int) -> float:
    """The noise multiplier the privacy accounting uses: the config's z, relative to :func:`dp_sensitivity`."""
    return float(config.noise_multiplier) * float(config.clip_norm) / dp_sensitivity(config, num_weights)


@register_aggregator("secure", role="secure", paper="Bonawitz et al. 2017, doi:10.1145/3133956.3133982")
def secure_aggregator(settings: SumSettings):
    """The server learns only the sum: b-bit discretised modular sum after L2 clipping, or 32-bit secure sum."""
    agg = tff().aggregators
    count = agg.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0)
    mean = agg.UnweightedMeanFactory(value_sum_factory=secure_record_sum(settings), count_sum_factory=count)
    # Discretisation needs every coordinate in [-C, C]: L2-clipping to C guarantees it.
    return agg.clipping_factory(settings.clip_norm, mean) if settings.bits else mean


@register_aggregator("secagg", role="secure", paper="Bonawitz et al. 2017, doi:10.1145/3133956.3133982")
def secagg_protocol(settings: SumSettings) -> ProtocolSum:
    """The SecAgg protocol, real cryptography: pairwise and self masks, Shamir-shared seeds, dropouts recovered.

    :mod:`fedlab.protection.secagg` runs it, :mod:`fedlab.rounds.split_rounds` between the
    round's TFF computations (the clients' training and encoding, the server's decoding and step); same clipping
    and b-bit encoding as ``secure``.
    """
    return ProtocolSum("secagg", settings.bits, settings.clip_norm, settings.cohort)


@register_aggregator("secaggplus", role="secure", paper="Bell et al. 2020, doi:10.1145/3372297.3417885")
def secagg_plus_protocol(settings: SumSettings) -> ProtocolSum:
    """SecAgg+: SecAgg on a sparse random graph, each client masking with and sharing to O(log n) neighbours."""
    return ProtocolSum("secagg+", settings.bits, settings.clip_norm, settings.cohort)


@register_aggregator("ckks", role="secure", paper="Cheon et al. 2017 (CKKS), doi:10.1007/978-3-319-70694-8_15; "
                                                "NVIDIA FLARE's HE aggregation")
def ckks_protocol(settings: SumSettings) -> HomomorphicMean:
    """CKKS homomorphic aggregation: clients encrypt float updates, the server adds ciphertexts times plain weights.

    :mod:`fedlab.protection.ckks` encrypts and sums, :mod:`fedlab.rounds.homomorphic_rounds`
    runs the round; the mean is weighted as ``client_weighting`` says, no
    clipping or quantization. With ``noise_source="seeded"`` the encryption is
    seeded by the round's noise seed and the config's fingerprint (simulation
    only: no confidentiality against whoever knows the config).
    """
    return HomomorphicMean("ckks", seeded=settings.seeded, run_digest=settings.run_digest)


def protocol_names() -> tuple[str, ...]:
    """The values of ``secure_protocol`` besides "none": registered secure aggregators that run a protocol."""
    return tuple(name for name in names("secure") if name != "secure")


@register_aggregator("compression", role="compression", paper="Suresh et al. 2017, arXiv:1611.00429")
def compression_aggregator(settings: SumSettings):
    """Weighted mean of updates uniformly quantised to quantization_bits bits (stochastic rounding)."""
    if settings.seeded:
        return seeded_quantizing(settings.bits)
    agg = tff().aggregators
    return agg.MeanFactory(agg.EncodedSumFactory.quantize_above_threshold(quantization_bits=settings.bits,
                                                                          threshold=0))


@register_aggregator("clip", role="robust", paper="Sun et al. 2019, arXiv:1911.07963")
def robust_clip(clip_norm: float, inner):
    """L2-clip every update to clip_norm before the inner aggregator."""
    return tff().aggregators.clipping_factory(clip_norm, inner)


@register_aggregator("zeroing", role="robust")
def robust_zeroing(clip_norm: float, inner):
    """Drop (zero) any update whose L2 norm exceeds clip_norm."""
    return tff().aggregators.zeroing_factory(clip_norm, inner)


def median_sensitivity(fraction: float, most_updates: int) -> float:
    """(1 + sqrt(2)) / 2: how far, in units of C, one update v of norm <= C added to or removed from a round's
    updates x_1..x_n (norms <= C) moves their coordinate median m (the mean of the two middle values for even n).

    n = 0: the median goes from 0 to v, by ||v|| <= C. Even n = 2k: in each coordinate j the new median is v_j
    clamped between the two middle values x_(k) <= x_(k+1), so it moves by at most half their gap g_j. At least k
    values lie at or beyond each of them, so sum_i x_ij^2 >= (k / 2) g_j^2 (if they have opposite signs, k (x_(k)^2
    + x_(k+1)^2) >= (k / 2) g_j^2; if not, g_j is at most the larger); summing over j, sum_j g_j^2 <= (2 / k) 2k C^2
    and the move is at most C. Odd n = 2k + 1: m_j = x_(k+1), and the new median is the mean of m_j and v_j clamped
    to the next value on v_j's side, so it moves by at most |v_j - m_j| / 2, in all ||v - m|| / 2 <= (||v|| +
    ||m||) / 2. At least k + 1 values have |x_ij| >= |m_j|, so ||m||^2 <= (2k + 1) / (k + 1) C^2 < 2 C^2. Removing v
    is the same pair of rounds. (A search over random rounds found no move beyond C: the bound may not be tight.)
    """
    return (1.0 + math.sqrt(2.0)) / 2.0


def trimmed_mean_sensitivity(fraction: float, most_updates: int) -> float:
    """2 max_n sqrt(n / (n - 2 floor(fraction n))) over rounds of n <= ``most_updates`` updates, in units of C.

    A coordinate of the trimmed mean is the mean of the n - 2b middle values (b = floor(fraction n)), so its
    square is at most their mean square, at most sum_i x_ij^2 / (n - 2b); summing over j, its norm is at most
    C sqrt(n / (n - 2b)) (at most C / sqrt(1 - 2 fraction)). One update added or removed changes n and maybe b,
    so the bound is on both rounds' results: twice the largest norm. Where nothing would be left (n - 2b < 1,
    a fraction within 1e-9 of 0.5) the factory takes the median, of norm at most sqrt(2) C
    (:func:`median_sensitivity`). (Not tight: a search over random rounds found no move beyond C.)
    """
    def largest(n: int) -> float:
        kept = n - 2 * fraction_count(fraction, n)
        return math.sqrt(n / kept) if kept >= 1 else math.sqrt(2.0)

    return 2.0 * max(largest(n) for n in range(1, max(most_updates, 1) + 1))


def krum_sensitivity(fraction: float, most_updates: int) -> float:
    """2: Krum returns one update, Multi-Krum a mean of some, so its result has norm <= C whatever the round; one
    update added or removed can change the choice, moving the result by at most 2C."""
    return 2.0


@register_aggregator("median", role="robust", replaces_mean=True, paper="Yin et al. 2018, arXiv:1803.01498",
                     sensitivity=median_sensitivity)
def robust_median(clip_norm: float, inner):
    """Coordinate-wise median of the round's updates (unweighted; the mean of the two middle values if even)."""
    return CoordinateMedianFactory()


@register_aggregator("trimmed_mean", role="robust", fraction=True, replaces_mean=True,
                     paper="Yin et al. 2018, arXiv:1803.01498", sensitivity=trimmed_mean_sensitivity)
def robust_trimmed_mean(clip_norm: float, inner, *, fraction: float):
    """Coordinate-wise trimmed mean: the floor(fraction x m) largest and smallest values of each coordinate dropped."""
    return TrimmedMeanFactory(fraction)


@register_aggregator("krum", role="robust", fraction=True, replaces_mean=True,
                     paper="Blanchard et al. 2017, NeurIPS, arXiv:1703.02757", sensitivity=krum_sensitivity)
def robust_krum(clip_norm: float, inner, *, fraction: float):
    """Krum: the update closest (squared L2) to its m - f - 2 nearest others, f = floor(fraction x m)."""
    return KrumFactory(byzantine_fraction=fraction)


@register_aggregator("multikrum", role="robust", fraction=True, replaces_mean=True,
                     paper="Blanchard et al. 2017, NeurIPS, arXiv:1703.02757", sensitivity=krum_sensitivity)
def robust_multikrum(clip_norm: float, inner, *, fraction: float, clients_per_round: int = 10):
    """Multi-Krum: the mean of the K - floor(fraction x K) updates with the best Krum scores."""
    return KrumFactory(byzantine_fraction=fraction, multi=max(1, clients_per_round - fraction_count(fraction,
                                                                                                   clients_per_round)))


def robust_aggregator(name: str, clip_norm: float, inner, *, fraction: float = 0.2, clients_per_round: int = 10):
    """The robust defence registered as ``name`` around ``inner`` (or instead of it, for median and Krum)."""
    entry = AGGREGATORS[name]
    if entry.role != "robust":
        raise ValueError(f"robust: must be one of none, {', '.join(names('robust'))}; got {name!r}")
    if name == "multikrum":
        return entry.build(clip_norm, inner, fraction=fraction, clients_per_round=clients_per_round)
    return entry.build(clip_norm, inner, fraction=fraction) if entry.fraction else entry.build(clip_norm, inner)


def dp_statistic(config):
    """(statistic, sensitivity) for user-level DP with a robust statistic, or (None, 1.0).

    Robust aggregate, then noise: the updates are clipped to C (the current clip, if adaptive), the statistic
    (a median, a trimmed mean, Krum) is taken of them, and Gaussian noise z s C is added to it, with s the
    statistic's registered sensitivity (:func:`median_sensitivity`, :func:`trimmed_mean_sensitivity`,
    :func:`krum_sensitivity`) at the most updates a round can hold (:func:`cohort_size`). One user moves the
    statistic by at most s C, as one user moves the mean's sum by at most C, so the noise multiplier relative to
    the sensitivity is z and the accounting is the mean's. The mean divides its noise by the expected K; a
    statistic does not, so at the same z its noise is about s K times the mean's: robustness costs privacy here.
    Multi-Krum keeps the K - f best of a round of the expected K.
    """
    if not (config.user_level_dp and config.robust != "none" and AGGREGATORS[config.robust].replaces_mean):
        return None, 1.0
    entry = AGGREGATORS[config.robust]
    statistic = robust_aggregator(config.robust, config.clip_norm, None, fraction=config.robust_fraction,
                                  clients_per_round=config.clients_per_round)
    return statistic, float(entry.sensitivity(config.robust_fraction, cohort_size(config)))


def builders_in_use(config) -> list[AggregatorBuilder]:
    """The registered aggregator builders a config selects by name (its user-level DP mode, robust defence, secure
    protocol, and the ``secure`` or ``compression`` encoding)."""
    chosen = [config.dp] if config.user_level_dp else []
    chosen += [config.robust] if config.robust != "none" else []
    chosen += [config.secure_protocol] if config.secure_aggregation and config.secure_protocol != "none" else []
    chosen += ["secure"] if config.secure_aggregation and config.secure_protocol == "none" else []
    chosen += ["compression"] if config.quantization_bits and not config.secure_aggregation else []
    return [AGGREGATORS[name] for name in chosen]


def make_aggregator(config):
    """The ``tff.aggregators`` factory for ``config`` (None: TFF's default weighted mean).

    A factory that hides each client's update from the server (user-level DP's, a secure sum's) is marked
    ``hides_updates``, with ``mean_denominator`` the count its mean divides by when fixed (DP's expected K; None:
    the clients it was given): a split round then sends what its server needs besides through it
    (SCAFFOLD's control variates, :class:`fedlab.rounds.split_rounds.SplitRoundProcess`).
    """
    factory = _make_aggregator(config)
    if factory is not None and not isinstance(factory, (ProtocolSum, HomomorphicMean)) and (
            config.user_level_dp or config.secure_aggregation):
        factory.hides_updates = True
        factory.mean_denominator = float(config.clients_per_round) if config.user_level_dp else None
        # the L2 clip every client's value takes before the sum (b-bit secure sums, DP), or None
        factory.l2_clip = float(config.clip_norm) if config.user_level_dp or config.quantization_bits else None
    return factory


def _make_aggregator(config):
    if distributed_dp(config) and config.secure_protocol != "none":
        # the clients' updates with their noise shares, summed mod 2^b by the protocol, decoded by the server
        return dataclasses.replace(AGGREGATORS[config.secure_protocol].build(sum_settings(config)),
                                   denominator=float(config.clients_per_round), seeded=config.noise_source == "seeded",
                                   shares=skellam_shares(config.noise_multiplier, config.clients_per_round,
                                                         config.clip_norm, sum_settings(config)))
    if config.user_level_dp and config.secure_aggregation and config.secure_protocol != "none":
        # the protocol's sum of the clipped, rounded updates, unmasked by the server, which adds the noise to it
        # and divides by the expected K; an adaptive clip's clients encode in its units and add their bit
        # (ProtocolSum), its noise split between the updates and the bits' count as dp_adaptive's
        value_noise, count_stddev = float(config.noise_multiplier), 0.0
        if config.dp == "adaptive":
            value_noise, count_stddev = adaptive_noise_split(config.noise_multiplier, config.clients_per_round)
        return dataclasses.replace(AGGREGATORS[config.secure_protocol].build(sum_settings(config)),
                                   noise_stddev=value_noise * float(config.clip_norm),
                                   denominator=float(config.clients_per_round),
                                   seeded=config.noise_source == "seeded", adaptive=config.dp == "adaptive",
                                   target_quantile=float(config.target_quantile), count_stddev=count_stddev)
    if distributed_dp(config):
        factory = AGGREGATORS[config.dp].build(config.noise_multiplier, config.clients_per_round, config.clip_norm,
                                               config.target_quantile, settings=sum_settings(config))
    elif config.user_level_dp:
        # under a secure sum the server sees only the sum of the clipped updates, and adds the noise to it
        record_sum = (secure_record_sum(sum_settings(config)) if config.secure_aggregation else
                      compressed_record_sum(sum_settings(config)) if config.quantization_bits else None)
        statistic, sensitivity = dp_statistic(config)
        factory = dp_aggregator(mode=config.dp, noise_multiplier=config.noise_multiplier,
                                clients_per_round=config.clients_per_round, clip_norm=config.clip_norm,
                                target_quantile=config.target_quantile, seeded=config.noise_source == "seeded",
                                record_sum=record_sum, statistic=statistic, sensitivity=sensitivity)
        if statistic is not None:
            return factory
    elif config.secure_aggregation and config.secure_protocol != "none":
        return AGGREGATORS[config.secure_protocol].build(sum_settings(config))  # clipped by its clients' encoding
    elif config.secure_aggregation:
        factory = AGGREGATORS["secure"].build(sum_settings(config))
    elif config.quantization_bits:
        factory = AGGREGATORS["compression"].build(sum_settings(config))
    elif config.robust != "none":
        factory = tff().aggregators.MeanFactory()
    else:
        return None
    if config.robust != "none" and AGGREGATORS[config.robust].replaces_mean and config.quantization_bits:
        # compressed updates (no secure sum: config refuses that): each client quantises, the server decodes every
        # update and takes the statistic of them
        statistic = robust_aggregator(config.robust, config.clip_norm, None, fraction=config.robust_fraction,
                                      clients_per_round=cohort_size(config))
        return seeded_quantizing(config.quantization_bits, statistic, fresh=config.noise_source != "seeded")
    # Secure b-bit sums already L2-clip to C; clipping again would change nothing.
    if config.robust != "none" and not (config.robust == "clip" and config.secure_aggregation
                                        and config.quantization_bits):
        factory = robust_aggregator(config.robust, config.clip_norm, factory, fraction=config.robust_fraction,
                                    clients_per_round=cohort_size(config))
    return factory


def cohort_size(config) -> int:
    """The most updates one aggregation sees: the round's K, or a FedBuff step's buffer; under user-level DP,
    whose rounds Poisson-sample every client (at rate K/N, or more with over-selection), every client not
    excluded (a secure sum's modulus must hold them all, or a crowded round could wrap around)."""
    if config.user_level_dp:
        return config.num_clients - len(config.exclude_clients)
    return config.effective_async_buffer if config.async_concurrency else config.clients_per_round


def aggregator_key(config) -> tuple:
    """What the aggregator depends on; part of the process-cache key."""
    if config.user_level_dp:
        return ("dp", config.dp, config.noise_multiplier, config.clients_per_round, config.clip_norm,
                config.target_quantile if config.dp == "adaptive" else None, config.robust, config.noise_source,
                (config.quantization_bits, cohort_size(config), config.secure_protocol)
                if config.secure_aggregation else config.quantization_bits,
                config.robust_fraction if uses_fraction(config) else None,
                # a statistic's noise is sized by the most updates a round can hold (dp_statistic)
                cohort_size(config) if config.robust != "none" and AGGREGATORS[config.robust].replaces_mean
                else None)
    return ("mean", config.secure_aggregation, config.secure_protocol, config.quantization_bits, config.robust,
            config.noise_source if (config.quantization_bits and not config.secure_aggregation)
            or config.secure_protocol == "ckks" else None,
            # seeded CKKS encrypts with the config's fingerprint in its seed: a process of its own per config
            config.fingerprint() if config.secure_aggregation and config.secure_protocol == "ckks"
            and config.noise_source == "seeded" else None,
            config.clip_norm if (config.secure_aggregation or config.robust != "none") else None,
            cohort_size(config) if config.secure_aggregation or config.robust == "multikrum" else None,
            config.robust_fraction if uses_fraction(config) else None)


def uses_fraction(config) -> bool:
    """Whether the config's robust aggregator takes ``robust_fraction``."""
    return config.robust != "none" and AGGREGATORS[config.robust].fraction


def bits_per_value_up(config) -> float:
    """Bits a client sends per trainable parameter."""
    if config.secure_aggregation and config.secure_protocol == "ckks":
        return 8 * HomomorphicMean.upload_bytes(1) / 4096  # a ciphertext's bits per slot (fewer values pay more)
    if distributed_dp(config):
        return config.quantization_bits  # b-bit values mod 2^b (the noise shares wrap, the sum unwraps them)
    if config.secure_aggregation and config.secure_protocol != "none":
        # ring elements mod 2^(b + ceil log2 K)
        return AGGREGATORS[config.secure_protocol].build(sum_settings(config)).modulus_bits
    if config.secure_aggregation:
        if config.quantization_bits:
            # symmetric modular sum: TFF sums in [0, 2m - 1) for modulus m
            return math.ceil(math.log2(2 * secure_modulus(config.quantization_bits, cohort_size(config)) - 1))
        return 32 + math.ceil(math.log2(max(config.clients_per_round, 1)))  # 32-bit values, summed without overflow
    if config.quantization_bits:
        return config.quantization_bits
    return 32


def round_bytes(config, trainable_sizes, non_trainable_sizes, clients: int, *,
                population_shares: bool = True) -> dict[str, float]:
    """Bytes moved in one round with ``clients`` participants.

    Down: the full float32 model to every participant. Up: each trainable
    tensor at ``bits_per_value_up`` bits, plus per-tensor min and max (8 bytes)
    when compressed, plus one float32 weight. Not counted: secure aggregation's
    key agreement and share messages, which grow with K but not with the model
    (a protocol run reports them: history column ``secagg_bytes_per_client``).
    CKKS (:mod:`fedlab.protection.ckks`): up, each client's ciphertexts (uncompressed size,
    from the parameters) plus its weight; down, the model and the encrypted
    mean to every selected client (a key holder decrypts it). SCAFFOLD (``side_sums``) also sends every client
    the server's control variate c down, and its control-variate values up (their change; under user-level DP its
    scaled c_i): under user-level DP or a secure sum beside its update, at the sum's bits (twice the values up),
    else as float32; q-FFL sends its weight's share there, one value more.
    Distributed DP: each participant's b-bit vector (padded to even), and, with ``population_shares``, the noise share
    every client that may be sampled sends at the round's start (N vectors; without: what one participant's update
    adds, the simulated clock's upload).
    """
    params = int(sum(trainable_sizes))
    side = config.algorithm_entry.side_sums  # model-sized vectors exchanged beside the model (SCAFFOLD's c, c_i)
    down = clients * 4 * (params * (1 + side) + int(sum(non_trainable_sizes)))
    plain_side = 4 * side * params  # float32, where no sum that hides the updates takes them
    if config.secure_aggregation and config.secure_protocol == "ckks":  # whole ciphertexts of 4,096 slots
        ciphertexts = HomomorphicMean.upload_bytes(params)
        return {"bytes_down": float(down + clients * ciphertexts), "bytes_up": float(clients * (ciphertexts + 4))}
    tensors = len(trainable_sizes)
    if config.user_level_dp or config.secure_aggregation:  # and what it sends beside its update (values_summed)
        params, plain_side = values_summed(config, params), 0
        tensors = tensors * (1 + config.algorithm_entry.side_sums) + int(bool(config.algorithm_entry.own_weighting))
    if config.user_level_dp and config.dp == "adaptive" and config.secure_aggregation \
            and config.secure_protocol != "none":
        params += 1  # the bit [norm <= C_t] as one more ring element (ProtocolSum)
    per_client_up = params * bits_per_value_up(config) / 8 + 4 + plain_side
    if config.quantization_bits and not config.secure_aggregation:
        per_client_up += 8 * tensors
    if distributed_dp(config):  # padded to even; and every client's noise share, sent at the round's start
        vector = ddp_parameters_of(config, int(sum(trainable_sizes))).padded_dim * config.quantization_bits / 8
        shares = cohort_size(config) * vector if population_shares else 0.0
        return {"bytes_down": float(down), "bytes_up": float(clients * (vector + 4) + shares)}
    return {"bytes_down": float(down), "bytes_up": float(clients * per_client_up)}


def weighs_alike(config) -> Optional[tuple[str, str]]:
    """(the setting, why) when the config's aggregation weighs every client alike whatever ``client_weighting``
    says (the config refuses ``"dataset"`` then; FedNova's tau_eff takes uniform shares); None when it takes the
    clients' weights."""
    if config.user_level_dp:
        return f"dp={config.dp!r}", "one client's clipped update, not its weight, bounds what the noise hides"
    if config.secure_aggregation and config.secure_protocol != "ckks":
        return "secure_aggregation", "a weighted update would leave the secure sum's fixed range"
    if config.robust != "none" and AGGREGATORS[config.robust].replaces_mean:
        return f"robust={config.robust!r}", "a statistic of the updates, not a weighted mean"
    return None


def describe(config) -> Optional[str]:
    """One line on the aggregator in use, for panels and tables."""
    parts = []
    if config.secure_aggregation and config.secure_protocol == "ckks":
        parts.append("CKKS homomorphic aggregation (float updates, weighted mean)")
    elif config.secure_aggregation:
        protocol = "" if config.secure_protocol == "none" else f", protocol {config.secure_protocol}"
        parts.append(f"secure aggregation ({config.quantization_bits or 32}-bit, clip {config.clip_norm:g}{protocol})")
    elif config.quantization_bits:
        parts.append(f"{config.quantization_bits}-bit compression")
    if config.robust != "none":
        parts.append(f"{config.robust} at norm {config.clip_norm:g}")
    if distributed_dp(config):
        parts.append(f"distributed DP (Skellam shares, clip {config.clip_norm:g}, z {config.noise_multiplier:g})")
    elif config.user_level_dp:
        parts.append(f"user-level DP ({config.dp} clip {config.clip_norm:g}, z {config.noise_multiplier:g})")
    if weighs_alike(config):
        parts.append("every client weighted alike")
    return ", ".join(parts) or "plain mean"


def method_name(config) -> str:
    """Short label of the update encoding: float32, compressed-4bit, secure-12bit, secure-32bit."""
    if config.secure_aggregation and config.secure_protocol == "ckks":
        return "ckks"
    if distributed_dp(config):
        return f"ddp-{config.quantization_bits}bit"
    if config.secure_aggregation and config.secure_protocol != "none":
        return f"{config.secure_protocol}-{config.quantization_bits}bit"
    if config.secure_aggregation:
        return f"secure-{config.quantization_bits or 32}bit"
    if config.quantization_bits:
        return f"compressed-{config.quantization_bits}bit"
    return "float32"
