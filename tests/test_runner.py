"""The runner: determinism, resume, caches, per-client evaluation (runs real TFF rounds)."""

import os

import numpy as np
import pandas as pd
import pytest

from fedlab import ExperimentConfig, clients_table, run_experiment
from fedlab.experiment import processes
from fedlab.experiment.clients import spec_for
from fedlab.experiment.evaluation import evaluator_for, worst_fraction_mean
from fedlab.experiment.sampling import sample_clients
from fedlab.core.storage import CheckpointMismatchError
from conftest import interrupt_after

BASE = ExperimentConfig(dataset="digits", partition="dirichlet", alpha=0.5, num_clients=20, clients_per_round=5,
                        rounds=3, model="logreg", algorithm="fedavg", seed=0)
NUMBERS = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy"]


def numbers(history: pd.DataFrame) -> pd.DataFrame:
    return history[NUMBERS].reset_index(drop=True)


def test_same_config_same_numbers_other_seed_other_numbers():
    a = run_experiment(BASE, progress=False)
    b = run_experiment(BASE, progress=False)
    pd.testing.assert_frame_equal(numbers(a), numbers(b))
    c = run_experiment(BASE.replace(sampling_seed=1), progress=False)
    assert not np.allclose(a["train_loss"], c["train_loss"])
    assert list(a["round"]) == [1, 2, 3]
    assert a["eval_accuracy"].between(0, 1).all()
    assert (a.loc[0, "dataset"], a.loc[0, "alpha"], a.loc[0, "num_clients"]) == ("digits", 0.5, 20)


def test_after_every_round_beats_once_a_round_without_building_a_history_each_round(monkeypatch):
    from fedlab.experiment import runner

    beats, built = [], []
    real = runner.make_history
    monkeypatch.setattr(runner, "make_history", lambda *a, **k: (built.append(len(a[1])), real(*a, **k))[1])
    with runner.after_every_round(lambda: beats.append(len(built))):
        run_experiment(BASE, progress=False)
    assert beats == [0] * BASE.rounds and built == [BASE.rounds]  # a beat a round; the history once, at the end
    run_experiment(BASE.replace(seed=1), progress=False)
    assert len(beats) == BASE.rounds  # outside the block: no beat


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = run_experiment(BASE, progress=False)

    interrupt_after(run_experiment, BASE, 2, tmp_path)
    seen = []
    resumed = run_experiment(BASE, checkpoint_dir=tmp_path, progress=False,
                             callback=lambda row, history: seen.append(row["round"]))
    assert seen == [3]  # rounds 1 and 2 came from the checkpoint
    pd.testing.assert_frame_equal(numbers(resumed), numbers(full))


def test_checkpoint_of_another_config_is_refused(tmp_path):
    run_experiment(BASE.replace(rounds=1), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointMismatchError, match="rounds"):
        run_experiment(BASE.replace(rounds=2), checkpoint_dir=tmp_path, progress=False)


def test_process_is_built_once_for_data_side_changes():
    run_experiment(BASE.replace(rounds=1), progress=False)
    before = processes.process_cache_size()
    for changes in ({"num_clients": 10}, {"local_epochs": 2}, {"batch_size": 0}, {"partition": "iid"},
                    {"seed": 3}, {"clients_per_round": 2}):
        run_experiment(BASE.replace(rounds=1, **changes), progress=False)
    assert processes.process_cache_size() == before
    slow = run_experiment(BASE.replace(rounds=1, client_lr=0.05, server_lr=0.5), progress=False)
    assert processes.process_cache_size() == before  # compiled-loop processes take learning rates from their state
    fast = run_experiment(BASE.replace(rounds=1, client_lr=0.5), progress=False)
    assert slow["train_loss"].iloc[0] != fast["train_loss"].iloc[0]  # and the rates do reach the clients
    run_experiment(BASE.replace(rounds=1, robust="clip"), progress=False)
    assert processes.process_cache_size() == before + 1


def test_a_run_on_a_newly_built_process_evaluates_with_the_evaluator_an_earlier_run_made():
    # building a process turns Keras' layer classes to their graph (v1) form, in which the runner's cached evaluator
    # model fails; the run's fresh, eager build of its initial weights turns them back (processes.initial_weights)
    first = run_experiment(BASE.replace(rounds=1), progress=False)  # the evaluator of this spec exists from here
    spec = spec_for(BASE)
    evaluator, built = evaluator_for(spec, spec.builder), processes.process_cache_size()
    again = run_experiment(BASE.replace(rounds=1, algorithm="fedprox", mu=0.0123), progress=False)  # a new process
    assert processes.process_cache_size() == built + 1 and evaluator_for(spec, spec.builder) is evaluator
    assert np.isfinite([first.eval_loss.iloc[-1], again.eval_loss.iloc[-1]]).all()
    # the kept evaluator's forward pass is traced (evaluation.Evaluator): a batch length it has not seen yet traces it
    # again (unless an earlier test left it traced with the length unknown), here after the new build; the model
    # called eagerly too; both work and agree
    x = np.random.default_rng(0).random((7, spec.num_features), dtype=np.float32)
    np.testing.assert_allclose(evaluator.logits(x), evaluator.model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_results_cache_returns_the_same_history(tmp_path):
    first = run_experiment(BASE.replace(eval_per_client=True), results_cache=tmp_path, progress=False)
    again = run_experiment(BASE.replace(eval_per_client=True), results_cache=tmp_path, progress=False)
    assert not first.attrs["from_cache"] and again.attrs["from_cache"]
    pd.testing.assert_frame_equal(numbers(first), numbers(again))
    pd.testing.assert_frame_equal(clients_table(first), clients_table(again), check_dtype=False)


def test_per_client_evaluation():
    history = run_experiment(BASE.replace(eval_per_client=True, eval_every=2), progress=False)
    table = clients_table(history)
    assert sorted(table["round"].unique()) == [2, 3]  # every 2 rounds and the last
    assert len(table) == 2 * 20
    last = history.iloc[-1]
    accs = table[table["round"] == 3]["accuracy"]
    assert last["client_accuracy_mean"] == pytest.approx(accs.mean())
    assert last["client_accuracy_worst10"] <= last["client_accuracy_mean"]
    assert np.isnan(history.loc[0, "eval_accuracy"])  # round 1 not evaluated


def test_sample_clients_is_a_function_of_seed_and_round():
    a = sample_clients(BASE, 4)
    assert len(set(a)) == 5 and list(a) == sorted(a)
    assert np.array_equal(a, sample_clients(BASE.replace(rounds=99, alpha=3.0), 4))
    assert not np.array_equal(a, sample_clients(BASE, 5))


def test_worst_fraction_by_hand():
    assert worst_fraction_mean([0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.4, 0.6, 1.0], 0.2) == pytest.approx(0.15)
    assert worst_fraction_mean([0.5, 0.9], 0.1) == 0.5  # at least one client


@pytest.mark.parametrize("changes", [
    {"algorithm": "fedsgd", "client_lr": 0.5},
    {"algorithm": "fedprox", "mu": 0.1},
    {"algorithm": "fedavgm"},
    {"algorithm": "fedadam", "server_lr": 0.1},
    {"algorithm": "fedyogi", "server_lr": 0.1},
    {"algorithm": "fedadagrad"},
    {"model": "2nn", "partition": "shards"},
    {"model": "cnn", "partition": "quantity"},
    {"dataset": "heart_disease", "partition": "natural", "num_clients": 4, "clients_per_round": 4,
     "batch_size": 4},
    {"dataset": "breast_cancer", "partition": "iid"},
])
def test_every_algorithm_model_and_dataset_learns(changes, heart_dir):
    # Held-out loss, not train loss: each round trains on other clients, so train loss is noisy.
    history = run_experiment(BASE.replace(rounds=4, **changes), progress=False)
    assert np.isfinite(history["train_loss"]).all()
    first, last = history["eval_loss"].iloc[0], history["eval_loss"].iloc[-1]
    assert last < first, f"held-out loss did not fall: {first} -> {last}"


@pytest.mark.parametrize("changes", [
    dict(),
    dict(local_epochs=3, batch_size=7),
    dict(local_steps=5, batch_size=4),
    dict(algorithm="fedsgd", batch_size=0),
    dict(feature_noise=0.5, attacker_fraction=0.4, attack_boost=3),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_datasets_built_in_the_runtime_equal_datasets_built_in_python(changes):
    """The runner sends client arrays and TFF builds the datasets (fast); the result is the Python-built one's."""
    from fedlab.rounds.attacks import attacker_clients, poison_labels
    from fedlab.experiment.clients import client_dataset, client_inputs, dataset_for, partition_for, spec_for
    from fedlab.data.partition import add_feature_noise
    from fedlab.experiment.processes import trainer_on_arrays

    config = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=6, **changes)
    data = dataset_for(config)
    parts = partition_for(config, data)
    spec = spec_for(config, data)
    xs = add_feature_noise([data.x_train[p] for p in parts], config.feature_noise, seed=0)
    ys = [spec.prepare_labels(data.y_train[p]) for p in parts]
    for c in attacker_clients(config):
        ys[c] = spec.prepare_labels(poison_labels(data.y_train[parts[c]], data.num_classes))
    process = processes.build_process(config, spec, on_arrays=False)  # TFF's stock client work, on datasets
    state = process.initialize()
    in_python = process.next(state, [client_dataset(xs[c], ys[c], config, 2, c) for c in range(6)])
    in_runtime = trainer_on_arrays(process, xs[0], ys[0]).next(state, [client_inputs(xs[c], ys[c], config, 2, c)
                                                                       for c in range(6)])
    assert in_python.metrics["client_work"]["train"] == in_runtime.metrics["client_work"]["train"]
    for a, b in zip(process.get_model_weights(in_python.state).trainable,
                    process.get_model_weights(in_runtime.state).trainable):
        np.testing.assert_array_equal(a, b)


WORKER_THREADS = """
import fedlab as fl
from fedlab.core.runtime import _children
fl.run_experiment(fl.ExperimentConfig(dataset="digits", rounds=1), progress=False)
worker = next(pid for pid, cmd in _children() if cmd.endswith("worker_binary"))
environ = open(f"/proc/{worker}/environ", "rb").read().split(b"\\0")
print([item.decode() for item in environ if item.startswith(b"TF_NUM_INTRAOP_THREADS=")])
"""


def test_tffs_worker_runs_on_one_intra_op_thread_unless_fedlabs_variable_says_otherwise():
    import subprocess
    import sys

    from fedlab.core.runtime import worker_environment

    assert worker_environment({"PATH": "/bin"}) == {"PATH": "/bin", "TF_NUM_INTRAOP_THREADS": "1",
                                                    "TF_ENABLE_ONEDNN_OPTS": "1"}  # the defaults
    assert worker_environment({"TF_NUM_INTRAOP_THREADS": "3"})["TF_NUM_INTRAOP_THREADS"] == "3"  # the user's own
    assert worker_environment({"FEDLAB_WORKER_INTRAOP_THREADS": "0"})["TF_NUM_INTRAOP_THREADS"] == "0"  # TF's default
    assert worker_environment({"FEDLAB_WORKER_INTRAOP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "0"})[
        "TF_NUM_INTRAOP_THREADS"] == "1"
    for bad in ("-1", "two", "nan", "1.5", "\u00b2", "\u0663", "9" * 5000):
        with pytest.raises(ValueError, match="^FEDLAB_WORKER_INTRAOP_THREADS: must be a whole number"):
            worker_environment({"FEDLAB_WORKER_INTRAOP_THREADS": bad})
    for bad in ("two", "nan", "1.5", "\u00b2", "\u0663", "9" * 5000):
        with pytest.raises(ValueError, match="^TF_NUM_INTRAOP_THREADS: must be a whole number.*or set FEDLAB_"):
            worker_environment({"TF_NUM_INTRAOP_THREADS": bad})  # the caller's own, passed on: checked too
        assert worker_environment({"FEDLAB_WORKER_INTRAOP_THREADS": "2", "TF_NUM_INTRAOP_THREADS": bad})[
            "TF_NUM_INTRAOP_THREADS"] == "2"  # replaced for the worker: not its business
    for value, passed in ((" 01", "1"), ("+4", "4"), ("-1", "0"), ("0", "0")):  # as TensorFlow reads them
        assert worker_environment({"TF_NUM_INTRAOP_THREADS": value})["TF_NUM_INTRAOP_THREADS"] == passed, value
    assert worker_environment({"FEDLAB_WORKER_INTRAOP_THREADS": "00"})["TF_NUM_INTRAOP_THREADS"] == "0"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_NUM_INTRAOP_THREADS", "FEDLAB_WORKER_INTRAOP_THREADS")}
    out = subprocess.run([sys.executable, "-c", WORKER_THREADS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['TF_NUM_INTRAOP_THREADS=1']"


def test_the_cache_key_names_a_worker_thread_count_other_than_the_default(monkeypatch):
    from fedlab.core.storage import cache_key, code_version

    config = ExperimentConfig(dataset="digits", rounds=1)
    for name in ("FEDLAB_WORKER_INTRAOP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    default = cache_key(config)
    assert default == f"{config.fingerprint()}-{code_version()}"  # the default's keys as they were
    monkeypatch.setenv("FEDLAB_WORKER_INTRAOP_THREADS", "1")
    assert cache_key(config) == default
    monkeypatch.setenv("FEDLAB_WORKER_INTRAOP_THREADS", "01")  # the same count written otherwise: the same key
    assert cache_key(config) == default
    keys = set()
    for threads in ("0", "2"):  # TensorFlow's pool, two threads: another order of a split product's sums
        monkeypatch.setenv("FEDLAB_WORKER_INTRAOP_THREADS", threads)
        keys.add(cache_key(config))
    assert default not in keys and len(keys) == 2


def test_the_cache_key_names_onednn_turned_off(monkeypatch):
    from fedlab.core.storage import cache_key

    config = ExperimentConfig(dataset="digits", rounds=1)
    for name in ("FEDLAB_WORKER_INTRAOP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_ENABLE_ONEDNN_OPTS"):
        monkeypatch.delenv(name, raising=False)
    default = cache_key(config)
    for on in ("1", "true", "TRUE"):  # fedlab's default written out: the same key
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", on)
        assert cache_key(config) == default
    off = set()
    for value in ("0", "false"):  # Eigen's kernels: another order of a product's sums
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", value)
        off.add(cache_key(config))
    assert len(off) == 1 and default not in off
