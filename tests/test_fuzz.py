"""Bad input, many times over: every config field and every command-line option, before TensorFlow loads.

Each case must end in one of two ways: accepted (and then every number in the
config is finite and in range), or refused with a ConfigError / one line on
stderr that names the field. A traceback, another exception type, or a
nonsensical value accepted is a failure. The tallies go to
build/test-artifacts/fuzz-report.txt.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import math
import pathlib
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedlab as fl
from fedlab.__main__ import main
from fedlab.experiment.config import FIELD_NAMES

# One pytest-xdist worker runs these: its tallies add up in one process (test_write_report).
pytestmark = pytest.mark.xdist_group("fuzz")

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPORT = ROOT / "build" / "test-artifacts" / "fuzz-report.txt"
TALLY: collections.Counter = collections.Counter()

NASTY_NUMBERS = [float("nan"), float("inf"), float("-inf"), -1, -1e-300, 0, 0.0, 1e300, -1e300, 2**63, 1e-320,
                 np.float32("nan"), np.int64(-5), np.float64(1e308)]
NASTY_OTHERS = ["", "abc", "1", None, True, False, [], [1], (), {}, object(), b"1", "nan", 1 + 2j]
FIELDS = [f.name for f in dataclasses.fields(fl.ExperimentConfig) if f.name != "algorithm_params"]
# Fields a value of another field needs, so that the value itself is what is tested.
CONTEXT = {"noise_multiplier": {"dp": "fixed"}, "target_quantile": {"dp": "adaptive", "noise_multiplier": 0.5},
           "mu": {"algorithm": "fedprox"}, "server_momentum": {"algorithm": "fedavgm"},
           "server_epsilon": {"algorithm": "fedadam"}}
PARAMS = ["mu", "server_momentum", "server_epsilon"]


def _finite_and_sane(config: fl.ExperimentConfig) -> None:
    for name, value in config.to_dict().items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{name}={value} accepted"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert abs(value) < 1e7 or name in ("seed", "data_seed", "model_seed", "sampling_seed", "noise_seed", "systems_seed"), \
                f"{name}={value} accepted"


def _try(field: str, value) -> str:
    values = {**CONTEXT.get(field, {}), field: value}
    try:
        config = fl.ExperimentConfig(**values)
    except fl.ConfigError as err:
        assert "\n" not in str(err)
        assert err.field in (field, "clients_per_round", "num_clients", "algorithm", "dp"), (field, value, err)
        TALLY["config: clear one-line error"] += 1
        return "refused"
    except Exception as err:  # noqa: BLE001
        TALLY["config: other exception"] += 1
        raise AssertionError(f"{field}={value!r}: {type(err).__name__}: {err}") from err
    _finite_and_sane(config)
    TALLY["config: accepted, in range"] += 1
    return "accepted"


@pytest.mark.parametrize("field", FIELDS + PARAMS)
def test_every_field_with_nasty_values(field):
    outcomes = [_try(field, v) for v in NASTY_NUMBERS + NASTY_OTHERS]
    assert "refused" in outcomes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS + PARAMS),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70), st.text(max_size=5),
                 st.booleans(), st.none(), st.lists(st.integers(-3, 30), max_size=4).map(tuple)))
def test_random_values_never_crash(field, value):
    _try(field, value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["num_clients", "clients_per_round", "rounds", "batch_size", "local_epochs",
                                        "alpha", "client_lr", "eval_every", "quantization_bits", "freeze_layers",
                                        "attacker_fraction", "exclude_clients", "secure_aggregation", "dp",
                                        "algorithm", "model", "dataset", "partition", "local_steps"]),
                       st.one_of(st.integers(-5, 200), st.floats(-2, 200), st.sampled_from(
                           ["fedsgd", "fedprox", "cnn", "heart_disease", "natural", "fixed", "adaptive", "2nn",
                            "breast_cancer", "shards"]), st.booleans(), st.lists(st.integers(-2, 30), max_size=3)
                           .map(tuple)), max_size=6))
def test_random_combinations_are_accepted_or_refused_naming_a_field(values):
    try:
        config = fl.ExperimentConfig(**values)
    except fl.ConfigError as err:
        assert err.field in FIELD_NAMES and "\n" not in str(err)
        TALLY["combination: clear one-line error"] += 1
        return
    _finite_and_sane(config)
    TALLY["combination: accepted"] += 1


def test_numpy_numbers_are_numbers():
    config = fl.ExperimentConfig(rounds=np.int64(3), client_lr=np.float32(0.5), num_clients=np.int32(8),
                                 clients_per_round=np.uint8(4), exclude_clients=(np.int64(1),))
    assert config.rounds == 3 and type(config.rounds) is int and config.exclude_clients == (1,)
    assert json.loads(config.to_json())["client_lr"] == 0.5


def test_sweep_helpers_refuse_misuse():
    base = fl.ExperimentConfig()
    with pytest.raises(fl.ConfigError, match=r"dataset: a grid axis must be a list"):
        fl.grid(base, dataset="digits")
    with pytest.raises(fl.ConfigError, match="at least one value"):
        fl.grid(base, seed=[])
    with pytest.raises(ValueError, match="the sweep is empty"):
        fl.run_sweep([])
    with pytest.raises(TypeError, match="ExperimentConfig"):
        fl.run_sweep([{"rounds": 3}])
    assert len(fl.grid(base, seed=range(3), alpha=np.array([0.1, 1.0]))) == 6


# The command line ------------------------------------------------------------------------------------
def cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's --help
            code = exit_.code
    return code, err.getvalue()


RUN_OPTIONS = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(fl.ExperimentConfig)
               if f.name != "algorithm_params" and f.type != "bool"]  # flags take no value
CLI_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e300", "abc", "", "99999999999999999999", "0.5", ",,,", "1,1,1"]


@pytest.mark.parametrize("option", RUN_OPTIONS + ["--mu", "--server-momentum", "--server-epsilon"])
def test_run_option_fuzz(option, tmp_path):
    before = "tensorflow" in sys.modules
    for value in CLI_VALUES:
        argv = ["run", option, value, "--out", str(tmp_path / "o")]
        if option in ("--mu",):
            argv += ["--algorithm", "fedprox"]
        if option in ("--noise-multiplier", "--target-quantile"):
            argv += ["--dp", "adaptive", *(["--noise-multiplier", "0.5"] if option != "--noise-multiplier" else [])]
        argv += ["--rounds", "0"] if option != "--rounds" else ["--num-clients", "0"]  # never train: stop at validation
        code, err = cli(argv)
        lines = err.strip().splitlines()
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("fedlab run: error: --"), (argv, err)
        TALLY["cli run: clear one-line error"] += 1
    assert ("tensorflow" in sys.modules) == before, "bad input imported TensorFlow"


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--out", ""], "--out"),
    (["run", "--rou", "3", "--out", "x"], "unrecognized"),  # no abbreviations
    (["run", "--workers", ",,,", "--out", "x"], "--workers"),
    (["run", "--noise-multiplier", "1", "--out", "x"], "--noise-multiplier: has no effect without dp"),
    (["run", "--mu", "0.1", "--out", "x"], "--mu"),
    (["run", "--plugin"], "--plugin"),
    (["run", "--plugin", "/nonexistent/p.py", "--out", "x"], "--plugin"),
    (["privacy", "--noise-multiplier", "nan", "--clients-per-round", "5", "--num-clients", "100", "--rounds", "3",
      "--delta", "1e-5"], "--noise-multiplier"),
    (["privacy", "--noise-multiplier", "1", "--clients-per-round", "5", "--num-clients", "100", "--rounds", "3",
      "--delta", "2"], "--delta"),
    (["privacy", "--noise-multiplier", "1", "--clients-per-round", "5", "--num-clients", "0", "--rounds", "3",
      "--delta", "1e-5"], "--num-clients"),
    (["privacy", "--noise-multiplier", "1", "--clients-per-round", "5", "--num-clients", "10", "--rounds", "-3",
      "--delta", "1e-5"], "--rounds"),
    (["privacy", "--target-epsilon", "-2", "--clients-per-round", "5", "--num-clients", "10", "--rounds", "3",
      "--delta", "1e-5"], "--target-epsilon"),
    (["privacy", "--target-epsilon", "inf", "--clients-per-round", "5", "--num-clients", "10", "--rounds", "3",
      "--delta", "1e-5"], "--target-epsilon"),
    (["worker", "--port", "0"], "--port"),
    (["worker", "--port", "70000"], "--port"),
    (["worker", "--port", "8000", "--host", ""], "--host"),
    (["reproduce", "--only", "99"], "only"),
    (["nonsense"], "invalid choice"),
    ([], "required"),
])
def test_other_commands_refuse_in_one_line(argv, fragment):
    code, err = cli(argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and fragment in lines[0], (argv, code, err)
    TALLY["cli other: clear one-line error"] += 1


def test_out_that_is_a_file_or_under_a_file(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub", pathlib.Path("/proc/fedlab-cannot-write-here")):
        code, err = cli(["run", "--rounds", "1", "--out", str(out)])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, (out, err)
        TALLY["cli run: clear one-line error"] += 1


def test_write_report():
    """Runs last in this file: the tallies of every case above (the closing note quotes them)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("".join(f"{k}: {v}\n" for k, v in sorted(TALLY.items())))
    assert TALLY["config: other exception"] == 0
