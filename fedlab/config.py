"""The experiment config: one frozen dataclass, validated when it is made.

Validation runs in ``__post_init__`` and imports nothing heavy, so a bad value
is reported before TensorFlow is touched. Sweeps are lists of configs made with
``dataclasses.replace`` (re-validated each time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

DATASETS = ("digits", "breast_cancer", "breast_cancer_sites", "mnist5k", "heart_disease", "emnist")
SITE_DATASETS = ("heart_disease", "breast_cancer_sites", "emnist")  # with natural clients
PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "natural")
MODELS = ("logreg", "2nn", "cnn")
ALGORITHMS = ("fedavg", "fedsgd", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
DP_MODES = ("none", "fixed", "adaptive")
DP_ALGORITHMS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
ACCOUNTANTS = ("rdp", "pld")
ROBUST = ("none", "clip", "zeroing")
EXECUTION_FIELDS = ("workers",)  # where a run executes, not what it computes
WEIGHT_LAYERS = {"logreg": 1, "2nn": 3, "cnn": 4}  # layers with weights, output included

# Server learning rate when the config leaves it unset. 1.0 makes FedAvg add
# the mean client delta (McMahan et al. 2017); the adaptive optimizers follow
# the ranges Reddi et al. 2021 found best.
DEFAULT_SERVER_LR = {
    "fedavg": 1.0,
    "fedsgd": 1.0,
    "fedprox": 1.0,
    "fedavgm": 1.0,
    "fedadam": 0.01,
    "fedyogi": 0.01,
    "fedadagrad": 0.1,
}


class ConfigError(ValueError):
    """A config field holds a value outside what is allowed.

    ``field`` names the dataclass field, so the command line can name its option.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a federated run.

    Units: rounds are server rounds; ``local_epochs`` are passes over a
    client's local data per round; ``batch_size`` 0 means the whole local
    dataset in one batch (the paper's B = infinity).
    """

    dataset: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5  # Dirichlet concentration (dirichlet, quantity)
    shards_per_client: int = 2  # labels per client (shards)
    feature_noise: float = 0.0  # feature skew: client i of N gets input noise std feature_noise*i/(N-1)
    model: str = "logreg"
    algorithm: str = "fedavg"
    client_lr: float = 0.1
    server_lr: Optional[float] = None  # None: DEFAULT_SERVER_LR[algorithm]
    server_momentum: float = 0.9  # fedavgm only
    server_epsilon: float = 1e-3  # adaptivity tau for fedadam/fedyogi/fedadagrad
    mu: float = 0.01  # fedprox proximal strength
    num_clients: int = 10
    clients_per_round: int = 5
    local_epochs: int = 1
    local_steps: Optional[int] = None  # if set: exactly this many batches per client per round (FLamby)
    batch_size: int = 10
    rounds: int = 10
    eval_every: int = 1
    eval_per_client: bool = False
    test_fraction: Optional[float] = None  # held-out share; None: the data set's default (1/3 heart disease, else 0.2)
    validation_fraction: float = 0.0  # > 0: evaluate on this share of the training data (per site), not the test set
    exclude_clients: tuple = ()  # clients that never train (they are still evaluated)
    dp: str = "none"  # user-level DP: none, fixed (clipping) or adaptive (clipping to a quantile)
    noise_multiplier: float = 0.0  # z: noise std is z * clip_norm on the sum of updates
    clip_norm: float = 1.0  # L2 bound C on a client update: DP clip (initial C if adaptive), secure range, robust norm
    target_quantile: float = 0.5  # adaptive clipping: share of updates left unclipped
    delta: Optional[float] = None  # None: num_clients ** -1.1
    accountant: str = "rdp"  # rdp or pld (dp-accounting)
    secure_aggregation: bool = False  # the server sees only the sum (range: clip_norm)
    quantization_bits: int = 0  # 0: float32 updates; b: b-bit compression, or b-bit secure sum
    robust: str = "none"  # none, clip (L2-clip updates to clip_norm) or zeroing (drop updates above it)
    freeze_layers: int = 0  # partial updates: the first n weight layers are not trained or sent
    attacker_fraction: float = 0.0  # share of clients that flip their labels
    attack_boost: int = 1  # attackers train this many times longer (a larger, poisoned update)
    seed: int = 0  # default for the three named seeds below
    data_seed: Optional[int] = None  # train/test split and partition
    model_seed: Optional[int] = None  # initial weights
    sampling_seed: Optional[int] = None  # clients per round, local shuffling
    workers: tuple = ()  # "host:port" of TFF worker services (python -m fedlab worker); () runs locally

    def __post_init__(self) -> None:
        _one_of("dataset", self.dataset, DATASETS)
        _one_of("partition", self.partition, PARTITIONS)
        _one_of("model", self.model, MODELS)
        _one_of("algorithm", self.algorithm, ALGORITHMS)
        _positive("alpha", self.alpha)
        _int_at_least("shards_per_client", self.shards_per_client, 1)
        _number("feature_noise", self.feature_noise)
        if self.feature_noise < 0:
            raise ConfigError("feature_noise", f"must be >= 0, got {self.feature_noise!r}")
        _positive("client_lr", self.client_lr)
        if self.server_lr is not None:
            _positive("server_lr", self.server_lr)
        _number("server_momentum", self.server_momentum)
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError("server_momentum", f"must be in [0, 1), got {self.server_momentum!r}")
        _positive("server_epsilon", self.server_epsilon)
        _number("mu", self.mu)
        if self.mu < 0:
            raise ConfigError("mu", f"must be >= 0, got {self.mu!r}")
        _int_at_least("num_clients", self.num_clients, 1)
        _int_at_least("clients_per_round", self.clients_per_round, 1)
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                "clients_per_round",
                f"must be between 1 and num_clients={self.num_clients}, got {self.clients_per_round}",
            )
        _int_at_least("local_epochs", self.local_epochs, 1)
        if self.local_steps is not None:
            _int_at_least("local_steps", self.local_steps, 1)
        _number("validation_fraction", self.validation_fraction)
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError("validation_fraction", f"must be in [0, 1), got {self.validation_fraction!r}")
        if not isinstance(self.exclude_clients, tuple) or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < self.num_clients
                for c in self.exclude_clients):
            raise ConfigError("exclude_clients", f"must be a tuple of client ids in [0, {self.num_clients}), "
                                                 f"got {self.exclude_clients!r}")
        if self.clients_per_round > self.num_clients - len(set(self.exclude_clients)):
            raise ConfigError("clients_per_round", f"must be at most the {self.num_clients - len(set(self.exclude_clients))} "
                                                   "clients not excluded")
        _int_at_least("batch_size", self.batch_size, 0)
        _int_at_least("rounds", self.rounds, 1)
        _int_at_least("eval_every", self.eval_every, 1)
        if not isinstance(self.eval_per_client, bool):
            raise ConfigError("eval_per_client", f"must be true or false, got {self.eval_per_client!r}")
        if self.test_fraction is not None:
            _number("test_fraction", self.test_fraction)
            if not 0.0 < self.test_fraction < 1.0:
                raise ConfigError("test_fraction", f"must be in (0, 1), got {self.test_fraction!r}")
        for name in ("seed", "data_seed", "model_seed", "sampling_seed"):
            value = getattr(self, name)
            if value is not None:
                _int_at_least(name, value, 0)
        _one_of("dp", self.dp, DP_MODES)
        _number("noise_multiplier", self.noise_multiplier)
        if self.noise_multiplier < 0:
            raise ConfigError("noise_multiplier", f"must be >= 0, got {self.noise_multiplier!r}")
        _positive("clip_norm", self.clip_norm)
        _number("target_quantile", self.target_quantile)
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError("target_quantile", f"must be in (0, 1), got {self.target_quantile!r}")
        if self.delta is not None:
            _number("delta", self.delta)
            if not 0.0 < self.delta < 1.0:
                raise ConfigError("delta", f"must be in (0, 1), got {self.delta!r}")
        _one_of("accountant", self.accountant, ACCOUNTANTS)
        if self.dp != "none" and self.algorithm not in DP_ALGORITHMS:
            raise ConfigError("algorithm", f"with dp={self.dp!r} must be one of {', '.join(DP_ALGORITHMS)}, "
                                           f"got {self.algorithm!r}")
        if not isinstance(self.secure_aggregation, bool):
            raise ConfigError("secure_aggregation", f"must be true or false, got {self.secure_aggregation!r}")
        _int_at_least("quantization_bits", self.quantization_bits, 0)
        if self.quantization_bits > 16:
            raise ConfigError("quantization_bits", f"must be 0 (float32) or 1..16, got {self.quantization_bits}")
        if self.secure_aggregation and self.quantization_bits == 1:
            raise ConfigError("quantization_bits", "must be 0 or 2..16 with secure aggregation (1 bit has no sign)")
        _one_of("robust", self.robust, ROBUST)
        _int_at_least("freeze_layers", self.freeze_layers, 0)
        if self.freeze_layers >= WEIGHT_LAYERS[self.model]:
            raise ConfigError("freeze_layers", f"must be below {WEIGHT_LAYERS[self.model]} for model {self.model!r} "
                                               "(something must stay trainable)")
        if self.freeze_layers and self.algorithm == "fedprox":
            raise ConfigError("freeze_layers", "must be 0 with fedprox (fedlab's corrected FedProx needs the "
                                               "functional model, which TFF 0.87 cannot build with frozen layers)")
        _number("attacker_fraction", self.attacker_fraction)
        if not 0.0 <= self.attacker_fraction < 1.0:
            raise ConfigError("attacker_fraction", f"must be in [0, 1), got {self.attacker_fraction!r}")
        _int_at_least("attack_boost", self.attack_boost, 1)
        if self.dp != "none" and (self.quantization_bits or self.secure_aggregation):
            raise ConfigError("quantization_bits" if self.quantization_bits else "secure_aggregation",
                              "cannot be combined with dp here: TFF 0.87's DP factory owns the sum")
        if self.secure_aggregation and self.algorithm not in DP_ALGORITHMS:
            raise ConfigError("algorithm", f"with secure_aggregation must be one of {', '.join(DP_ALGORITHMS)} "
                                           f"(an unweighted mean), got {self.algorithm!r}")
        if self.algorithm == "fedsgd" and self.local_epochs != 1:
            raise ConfigError("local_epochs", "must be 1 for fedsgd (one full-batch gradient per client)")
        if self.partition == "natural" and self.dataset not in SITE_DATASETS:
            raise ConfigError(
                "partition", f"'natural' needs a dataset with client ids ({', '.join(SITE_DATASETS)}), not {self.dataset!r}"
            )
        if self.dataset in ("heart_disease", "breast_cancer_sites") and self.partition == "natural" \
                and self.num_clients != 4:
            raise ConfigError("num_clients", f"must be 4 for {self.dataset} with the natural (by site) partition")
        if not isinstance(self.workers, tuple):
            raise ConfigError("workers", f"must be a tuple of 'host:port' strings, got {self.workers!r}")
        from .distributed import parse_workers

        try:
            parse_workers(self.workers)
        except ValueError as err:
            raise ConfigError("workers", str(err)) from None
        if self.workers and self.secure_aggregation:
            raise ConfigError("workers", "cannot be combined with secure_aggregation: TFF's worker does not implement "
                                         "secure sums, which fedlab simulates in this process")
        if self.model == "cnn" and self.dataset not in ("digits", "mnist5k", "emnist"):
            raise ConfigError("model", f"'cnn' needs an image dataset (digits, mnist5k, emnist), not {self.dataset!r}")

    # Seeds -----------------------------------------------------------------
    @property
    def seeds(self) -> dict[str, int]:
        """The three named seeds, each falling back to ``seed``."""
        return {
            "data": self.seed if self.data_seed is None else self.data_seed,
            "model": self.seed if self.model_seed is None else self.model_seed,
            "sampling": self.seed if self.sampling_seed is None else self.sampling_seed,
        }

    @property
    def effective_delta(self) -> float:
        return self.num_clients ** -1.1 if self.delta is None else self.delta

    @property
    def sampling_probability(self) -> float:
        """q: the chance a client joins a round (Poisson sampling when dp is on)."""
        return self.clients_per_round / self.num_clients

    @property
    def effective_server_lr(self) -> float:
        return DEFAULT_SERVER_LR[self.algorithm] if self.server_lr is None else self.server_lr

    # Serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def experiment_dict(self) -> dict[str, Any]:
        """The fields that determine the numbers: all but where it runs (:data:`EXECUTION_FIELDS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown config field; allowed: {', '.join(sorted(known))}")
        for name in ("exclude_clients", "workers"):
            if isinstance(values.get(name), list):  # JSON has no tuples
                values = {**values, name: tuple(values[name])}
        return cls(**values)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """A short hash of every field but the execution ones: the key of the result cache."""
        return hashlib.sha256(json.dumps(self.experiment_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _one_of(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(field, f"must be one of {', '.join(allowed)}; got {value!r}")


def _number(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, f"must be a number, got {value!r}")


def _positive(field: str, value: Any) -> None:
    _number(field, value)
    if not value > 0:
        raise ConfigError(field, f"must be > 0, got {value!r}")


def _int_at_least(field: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ConfigError(field, f"must be an integer >= {low}, got {value!r}")
