"""Clients read their arrays from files written once (fedlab.core.array_files): the numbers of clients sent their arrays
every round, files that go with their arrays, and processes for remote workers still sent the arrays."""

import gc
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fedlab as fl
from fedlab.core import array_files, scratch
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


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """(memory, the temporary directory): stand-ins for /dev/shm, with room, and the system's temporary folder,
    with no variable choosing it."""
    import tempfile

    memory, fallback = tmp_path / "shm", tmp_path / "tmp"
    memory.mkdir()
    fallback.mkdir()
    monkeypatch.setattr(scratch, "MEMORY_FOLDER", str(memory))
    monkeypatch.setattr(array_files, "MEMORY_FREE_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    return memory, fallback


def test_the_files_go_to_memory_when_it_has_room_and_no_tmpdir_is_set(folders, tmp_path, monkeypatch):
    import shutil

    memory, fallback = folders
    assert array_files.default_root() == memory
    files = ArrayFiles()
    assert files.path(np.zeros(3)).startswith(str(memory))
    files.close()
    monkeypatch.setattr(array_files, "MEMORY_FREE_BYTES", shutil.disk_usage(memory).free + 1)  # too little room
    assert array_files.default_root() == fallback
    monkeypatch.setattr(array_files, "MEMORY_FREE_BYTES", 0)
    monkeypatch.setenv("TMPDIR", str(fallback))  # the caller's choice
    assert array_files.default_root() == fallback
    monkeypatch.setattr(scratch, "MEMORY_FOLDER", str(tmp_path / "absent"))
    monkeypatch.delenv("TMPDIR")
    assert array_files.default_root() == fallback


def test_memory_that_fills_up_sends_the_files_to_the_temporary_directory(folders, monkeypatch):
    import errno

    import tensorflow as tf

    memory, fallback = folders
    write = array_files._write_whole

    def full_memory(path, array):
        if path.startswith(str(memory)) and len(array) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, array)

    monkeypatch.setattr(array_files, "_write_whole", full_memory)
    files = ArrayFiles()
    small, large, later = np.zeros(3, np.float32), np.arange(5, dtype=np.float32), np.ones(2, np.float32)
    in_memory = files.path(small)
    assert in_memory.startswith(str(memory))
    moved = files.path(large)
    assert moved.startswith(str(fallback)) and files.path(later).startswith(str(fallback))  # and the ones after
    assert array_files.read(tf.constant(moved), tf.float32, [5]).numpy().tobytes() == large.tobytes()
    assert files.path(small) == in_memory and os.path.exists(in_memory)  # the files written before stay
    directories = [pathlib.Path(in_memory).parent, pathlib.Path(moved).parent]
    files.close()
    assert not any(d.exists() for d in directories)

    def full_everywhere(path, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(array_files, "_write_whole", full_everywhere)
    with pytest.raises(OSError):  # nowhere else to go: said, not looped
        ArrayFiles().path(np.zeros(3))


def test_a_file_cut_short_by_a_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    class Full:
        def __init__(self, path, mode):
            self.file = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(array_files, "open", Full, raising=False)
    with pytest.raises(OSError):
        array_files._write_whole(str(tmp_path / "1.pb"), np.zeros(100))
    assert list(tmp_path.iterdir()) == []


def test_memory_that_other_processes_filled_is_left_before_the_next_write(folders, monkeypatch):
    memory, fallback = folders
    files = ArrayFiles()
    first = files.path(np.zeros(3))
    assert first.startswith(str(memory))
    monkeypatch.setattr(array_files, "MEMORY_FREE_BYTES", 2**62)  # others have filled it since
    assert files.path(np.ones(3)).startswith(str(fallback))
    files.close()
    assert list(memory.iterdir()) == [] and list(fallback.iterdir()) == []


def test_a_directory_whose_owner_holds_its_lock_is_not_removed(tmp_path):
    import fcntl

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other = tmp_path / f"{array_files.PREFIX}{int(ended.stdout)}-ghi"  # a process id not running here, but its
    other.mkdir()                                                     # owner (in another PID namespace) holds the lock
    owner = os.open(other / array_files.LOCK, os.O_CREAT | os.O_RDWR)
    fcntl.flock(owner, fcntl.LOCK_EX)
    files = ArrayFiles(tmp_path)
    files.path(np.zeros(3))
    assert other.exists()
    os.close(owner)  # its owner is gone
    again = ArrayFiles(tmp_path)
    again.path(np.zeros(3))
    assert not other.exists()
    files.close()
    again.close()


def test_memory_too_full_for_a_directory_sends_the_files_to_the_temporary_directory(folders, monkeypatch):
    import errno
    import tempfile

    memory, fallback = folders
    make = tempfile.mkdtemp

    def full(prefix=None, dir=None):
        if str(dir) == str(memory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return make(prefix=prefix, dir=dir)

    monkeypatch.setattr(tempfile, "mkdtemp", full)
    files = ArrayFiles()
    assert files.path(np.zeros(3)).startswith(str(fallback))
    files.close()


FORKED = """
import os, pathlib, sys
import numpy as np
from fedlab.core import array_files
array_files._write_whole = lambda path, array: pathlib.Path(path).write_bytes(array.tobytes())  # no TensorFlow here
files = array_files.ArrayFiles(sys.argv[1])
x = np.zeros(3)
parents = files.path(x)
child = os.fork()
if child == 0:  # the child: a file of its own, then its exit handler's work
    ok = not files.path(x).startswith(str(pathlib.Path(parents).parent))
    files.close()
    os._exit(0 if ok else 1)
_, status = os.waitpid(child, 0)
print(os.waitstatus_to_exitcode(status), os.path.exists(parents))
files.close()
"""


def test_a_forked_child_writes_files_of_its_own_and_leaves_its_parents(tmp_path):
    """In a process of its own, without TensorFlow's threads: forking a process that has them is unsafe."""
    out = subprocess.run([sys.executable, "-c", FORKED, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "True"], out.stderr[-2000:]  # the child's close left the parent's files


def test_a_lock_file_that_is_a_pipe_does_not_stop_the_clean_up(tmp_path):
    import threading

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    odd = tmp_path / f"{array_files.PREFIX}{int(ended.stdout)}-jkl"  # another user's, say
    odd.mkdir()
    os.mkfifo(odd / array_files.LOCK)
    done = threading.Thread(target=array_files._remove_abandoned, args=(tmp_path,), daemon=True)
    done.start()
    done.join(timeout=30)
    assert not done.is_alive() and odd.exists()  # not waited on, not taken for a lock, left alone


def test_memory_counts_only_what_this_process_could_still_use(monkeypatch, folders):
    free = scratch.memory_free()
    assert 0 < free  # on this machine: MemAvailable, a control group's room, or infinity
    monkeypatch.setattr(scratch, "memory_free", lambda: 1024.0)  # a mount with room, memory without
    assert scratch.memory_folder(2048) is None and scratch.memory_folder(512) == str(folders[0])
