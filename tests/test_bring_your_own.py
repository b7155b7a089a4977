"""A user's data set, model, algorithm and partitioner, registered outside fedlab and used everywhere by name."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fedlab as fl

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "clinics.py"
sys.path.insert(0, str(PLUGIN.parent))
import clinics  # noqa: E402,F401  - registers the components
from conftest import interrupt_after

BASE = fl.ExperimentConfig(dataset="toy_clinics", partition="natural", num_clients=3, clients_per_round=3,
                           model="toy_linear", algorithm="scaled_fedavg", rounds=2, batch_size=10, seed=0)


def test_registered_components_are_valid_config_values():
    assert BASE.scale == 1.0 and BASE.algorithm_params == clinics.ScaledParams(scale=1.0)
    assert BASE.replace(scale=0.5).to_dict()["scale"] == 0.5
    with pytest.raises(fl.ConfigError) as info:
        BASE.replace(scale=3.0)
    assert info.value.field == "scale" and "(0, 2]" in str(info.value)
    with pytest.raises(fl.ConfigError, match="scale"):
        BASE.replace(scale=float("nan"))
    with pytest.raises(fl.ConfigError, match="nor a parameter of algorithm 'scaled_fedavg'"):
        BASE.replace(mu=0.1)
    assert "scaled_fedavg" in fl.ALGORITHMS and "toy_clinics" in fl.DATASETS
    assert BASE.replace(algorithm="fedprox").mu == 0.01  # switching algorithm takes the new one's defaults


def test_builtin_names_cannot_be_taken_but_user_names_can_be_redefined():
    with pytest.raises(ValueError, match="built into fedlab"):
        fl.register_model("logreg")(clinics.toy_linear)
    fl.register_model("toy_linear")(clinics.toy_linear)  # a notebook cell run twice
    with pytest.raises(ValueError, match="shadow a config field"):
        @dataclasses.dataclass(frozen=True)
        class Clash(fl.AlgorithmParams):
            rounds: int = fl.hparam(3)

        fl.register_algorithm("clash", params=Clash)(clinics.scaled_fedavg)


def test_a_model_is_converted_once_per_spec_and_seed_and_anew_when_registered_again():
    def cell():  # a notebook cell that registers the model: each run of it defines a new builder
        @fl.register_model("toy_again")
        def toy_again(shape, seed):
            return clinics.toy_linear(shape, seed)

    cell()
    spec = fl.ModelSpec("toy_again", 4, 3)
    first = spec.functional_model(0)
    assert spec.functional_model(0) is first and fl.ModelSpec("toy_again", 4, 3).functional_model(0) is first
    assert spec.functional_model(1) is not first and fl.ModelSpec("toy_again", 5, 3).functional_model(0) is not first
    cell()  # run again: the processes built from now on take a model converted from the new builder
    assert spec.functional_model(0) is not first


def test_user_algorithm_by_hand_and_in_a_sweep(tmp_path):
    """scale=0.5 moves the model half as far as scale=1 after one round from a zero start (same client updates)."""
    one = BASE.replace(rounds=1, batch_size=0, local_epochs=1)
    full = fl.run_experiment(one, progress=False)
    half = fl.run_experiment(one.replace(scale=0.5), progress=False)
    for a, b in zip(fl.final_weights(full), fl.final_weights(half)):
        np.testing.assert_allclose(b, 0.5 * a, rtol=1e-6, atol=1e-7)
    sweep = fl.run_sweep(fl.grid(BASE, scale=[0.5, 1.0], seed=[0, 1]), results_cache=tmp_path, progress=False)
    assert sorted(sweep["scale"].unique()) == [0.5, 1.0] and len(sweep) == 8
    again = fl.run_experiment(BASE.replace(scale=0.5), results_cache=tmp_path, progress=False)
    assert again.attrs["from_cache"]


def test_user_components_checkpoint_and_resume(tmp_path):
    full = fl.run_experiment(BASE.replace(rounds=3), progress=False)

    interrupt_after(fl.run_experiment, BASE.replace(rounds=3), 2, tmp_path)
    resumed = fl.run_experiment(BASE.replace(rounds=3), checkpoint_dir=tmp_path, progress=False)
    cols = ["round", "train_loss", "eval_loss", "eval_accuracy"]
    pd.testing.assert_frame_equal(resumed[cols], full[cols])


def test_user_partitioner_and_widget_dropdowns():
    config = fl.ExperimentConfig(dataset="digits", partition="round_robin", num_clients=4, clients_per_round=2)
    parts = fl.partition_for(config)
    assert sum(len(p) for p in parts) == len(fl.dataset_for(config).y_train)
    assert all(np.all(p % 4 == c) for c, p in enumerate(parts))
    panel = fl.ExperimentPanel(BASE, ["algorithm", "scale", "dataset"])
    assert "scaled_fedavg" in panel.controls["algorithm"].options
    assert "toy_clinics" in panel.controls["dataset"].options
    panel.controls["scale"].value = 0.5
    assert panel.config().scale == 0.5
    panel.controls["algorithm"].value = "fedavg"  # scale means nothing to fedavg: left out, not an error
    assert panel.config().algorithm == "fedavg"


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fedlab", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_command_line_takes_a_plugin(tmp_path):
    listed = _cli("list", "--plugin", str(PLUGIN))
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"algorithm\s+scaled_fedavg .*scale=1.0.*a test algorithm \(yours\)", listed.stdout)
    assert re.search(r"algorithm\s+fedprox .*Li et al. 2020", listed.stdout)
    helped = _cli("run", "--plugin", str(PLUGIN), "--help")
    assert "--scale SCALE" in helped.stdout and "scaled_fedavg" in helped.stdout
    bad = _cli("run", "--plugin", str(PLUGIN), "--algorithm", "scaled_fedavg", "--scale", "9", "--out",
               str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "fedlab run: error: --scale: must be in (0, 2], got 9"]
    missing = _cli("run", "--plugin", "no_such_module_here", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "--plugin" in missing.stderr
    ran = _cli("run", "--plugin", str(PLUGIN), "--dataset", "toy_clinics", "--partition", "natural", "--num-clients",
               "3", "--clients-per-round", "3", "--model", "toy_linear", "--algorithm", "scaled_fedavg", "--scale",
               "0.5", "--rounds", "2", "--quiet", "--out", str(tmp_path / "run"))
    assert ran.returncode == 0, ran.stderr
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["round"]) == [1, 2] and (history["scale"] == 0.5).all()


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Bring your own\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds exactly one python block"
    return blocks[0]


def test_readme_bring_your_own_runs_as_it_stands(tmp_path):
    code = readme_example()
    assert 25 <= len([line for line in code.splitlines() if line.strip()]) <= 40
    script = tmp_path / "byo.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    accuracy = float(re.search(r"final accuracy: ([0-9.]+)", result.stdout).group(1))
    assert 0.6 < accuracy <= 1.0
