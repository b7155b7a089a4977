import subprocess
import sys

import pytest

from fedlab.experiment.config import ConfigError, ExperimentConfig


@pytest.mark.parametrize(
    "changes, field, fragment",
    [
        ({"alpha": -1.0}, "alpha", "must be in (0, 1e+06]"),
        ({"clients_per_round": 50, "num_clients": 20}, "clients_per_round", "between 1 and num_clients=20"),
        ({"dataset": "cifar"}, "dataset", "must be one of digits"),
        ({"rounds": 0}, "rounds", "integer >= 1"),
        ({"rounds": 2.5}, "rounds", "integer >= 1"),
        ({"algorithm": "fedavgm", "server_momentum": 1.0}, "server_momentum", "[0, 1)"),
        ({"server_momentum": 0.5}, "server_momentum", "nor a parameter of algorithm 'fedavg'"),
        ({"test_fraction": 1.0}, "test_fraction", "(0, 1)"),
        ({"client_lr": 0}, "client_lr", "(0, 100]"),
        ({"batch_size": -1}, "batch_size", ">= 0"),
        ({"algorithm": "fedsgd", "local_epochs": 2}, "local_epochs", "fedsgd"),
        ({"partition": "natural", "dataset": "digits"}, "partition", "natural"),
        ({"model": "cnn", "dataset": "breast_cancer"}, "model", "image"),
        ({"seed": -3}, "seed", ">= 0"),
        ({"client_lr": float("nan")}, "client_lr", "finite"),
        ({"noise_multiplier": 1.0}, "noise_multiplier", "without dp"),
        ({"feature_noise": -0.1}, "feature_noise", "[0, 100]"),
    ],
)
def test_bad_values_name_the_field(changes, field, fragment):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig(**changes)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_replace_revalidates():
    config = ExperimentConfig(num_clients=10, clients_per_round=5)
    assert config.replace(clients_per_round=10).clients_per_round == 10
    with pytest.raises(ConfigError):
        config.replace(num_clients=3)


def test_named_seeds_fall_back_to_seed():
    assert ExperimentConfig(seed=7).seeds == {"data": 7, "model": 7, "sampling": 7, "noise": 7, "systems": 7}
    assert ExperimentConfig(seed=7, model_seed=1, systems_seed=2).seeds == {"data": 7, "model": 1, "sampling": 7,
                                                                            "noise": 7, "systems": 2}


def test_server_lr_default_depends_on_algorithm():
    assert ExperimentConfig(algorithm="fedavg").effective_server_lr == 1.0
    assert ExperimentConfig(algorithm="fedadam").effective_server_lr == 0.01
    assert ExperimentConfig(algorithm="fedadam", server_lr=0.5).effective_server_lr == 0.5


def test_round_trip_and_fingerprint():
    config = ExperimentConfig(dataset="mnist5k", alpha=0.1, rounds=7)
    again = ExperimentConfig.from_dict(config.to_dict())
    assert again == config
    assert again.fingerprint() == config.fingerprint()
    assert config.replace(rounds=8).fingerprint() != config.fingerprint()
    with pytest.raises(ConfigError, match="neither a config field"):
        ExperimentConfig.from_dict({"rounds": 3, "lr": 0.1})


def test_config_does_not_import_tensorflow():
    code = "import sys, fedlab; fedlab.ExperimentConfig(rounds=3); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
