import json
import subprocess
import sys

import pandas as pd
import pytest

RUN = [sys.executable, "-m", "fedlab", "run"]


def cli(args, tmp_path, timeout=300):
    # Output goes to files: a pipe would also show whether a TFF worker outlived the CLI.
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        code = subprocess.run(args, stdout=o, stderr=e, timeout=timeout).returncode
    return code, out.read_text(), err.read_text()


@pytest.mark.parametrize("args, option", [
    (["--alpha", "-1"], "--alpha"),
    (["--clients-per-round", "50", "--num-clients", "20"], "--clients-per-round"),
    (["--dataset", "cifar"], "--dataset"),
    (["--rounds", "many"], "--rounds"),
])
def test_bad_input_is_one_line_naming_the_option(args, option, tmp_path):
    code, out, err = cli(RUN + args + ["--out", str(tmp_path / "o")], tmp_path, timeout=60)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in err, err


def test_cli_run_gives_the_api_numbers(tmp_path):
    args = ["--dataset", "digits", "--partition", "dirichlet", "--alpha", "0.5", "--num-clients", "20",
            "--clients-per-round", "5", "--rounds", "3", "--algorithm", "fedavg", "--seed", "0", "--quiet"]
    code, out, err = cli(RUN + args + ["--out", str(tmp_path / "a")], tmp_path)
    assert code == 0, err
    assert "eval_accuracy=" in out
    history = pd.read_csv(tmp_path / "a" / "history.csv", float_precision="round_trip")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["alpha"] == 0.5 and config["clients_per_round"] == 5
    assert list(history["round"]) == [1, 2, 3]
    from fedlab import ExperimentConfig, run_experiment

    api = run_experiment(ExperimentConfig.from_dict(config), progress=False)
    numbers = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "cumulative_bytes"]
    pd.testing.assert_frame_equal(history[numbers], api[numbers])


def test_pipe_is_released_when_cli_exits(tmp_path):
    """TFF's worker binary inherits stdout; fedlab stops it so a captured run returns."""
    args = RUN + ["--rounds", "1", "--quiet", "--out", str(tmp_path / "p")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
