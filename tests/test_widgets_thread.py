"""A click handled outside the cell-running thread (as ipykernel 7 does) still trains."""

import threading

from fedlab import ExperimentConfig, ExperimentPanel


def test_click_from_another_thread_uses_the_panels_runtime(tmp_path):
    panel = ExperimentPanel(ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=2, rounds=2, seed=9),
                            ["rounds"], results_cache=tmp_path)
    clicker = threading.Thread(target=panel.run_button.click)  # a thread where TFF has no context installed
    clicker.start()
    clicker.join()
    history = panel.wait(timeout=300)
    assert panel.error is None and list(history["round"]) == [1, 2]
