"""Per-round metrics as TensorBoard events: the history's numbers, one step per round, never written twice."""

import threading

import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.experiment.runner import RunStopped
from fedlab.experiment.runner import component_digests
from fedlab.core.storage import cache_key
from fedlab.experiment.tensorboard import read_scalars, run_folder

CONFIG = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=3, rounds=3, batch_size=16)


def test_events_hold_the_history_once_per_round_across_cache_and_resume(tmp_path):
    board, cache, checkpoint = tmp_path / "tb", tmp_path / "cache", tmp_path / "ckpt"
    stop = threading.Event()

    def stop_after_first(row, history):
        stop.set()

    with pytest.raises(RunStopped):  # interrupted after round 1, then resumed from its checkpoint
        run_experiment(CONFIG, tensorboard_dir=board, checkpoint_dir=checkpoint, progress=False,
                       callback=stop_after_first, stop=stop)
    history = run_experiment(CONFIG, tensorboard_dir=board, checkpoint_dir=checkpoint, results_cache=cache,
                             progress=False)
    run_experiment(CONFIG, tensorboard_dir=board, results_cache=cache, progress=False)  # read back: nothing new

    folder = run_folder(board, CONFIG, cache_key(CONFIG, component_digests(CONFIG)))
    assert (folder / "config.json").read_text().strip() == CONFIG.to_json()
    scalars = read_scalars(folder)
    for tag in ("train_loss", "eval_accuracy"):
        steps = [step for step, _ in scalars[tag]]
        assert steps == [1, 2, 3], f"{tag}: steps {steps}"
        assert [value for _, value in scalars[tag]] == pytest.approx(history[tag].tolist(), rel=1e-6)


def test_runs_of_other_code_or_thread_counts_get_folders_of_their_own(tmp_path):
    # the whole result-cache key names the folder: a run whose key differs only after the config's fingerprint
    # (fedlab's code version, a worker thread count) must not find the other's marker and skip its rounds
    key = cache_key(CONFIG)
    fingerprint, version = key.split("-")[:2]
    other_code = f"{fingerprint}-{'0' * len(version)}"
    other_threads = f"{key}-0123abcd"
    folders = {run_folder(tmp_path, CONFIG, k) for k in (key, other_code, other_threads)}
    assert len(folders) == 3, folders
    assert all(f.parent == tmp_path and f.name.startswith(f"{CONFIG.algorithm}-") for f in folders)
