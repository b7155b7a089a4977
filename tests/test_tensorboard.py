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
