"""Issue 31, item 5: bad input a user met, each refused (or warned about) in one clear line.

Tracebacks (PLD out of memory, a single config given to run_sweep, a folder
where a data file should be), silent acceptances (secure sums that round every
update to zero, zeroing at a tiny clip norm, accounting for more rounds than a
run takes), cryptic messages (negative numbers, dp-accounting's own errors,
malformed worker addresses) and noise (TF's log lines, two-line warnings, a
lost checkpoint round). Each test asserts the exact line.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import warnings

import pytest

import fedlab as fl
from fedlab.protection import accounting
from fedlab.__main__ import main
from fedlab.core.storage import DamagedFileWarning
from fedlab.core.validation import SettingWarning

pytestmark = pytest.mark.xdist_group("bad_input")

ROOT = pathlib.Path(__file__).resolve().parent.parent
PRIVACY = ["privacy", "--clients-per-round", "10", "--num-clients", "100", "--delta", "1e-5"]


def cli(argv) -> tuple[int, str]:
    """``python -m fedlab ARGV`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def one_line(argv) -> str:
    code, err = cli(argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, code, err)
    return err.strip()


def run_cli(args, tmp_path, env=None, timeout=300) -> tuple[int, str, str]:
    """``python -m fedlab ARGS`` in a subprocess (output to files, as tests/test_cli.py does)."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        code = subprocess.run([sys.executable, "-m", "fedlab", *args], stdout=o, stderr=e, timeout=timeout,
                              env=env, cwd=ROOT).returncode
    return code, out.read_text(), err.read_text()


# Tracebacks --------------------------------------------------------------------------------------------
def test_pld_with_a_tiny_noise_multiplier_is_refused_not_35_pib():
    """dp-accounting's PLD grid of one round has ~0.5/z^2 / 1e-4 points: 5e15 (35.5 PiB) at z = 1e-6."""
    assert one_line(PRIVACY + ["--noise-multiplier", "1e-6", "--rounds", "100", "--accountant", "pld"]) == (
        "fedlab privacy: error: --noise-multiplier: must be >= 0.0794 with accountant='pld' at sampling probability "
        "0.1 and 100 rounds: with less noise its privacy-loss grid is too large to compute (one round alone 5e+15 "
        "points, at most 4194304); use accountant='rdp', got 1e-06")


def test_pld_with_too_many_rounds_for_its_grid_is_refused():
    """Within fedlab run's rounds, at q = 1 and z = 1 a million rounds need a 7.5 GiB FFT array."""
    with pytest.raises(accounting.PrivacyParameterError) as info:
        accounting.epsilon(1.0, 1.0, 1_000_000, 1e-5, "pld")
    assert str(info.value) == (
        "rounds: must be <= 39169 with accountant='pld' at noise_multiplier=1 and sampling probability 1: more "
        "would make its privacy-loss grid exceed 33554432 points (here 5.02e+08); use accountant='rdp' or "
        "noise_multiplier >= 15.7, got 1000000")


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_privacy_takes_no_more_rounds_than_run(accountant):
    """--rounds 1e12: 150 TiB with PLD, epsilon=8.09857e+09 with RDP; fedlab run takes at most 1,000,000 rounds."""
    line = one_line(PRIVACY + ["--noise-multiplier", "1", "--rounds", "1000000000000", "--accountant", accountant])
    assert line == "fedlab privacy: error: --rounds: must be an integer >= 1 and <= 1000000, got 1000000000000"
    assert one_line(["run", "--rounds", "1000000000000", "--out", "x"]) == \
        "fedlab run: error: --rounds: must be an integer >= 1 and <= 1000000, got 1000000000000"


def test_run_with_pld_and_tiny_noise_is_refused_before_tensorflow_and_before_out(tmp_path):
    out = tmp_path / "out"
    probe = ("import sys; from fedlab.__main__ import main; code = main(sys.argv[1:]); "
             "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "run", "--dp", "fixed", "--noise-multiplier", "1e-6",
                             "--accountant", "pld", "--out", str(out)], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "fedlab run: error: --noise-multiplier: must be >= 0.0481 with accountant='pld' at sampling probability 0.5 "
        "and 10 rounds: with less noise its privacy-loss grid is too large to compute (one round alone 5e+15 "
        "points, at most 4194304); use accountant='rdp', got 1e-06")
    assert result.stdout.strip() == "tensorflow imported: False"
    assert not out.exists()
    with pytest.raises(fl.ConfigError, match=r"^noise_multiplier: must be >= 0\.0481 with accountant='pld'"):
        fl.ExperimentConfig(dp="fixed", noise_multiplier=1e-6, accountant="pld")


def test_record_level_pld_with_tiny_noise_is_refused_when_the_config_is_made():
    with pytest.raises(fl.ConfigError) as info:
        fl.ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=2,
                            dp="example", noise_multiplier=1e-3, accountant="pld")
    assert str(info.value) == (
        "noise_multiplier: must be >= 0.0481 with accountant='pld' and dp='example': with less noise one DP-SGD "
        "step's privacy-loss grid is too large to compute; use accountant='rdp', got 0.001")


def test_run_sweep_of_one_config_says_to_pass_a_list():
    with pytest.raises(TypeError) as info:
        fl.run_sweep(fl.ExperimentConfig())
    assert str(info.value) == ("configs: must be a list of ExperimentConfig, got one ExperimentConfig; pass [config], "
                               "or a list from fedlab.grid(config, ...)")
    with pytest.raises(TypeError, match=r"^configs: must be a list of ExperimentConfig \(e\.g\. from fedlab\.grid\), "
                                        r"got int$"):
        fl.run_sweep(3)


@pytest.fixture()
def heart_folder_with_a_folder(tmp_path, heart_dir, monkeypatch):
    folder = tmp_path / "heart"
    folder.mkdir()
    for site in ("hungarian", "switzerland", "va"):
        shutil.copy(heart_dir / f"processed.{site}.data", folder)
    (folder / "processed.cleveland.data").mkdir()
    monkeypatch.setenv("FEDLAB_HEART_DISEASE_DIR", str(folder))
    return folder


def test_heart_disease_file_that_is_a_folder_is_named_in_one_line(heart_folder_with_a_folder):
    folder = heart_folder_with_a_folder
    with pytest.raises(fl.DataUnavailableError) as info:
        fl.load_dataset("heart_disease")
    assert str(info.value) == (
        f"heart_disease: {folder}/processed.cleveland.data is a folder; it must be UCI's file "
        "processed.cleveland.data (FEDLAB_HEART_DISEASE_DIR names the folder that holds it)")


def test_heart_disease_file_that_is_a_folder_on_the_command_line(heart_folder_with_a_folder, tmp_path):
    folder = heart_folder_with_a_folder
    code, out, err = run_cli(["run", "--dataset", "heart_disease", "--partition", "natural", "--num-clients", "4",
                              "--clients-per-round", "2", "--rounds", "1", "--quiet", "--out", str(tmp_path / "o")],
                             tmp_path, env={**os.environ, "FEDLAB_HEART_DISEASE_DIR": str(folder)})
    assert code == 2
    assert err.strip() == (
        f"fedlab run: error: heart_disease: {folder}/processed.cleveland.data is a folder; it must be UCI's file "
        "processed.cleveland.data (FEDLAB_HEART_DISEASE_DIR names the folder that holds it)")


# Silent acceptances --------------------------------------------------------------------------------------
LOGREG_DIGITS = 650  # 64 features x 10 classes + 10 biases


def test_secure_sum_that_rounds_every_update_to_zero_is_explained():
    """The step of a b-bit secure sum is clip_norm / (2^(b-1) - 1); what survives rounding depends on b and the
    model's size only (clip_norm cancels)."""
    from fedlab.aggregators.aggregation import vanishing_updates

    secure = fl.ExperimentConfig(secure_aggregation=True, quantization_bits=2)
    assert vanishing_updates(secure, LOGREG_DIGITS) == (
        "2 bits with secure aggregation round each coordinate of a client's update to a multiple of clip_norm/1 = 1, "
        "so one below 0.5 becomes 0; an update of norm clip_norm=1 spread over the model's 650 weights has "
        "coordinates of about 0.0392, of which 2.1e-34 are expected to survive: every update is expected to sum to "
        "zero and the model not to train; use quantization_bits >= 4")
    assert vanishing_updates(secure.replace(quantization_bits=3, clip_norm=0.3), LOGREG_DIGITS).startswith(
        "3 bits with secure aggregation round each coordinate of a client's update to a multiple of clip_norm/3 = "
        "0.1, so one below 0.05 becomes 0; an update of norm clip_norm=0.3 spread over the model's 650 weights has "
        "coordinates of about 0.0118, of which 0.014 are expected to survive")
    assert vanishing_updates(secure.replace(quantization_bits=4), LOGREG_DIGITS) is None  # 4 bits train
    assert vanishing_updates(secure.replace(quantization_bits=8), 199_210) is None  # notebook 05: the 2NN trains
    assert vanishing_updates(secure.replace(secure_aggregation=False), LOGREG_DIGITS) is None  # compression


@pytest.mark.slow
def test_secure_sum_of_two_bits_warns_before_the_first_round_and_indeed_learns_nothing():
    config = fl.ExperimentConfig(secure_aggregation=True, quantization_bits=2, rounds=3, seed=31)
    seen_at_round_1 = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fl.run_experiment(config, progress=False,
                                    callback=lambda row, h: seen_at_round_1.append(len(caught)) if row["round"] == 1
                                    else None)
    setting = [w for w in caught if issubclass(w.category, SettingWarning)]
    assert len(setting) == 1 and seen_at_round_1 == [len(caught)], "one warning, before round 1"
    assert str(setting[0].message).startswith("quantization_bits: 2 bits with secure aggregation round each "
                                              "coordinate of a client's update to a multiple of clip_norm/1 = 1")
    assert history["eval_loss"].nunique() == 1  # the model never moved: what the warning says
    with warnings.catch_warnings(record=True) as caught:  # the process is cached now: the run still warns
        warnings.simplefilter("always")
        fl.run_experiment(config.replace(seed=32), progress=False)
    assert len([w for w in caught if issubclass(w.category, SettingWarning)]) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trained = fl.run_experiment(config.replace(quantization_bits=4), progress=False)
    assert not [w for w in caught if issubclass(w.category, SettingWarning)]
    assert trained["eval_loss"].iloc[-1] < trained["eval_loss"].iloc[0]


def test_zeroing_at_a_clip_norm_below_float32_resolution_is_refused():
    message = ("clip_norm: must be in [1.19e-07, 1e+06] with robust='zeroing': below float32's resolution at 1, an "
               "update or gradient clipped to it (or one robust='zeroing' keeps) cannot move the model's weights, "
               "got 1e-30")
    with pytest.raises(fl.ConfigError) as info:
        fl.ExperimentConfig(robust="zeroing", clip_norm=1e-30)
    assert str(info.value) == message
    assert one_line(["run", "--robust", "zeroing", "--clip-norm", "1e-30", "--out", "x"]) == (
        "fedlab run: error: --" + message.replace("clip_norm:", "clip-norm:", 1))
    fl.ExperimentConfig(clip_norm=1e-30)  # nothing clips: the value means nothing and is not refused


# Cryptic messages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, line", [
    (PRIVACY[:-2] + ["--noise-multiplier", "1", "--rounds", "100", "--delta", "-1e-5"],
     "fedlab privacy: error: --delta: must be in (0, 1), got -1e-05"),
    (["run", "--dp", "fixed", "--noise-multiplier", "1", "--delta", "-1e-5", "--out", "x"],
     "fedlab run: error: --delta: must be in (0, 1), got -1e-05"),
    (["run", "--alpha", "-inf", "--out", "x"], "fedlab run: error: --alpha: must be a finite number in (0, 1e+06], "
                                                "got -inf"),
])
def test_negative_numbers_reach_the_range_check(argv, line):
    assert one_line(argv) == line


@pytest.mark.parametrize("args, line", [
    (["--noise-multiplier", "1e6", "--rounds", "100"],
     "fedlab privacy: error: --noise-multiplier: must be in [0, 10000], got 1e+06"),
    (["--target-epsilon", "1e12", "--rounds", "100"],
     "fedlab privacy: error: --target-epsilon: must be <= 5.49976e+07 at these settings (what noise_multiplier=0.001, "
     "the least noise searched, gives), got 1e+12"),
    (["--target-epsilon", "1e12", "--rounds", "100", "--accountant", "pld"],
     "fedlab privacy: error: --target-epsilon: cannot be reached with accountant='pld' at these settings: it needs a "
     "noise_multiplier below 0.0794, and with less noise PLD's privacy-loss grid is too large to compute; use "
     "accountant='rdp', got 1e+12"),
    (["--target-epsilon", "inf", "--rounds", "100"],
     "fedlab privacy: error: --target-epsilon: must be a finite number > 0, got inf"),
    (["--target-epsilon", "1e-9", "--rounds", "100", "--accountant", "pld"],
     "fedlab privacy: error: --target-epsilon: must be >= 0.000397629 with accountant='pld' at these settings (what "
     "noise_multiplier=10000, the most allowed, gives), got 1e-09"),
    (["--target-epsilon", "1e-9", "--rounds", "100"],
     "fedlab privacy: error: --target-epsilon: must be >= 0.00350653 at these settings (what noise_multiplier=10000, "
     "the most allowed, gives), got 1e-09"),
])
def test_accounting_out_of_range_says_the_range(args, line):
    assert one_line(PRIVACY + args) == line


def test_rdp_at_much_noise_and_a_small_rate_gives_a_number():
    """dp-accounting's RDP sums cancel to -3.6e-12 there and it refused ("Renyi divergence cannot be negative");
    z = 100 with 1 client of 1,000,000 per round is a config ExperimentConfig accepts."""
    eps = fl.epsilon(100.0, 1e-6, 100, 1e-5)
    assert math.isfinite(eps) and 0 <= eps < 0.01
    assert fl.epsilon(1.0, 0.1, 100, 1e-5) == pytest.approx(7.89926, abs=1e-5)  # README's number unchanged
    assert fl.noise_multiplier_for(2.0, 0.1, 100, 1e-5) == pytest.approx(2.42241, abs=1e-5)


@pytest.mark.parametrize("address, hint", [("http://host:80", " (no scheme such as http://)"),
                                           ("host name:80", " (a host name has no spaces)")])
def test_malformed_worker_address_is_refused_when_the_config_is_made(address, hint):
    message = ("each worker must be 'host:port' with a host name or an IP address ('[v6]:port' for IPv6), "
               f"got {address!r}{hint}")
    with pytest.raises(fl.ConfigError) as info:
        fl.ExperimentConfig(workers=(address,))
    assert str(info.value) == f"workers: {message}"
    assert one_line(["run", "--workers", address, "--out", "x"]) == f"fedlab run: error: --workers: {message}"
    assert fl.ExperimentConfig(workers=("worker_1.local:8000", "10.0.0.2:8000", "[::1]:8000")).workers


# Noise ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_secure_aggregation_run_prints_no_tensorflow_log_lines(tmp_path):
    """TFF's SecureSumFactory builds tf.debugging.assert_less_equal ops it never uses; TF logged 48 lines."""
    code, out, err = run_cli(["run", "--secure-aggregation", "--rounds", "1", "--quiet", "--no-checkpoint",
                              "--out", str(tmp_path / "o")], tmp_path)
    assert code == 0, err
    assert err == ""
    assert out.startswith("round=1 eval_accuracy=")


CHECKPOINTED = ["run", "--rounds", "2", "--num-clients", "4", "--clients-per-round", "2", "--seed", "31", "--quiet"]


@pytest.fixture(scope="module")
def two_saved_rounds(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpointed") / "o"
    code, _, err = run_cli(CHECKPOINTED + ["--out", str(out)], out.parent)
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoint" / "state").iterdir()) == \
        ["manifest_1.json", "manifest_2.json", "program_state_1", "program_state_2"]
    return out


def warning_line(err: str, out: pathlib.Path, problem: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.fullmatch(r".+\.py:\d+: DamagedFileWarning: (.*)", lines[0])
    assert match, lines[0]
    assert match.group(1) == (f"checkpoint {out / 'checkpoint'}: cannot use the saved state of round 2 ({problem}); "
                              "resuming from round 1")


@pytest.mark.slow
def test_damaged_checkpoint_warning_is_one_line(two_saved_rounds, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(two_saved_rounds, out)
    with open(out / "checkpoint" / "state" / "program_state_2" / "history.json", "a") as f:
        f.write(" ")
    code, _, err = run_cli(CHECKPOINTED + ["--out", str(out)], tmp_path)
    assert code == 0
    warning_line(err, out, "history.json does not match its checksum")


@pytest.mark.slow
def test_deleted_newest_checkpoint_round_is_said(two_saved_rounds, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(two_saved_rounds, out)
    shutil.rmtree(out / "checkpoint" / "state" / "program_state_2")
    code, _, err = run_cli(CHECKPOINTED + ["--out", str(out)], tmp_path)
    assert code == 0
    warning_line(err, out, "its folder program_state_2 is missing")
    resumed = json.loads((out / "checkpoint" / "config.json").read_text())
    assert resumed["rounds"] == 2 and (out / "checkpoint" / "state" / "program_state_2").is_dir()


def test_record_level_pld_over_too_many_steps_is_refused_before_tensorflow():
    code = ("import sys, fedlab as fl\n"
            "c = fl.ExperimentConfig(dataset='breast_cancer_sites', partition='natural', num_clients=4, "
            "clients_per_round=4, dp='example', noise_multiplier=0.3, accountant='pld', rounds=200, "
            "local_steps=100, batch_size=50)\n"
            "try:\n    fl.run_experiment(c, progress=False)\n"
            "except fl.ConfigError as e:\n    print(e)\n"
            "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    first, loaded = out.strip().splitlines()
    assert first.startswith("rounds: 200 rounds of 100 DP-SGD steps at client 0 are too many for accountant='pld'")
    assert loaded == "False"
