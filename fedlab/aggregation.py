"""Model-update aggregators: secure aggregation, compression, robust defences, and their byte cost.

All are TFF's own ``tff.aggregators`` factories, composed:

* **Secure aggregation** (Bonawitz et al. 2017): the server learns only the sum.
  With ``quantization_bits`` b > 0 each client's update is L2-clipped to C,
  scaled by (2^(b-1) - 1) / C and rounded to integers (``DiscretizationFactory``),
  then summed modulo 2^(b + ceil(log2 K)) (``SecureModularSumFactory``), enough
  for K clients never to overflow. With b = 0, TFF's ``SecureSumFactory`` clips
  every coordinate to [-C, C] and quantises it to 32 bits. The mean is
  unweighted: weighting before a bounded secure sum would break its range.
* **Compression**: uniform quantisation of each tensor to b bits between its
  min and max (``EncodedSumFactory.quantize_above_threshold``), weighted mean.
* **Robustness**: ``clipping_factory`` (L2-clip every update to C) or
  ``zeroing_factory`` (drop any update whose norm exceeds C).

TFF 0.87 cannot put compression inside secure aggregation or DP (each replaces
the sum); those combinations are refused when the config is made.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


def secure_modulus(bits: int, clients_per_round: int) -> int:
    """Modulus for K clients' b-bit symmetric integers to sum without wrapping around."""
    return 2 ** (bits + math.ceil(math.log2(max(clients_per_round, 1))))


def quantization_error_bound(bits: int, clip_norm: float, clients: int) -> float:
    """Largest per-coordinate error of a secure b-bit sum of ``clients`` values (deterministic rounding)."""
    scale = (2 ** (bits - 1) - 1) / clip_norm
    return clients * 0.5 / scale


def make_aggregator(config):
    """The ``tff.aggregators`` factory for ``config`` (None: TFF's default weighted mean)."""
    from .runtime import tff

    agg = tff().aggregators
    if config.dp != "none":
        from .privacy import dp_aggregator

        factory = dp_aggregator(mode=config.dp, noise_multiplier=config.noise_multiplier,
                                clients_per_round=config.clients_per_round, clip_norm=config.clip_norm,
                                target_quantile=config.target_quantile)
    elif config.secure_aggregation:
        count = agg.SecureSumFactory(upper_bound_threshold=1, lower_bound_threshold=0)
        if config.quantization_bits:
            from tensorflow_federated.python.aggregators.discretization import DiscretizationFactory

            value = DiscretizationFactory(
                agg.SecureModularSumFactory(secure_modulus(config.quantization_bits, config.clients_per_round),
                                            symmetric_range=True),
                scale_factor=(2 ** (config.quantization_bits - 1) - 1) / config.clip_norm)
            # Discretisation needs every coordinate in [-C, C]: L2-clipping to C guarantees it.
            factory = agg.clipping_factory(config.clip_norm,
                                           agg.UnweightedMeanFactory(value_sum_factory=value, count_sum_factory=count))
        else:
            value = agg.SecureSumFactory(upper_bound_threshold=float(config.clip_norm),
                                         lower_bound_threshold=-float(config.clip_norm))
            factory = agg.UnweightedMeanFactory(value_sum_factory=value, count_sum_factory=count)
    elif config.quantization_bits:
        factory = agg.MeanFactory(agg.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=config.quantization_bits, threshold=0))
    elif config.robust != "none":
        factory = agg.MeanFactory()
    else:
        return None
    if config.robust == "clip" and not (config.secure_aggregation and config.quantization_bits):
        factory = agg.clipping_factory(config.clip_norm, factory)
    elif config.robust == "zeroing":
        factory = agg.zeroing_factory(config.clip_norm, factory)
    return factory


def aggregator_key(config) -> tuple:
    """What the aggregator depends on; part of the process-cache key."""
    if config.dp != "none":
        return ("dp", config.dp, config.noise_multiplier, config.clients_per_round, config.clip_norm,
                config.target_quantile if config.dp == "adaptive" else None, config.robust)
    return ("mean", config.secure_aggregation, config.quantization_bits, config.robust,
            config.clip_norm if (config.secure_aggregation or config.robust != "none") else None,
            config.clients_per_round if config.secure_aggregation else None)


def bits_per_value_up(config) -> float:
    """Bits a client sends per trainable parameter."""
    if config.secure_aggregation:
        if config.quantization_bits:
            # symmetric modular sum: TFF sums in [0, 2m - 1) for modulus m
            return math.ceil(math.log2(2 * secure_modulus(config.quantization_bits, config.clients_per_round) - 1))
        return 32 + math.ceil(math.log2(max(config.clients_per_round, 1)))  # 32-bit values, summed without overflow
    if config.quantization_bits and config.dp == "none":
        return config.quantization_bits
    return 32


def round_bytes(config, trainable_sizes, non_trainable_sizes, clients: int) -> dict[str, float]:
    """Bytes moved in one round with ``clients`` participants.

    Down: the full float32 model to every participant. Up: each trainable
    tensor at ``bits_per_value_up`` bits, plus per-tensor min and max (8 bytes)
    when compressed, plus one float32 weight. Not counted: secure aggregation's
    key agreement and masking messages, which grow with K but not with the model.
    """
    params = int(sum(trainable_sizes))
    down = clients * 4 * (params + int(sum(non_trainable_sizes)))
    per_client_up = params * bits_per_value_up(config) / 8 + 4
    if config.quantization_bits and not config.secure_aggregation and config.dp == "none":
        per_client_up += 8 * len(trainable_sizes)
    return {"bytes_down": float(down), "bytes_up": float(clients * per_client_up)}


def attacker_clients(config) -> np.ndarray:
    """The ``attacker_fraction`` of clients that misbehave, chosen once from the data seed."""
    count = int(math.ceil(config.attacker_fraction * config.num_clients - 1e-9))
    rng = np.random.default_rng([config.seeds["data"], 31])
    return np.sort(rng.permutation(config.num_clients)[:count])


def poison_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """A label-flipping attacker's labels: class c becomes C - 1 - c."""
    return (num_classes - 1 - np.asarray(y)).astype(np.asarray(y).dtype)


def describe(config) -> Optional[str]:
    """One line on the aggregator in use, for panels and tables."""
    parts = []
    if config.secure_aggregation:
        parts.append(f"secure aggregation ({config.quantization_bits or 32}-bit, clip {config.clip_norm:g})")
    elif config.quantization_bits:
        parts.append(f"{config.quantization_bits}-bit compression")
    if config.robust != "none":
        parts.append(f"{config.robust} at norm {config.clip_norm:g}")
    return ", ".join(parts) or "plain mean"


def method_name(config) -> str:
    """Short label of the update encoding: float32, compressed-4bit, secure-12bit, secure-32bit."""
    if config.secure_aggregation:
        return f"secure-{config.quantization_bits or 32}bit"
    if config.quantization_bits:
        return f"compressed-{config.quantization_bits}bit"
    return "float32"
