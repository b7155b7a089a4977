"""Library warnings in notebook outputs: the notebook test's filter (``noise_in``) catches them wherever Python
attributes them, lets fedlab's own through; and the two that reached notebooks 02, 05 and 07 are gone at their
cause (run as errors here)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from test_notebooks import FEDLAB_WARNINGS, noise_in

PANDAS_CONCAT = ("/work/main/fedlab/experiment/sweeps.py:59: FutureWarning: The behavior of DataFrame concatenation with empty "
                 "or all-NA entries is deprecated. In a future version, this will no longer exclude empty or all-NA "
                 "columns when determining the result dtypes.")
MATPLOTLIB_LAYOUT = ("/work/soak-clone/fedlab/notebook/widgets.py:446: UserWarning: constrained_layout not applied because axes "
                     "sizes collapsed to zero.  Try making figure larger or Axes decorations smaller.")


@pytest.mark.parametrize("line", [
    PANDAS_CONCAT,  # a library's warning that Python attributes to fedlab's file
    MATPLOTLIB_LAYOUT,
    "/work/main/.venv/lib/python3.11/site-packages/keras/src/engine/training.py:3000: UserWarning: You are saving "
    "your model as an HDF5 file",
    "/tmp/ipykernel_812/2203.py:8: FutureWarning: The default of observed=False is deprecated",  # from a cell
    "/work/main/fedlab/reporting/plots.py:140: RuntimeWarning: invalid value encountered in divide",
    "SettingWithCopyWarning: A value is trying to be set on a copy of a slice from a DataFrame",  # no file:line
    "2026-12-02 18:32:48.404565: I tensorflow/core/util/port.cc:111] oneDNN custom operations are on.",
    "WARNING:absl:Compiled the loaded model, but the compiled metrics have yet to be built.",
])
def test_library_lines_are_noise_wherever_python_attributes_them(line):
    text = f"round 3: accuracy 0.91\n{line}\n  frames.append(history)\nfinished\n"
    found = noise_in(text)
    assert len(found) == 1 and line.startswith(found[0]), found


@pytest.mark.parametrize("line", [
    "/work/main/fedlab/core/storage.py:204: DamagedFileWarning: results cache: entry 3f2a is damaged (truncated); "
    "moved to 3f2a.damaged-1, computing the run again",
    "/work/main/fedlab/rounds/split_rounds.py:120: FedlabWarning: fedlab: secure aggregation stopped at round 3: 1 of 4 "
    "clients left, the threshold is 3; the round's update is lost, the model is unchanged",
    "/work/main/fedlab/experiment/runner.py:88: SettingWarning: quantization_bits: 1 bit cannot encode an update",
    "fedlab worker: warning: anyone who reaches this port can run TensorFlow graphs here",
    "saved results/02_alpha_sweep.csv (fedlab 1.0)",
])
def test_fedlabs_own_warnings_and_results_are_not_noise(line):
    assert noise_in(f"{line}\n") == []


def test_the_filter_knows_every_fedlab_warning_category():
    from fedlab.core.storage import DamagedFileWarning
    from fedlab.core.validation import FedlabWarning, SettingWarning

    assert {FedlabWarning.__name__, SettingWarning.__name__, DamagedFileWarning.__name__} <= FEDLAB_WARNINGS
    assert not {"UserWarning", "FutureWarning", "DeprecationWarning", "RuntimeWarning"} & FEDLAB_WARNINGS


def test_a_sweep_stacks_none_and_float_fields_as_pandas_did_without_its_future_warning():
    """FedAvg's history has server_lr None (an all-None object column), FedAvgM's a float: pandas 2.2's concat picks
    float and warns that a later pandas will pick object (notebooks 02 and 07, through run_sweep)."""
    from fedlab.experiment.sweeps import stack_histories

    fedavg = pd.DataFrame({"round": [1, 2], "eval_loss": [0.9, 0.5], "server_lr": [None, None],
                           "round_deadline": [None, None], "local_steps": [None, None], "algorithm": "fedavg"})
    fedavgm = pd.DataFrame({"round": [1, 2], "eval_loss": [0.8, 0.4], "server_lr": [0.1, 0.1],
                            "round_deadline": [None, None], "local_steps": [5, 5], "algorithm": "fedavgm"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FutureWarning, match="all-NA entries"):  # the cause, as pandas 2.2 reports it
            pd.concat([fedavg, fedavgm], ignore_index=True)
        stacked = stack_histories([fedavg, fedavgm])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pandas_22 = pd.concat([fedavg, fedavgm], ignore_index=True)
    pd.testing.assert_frame_equal(stacked, pandas_22)  # the same table, dtypes included
    assert stacked.server_lr.dtype == np.float64 and stacked.server_lr.isna().tolist() == [True, True, False, False]
    assert stacked.round_deadline.dtype == object and stacked.local_steps.tolist() == [None, None, 5, 5]


def test_a_panel_listing_every_control_keeps_its_constrained_layout():
    """Notebook 05's panel: the first run's legend label names all six controls; on one line it was wider than the
    figure and matplotlib warned "constrained_layout not applied"."""
    import fedlab as fl
    from fedlab.aggregators import aggregation

    base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=10, clients_per_round=2, rounds=2,
                               client_lr=0.05, batch_size=10, clip_norm=0.3)
    panel = fl.ExperimentPanel(base, ["quantization_bits", "secure_aggregation", "secure_protocol",
                                      "attacker_fraction", "attack", "robust"], info=aggregation.describe)
    history = pd.DataFrame({"round": [1, 2], "eval_accuracy": [0.3, 0.5]})
    config = base.replace(secure_aggregation=True, quantization_bits=16, secure_protocol="secagg")
    blank = panel.image.value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        panel._draw(history, config)
    assert panel.image.value != blank


def test_a_diverged_models_logits_give_a_nan_loss_without_a_numpy_warning():
    # notebook 05's full setting: a model under attack diverged and NumPy warned "invalid value encountered in
    # subtract" into the cell's output
    import warnings

    import numpy as np

    from fedlab.experiment.evaluation import evaluate_logits

    logits = np.array([[np.inf, 0.0, -np.inf], [1.0, 2.0, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, accuracy = evaluate_logits(logits, np.array([0, 1]), False)
        binary, _ = evaluate_logits(np.array([np.nan, 1.0]), np.array([1, 1]), True)
    assert np.isnan(loss) and accuracy == 1.0 and np.isnan(binary)
