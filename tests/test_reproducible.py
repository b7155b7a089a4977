"""Same config and seeds, same numbers, with DP noise and stochastic rounding on (issue #23)."""

import math

import numpy as np
import pandas as pd
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.core.runtime import tff
from fedlab.aggregators.seeded import seeded_gaussian, seeded_quantizing
from conftest import interrupt_after

BASE = ExperimentConfig(dataset="digits", num_clients=20, clients_per_round=6, rounds=3, eval_every=1, seed=4)
NUMBERS = ["round", "train_loss", "eval_loss", "eval_accuracy", "clients_this_round"]


def numbers(history):
    return history[[c for c in NUMBERS + ["clip_norm_this_round"] if c in history]].reset_index(drop=True)


@pytest.mark.parametrize("changes", [
    dict(dp="fixed", noise_multiplier=1.0, clip_norm=0.5),
    dict(dp="adaptive", noise_multiplier=0.8, clip_norm=0.05),
    dict(quantization_bits=3),
], ids=["dp-fixed", "dp-adaptive", "compression-3bit"])
def test_same_config_same_numbers_other_noise_seed_other_numbers(changes):
    config = BASE.replace(**changes)
    a, b = run_experiment(config, progress=False), run_experiment(config, progress=False)
    pd.testing.assert_frame_equal(numbers(a), numbers(b))
    other = run_experiment(config.replace(noise_seed=99), progress=False)
    assert not np.allclose(a["eval_loss"], other["eval_loss"])
    if config.dp == "adaptive":
        assert a["clip_norm_this_round"].nunique() == 3  # the clip moves every round


def test_unseeded_noise_differs_between_runs():
    config = BASE.replace(dp="fixed", noise_multiplier=1.0, clip_norm=0.5, noise_source="unseeded")
    a, b = run_experiment(config, progress=False), run_experiment(config, progress=False)
    assert not np.allclose(a["eval_loss"], b["eval_loss"])


def test_dp_run_resumed_from_a_checkpoint_draws_the_same_noise(tmp_path):
    config = BASE.replace(dp="adaptive", noise_multiplier=0.8, rounds=4)
    full = run_experiment(config, progress=False)

    interrupt_after(run_experiment, config, 2, tmp_path)
    resumed = run_experiment(config, checkpoint_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(numbers(resumed), numbers(full))


def _aggregate(factory, values, state_seed=5, weights=None):
    t = tff()
    value_type = t.types.TensorType(np.float32, [len(values[0])])
    if weights is None:
        process = factory.create(value_type)
    else:
        process = factory.create(value_type, t.types.TensorType(np.float32))
    state = process.initialize()
    state["noise_seed"] = np.asarray([state_seed, 0], np.int64)
    args = (state, values) if weights is None else (state, values, weights)
    return process.next(*args)


def test_seeded_gaussian_noise_has_the_stated_mean_and_variance():
    z, clip, k, dim = 1.3, 0.7, 4, 20_000
    out = _aggregate(seeded_gaussian(noise_multiplier=z, clients_per_round=k, clip=clip),
                     [np.zeros(dim, np.float32)] * k)
    noise = np.asarray(out.result)
    assert abs(noise.mean()) < 4 * z * clip / k / math.sqrt(dim)
    assert noise.std() == pytest.approx(z * clip / k, rel=0.03)
    again = _aggregate(seeded_gaussian(noise_multiplier=z, clients_per_round=k, clip=clip),
                       [np.zeros(dim, np.float32)] * k)
    np.testing.assert_array_equal(np.asarray(again.result), noise)  # same key, same noise
    second_round = _aggregate(seeded_gaussian(noise_multiplier=z, clients_per_round=k, clip=clip),
                              [np.zeros(dim, np.float32)] * k, state_seed=6)
    assert not np.allclose(np.asarray(second_round.result), noise)


def test_seeded_gaussian_clips_and_adapts_by_hand():
    """No noise: the mean of updates clipped to C, and the clip's geometric step exp(-0.2 (b - q))."""
    values = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32), np.array([0.0, 1.0], np.float32)]
    factory = seeded_gaussian(noise_multiplier=0.0, clients_per_round=3, clip=1.0, adaptive=True,
                              target_quantile=0.5, clipped_count_stddev=0.0)
    out = _aggregate(factory, values)
    np.testing.assert_allclose(np.asarray(out.result), (np.array([0.6, 0.8]) + values[1] + values[2]) / 3, rtol=1e-6)
    below = 2 / 3  # norms 5, 0.5, 1.0 against C = 1: two at or below it
    assert float(out.state["clip"]) == pytest.approx(1.0 * math.exp(-0.2 * (below - 0.5)), rel=1e-6)
    assert float(out.measurements["dp_query_metrics"]["clip"]) == pytest.approx(1.0)


def test_seeded_quantizer_stays_on_its_grid_and_is_unbiased():
    rng = np.random.default_rng(0)
    value = rng.normal(size=4000).astype(np.float32)
    out = _aggregate(seeded_quantizing(2), [value], weights=[1.0])
    got = np.asarray(out.result)
    lo, hi = value.min(), value.max()
    levels = (got - lo) / (hi - lo) * 3
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)  # 2 bits: 4 levels between min and max
    assert np.all(np.abs(got - value) <= (hi - lo) / 3 + 1e-5)
    assert abs(float((got - value).mean())) < 0.02  # stochastic rounding: unbiased
    again = _aggregate(seeded_quantizing(2), [value], weights=[1.0])
    np.testing.assert_array_equal(np.asarray(again.result), got)
