"""Clients read their arrays from files written once (fedlab.core.array_files): the numbers of clients sent their arrays
every round, files that go with their arrays, and processes for remote workers still sent the arrays."""

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

import fedlab as fl
from fedlab.core import array_files
from fedlab.experiment import processes
from fedlab.core.array_files import ArrayFiles, building_for_remote_workers


def _history(config):
    processes.clear_process_cache()  # a process is built for one way of sending arrays
    try:
        return fl.run_experiment(config, progress=False)
    finally:
        processes.clear_process_cache()


@pytest.mark.parametrize("changes", [
    dict(),
    dict(algorithm="scaffold", local_steps=3),
    dict(algorithm="qffl", q=1.0),
    dict(algorithm="ditto", eval_per_client=True),
    dict(finetune_epochs=1, eval_per_client=True),
    dict(attacker_fraction=0.25, attack="sign_flip"),
    dict(secure_aggregation=True, secure_protocol="secagg", quantization_bits=12, clip_norm=1.0),
    dict(dp="example", noise_multiplier=1.0, clip_norm=1.0, batch_size=8),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "fedavg")
def test_clients_reading_files_give_the_numbers_of_clients_sent_their_arrays(changes):
    config = fl.ExperimentConfig(**{"dataset": "digits", "num_clients": 8, "clients_per_round": 4, "rounds": 3,
                                    "eval_every": 1, **changes})
    assert array_files.enabled()
    with_files = _history(config)
    with building_for_remote_workers():
        sent = _history(config)
    numbers = [c for c in sent.columns if sent[c].dtype.kind == "f" and "seconds" not in c]
    assert {"train_loss", "eval_accuracy"} <= set(numbers)
    for column in numbers:
        np.testing.assert_array_equal(with_files[column].to_numpy(), sent[column].to_numpy(), err_msg=column)


def test_a_process_reads_files_here_and_takes_arrays_for_remote_workers():
    from fedlab.rounds.array_training import client_training, reads_files
    from fedlab.experiment.clients import dataset_for, spec_for
    from fedlab.core.runtime import tff

    config = fl.ExperimentConfig(dataset="digits", num_clients=4, clients_per_round=4)
    model = spec_for(config, dataset_for(config)).functional_model()
    optimizer = tff().learning.optimizers.build_sgdm(1.0)
    assert reads_files(client_training(model, client_lr=0.1, server_optimizer=optimizer).data_type)
    with building_for_remote_workers():
        assert not reads_files(client_training(model, client_lr=0.1, server_optimizer=optimizer).data_type)
    remote = config.replace(workers=("127.0.0.1:1",))
    spec = spec_for(config, dataset_for(config))
    assert processes.process_key(config, spec) != processes.process_key(remote, spec)


def test_a_file_holds_the_arrays_bytes_and_goes_when_the_array_does(tmp_path):
    import tensorflow as tf

    files = ArrayFiles(tmp_path)
    x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    path = files.path(x)
    assert files.path(x) == path and len(files) == 1  # written once per array object
    read = array_files.read(tf.constant(path), tf.float32, [None, 3]).numpy()
    assert read.tobytes() == x.tobytes()
    y = x.copy()  # equal values, another array: its own file
    assert files.path(y) != path
    del x
    gc.collect()
    assert not os.path.exists(path) and len(files) == 1
    directory = files.directory
    files.close()
    assert not directory.exists()


def test_directories_of_processes_that_were_killed_are_removed(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{array_files.PREFIX}{int(ended.stdout)}-abc"
    dead.mkdir()
    (dead / "1.pb").write_bytes(b"x")
    alive = tmp_path / f"{array_files.PREFIX}{os.getppid()}-def"  # a running process's: kept
    alive.mkdir()
    files = ArrayFiles(tmp_path)
    files.path(np.zeros(3))
    assert not dead.exists() and alive.exists()
    assert files.directory.name.startswith(f"{array_files.PREFIX}{os.getpid()}-")
    files.close()


def test_an_array_collected_while_a_path_is_being_recorded_does_not_deadlock(tmp_path):
    """The garbage collector can run a file's weakref callback on the thread that is inside ``path``."""
    import threading

    files = ArrayFiles(tmp_path)
    x = np.zeros(4)
    path = files.path(x)
    done = []

    def collect_inside_path():
        with files._lock:  # as inside ``path``, when an allocation there sets off the collector
            files._forget(id(x), path)
        done.append(True)

    worker = threading.Thread(target=collect_inside_path, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done, "the weakref callback waited for the lock its own thread holds"
    assert not os.path.exists(path)
    files.close()
