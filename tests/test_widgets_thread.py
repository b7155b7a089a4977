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


def test_panel_runs_after_a_dp_run_when_stdout_has_no_fileno(tmp_path, monkeypatch):
    """In Jupyter, sys.stdout has no fileno; TFF restarts its worker (stopped after a run, here after every run, as
    once it holds FEDLAB_WORKER_MEMORY_MB) with Popen(stdout=sys.stdout)."""
    import io
    import sys

    from fedlab.core.runtime import _children

    base = ExperimentConfig(dataset="digits", num_clients=6, clients_per_round=2, rounds=2, seed=4, dp="fixed",
                            noise_multiplier=0.5, delta=1e-3)
    panel = ExperimentPanel(base, ["noise_multiplier"], results_cache=tmp_path)
    monkeypatch.setenv("FEDLAB_WORKER_MEMORY_MB", "0")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    for z in (0.5, 0.7):  # the first run stops the worker; the second must restart it from the thread
        panel.controls["noise_multiplier"].value = z
        panel.run_button.click()
        panel.wait(timeout=300)
        assert panel.error is None
        assert not [pid for pid, cmd in _children() if cmd.endswith("worker_binary")  # stopped: the next restarts it
                    and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")]
