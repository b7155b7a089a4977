"""The panel trains in a background thread, redraws every round, and reads repeats from the cache."""

from fedlab import ExperimentConfig, ExperimentPanel

BASE = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, rounds=3, seed=5)


def test_panel_trains_in_a_thread_then_reads_the_cache(tmp_path):
    panel = ExperimentPanel(BASE, ["clients_per_round", "local_epochs", "client_lr", "rounds"],
                            results_cache=tmp_path, side_plot="label_distribution")
    blank = panel.image.value
    panel.controls["local_epochs"].value = 2
    panel.run_button.click()
    history = panel.wait(timeout=300)
    assert panel.error is None and not panel.last_from_cache
    assert list(history["round"]) == [1, 2, 3] and history.loc[0, "local_epochs"] == 2
    assert panel.progress.value == 3 and panel.image.value != blank
    assert not panel.run_button.disabled and panel.stop_button.disabled  # ready for the next run
    panel.run_button.click()
    again = panel.wait(timeout=300)
    assert panel.last_from_cache and again["eval_accuracy"].tolist() == history["eval_accuracy"].tolist()
    assert "from the result cache" in panel.status.value


def test_panel_reports_bad_settings_without_running():
    panel = ExperimentPanel(BASE, ["clients_per_round"])
    panel.controls["clients_per_round"].value = 10
    panel.base = BASE.replace(num_clients=10)
    panel.controls["clients_per_round"].max = 50
    panel.controls["clients_per_round"].value = 50
    # shown once, beside the controls, and Run disabled until the setting is fixed
    assert "clients_per_round" in panel.info_line.value and "num_clients=10" in panel.info_line.value
    assert panel.run_button.disabled
    panel.run_button.click()
    assert not panel.running and panel.status.value == ""
    panel.controls["clients_per_round"].value = 4
    assert not panel.run_button.disabled and "clients_per_round" not in panel.info_line.value


def test_stop_ends_after_the_round_and_run_resumes_to_the_uninterrupted_history(tmp_path):
    import time

    from fedlab import run_experiment

    config = BASE.replace(rounds=6)
    panel = ExperimentPanel(config, ["local_epochs"], results_cache=tmp_path)
    panel.run_button.click()
    deadline = time.monotonic() + 300
    while panel.progress.value < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    panel.stop_button.click()
    panel.wait(timeout=300)
    assert panel.history is None and panel.status.value.startswith("stopped after round")
    stopped_at = int(panel.status.value.split()[3])
    assert 1 <= stopped_at < 6 and "checkpoint is kept" in panel.status.value
    assert not panel.run_button.disabled and panel.stop_button.disabled
    panel.run_button.click()  # resumes from the kept checkpoint
    resumed = panel.wait(timeout=300)
    assert list(resumed["round"]) == [1, 2, 3, 4, 5, 6]
    straight = run_experiment(config, progress=False)
    cols = ["train_loss", "eval_loss", "eval_accuracy"]
    assert resumed[cols].equals(straight[cols])
