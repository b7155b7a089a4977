"""The experiment config: one frozen dataclass, validated when it is made.

Validation imports nothing heavy, so a bad value is reported, naming its
field and what is allowed, before TensorFlow is touched. NaN, infinity and
absurd magnitudes are refused; NumPy numbers are accepted as Python ones.

Names of data sets, partitions, models, algorithms and aggregators are looked
up in their registries, so a user's registered components are valid the
moment they are registered. An algorithm's own hyperparameters live in
``algorithm_params`` (a frozen :class:`~fedlab.algorithms.algorithms.AlgorithmParams`),
and may also be given by name: ``ExperimentConfig(algorithm="fedprox", mu=0.1)``,
``config.replace(mu=0.1)``, ``grid(config, mu=[...])``. In dictionaries,
JSON and history columns they appear as plain fields.
"""

from __future__ import annotations

import math
import dataclasses
import inspect
import hashlib
import json
from typing import Any, Optional

from ..protection.accounting import (ACCOUNTANTS, MAX_NOISE_MULTIPLIER, MAX_ROUNDS, check_pld, ddp_check,
                                     least_pld_noise)
from ..aggregators.aggregation import (AGGREGATORS, names as aggregator_names, protocol_names, uses_fraction,
                                       weighs_alike)
from ..algorithms.algorithms import ALGORITHMS, Algorithm, AlgorithmParams, reserve_names
from ..rounds.array_training import WEIGHTINGS
from ..systems.asynchronous import STALENESS
from ..rounds.attacks import ATTACKS
from ..data.data import DATASETS
from ..workers.distributed import parse_workers
from ..models.models import MODELS
from ..data.partition import PARTITIONERS
from ..systems.systems import DEVICE_PROFILES, POLICIES
from ..data.tasks import LOSSES, TASKS
from ..core.validation import ConfigError, boolean, integer, is_integer, number, one_of

EXECUTION_FIELDS = ("workers",)  # where a run executes, not what it computes
NOISE_SOURCES = ("seeded", "unseeded")
RECORD_LEVEL = "example"  # dp="example": DP-SGD on the records inside every client
MAX_SEED = 2**31 - 1
# float32's resolution at 1 (2^-23): an update, or a DP-SGD gradient, held to a smaller L2 norm cannot move a
# weight of magnitude 1 or more; robust="zeroing" keeps only updates that small.
MIN_CLIP_NORM = 2.0**-23


@dataclasses.dataclass(frozen=True, init=False)
class ExperimentConfig:
    """Everything that determines a federated run. Keyword arguments only.

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
    server_lr: Optional[float] = None  # None: the algorithm's default
    algorithm_params: Any = None  # the algorithm's own hyperparameters (None: its defaults)
    num_clients: int = 10
    clients_per_round: int = 5
    local_epochs: int = 1
    local_steps: Optional[int] = None  # if set: exactly this many batches per client per round (FLamby)
    carry_epochs: bool = False  # with local_steps: a client's batches go on where its last round stopped (FLamby)
    client_weighting: str = "examples"  # a client's weight in the mean: examples processed, its data-set size, or 1
    batch_size: int = 10
    rounds: int = 10
    eval_every: int = 1
    eval_per_client: bool = False
    local_test_fraction: float = 0.0  # > 0: each client keeps this share of its data to test on (never trained on)
    finetune_epochs: int = 0  # > 0: per-client evaluation scores the global model after that many local SGD epochs
    test_fraction: Optional[float] = None  # held-out share; None: the data set's default (1/3 heart disease, else 0.2)
    validation_fraction: float = 0.0  # > 0: evaluate on this share of the training data (per site), not the test set
    exclude_clients: tuple = ()  # clients that never train (they are still evaluated)
    dp: str = "none"  # user-level DP: fixed (clipping) or adaptive (to a quantile); record-level DP-SGD: example
    noise_multiplier: float = 0.0  # z: noise std is z * clip_norm on the sum of updates
    clip_norm: float = 1.0  # L2 bound C: a client's update (DP, secure range, robust), or one example's gradient (example)
    target_quantile: float = 0.5  # adaptive clipping: share of updates left unclipped
    delta: Optional[float] = None  # None: num_clients ** -1.1 (user-level), 1e-5 per site (record-level)
    accountant: str = "rdp"  # rdp or pld (dp-accounting)
    secure_aggregation: bool = False  # the server sees only the sum (range: clip_norm)
    quantization_bits: int = 0  # 0: float32 updates; b: b-bit compression, or b-bit secure sum
    secure_protocol: str = "none"  # secagg, secaggplus or ckks: the protocol with real cryptography (none: the sum only)
    robust: str = "none"  # none, clip or zeroing (at clip_norm), median, trimmed_mean, krum, multikrum
    robust_fraction: float = 0.2  # trimmed_mean: share cut at each end; krum, multikrum: share assumed Byzantine
    freeze_layers: int = 0  # partial updates: the first n weight layers are not trained or sent
    attacker_fraction: float = 0.0  # share of clients that attack
    attack: str = "label_flip"  # what attackers do: label_flip (data), sign_flip, gaussian, alie (their updates)
    attack_boost: int = 1  # label_flip: train this many times longer; sign_flip, gaussian: scale of the forgery
    seed: int = 0  # default for the three named seeds below
    data_seed: Optional[int] = None  # train/test split and partition
    model_seed: Optional[int] = None  # initial weights
    sampling_seed: Optional[int] = None  # clients per round, local shuffling
    noise_seed: Optional[int] = None  # DP noise and stochastic rounding, with the round number
    noise_source: str = "seeded"  # seeded (reproducible simulation) or unseeded (fresh noise, for deployments)
    device_profile: str = "uniform"  # clients' compute speed, bandwidth, availability (fedlab.systems.systems)
    straggler_policy: str = "wait"  # wait for all, drop the late at round_deadline, or take their partial work
    round_deadline: Optional[float] = None  # simulated seconds a round may last (drop, partial)
    over_selection: float = 1.0  # ask ceil(K x this) clients (Poisson at this x K/N under DP), use the first K
    dropout_rate: float = 0.0  # chance a selected client goes offline mid-round
    systems_seed: Optional[int] = None  # devices, who is online, who drops out
    async_concurrency: int = 0  # > 0: FedBuff, this many clients training at once (0: synchronous rounds)
    async_buffer: Optional[int] = None  # updates per server step (None: async_concurrency); rounds = server steps
    async_staleness: str = "polynomial"  # how a stale update is weighted (fedlab.systems.asynchronous.STALENESS)
    workers: tuple = ()  # "host:port" of TFF worker services (python -m fedlab worker); () runs locally

    def __init__(self, **values: Any) -> None:
        params = {k: values.pop(k) for k in list(values) if k not in FIELD_NAMES}
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, values.get(f.name, f.default))
        self._validate(params)

    # Validation --------------------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate(self, named_params: dict[str, Any]) -> None:
        s = self._set
        s("dataset", one_of("dataset", self.dataset, DATASETS.names()))
        s("partition", one_of("partition", self.partition, PARTITIONERS.names()))
        s("model", one_of("model", self.model, MODELS.names()))
        s("algorithm", one_of("algorithm", self.algorithm, ALGORITHMS.names()))
        self._resolve_params(named_params)
        s("alpha", number("alpha", self.alpha, 0.0, 1e6, low_open=True))
        s("shards_per_client", integer("shards_per_client", self.shards_per_client, 1, 10_000))
        s("feature_noise", number("feature_noise", self.feature_noise, 0.0, 100.0))
        s("client_lr", number("client_lr", self.client_lr, 0.0, 100.0, low_open=True))
        if self.server_lr is not None:
            s("server_lr", number("server_lr", self.server_lr, 0.0, 100.0, low_open=True))
        s("num_clients", integer("num_clients", self.num_clients, 1, 1_000_000))
        if not is_integer(self.clients_per_round) or not 1 <= self.clients_per_round <= self.num_clients:
            raise ConfigError("clients_per_round",
                              f"must be between 1 and num_clients={self.num_clients}, got {self.clients_per_round!r}")
        s("clients_per_round", int(self.clients_per_round))
        s("local_epochs", integer("local_epochs", self.local_epochs, 1, 10_000))
        if self.local_steps is not None:
            s("local_steps", integer("local_steps", self.local_steps, 1, 10_000_000))
        s("carry_epochs", boolean("carry_epochs", self.carry_epochs))
        s("client_weighting", one_of("client_weighting", self.client_weighting, WEIGHTINGS))
        s("batch_size", integer("batch_size", self.batch_size, 0, 1_000_000))
        s("rounds", integer("rounds", self.rounds, 1, MAX_ROUNDS))
        s("eval_every", integer("eval_every", self.eval_every, 1, 1_000_000))
        s("eval_per_client", boolean("eval_per_client", self.eval_per_client))
        s("local_test_fraction", number("local_test_fraction", self.local_test_fraction, 0.0, 0.9))
        s("finetune_epochs", integer("finetune_epochs", self.finetune_epochs, 0, 1_000))
        if self.test_fraction is not None:
            s("test_fraction", number("test_fraction", self.test_fraction, 0.0, 1.0, low_open=True, high_open=True))
        s("validation_fraction", number("validation_fraction", self.validation_fraction, 0.0, 1.0, high_open=True))
        s("exclude_clients", self._client_ids("exclude_clients", self.exclude_clients))
        not_excluded = self.num_clients - len(self.exclude_clients)
        if self.clients_per_round > not_excluded:
            raise ConfigError("clients_per_round", f"must be at most the {not_excluded} clients not excluded, "
                                                   f"got {self.clients_per_round}")
        for name in ("seed", "data_seed", "model_seed", "sampling_seed", "noise_seed", "systems_seed"):
            if getattr(self, name) is not None or name == "seed":
                s(name, integer(name, getattr(self, name), 0, MAX_SEED))
        s("dp", one_of("dp", self.dp, ("none",) + aggregator_names("dp") + (RECORD_LEVEL,)))
        s("noise_multiplier", number("noise_multiplier", self.noise_multiplier, 0.0, MAX_NOISE_MULTIPLIER))
        s("clip_norm", number("clip_norm", self.clip_norm, 0.0, 1e6, low_open=True))
        s("target_quantile", number("target_quantile", self.target_quantile, 0.0, 1.0, low_open=True, high_open=True))
        if self.delta is not None:
            s("delta", number("delta", self.delta, 0.0, 1.0, low_open=True, high_open=True))
        s("accountant", one_of("accountant", self.accountant, ACCOUNTANTS))
        s("noise_source", one_of("noise_source", self.noise_source, NOISE_SOURCES))
        s("secure_aggregation", boolean("secure_aggregation", self.secure_aggregation))
        s("quantization_bits", integer("quantization_bits", self.quantization_bits, 0, 16))
        s("secure_protocol", one_of("secure_protocol", self.secure_protocol, ("none",) + protocol_names()))
        s("robust", one_of("robust", self.robust, ("none",) + aggregator_names("robust")))
        s("robust_fraction", number("robust_fraction", self.robust_fraction, 0.0, 0.5, high_open=True))
        s("freeze_layers", integer("freeze_layers", self.freeze_layers, 0, 1000))
        s("attacker_fraction", number("attacker_fraction", self.attacker_fraction, 0.0, 1.0, high_open=True))
        s("attack", one_of("attack", self.attack, ATTACKS.names()))
        s("attack_boost", integer("attack_boost", self.attack_boost, 1, 1000))
        s("device_profile", one_of("device_profile", self.device_profile, DEVICE_PROFILES.names()))
        s("straggler_policy", one_of("straggler_policy", self.straggler_policy, POLICIES))
        if self.round_deadline is not None:
            s("round_deadline", number("round_deadline", self.round_deadline, 0.0, 1e9, low_open=True))
        s("over_selection", number("over_selection", self.over_selection, 1.0, 10.0))
        s("dropout_rate", number("dropout_rate", self.dropout_rate, 0.0, 1.0, high_open=True))
        s("async_concurrency", integer("async_concurrency", self.async_concurrency, 0,
                                       self.num_clients - len(self.exclude_clients)))
        if self.async_buffer is not None and self.async_concurrency:
            s("async_buffer", integer("async_buffer", self.async_buffer, 1, self.async_concurrency))
        s("async_staleness", one_of("async_staleness", self.async_staleness, STALENESS.names()))
        if isinstance(self.workers, list):
            s("workers", tuple(self.workers))
        if not isinstance(self.workers, tuple):
            raise ConfigError("workers", f"must be a tuple of 'host:port' strings, got {self.workers!r}")
        try:
            s("workers", parse_workers(self.workers))
        except ValueError as err:
            raise ConfigError("workers", str(err)) from None
        self._check_combinations()

    def _resolve_params(self, named: dict[str, Any]) -> None:
        algorithm = ALGORITHMS[self.algorithm]
        names = {f.name for f in algorithm.param_fields()}
        unknown = sorted(set(named) - names)
        if unknown:
            raise ConfigError(unknown[0], f"is neither a config field nor a parameter of algorithm {self.algorithm!r} "
                                          f"(its parameters: {', '.join(sorted(names)) or 'none'})")
        params = self.algorithm_params
        if named:
            if params is not None and not isinstance(params, (dict, AlgorithmParams)):
                params = algorithm.make_params(params)  # raises: the wrong kind
            base = params.to_dict() if isinstance(params, AlgorithmParams) else dict(params or {})
            params = {**base, **named}
        self._set("algorithm_params", algorithm.make_params(params))

    @staticmethod
    def _client_ids(field: str, value: Any) -> tuple:
        if isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, tuple) or not all(is_integer(c) for c in value):
            raise ConfigError(field, f"must be a tuple of client ids (integers), got {value!r}")
        return tuple(sorted({int(c) for c in value}))

    def _check_combinations(self) -> None:
        algorithm, data, model = self.algorithm_entry, DATASETS[self.dataset], MODELS[self.model]
        bad = [c for c in self.exclude_clients if not 0 <= c < self.num_clients]
        if bad:
            raise ConfigError("exclude_clients", f"must hold client ids in [0, {self.num_clients}), got {bad[0]}")
        if self.dp == "none" and self.noise_multiplier != 0:
            raise ConfigError("noise_multiplier", "has no effect without dp; set dp to "
                                                  f"{' or '.join(aggregator_names('dp'))}, or leave it at 0")
        if self.dp == RECORD_LEVEL:
            if algorithm.on_arrays is None:
                raise ConfigError("dp", f"'example' (DP-SGD in every client) cannot be honoured by "
                                        f"{self.algorithm}: it has no compiled client loop (on_arrays)")
            if algorithm.record_dp_gap:
                raise ConfigError("dp", f"'example' (DP-SGD in every client) cannot be honoured by "
                                        f"{self.algorithm}: {algorithm.record_dp_gap}")
            if algorithm.own_weighting and 0 < getattr(self.algorithm_params, "q", 1.0) < 1:
                raise ConfigError("q", f"must be 0 or at least 1 with {self.algorithm} and dp='example', got "
                                       f"{self.algorithm_params.q:g}: a client's weight grows as F^(q-1) as its "
                                       "noised loss F nears 0, which the noise makes frequent, and one such client "
                                       "would stall the round")
            if algorithm.record_dp_extra_steps and getattr(self.algorithm_params, "loss_clip", None) == 0:
                raise ConfigError("loss_clip", f"must be > 0 with {self.algorithm} and dp='example': its server "
                                               "weighs each update by the client's training loss, which DP-SGD does "
                                               "not cover; that loss is then a Poisson sample of the records at "
                                               "DP-SGD's rate, each record's loss clipped to loss_clip and their "
                                               "sum noised (one more DP-SGD step a round in the accounting)")
            if self.eval_per_client and self.local_test_fraction == 0 and not self.finetune_epochs:  # else below
                raise ConfigError("local_test_fraction", "must be > 0 with dp='example' and eval_per_client: "
                                                         "without it each client is scored on its training records, "
                                                         "and those scores are released outside DP-SGD")
            if self.batch_size == 0 and not algorithm.full_batch:  # full batch: every record, q = 1 (DP-GD)
                raise ConfigError("batch_size", "must be > 0 with dp='example': DP-SGD samples batches of that "
                                                "expected size")
            if math.ceil(self.attacker_fraction * self.num_clients - 1e-9) >= self.num_clients:
                raise ConfigError("attacker_fraction", f"must leave an honest client with dp='example' (the "
                                                       f"guarantee is theirs), got {self.attacker_fraction:g} of "
                                                       f"{self.num_clients}")
        if self.user_level_dp:
            if not normalized_mean(algorithm):  # FedNova's normalised updates take the plain mean: p_i = 1/m
                self._check_unweighted(algorithm, f"dp={self.dp!r}")
            if algorithm.normalized and self.local_steps is None:
                raise ConfigError("local_steps", f"must be set with {self.algorithm} under dp={self.dp!r}: its server "
                                                 "scales every update by tau_eff, which is then the public number of "
                                                 "local steps (with epochs the steps depend on each client's data, "
                                                 "and their mean over the sampled clients would move every update "
                                                 "when one user joins, which the noise does not hide)")
            if algorithm.side_sums and self.local_steps is None:
                raise ConfigError("local_steps", f"must be set with {self.algorithm} under dp={self.dp!r}: its clients "
                                                 f"send {algorithm.side_values} scaled by the public number of local "
                                                 "steps (with epochs it depends on each client's data, and too small "
                                                 "a scale leaves them to the noise)")
        if self.user_level_dp and AGGREGATORS[self.dp].distributed:
            self._check_distributed()
        if self.user_level_dp and self.secure_aggregation:
            if self.secure_protocol not in ("none", "secagg", "secaggplus"):
                raise ConfigError("secure_protocol", f"cannot be {self.secure_protocol!r} with dp={self.dp!r}: "
                                                     "user-level DP's noise is calibrated to clipped updates, which "
                                                     "only 'secagg' and 'secaggplus' sum (CKKS sums them unclipped)")
            if self.dp not in ("fixed", "adaptive") and not AGGREGATORS[self.dp].distributed and \
                    self.secure_protocol != "none":
                raise ConfigError("dp", f"must be 'fixed', 'adaptive' or a distributed mode with "
                                        f"secure_protocol={self.secure_protocol!r}, got {self.dp!r}: the protocol's "
                                        "server adds the noise of the first two itself, the clients that of a "
                                        "distributed one (another registered DP aggregator runs on "
                                        "secure_protocol='none', TFF's secure sum)")
            if self.secure_protocol != "none":
                # whether the protocol aborts (too few survivors) must not depend on one user: under central DP
                # every sampled client's update is summed (one alone too: secure_rounds.lone_client)
                for field, used, allowed in (("over_selection", self.over_selection != 1, "1"),
                                             ("dropout_rate", self.dropout_rate > 0, "0"),
                                             ("straggler_policy", self.straggler_policy != "wait", "'wait'")):
                    if used:
                        raise ConfigError(field, f"must be {allowed} with dp={self.dp!r} on "
                                                 f"secure_protocol={self.secure_protocol!r}: a client left out after "
                                                 "the key exchange can make the protocol abort, and whether it "
                                                 "aborts would then depend on one user, which the accounting does "
                                                 "not cover")
        elif self.user_level_dp and self.quantization_bits and \
                "record_sum" not in inspect.signature(AGGREGATORS[self.dp].build).parameters:
            raise ConfigError("quantization_bits", f"must be 0 with dp={self.dp!r}: its builder takes no record_sum= "
                                                   "(the sum of the clipped updates that compression goes into)")
        if self.secure_aggregation and not normalized_mean(algorithm):
            # FedNova's normalised updates take a secure sum's plain mean: its p_i = 1/m, tau_eff the mean of the
            # clients' planned steps (under user-level DP: the public local_steps)
            self._check_unweighted(algorithm, "secure_aggregation")
        if algorithm.side_sums and self.secure_aggregation and self.secure_protocol == "none" and \
                not self.user_level_dp and (not self.quantization_bits or self.robust == "zeroing"):
            raise ConfigError("quantization_bits" if not self.quantization_bits else "robust",
                              f"{self.algorithm} on a secure sum needs quantization_bits > 0 and robust other than "
                              "'zeroing': its clients keep the share of their control-variate change that the sum "
                              "took, which they know only from an L2 clip (32 bits clamp each coordinate, zeroing "
                              "drops the whole vector)")
        if self.secure_aggregation and self.quantization_bits == 1:
            raise ConfigError("quantization_bits", "must be 0 or 2..16 with secure aggregation (1 bit has no sign)")
        if self.secure_protocol != "none":
            self._check_protocol(algorithm)
        self._check_robust()
        self._check_attack(algorithm)
        self._check_finetune(algorithm)
        self._check_task(algorithm, data)
        self._check_async(algorithm)
        personal = getattr(self.algorithm_params, "personal_layers", None)
        if personal is not None and model.weight_layers is not None and personal >= model.weight_layers:
            raise ConfigError("personal_layers", f"must be below {model.weight_layers} for model {self.model!r} "
                                                 "(the body shared by the clients must keep a layer)")
        if model.weight_layers is not None and self.freeze_layers >= model.weight_layers:
            raise ConfigError("freeze_layers", f"must be below {model.weight_layers} for model {self.model!r} "
                                               "(something must stay trainable)")
        if personal is not None and model.weight_layers is not None and personal + self.freeze_layers >= \
                model.weight_layers:
            raise ConfigError("freeze_layers", f"must be below {model.weight_layers - personal} with "
                                               f"personal_layers={personal} for model {self.model!r} (the clients "
                                               "must share a trainable layer)")
        if algorithm.full_batch and self.local_epochs != 1:
            raise ConfigError("local_epochs", f"must be 1 for {self.algorithm} (one full-batch gradient per client)")
        if self.carry_epochs and self.local_steps is None:
            raise ConfigError("carry_epochs", "needs local_steps: only a fixed number of batches per round can carry "
                                              "on where the last round stopped")
        if self.client_weighting != "examples" and algorithm.on_arrays is None:
            raise ConfigError("client_weighting", f"{self.client_weighting!r} needs fedlab's compiled client loop, "
                                                  f"which {self.algorithm} does not use; only 'examples' (TFF's "
                                                  "weighting) is possible")
        if algorithm.own_weighting and self.client_weighting != "examples":
            raise ConfigError("client_weighting", f"must stay 'examples' for {self.algorithm}, which weights the "
                                                  "clients' updates itself")
        if algorithm.own_weighting and getattr(self.algorithm_params, "weight_bound", 0) and not (
                self.user_level_dp or (self.secure_aggregation and self.secure_protocol != "ckks")):
            raise ConfigError("weight_bound", "has no effect without a secure sum (secure_aggregation=True, "
                                              "secure_protocol 'none', 'secagg' or 'secaggplus') or user-level DP; "
                                              "leave it at 0")
        if algorithm.record_dp_extra_steps and getattr(self.algorithm_params, "loss_clip", 0) and \
                self.dp != RECORD_LEVEL:
            raise ConfigError("loss_clip", "has no effect without dp='example' (record-level DP); leave it at 0")
        alike = weighs_alike(self)
        if self.client_weighting == "dataset" and alike:
            raise ConfigError("client_weighting", f"must be 'uniform' or 'examples' (the default) with {alike[0]}, "
                                                  f"whose aggregation weighs every client alike ({alike[1]}), got "
                                                  "'dataset'")
        if algorithm.full_batch and self.local_steps is not None:
            raise ConfigError("local_steps", f"must be unset for {self.algorithm} (one full-batch gradient per client)")
        if PARTITIONERS[self.partition].needs_sites and not data.has_sites:
            with_sites = [d.name for d in (e.component for e in DATASETS.entries()) if d.has_sites]
            raise ConfigError("partition", f"{self.partition!r} needs a dataset with natural clients "
                                           f"({', '.join(with_sites)}), not {self.dataset!r}")
        if self.partition == "natural" and isinstance(data.sites, int) and not isinstance(data.sites, bool) \
                and self.num_clients != data.sites:
            raise ConfigError("num_clients", f"must be {data.sites} for {self.dataset} with the natural (by site) "
                                             "partition")
        if model.images and not data.images:
            images = [d.name for d in (e.component for e in DATASETS.entries()) if d.images]
            raise ConfigError("model", f"{self.model!r} needs an image dataset ({', '.join(images)}), "
                                       f"not {self.dataset!r}")
        table_size = DEVICE_PROFILES[self.device_profile].clients
        if table_size is not None and table_size != self.num_clients:
            raise ConfigError("num_clients", f"must be {table_size} with device_profile {self.device_profile!r} "
                                             f"(its table has {table_size} clients), got {self.num_clients}")
        if self.straggler_policy == "wait" and self.round_deadline is not None:
            raise ConfigError("round_deadline", "has no effect with straggler_policy='wait'; use 'drop' or 'partial', "
                                                "or leave it unset")
        if self.straggler_policy != "wait" and self.round_deadline is None:
            raise ConfigError("round_deadline", f"must be set (simulated seconds > 0) with "
                                                f"straggler_policy={self.straggler_policy!r}")
        self._check_accountant()
        self._check_clip_norm()

    def _check_clip_norm(self) -> None:
        """A norm below float32's resolution at 1 leaves nothing that can move a weight: refused where it is used."""
        users = [name for name, used in (("dp", self.dp != "none"), ("secure_aggregation", self.secure_aggregation),
                                         ("robust", self.robust in ("clip", "zeroing"))) if used]
        if users and self.clip_norm < MIN_CLIP_NORM:
            raise ConfigError("clip_norm", f"must be in [{MIN_CLIP_NORM:.3g}, 1e+06] with {users[0]}={getattr(self, users[0])!r}: "
                                           "below float32's resolution at 1, an update or gradient clipped to it "
                                           "(or one robust='zeroing' keeps) cannot move the model's weights, got "
                                           f"{self.clip_norm:g}")

    def _check_distributed(self) -> None:
        """Distributed DP: the clients' noise shares go through a secure sum of b-bit values (TFF's, or the SecAgg
        protocol's)."""
        what = f"with dp={self.dp!r}"
        if not self.secure_aggregation:
            raise ConfigError("secure_aggregation", f"must be True {what}: each client adds only its share of the "
                                                    "noise, so without a secure sum the server would see every "
                                                    "update under a small fraction of it")
        if self.secure_protocol == "ckks":  # refused below, for every user-level DP
            return
        if self.robust == "zeroing":
            raise ConfigError("robust", f"cannot be 'zeroing' {what}: every zeroed client would send the same "
                                        "vector, and a client's rounding and noise share are keyed by a hash of "
                                        "what it sends, so their shares would be one share repeated")
        if self.quantization_bits < 2:
            raise ConfigError("quantization_bits", f"must be 2..16 {what}: the b bits of the secure sum the "
                                                   f"clients' rounded values and noise shares are added in, got "
                                                   f"{self.quantization_bits}")
        wrong = ddp_check(self.quantization_bits, self.clients_per_round, self.num_clients - len(self.exclude_clients))
        if wrong:
            raise ConfigError(*wrong)
        if self.accountant != "rdp":
            raise ConfigError("accountant", f"must be 'rdp' {what}: the Skellam sum's privacy is accounted by its "
                                            "RDP bound (Agarwal et al. 2021); dp-accounting has no PLD of it")

    def _check_accountant(self) -> None:
        """PLD's privacy-loss grid must fit in memory: a run would compute it after its first rounds."""
        if self.accountant != "pld" or self.noise_multiplier == 0:
            return
        if self.user_level_dp and not AGGREGATORS[self.dp].distributed:  # else refused above
            check_pld(self.noise_multiplier, self.sampling_probability, self.rounds)
        elif self.dp == RECORD_LEVEL:  # a site's rate batch / records (1 for a full batch); the grid hardly
            least = least_pld_noise(1.0 if self.algorithm_entry.full_batch else 0.5, 1)  # depends on it below 1
            if self.noise_multiplier < least:
                raise ConfigError("noise_multiplier", f"must be >= {least:.3g} with accountant='pld' and "
                                                      f"dp={RECORD_LEVEL!r}: with less noise one DP-SGD step's "
                                                      "privacy-loss grid is too large to compute; use "
                                                      f"accountant='rdp', got {self.noise_multiplier:g}")

    def _check_finetune(self, algorithm) -> None:
        if not self.finetune_epochs:
            return
        if self.dp == RECORD_LEVEL:
            raise ConfigError("finetune_epochs", f"must be 0 with dp={RECORD_LEVEL!r}: fine-tuning trains on the "
                                                 "records without DP-SGD and its scores are released, so the "
                                                 "record-level guarantee would not cover them")
        if not self.eval_per_client:
            raise ConfigError("finetune_epochs", "needs eval_per_client=True: the tuned models are scored on each "
                                                 "client's own data")
        if algorithm.personal:
            raise ConfigError("finetune_epochs", f"must be 0 with {self.algorithm}: its clients keep models of "
                                                 "their own, which per-client evaluation scores")

    def _check_task(self, algorithm: Algorithm, data) -> None:
        """What a data set's task rules out: a loss that couples a batch's records has no per-record gradient for
        DP-SGD; labels that are not classes cannot be flipped or dealt out by class; per-client and personalised
        evaluation, fine-tuning and frozen layers score and build classifiers only."""
        if data.task == "classification":
            return
        loss = LOSSES[TASKS[data.task].loss]
        if self.dp == RECORD_LEVEL and not loss.per_example:
            raise ConfigError("dp", f"'example' (DP-SGD) cannot be used on {self.dataset}: its loss {loss.name!r} "
                                    "couples the records of a batch, so no record has a gradient of its own to clip")
        if PARTITIONERS[self.partition].needs_classes:
            raise ConfigError("partition", f"{self.partition!r} deals out by class label; {self.dataset} is a "
                                           f"{data.task} data set without classes (use natural, iid or quantity)")
        if ATTACKS[self.attack].kind == "data" and self.attacker_fraction > 0:
            raise ConfigError("attack", f"{self.attack!r} flips class labels; {self.dataset} is a {data.task} data "
                                        "set without classes (use an update attack)")
        for field, used in (("algorithm", algorithm.personal), ("eval_per_client", self.eval_per_client),
                            ("finetune_epochs", self.finetune_epochs), ("freeze_layers", self.freeze_layers)):
            if used:
                what = f"{self.algorithm!r} (personalised models)" if field == "algorithm" else "is"
                raise ConfigError(field, f"{what} not available for {data.task} data ({self.dataset}) yet: it "
                                         "scores or builds classifiers only")

    def _check_robust(self) -> None:
        """Median and Krum need every update: secure sums hide them (compressed ones are decoded; under DP the
        noise goes on the statistic)."""
        if self.robust_fraction != 0.2 and not uses_fraction(self):
            raise ConfigError("robust_fraction", f"has no effect with robust={self.robust!r}; it is for "
                                                 "trimmed_mean, krum and multikrum")
        if self.robust == "none" or not AGGREGATORS[self.robust].replaces_mean:
            return
        if self.algorithm_entry.own_weighting:
            raise ConfigError("robust", f"{self.robust!r} cannot aggregate {self.algorithm}: its server step is a "
                                        "ratio of two sums over the clients (q-FFL: the sum of the Delta_k over the "
                                        "sum of the h_k), which a statistic of the updates does not give; use "
                                        "robust='clip' or 'zeroing' with it")
        if self.secure_aggregation:
            raise ConfigError("robust", f"{self.robust!r} needs each client's update as it is, which "
                                        "secure_aggregation hides; use robust='clip' or 'zeroing' with it")
        if self.user_level_dp:
            # robust aggregate, then noise calibrated to the statistic's bound (aggregation.dp_statistic)
            if AGGREGATORS[self.robust].sensitivity is None:
                raise ConfigError("robust", f"{self.robust!r} states no bound on how far one update moves it "
                                            "(register_aggregator(..., sensitivity=)), which dp's noise is "
                                            "calibrated to")
            if self.algorithm_entry.side_sums:
                raise ConfigError("robust", f"must be none, clip or zeroing with {self.algorithm} under dp: its "
                                            "control variates' change is released as the noised mean of what the "
                                            "clients send, which a robust statistic is not")
            if "statistic" not in inspect.signature(AGGREGATORS[self.dp].build).parameters:
                raise ConfigError("robust", f"must be none, clip or zeroing with dp={self.dp!r}: its builder takes "
                                            "no statistic= (the robust statistic the noise goes on)")

    def _check_attack(self, algorithm: Algorithm) -> None:
        """An update attack forges updates between fedlab's compiled-loop clients and the aggregator."""
        attack = ATTACKS[self.attack]
        if self.attack_boost != 1 and not attack.boost:
            raise ConfigError("attack_boost", f"must be 1 with attack={self.attack!r}, which it does not change")
        if attack.kind != "update" or self.attacker_fraction == 0:
            return
        if algorithm.on_arrays is None:
            raise ConfigError("attack", f"{self.attack!r} forges updates after fedlab's compiled client loop, which "
                                        f"{self.algorithm} does not have; use attack='label_flip'")
        if self.secure_protocol == "ckks":
            raise ConfigError("secure_protocol", f"cannot be 'ckks' with attack={self.attack!r} yet: CKKS's round "
                                                 "is not split where the attackers forge their updates")

    def _check_async(self, algorithm: Algorithm) -> None:
        """FedBuff's steps take the clients' updates in Python (:mod:`fedlab.rounds.buffered_rounds`) around the config's
        aggregator: what needs a synchronous cohort is refused, saying why."""
        if not self.async_concurrency:
            for name, default in ASYNC_DEFAULTS.items():
                if name != "async_concurrency" and getattr(self, name) != default:
                    raise ConfigError(name, "has no effect with async_concurrency=0 (synchronous rounds); set "
                                            "async_concurrency to the clients training at once, or leave it unset")
            return
        why = None
        if not _steps_on_buffers(algorithm):
            why = ("algorithm", f"must be one whose clients train in fedlab's compiled loop and whose server "
                                f"applies an optimizer to the mean update ({', '.join(_buffered())}), got "
                                f"{self.algorithm!r}")
        elif self.user_level_dp:
            why = ("dp", f"cannot be {self.dp!r}: user-level DP's accounting assumes Poisson-sampled synchronous "
                         "rounds, and an asynchronous client joins when it is free")
        elif self.dp == RECORD_LEVEL:
            why = ("dp", "cannot be 'example' with async_concurrency here: the record-level accounting counts the "
                         "synchronous rounds a client trained in, not its asynchronous jobs")
        elif self.secure_protocol != "none":
            why = ("secure_protocol", "must be none with async_concurrency: the SecAgg/CKKS protocols run their own "
                                      "synchronous round (TFF's secure sums, secure_aggregation=True, sum each "
                                      "step's buffer)")
        elif self.straggler_policy != "wait" or self.over_selection != 1.0:
            field = "straggler_policy" if self.straggler_policy != "wait" else "over_selection"
            why = (field, "must be left at its default: an asynchronous server never waits for a round, so "
                          "deadlines and over-selection do not apply")
        elif self.attacker_fraction > 0 and ATTACKS[self.attack].kind == "update":
            why = ("attack", "must be a data attack (label flipping) with async_concurrency: update attacks forge "
                             "from one synchronous cohort")
        elif self.workers:
            why = ("workers", "cannot be combined with async_concurrency: the buffered steps run in this process")
        if why is not None:
            raise ConfigError(*why)

    def _check_unweighted(self, algorithm: Algorithm, what: str) -> None:
        """An unweighted aggregator (user-level DP's, a secure sum's) must fit the algorithm (:func:`takes_unweighted`)."""
        if takes_unweighted(algorithm):
            return
        secure = what == "secure_aggregation"
        if algorithm.own_weighting and secure and self.secure_protocol == "ckks":
            raise ConfigError("secure_protocol", f"cannot be 'ckks' with {self.algorithm} yet: CKKS's round is not "
                                                 "split where the clients' updates are weighted between training "
                                                 "and the sum; use 'none', 'secagg' or 'secaggplus' with "
                                                 "weight_bound")
        if algorithm.own_weighting and (secure or what.startswith("dp=")):
            bound = getattr(self.algorithm_params, "weight_bound", None)
            setting = "secure aggregation" if secure else what
            where, why = (("a secure sum's fixed range holds", "would tell the server one of them") if secure else
                          ("user-level DP's clip and noise cover (as DP-FedAvg caps each user's weight)",
                           "would move every client's step when one user joins, which the noise does not hide"))
            if not secure and self.dp not in ("fixed", "adaptive") and not AGGREGATORS[self.dp].distributed:
                raise ConfigError("dp", f"must be 'fixed' or 'adaptive' with {self.algorithm}, got {self.dp!r}: its "
                                        "server divides the noised sum of the steps by that of the shares, which "
                                        "needs one L2 clip of each client's whole pair and a mean over the expected "
                                        "clients, what these two give")
            if bound is None:
                raise ConfigError("algorithm", f"cannot be {self.algorithm!r} with {setting}: its server needs each "
                                               f"update's own weight, which {where} only under a public bound (its "
                                               "parameters have no weight_bound)")
            if not bound:
                raise ConfigError("weight_bound", f"must be > 0 with {self.algorithm} and {setting}: each client "
                                                  "sends its step times its weight's share min(h_k, H) / H and that "
                                                  f"share, which {where} only under a public bound H (a bound read "
                                                  f"from the clients' weights {why})")
            if secure and self.quantization_bits < 8:
                raise ConfigError("quantization_bits", f"must be 8 or more with {self.algorithm} on a secure sum, got "
                                                       f"{self.quantization_bits}: a client's share of the weights "
                                                       "goes as at most (2^(b-1) - 1) / 2 units of the b-bit code "
                                                       "(63 at 8 bits, 0 at 2: fewer bits round the shares away), "
                                                       "clipped with its step (b = 0, TFF's 32-bit sum, clips each "
                                                       "coordinate alone)")
            return
        normalized = [e.name for e in ALGORITHMS.entries() if normalized_mean(e.component)]
        also = f"; or {', '.join(normalized)} with local_steps" if normalized and what.startswith("dp=") else ""
        raise ConfigError("algorithm", f"with {what} must be one that takes an unweighted aggregator "
                                       f"({', '.join(_unweighted())}{also}), got {self.algorithm!r}")

    def _check_protocol(self, algorithm: Algorithm) -> None:
        """A secure protocol sums b-bit integers (CKKS: encrypted floats) between fedlab's compiled-loop clients
        and its server."""
        if not self.secure_aggregation:
            raise ConfigError("secure_protocol", f"{self.secure_protocol!r} needs secure_aggregation=True")
        ckks = self.secure_protocol == "ckks"
        if ckks and self.quantization_bits:
            raise ConfigError("quantization_bits", "must be 0 with secure_protocol='ckks': CKKS encrypts the float "
                                                   f"updates as they are, got {self.quantization_bits}")
        if not ckks and self.quantization_bits < 2:
            raise ConfigError("quantization_bits", f"must be 2..16 with secure_protocol={self.secure_protocol!r}: "
                                                   "the protocol sums b-bit integers")
        if self.clients_per_round < 2:
            raise ConfigError("clients_per_round", f"must be 2 or more with secure_protocol={self.secure_protocol!r} "
                                                   "(the sum of one client's update is that update)")
        if algorithm.on_arrays is None:
            raise ConfigError("secure_protocol", f"needs fedlab's compiled client loop, which {self.algorithm} does "
                                                 "not have; use secure_protocol='none'")
        if algorithm.in_driver and (ckks or not (algorithm.personal or algorithm.side_values
                                                 or algorithm.own_weighting)):
            why = ("CKKS's round is not split where the clients keep state of their own" if ckks else
                   "its server reads each client's update between the clients and the server, which the protocol "
                   "hides")
            raise ConfigError("secure_protocol", f"cannot be combined with {self.algorithm} yet: {why}")
        if ckks and self.robust != "none":
            raise ConfigError("robust", "must be none with secure_protocol='ckks': the server sees only ciphertexts "
                                        "and its clients do not clip")
        if self.robust != "none" and AGGREGATORS[self.robust].replaces_mean:
            raise ConfigError("robust", f"{self.robust!r} needs each client's update as it is, which "
                                        f"secure_protocol={self.secure_protocol!r} hides (the server learns only "
                                        "the sum); use robust='clip' with it")
        if self.robust not in ("none", "clip"):
            raise ConfigError("robust", f"must be none or clip with secure_protocol={self.secure_protocol!r} "
                                        "(the protocol's clients already L2-clip to clip_norm)")

    # Derived values ----------------------------------------------------------
    @property
    def algorithm_entry(self) -> Algorithm:
        return ALGORITHMS[self.algorithm]

    @property
    def seeds(self) -> dict[str, int]:
        """The five named seeds, each falling back to ``seed``."""
        return {
            "data": self.seed if self.data_seed is None else self.data_seed,
            "model": self.seed if self.model_seed is None else self.model_seed,
            "sampling": self.seed if self.sampling_seed is None else self.sampling_seed,
            "noise": self.seed if self.noise_seed is None else self.noise_seed,
            "systems": self.seed if self.systems_seed is None else self.systems_seed,
        }

    @property
    def user_level_dp(self) -> bool:
        """DP of whole clients (an aggregator clips and noises updates), not of records inside them."""
        return self.dp not in ("none", RECORD_LEVEL)

    @property
    def effective_async_buffer(self) -> int:
        """Updates per FedBuff server step: ``async_buffer``, or ``async_concurrency`` when unset (0: synchronous)."""
        return self.async_concurrency if self.async_buffer is None else self.async_buffer

    @property
    def effective_delta(self) -> float:
        if self.delta is not None:
            return self.delta
        return 1e-5 if self.dp == RECORD_LEVEL else self.num_clients ** -1.1

    @property
    def sampling_probability(self) -> float:
        """q: the chance a client is asked to join a round (Poisson sampling when dp is on): K/N, or, with
        ``over_selection``, min(1, over_selection x K / N), of whom the first K to finish are used."""
        return min(1.0, self.clients_per_round * self.over_selection / self.num_clients)

    @property
    def effective_server_lr(self) -> float:
        return self.algorithm_entry.server_lr if self.server_lr is None else self.server_lr

    def __getattr__(self, name: str) -> Any:
        # An algorithm's hyperparameters read like fields: config.mu for fedprox.
        params = self.__dict__.get("algorithm_params")
        if params is not None and name in {f.name for f in dataclasses.fields(params)}:
            return getattr(params, name)
        raise AttributeError(f"{type(self).__name__} has no field or {self.__dict__.get('algorithm')} "
                             f"parameter {name!r}")

    # Serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, with the algorithm's hyperparameters in place of ``algorithm_params``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "algorithm_params":
                out.update(self.algorithm_params.to_dict())
            else:
                out[f.name] = getattr(self, f.name)
        return out

    def experiment_dict(self) -> dict[str, Any]:
        """The fields that determine the numbers: all but where it runs (:data:`EXECUTION_FIELDS`), and but the
        asynchronous fields of a synchronous run (added later: a synchronous config keeps its fingerprint, hence
        its checkpoints and its seeded CKKS noise). An asynchronous run's buffer is given as its value."""
        out = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        if not self.async_concurrency:
            for name in ASYNC_DEFAULTS:
                out.pop(name)
        else:
            out["async_buffer"] = self.effective_async_buffer
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExperimentConfig":
        return cls(**values)

    def replace(self, **changes: Any) -> "ExperimentConfig":
        """A copy with ``changes`` (fields or the algorithm's hyperparameters), validated again.

        Switching ``algorithm`` keeps the hyperparameters the new one shares by
        name with the old and takes the new one's defaults for the rest.
        """
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if changes.get("algorithm", self.algorithm) != self.algorithm and "algorithm_params" not in changes:
            target = ALGORITHMS[one_of("algorithm", changes["algorithm"], ALGORITHMS.names())]
            keep = {f.name for f in target.param_fields()}
            values["algorithm_params"] = {k: v for k, v in self.algorithm_params.to_dict().items() if k in keep}
        return type(self)(**{**values, **changes})

    def fingerprint(self) -> str:
        """A short hash of every field but the execution ones: the key of the result cache."""
        return hashlib.sha256(json.dumps(self.experiment_dict(), sort_keys=True).encode()).hexdigest()[:16]


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ExperimentConfig))
reserve_names(FIELD_NAMES)


ASYNC_DEFAULTS = {"async_concurrency": 0, "async_buffer": None, "async_staleness": "polynomial"}


def _steps_on_buffers(algorithm: Algorithm) -> bool:
    """Whether FedBuff's steps can wrap the algorithm: its compiled-loop builder takes a round builder in the
    aggregator slot, and its server step needs no cohort-wide quantity (FedNova's tau_eff)."""
    return getattr(algorithm.on_arrays, "takes_round_builders", False) and not algorithm.normalized


def _buffered() -> list[str]:
    return [e.name for e in ALGORITHMS.entries() if _steps_on_buffers(e.component)]


def takes_unweighted(algorithm) -> bool:
    """Whether an unweighted aggregator (user-level DP's, a secure sum's) fits the algorithm: registered so
    (TFF's unweighted builders), or its round is fedlab's compiled client loop (an ``on_arrays`` builder made by
    :func:`fedlab.algorithms.algorithms.on_arrays`, which passes the aggregator on) with a plain mean of the updates, which
    then weighs every client alike (:func:`fedlab.rounds.array_training.build_array_process`), as DP-FedAvg does.
    Not an algorithm with per-client state or Python between training and aggregation, FedNova's normalised
    weights or q-FFL's own. A personalised algorithm (FedPer, Ditto) keeps only the clients' own models in
    Python between training and aggregation, so its global update takes one: the DP guarantee and the secure sum
    then cover the global model (FedPer's body), while each client's own model never leaves it. SCAFFOLD
    (registered ``unweighted``) sends its control variates' change through the aggregator with its update."""
    plain_mean = not (algorithm.normalized or algorithm.own_weighting)
    compiled_mean = plain_mean and (
        (getattr(algorithm.on_arrays, "takes_round_builders", False) and not algorithm.in_driver)
        or (algorithm.on_arrays is not None and algorithm.personal))
    return algorithm.unweighted or compiled_mean


def normalized_mean(algorithm) -> bool:
    """Whether the algorithm sends FedNova's normalised updates from fedlab's compiled loop with nothing between
    its clients and its server: a plain mean of them (a secure sum's, user-level DP's) is the paper's update with
    p_i = 1/m (:func:`fedlab.rounds.array_training.with_tau_eff`)."""
    return (algorithm.normalized and getattr(algorithm.on_arrays, "takes_round_builders", False)
            and not (algorithm.in_driver or algorithm.own_weighting))


def _unweighted() -> list[str]:
    return [e.name for e in ALGORITHMS.entries() if takes_unweighted(e.component)]
