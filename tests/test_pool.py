"""A sweep's runs spread over worker processes (fedlab/experiment/pool.py): the same numbers as one after the
other, errors and fedlab's warnings raised where the sweep runs, nothing waiting forever."""

import multiprocessing
import os
import warnings

import numpy as np
import pytest

import fedlab as fl
from fedlab.core.validation import ConfigError, SettingWarning
from fedlab.experiment import pool
from fedlab.experiment.config import RECORD_LEVEL

BASE = fl.ExperimentConfig(dataset="digits", model="logreg", num_clients=10, clients_per_round=3, rounds=3,
                           local_epochs=1, batch_size=10)
METRICS = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "clients_this_round"]


def weights(history):
    return fl.final_weights(history)


@pytest.mark.slow
def test_a_sweep_spread_over_two_processes_gives_the_numbers_of_one_process(tmp_path):
    configs = fl.grid(BASE, seed=[0, 1], client_lr=[0.05, 0.2])
    alone = [fl.run_experiment(c, progress=False) for c in configs]
    spread = pool.run_all(configs, results_cache=tmp_path / "cache", processes=2, progress=False)
    assert len(list((tmp_path / "cache").iterdir())) == 4  # each trained once, in a worker process
    for one, other in zip(alone, spread):
        assert not other.attrs["from_cache"]  # trained by this call
        assert one[METRICS].equals(other[METRICS])
        for a, b in zip(weights(one), weights(other)):
            np.testing.assert_array_equal(a, b)  # bit for bit
    again = pool.run_all(configs, results_cache=tmp_path / "cache", processes=2, progress=False)
    assert all(h.attrs["from_cache"] for h in again)
    # without a results cache the spread runs pass through a temporary one, removed after
    swept = fl.run_sweep(configs, processes=2, progress=False, labels={"lr": lambda c: c.client_lr})
    assert swept.groupby(["seed", "lr"]).size().tolist() == [3, 3, 3, 3]
    for (seed, lr), one in zip([(c.seed, c.client_lr) for c in configs], alone):
        rows = swept[(swept.seed == seed) & (swept.lr == lr)].reset_index(drop=True)
        assert rows[METRICS].equals(one[METRICS])


def test_what_a_worker_process_cannot_run_stays_here():
    assert pool.why_here(BASE) is None
    assert "workers" in pool.why_here(BASE.replace(workers=("localhost:1",)))

    @fl.register_dataset("pool_test_digits")
    def mine(seed: int = 0, test_fraction: float = 0.2):
        """digits, registered by a notebook."""
        return fl.load_dataset("digits", seed=seed, test_fraction=test_fraction)

    try:
        assert pool.why_here(BASE.replace(dataset="pool_test_digits")) == \
            "'pool_test_digits' was registered in this process"
        assert pool.spreadable([BASE.replace(dataset="pool_test_digits")] * 3 + [BASE, BASE], None) == [3]
    finally:
        fl.DATASETS._entries.pop("pool_test_digits")


def test_processes_are_checked():
    assert pool.sweep_processes(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="processes: must be a whole number >= 1"):
            pool.sweep_processes(bad)
    os.environ[pool.PROCESSES_VARIABLE] = "none"
    try:
        with pytest.raises(ValueError, match="FEDLAB_SWEEP_PROCESSES: must be a whole number of processes >= 1"):
            pool.sweep_processes()
        os.environ[pool.PROCESSES_VARIABLE] = "1"
        assert pool.sweep_processes() == 1
    finally:
        del os.environ[pool.PROCESSES_VARIABLE]


def test_config_errors_and_setting_warnings_survive_the_trip_between_processes():
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("batch_size", "must be below 5")))
    assert (type(err), err.field, str(err)) == (ConfigError, "batch_size", "batch_size: must be below 5")
    warning = pickle.loads(pickle.dumps(SettingWarning("quantization_bits", "2 bits round to zero")))
    assert (warning.field, str(warning)) == ("quantization_bits", "quantization_bits: 2 bits round to zero")


@pytest.mark.slow
def test_an_error_in_a_worker_process_is_raised_here_and_its_warnings_too(tmp_path):
    vanishing = BASE.replace(secure_aggregation=True, quantization_bits=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool.run_all([vanishing, vanishing.replace(seed=1)], results_cache=tmp_path, processes=2, progress=False)
    setting = [w for w in caught if issubclass(w.category, SettingWarning)]
    assert len(setting) == 2 and all(str(w.message).startswith("quantization_bits: 2 bits") for w in setting)

    too_big = BASE.replace(dp=RECORD_LEVEL, noise_multiplier=1.0, clip_norm=1.0, batch_size=500)
    with pytest.raises(ConfigError, match="^batch_size: must be below the smallest client's") as raised:
        pool.run_all([too_big, too_big.replace(seed=1)], results_cache=tmp_path, processes=2, progress=False)
    assert raised.value.field == "batch_size"


@pytest.mark.slow
def test_a_sweep_whose_runs_make_no_progress_stops_and_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "1")  # a worker process takes longer than that to import TFF
    configs = [BASE.replace(seed=s) for s in range(3)]
    with pytest.raises(pool.SweepStalled, match=r"^no run of the sweep finished a round within 1 s "
                                                r"\(FEDLAB_WAIT_LIMIT_S\); going: .*; stopped the worker processes$"):
        with pool.spread(configs, tmp_path, processes=2):
            pass
    assert pool._EXECUTOR is None
    assert not multiprocessing.active_children()  # its worker processes were stopped, not left running
