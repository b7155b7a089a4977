"""Federated algorithms: named builders of TFF learning processes, with their own hyperparameters.

An algorithm is a builder registered with :func:`register_algorithm`::

    @fl.register_algorithm("fedprox", params=FedProxParams, paper="Li et al. 2020")
    def build(model, *, client_lr, server_lr, params, model_aggregator):
        return ...  # a tff.learning.templates.LearningProcess

``model`` is what TFF's builders take (a functional model, or a Keras-model
function when layers are frozen and the algorithm has no compiled loop); ``params`` an instance of the algorithm's
frozen :class:`AlgorithmParams` dataclass, whose fields (declared with
:func:`hparam`) validate themselves and become config fields, command-line
options, sweep axes and history columns. ``model_aggregator`` is where
differential privacy, secure aggregation and compression plug in (any
``tff.aggregators`` factory; an unweighted one only when the algorithm is
registered with ``unweighted=True``).

fedlab's own algorithms below are registered through the same decorator.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional

from .fedprox import build_weighted_fed_prox
from .personal import build_ditto as build_ditto_on_arrays, build_fedper as build_fedper_on_arrays
from .qffl import build_qffl as build_qffl_on_arrays
from ..core.registry import Registry, decorator
from .scaffold import build_scaffold as build_scaffold_on_arrays
from ..core.runtime import tff
from ..core.validation import ConfigError, boolean, integer, number

_META = "fedlab"


@dataclasses.dataclass(frozen=True)
class HParam:
    """How a hyperparameter is checked and shown: bounds, scale, help."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    log: bool = False
    help: str = ""


def hparam(default: Any, *, low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
           high_open: bool = False, log: bool = False, help: str = "") -> Any:
    """A hyperparameter field of an :class:`AlgorithmParams` dataclass.

    Its type comes from the annotation (float, int or bool); ``low``/``high``
    bound it (``*_open`` excludes the end); ``log`` asks widgets for a log
    slider; ``help`` is what ``--help`` and ``python -m fedlab list`` show.
    NaN and infinity are refused.
    """
    return dataclasses.field(default=default, metadata={_META: HParam(low, high, low_open, high_open, log, help)})


@dataclasses.dataclass(frozen=True)
class AlgorithmParams:
    """Base of every algorithm's hyperparameters: a frozen dataclass that validates itself.

    Subclass it with :func:`hparam` fields; override ``check`` for rules that
    tie fields together (raise :class:`~fedlab.ConfigError` naming the field).
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_hparam(f, getattr(self, f.name)))
        self.check()

    def check(self) -> None:
        """Cross-field rules; the default has none."""

    def replace(self, **changes: Any) -> "AlgorithmParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class NoParams(AlgorithmParams):
    """An algorithm without hyperparameters of its own."""


def hparam_spec(f: dataclasses.Field) -> HParam:
    return f.metadata.get(_META, HParam())


def hparam_type(f: dataclasses.Field) -> type:
    """float, int or bool, from the field's annotation (a string under ``from __future__ import annotations``)."""
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {"float": float, "int": int, "bool": bool}.get(name.replace("builtins.", ""), float)


def check_hparam(f: dataclasses.Field, value: Any) -> Any:
    spec, kind = hparam_spec(f), hparam_type(f)
    if kind is bool:
        return boolean(f.name, value)
    if kind is int:
        return integer(f.name, value, None if spec.low is None else int(spec.low),
                       None if spec.high is None else int(spec.high))
    return number(f.name, value, spec.low, spec.high, low_open=spec.low_open, high_open=spec.high_open)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A registered algorithm: its builder, its hyperparameters' type and what it supports.

    ``server_lr``: the server learning rate when a config leaves it unset;
    ``unweighted``: accepts an unweighted aggregator (user-level DP, secure
    aggregation); ``full_batch``: each client takes one full-batch gradient
    step (FedSGD). ``on_arrays``: optionally,
    a second builder of the same algorithm whose clients train on their
    arrays in one compiled loop (:mod:`fedlab.rounds.array_training`), taking also
    ``client_weighting`` and ``example_dp`` (record-level DP-SGD, as ``(z, C)``
    or None); fedlab uses it whenever there is one, frozen layers too. ``normalized``:
    FedNova's normalised averaging: each round's client inputs carry tau_eff
    (:func:`fedlab.rounds.array_training.with_tau_eff`). ``own_weighting``: the algorithm weights the clients'
    updates itself (q-FFL), so ``client_weighting`` must stay at its default. ``in_driver``: part of its
    round runs in Python in this process (:mod:`fedlab.rounds.split_rounds`); on workers its TFF computations
    run there, its Python stage here.
    ``personal``: each client ends with a model of its own (FedPer, Ditto), which per-client evaluation scores
    (its process has ``client_weights(state, client)``), so local fine-tuning is not added to it.
    ``record_dp_gap``: why DP-SGD in every client (``dp="example"``) would not cover everything the algorithm
    computes from a client's records ("" when it does), so that combination is refused with this reason.
    ``record_dp_passes``: the DP-SGD passes a client makes over its records in a round (Ditto: 2, the global
    and its own model), each of the plan's steps: the record-level accounting counts them all.
    ``record_dp_extra_steps``: what else a client releases from its records in a round under record-level DP,
    counted as that many more DP-SGD steps: each a Poisson sample at DP-SGD's rate whose per-record values are
    clipped and summed and the sum noised at DP-SGD's noise multiplier (q-FFL's noised loss: 1).
    ``side_values``: what a split-round algorithm whose server reads more than the updates (SCAFFOLD: its
    control variates) has its clients send beside their update through an aggregator that hides the updates,
    so that its server needs only sums ("" if it reads nothing more, or cannot do with sums); ``side_sums``: how
    many model-sized vectors that is, clipped, rounded and noised with the update, and as many the server sends
    every client (SCAFFOLD's c), which the byte count takes both ways on every path.
    """

    name: str
    build: Callable[..., Any]
    params: type = NoParams
    server_lr: float = 1.0
    unweighted: bool = False
    full_batch: bool = False
    on_arrays: Optional[Callable[..., Any]] = None
    normalized: bool = False
    own_weighting: bool = False
    in_driver: bool = False
    personal: bool = False
    record_dp_gap: str = ""
    record_dp_passes: int = 1
    side_sums: int = 0
    side_values: str = ""
    record_dp_extra_steps: int = 0

    def param_fields(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.params)

    def make_params(self, values: Any = None) -> AlgorithmParams:
        """``values`` (None, a dict, or an instance of ``params``) as a validated instance of ``params``."""
        if values is None:
            return self.params()
        if isinstance(values, self.params):
            return values
        if isinstance(values, AlgorithmParams):
            raise ConfigError("algorithm_params", f"{type(values).__name__} are not the parameters of algorithm "
                                                  f"{self.name!r} ({self.params.__name__})")
        if not isinstance(values, dict):
            raise ConfigError("algorithm_params", f"must be a {self.params.__name__} or a dict, got {values!r}")
        names = {f.name for f in self.param_fields()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(unknown[0], f"is not a parameter of algorithm {self.name!r} "
                                          f"(its parameters: {', '.join(sorted(names)) or 'none'})")
        return self.params(**values)


ALGORITHMS: Registry[Algorithm] = Registry("algorithm", "algorithm")


def register_algorithm(name: str, *, params: type = NoParams, paper: Optional[str] = None, server_lr: float = 1.0,
                       unweighted: bool = False, full_batch: bool = False, functional_only: Optional[bool] = None,
                       on_arrays: Optional[Callable[..., Any]] = None, normalized: bool = False,
                       own_weighting: bool = False, in_driver: bool = False, personal: bool = False,
                       record_dp_gap: str = "", record_dp_passes: int = 1, side_sums: int = 0,
                       side_values: str = "", record_dp_extra_steps: int = 0, replace: bool = False):
    """Registers ``build(model, *, client_lr, server_lr, params, model_aggregator)`` under ``name``.

    ``params``: a frozen :class:`AlgorithmParams` subclass with the algorithm's
    own hyperparameters (their names must not clash with config fields).
    ``functional_only`` is accepted for algorithms registered before frozen
    layers ran on functional models; it has no effect and warns.
    """
    if functional_only is not None:
        warnings.warn("register_algorithm: functional_only has no effect (frozen layers run on functional models "
                      "now); leave it out", DeprecationWarning, stacklevel=2)
    if isinstance(record_dp_passes, bool) or not isinstance(record_dp_passes, int) or record_dp_passes < 1:
        raise ValueError(f"record_dp_passes: must be an integer >= 1, got {record_dp_passes!r}")
    if isinstance(record_dp_extra_steps, bool) or not isinstance(record_dp_extra_steps, int) or \
            record_dp_extra_steps < 0:
        raise ValueError(f"record_dp_extra_steps: must be an integer >= 0, got {record_dp_extra_steps!r}")
    if not (isinstance(params, type) and issubclass(params, AlgorithmParams) and dataclasses.is_dataclass(params)):
        raise TypeError(f"params: must be a dataclass subclassing fedlab.AlgorithmParams, got {params!r}")
    from_fields = {f.name for f in dataclasses.fields(params)}
    reserved = _reserved_names()
    if from_fields & reserved:
        raise ValueError(f"params: {', '.join(sorted(from_fields & reserved))} would shadow a config field")
    try:
        params()
    except ConfigError as err:
        raise ValueError(f"params: the defaults of {params.__name__} are invalid ({err})") from None
    return decorator(ALGORITHMS, name, lambda build: Algorithm(name, build, params, float(server_lr), unweighted,
                                                               full_batch, on_arrays, normalized,
                                                               own_weighting, in_driver, personal,
                                                               record_dp_gap, int(record_dp_passes),
                                                               int(side_sums), side_values,
                                                               int(record_dp_extra_steps)),
                     paper=paper, replace=replace)


_RESERVED: set[str] = set()


def reserve_names(names) -> None:
    """The config's own field names, which no hyperparameter may take (set by :mod:`fedlab.experiment.config`)."""
    _RESERVED.update(names)


def _reserved_names() -> set[str]:
    return _RESERVED


# fedlab's algorithms ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FedProxParams(AlgorithmParams):
    mu: float = hparam(0.01, low=0.0, high=1000.0, log=True, help="proximal strength mu (local loss + mu/2 ||w - w_server||^2)")


@dataclasses.dataclass(frozen=True)
class FedAvgMParams(AlgorithmParams):
    server_momentum: float = hparam(0.9, low=0.0, high=1.0, high_open=True, help="server momentum beta")


@dataclasses.dataclass(frozen=True)
class FedAdagradParams(AlgorithmParams):
    server_epsilon: float = hparam(1e-3, low=0.0, high=10.0, low_open=True, log=True,
                                   help="adaptivity tau: x += lr m / (sqrt(v) + tau)")
    beta1: float = hparam(0.9, low=0.0, high=1.0, high_open=True, help="momentum of the mean update (m)")


@dataclasses.dataclass(frozen=True)
class FedOptParams(FedAdagradParams):
    beta2: float = hparam(0.99, low=0.0, high=1.0, high_open=True, help="decay of the second moment v (adam, yogi)")


@dataclasses.dataclass(frozen=True)
class TffAdaptiveParams(AlgorithmParams):
    server_epsilon: float = hparam(1e-3, low=0.0, high=10.0, low_open=True, log=True,
                                   help="epsilon of TFF's optimizer")


def fed_avg_builder(model_aggregator):
    """TFF's weighted FedAvg builder, or the unweighted one for an unweighted aggregator (DP, secure sums)."""
    t = tff()
    if isinstance(model_aggregator, t.aggregators.UnweightedAggregationFactory):
        return t.learning.algorithms.build_unweighted_fed_avg
    return t.learning.algorithms.build_weighted_fed_avg


def sgd(learning_rate: float, momentum: Optional[float] = None):
    return tff().learning.optimizers.build_sgdm(learning_rate=learning_rate, momentum=momentum)


def on_arrays(server_optimizer: Callable[[float, Any], Any], *, proximal: Optional[str] = None,
              full_batch: bool = False, normalized: bool = False):
    """The ``on_arrays`` builder of an algorithm that trains clients with SGD and applies ``server_optimizer``.

    ``server_optimizer(server_lr, params)`` builds the server's TFF optimizer;
    ``proximal`` names the hyperparameter holding FedProx's mu.
    """

    def build(model, *, client_lr: float, server_lr: float, params: Any = None, model_aggregator: Any = None,
              client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
        from ..rounds.array_training import build_array_process
        from ..rounds.secure_rounds import ProtocolSum
        from ..rounds.split_rounds import SplitRounds

        if isinstance(model_aggregator, ProtocolSum):  # the protocol's round is split at the clients' ring vectors
            model_aggregator = SplitRounds(model_aggregator)
        return build_array_process(
            model, client_lr=client_lr,
            server_optimizer=server_optimizer(client_lr if full_batch else server_lr, params),
            model_aggregator=model_aggregator, full_batch=full_batch, weighting=client_weighting,
            proximal_strength=getattr(params, proximal) if proximal else 0.0, example_dp=example_dp,
            normalized=normalized)

    build.__module__ = __name__
    build.takes_round_builders = True  # its aggregator may build a round of its own (protocols, attacks, FedBuff)
    return build


def compiled_loop_only(name: str, doc: str):
    """The ``build`` of an algorithm that exists only on fedlab's compiled client loop (its ``on_arrays``): TFF's
    stock client work cannot express it, and fedlab always builds it with its ``on_arrays`` builder."""

    def build(model, *, client_lr: float, server_lr: float = 1.0, params: Any = None, model_aggregator: Any = None):
        raise ConfigError("algorithm", f"{name} runs only on fedlab's compiled client loop (its "
                                       "on_arrays builder)")

    build.__doc__ = doc
    build.__module__ = __name__
    build.__qualname__ = build.__name__ = f"build_{name}"
    return build


@register_algorithm("fedavg", paper="McMahan et al. 2017, arXiv:1602.05629", unweighted=True,
                    on_arrays=on_arrays(lambda lr, p: sgd(lr)))
def build_fedavg(model, *, client_lr: float, server_lr: float = 1.0, params: Any = None,
                 model_aggregator: Any = None):
    """Federated Averaging: client SGD, example-weighted mean of the updates, server SGD.

    With an unweighted ``model_aggregator`` (the DP factories) each client's
    update counts once, as user-level DP requires.
    """
    return fed_avg_builder(model_aggregator)(
        model, client_optimizer_fn=sgd(client_lr), server_optimizer_fn=sgd(server_lr),
        model_aggregator=model_aggregator)


@register_algorithm("fedavgm", params=FedAvgMParams, paper="Hsu, Qi and Brown 2019, arXiv:1909.06335",
                    unweighted=True, on_arrays=on_arrays(lambda lr, p: sgd(lr, p.server_momentum)))
def build_fedavgm(model, *, client_lr: float, server_lr: float = 1.0, params: FedAvgMParams = FedAvgMParams(),
                  model_aggregator: Any = None):
    """FedAvg with server momentum: v <- beta v + mean update, w <- w + server_lr v."""
    return fed_avg_builder(model_aggregator)(
        model, client_optimizer_fn=sgd(client_lr),
        server_optimizer_fn=sgd(server_lr, params.server_momentum), model_aggregator=model_aggregator)


@register_algorithm("fedsgd", paper="McMahan et al. 2017, arXiv:1602.05629", full_batch=True,
                    on_arrays=on_arrays(lambda lr, p: sgd(lr), full_batch=True))
def build_fedsgd(model, *, client_lr: float, server_lr: float = 1.0, params: Any = None,
                 model_aggregator: Any = None):
    """Federated SGD: one full-batch gradient per client, the weighted mean applied with step client_lr.

    Equivalent to FedAvg with E = 1 and B = infinity; the paper's eta is
    ``client_lr``, applied at the server (``server_lr`` is not used).
    """
    return tff().learning.algorithms.build_fed_sgd(model, server_optimizer_fn=sgd(client_lr),
                                                   model_aggregator=model_aggregator)


@register_algorithm("fedprox", params=FedProxParams, paper="Li et al. 2020, arXiv:1812.06127",
                    on_arrays=on_arrays(lambda lr, p: sgd(lr), proximal="mu"))
def build_fedprox(model, *, client_lr: float, server_lr: float = 1.0, params: FedProxParams = FedProxParams(),
                  model_aggregator: Any = None):
    """FedProx: clients minimise local loss + mu/2 ||w - w_server||^2.

    Uses :mod:`fedlab.algorithms.fedprox`, which corrects the sign of TFF 0.87's proximal term.
    """
    return build_weighted_fed_prox(model, proximal_strength=params.mu, client_optimizer_fn=sgd(client_lr),
                                   server_optimizer_fn=sgd(server_lr), model_aggregator=model_aggregator)


register_algorithm("fednova", paper="Wang et al. 2020, arXiv:2007.07481", normalized=True,
                   on_arrays=on_arrays(lambda lr, p: sgd(lr), normalized=True))(compiled_loop_only("fednova", """\
FedNova with local SGD: each update divided by its local steps tau_i, the weighted mean scaled by tau_eff.

Only on fedlab's compiled client loop (:func:`fedlab.rounds.array_training.build_client_update`): TFF 0.87's
client work cannot see the round's tau_eff. Clients that did more steps (a faster device, more data,
a longer deadline) no longer pull the model towards their own optimum."""))

register_algorithm("scaffold", paper="Karimireddy et al. 2020, ICML, arXiv:1910.06378",
                   in_driver=True, unweighted=True, side_sums=1, side_values="its control variates",
                   on_arrays=build_scaffold_on_arrays)(compiled_loop_only("scaffold", """\
SCAFFOLD: client and server control variates correct each local step for the client's drift.

Only on fedlab's compiled client loop (:mod:`fedlab.algorithms.scaffold`): TFF 0.87's learning templates keep no
per-client state, and each client's control variate must outlive the round."""))


@dataclasses.dataclass(frozen=True)
class FedPerParams(AlgorithmParams):
    personal_layers: int = hparam(1, low=1, high=100, help="last weight layers each client keeps (never sent)")


register_algorithm("fedper", params=FedPerParams, paper="Arivazhagan et al. 2019, arXiv:1912.00818",
                   in_driver=True, personal=True,
                   on_arrays=build_fedper_on_arrays)(compiled_loop_only("fedper", """\
FedPer: FedAvg on a shared body; the last personal_layers layers stay on each client (personalisation).

Only on fedlab's compiled client loop (:mod:`fedlab.algorithms.personal`): each client's head must outlive the round.
Its metric is each client's own model on its own held-out data (eval_per_client, local_test_fraction)."""))


@dataclasses.dataclass(frozen=True)
class DittoParams(AlgorithmParams):
    lam: float = hparam(0.1, low=0.0, high=1000.0, log=True,
                        help="Ditto's lambda: personal loss + lambda/2 ||v - w_global||^2")


register_algorithm("ditto", params=DittoParams, paper="Li et al. 2021, ICML, arXiv:2012.04221",
                   in_driver=True, personal=True, record_dp_passes=2,
                   on_arrays=build_ditto_on_arrays)(compiled_loop_only("ditto", """\
Ditto: FedAvg, and each client's own model trained on its loss plus lambda/2 ||v - w_global||^2.

Only on fedlab's compiled client loop (:mod:`fedlab.algorithms.personal`): each client's model must outlive the
round. Its metric is each client's own model on its own held-out data (eval_per_client, local_test_fraction)."""))


@dataclasses.dataclass(frozen=True)
class QFFLParams(AlgorithmParams):
    q: float = hparam(1.0, low=0.0, high=100.0, help="fairness q: a client's loss counts as F^(q+1); 0 is FedAvg")
    weight_bound: float = hparam(0.0, low=0.0, high=1e9,
                                 help="with secure aggregation or user-level DP: the public bound H on a client's "
                                      "weight h_k (each sends its step times its share min(h_k, H) / H and that "
                                      "share); 0: unset")
    loss_clip: float = hparam(0.0, low=0.0, high=1e6,
                              help="with dp='example': the bound B on each record's loss in q-FFL's noised loss "
                                   "(a Poisson sample of the records at DP-SGD's rate, their losses clipped to B and "
                                   "summed, the sum noised by z B, over the expected batch); 0: unset")


register_algorithm("qffl", params=QFFLParams, paper="Li et al. 2020, ICLR, arXiv:1905.10497 (q-FedAvg)",
                   own_weighting=True, in_driver=True, record_dp_extra_steps=1,
                   on_arrays=build_qffl_on_arrays)(compiled_loop_only(
    "qffl", """\
q-FFL by q-FedAvg: updates weighted by the clients' losses to the power q (fairer accuracy over clients).

Only on fedlab's compiled client loop (:mod:`fedlab.algorithms.qffl`): each client's loss before training scales
its update between the clients and the server."""))


def _tff_adaptive(name: str):
    def make(server_lr: float, params: TffAdaptiveParams):
        opt = tff().learning.optimizers
        build_fn = {"adam": opt.build_adam, "yogi": opt.build_yogi, "adagrad": opt.build_adagrad}[name]
        return build_fn(learning_rate=server_lr, epsilon=params.server_epsilon)

    return make


def _reddi(rule: str):
    def make(server_lr: float, params: FedAdagradParams):
        from .fedopt import reddi_optimizer

        return reddi_optimizer(rule, learning_rate=server_lr, beta_1=params.beta1,
                               beta_2=getattr(params, "beta2", 0.0), tau=params.server_epsilon)

    return make


def _server_optimizer_algorithm(make_server_optimizer, doc: str):
    def build(model, *, client_lr: float, server_lr: float, params: Any = None, model_aggregator: Any = None):
        return fed_avg_builder(model_aggregator)(
            model, client_optimizer_fn=sgd(client_lr), server_optimizer_fn=make_server_optimizer(server_lr, params),
            model_aggregator=model_aggregator)

    build.__doc__ = doc
    build.__module__ = __name__
    return build


_REDDI = "Reddi et al. 2021, arXiv:2003.00295 (Algorithm 2)"
for _rule, _lr in (("adam", 0.01), ("yogi", 0.01), ("adagrad", 0.1)):
    _name = f"fed{_rule}"
    register_algorithm(_name, params=FedAdagradParams if _rule == "adagrad" else FedOptParams, paper=_REDDI,
                       server_lr=_lr, unweighted=True, on_arrays=on_arrays(_reddi(_rule)))(
        _server_optimizer_algorithm(_reddi(_rule), (
            f"Fed{_rule.capitalize()}: client SGD, the mean update applied by Reddi et al.'s server "
            f"{_rule.capitalize()} (no bias correction, tau outside the root, beta1 momentum; fedlab.algorithms.fedopt).")))
    register_algorithm(f"{_name}_tff", params=TffAdaptiveParams, paper=f"{_REDDI}, with TFF's optimizer",
                       server_lr=_lr, unweighted=True, on_arrays=on_arrays(_tff_adaptive(_rule)))(
        _server_optimizer_algorithm(_tff_adaptive(_rule), (
            f"Fed{_rule.capitalize()} with TFF 0.87's build_{_rule} at the server "
            f"({'bias-corrected, ' if _rule != 'adagrad' else ''}not Reddi et al.'s Algorithm 2).")))


def build(algorithm: str, model, *, client_lr: float, server_lr: Optional[float] = None, params: Any = None,
          model_aggregator: Any = None):
    """The learning process of registered ``algorithm`` (server_lr None: the algorithm's default)."""
    entry = ALGORITHMS[algorithm]
    return entry.build(model, client_lr=client_lr, server_lr=entry.server_lr if server_lr is None else server_lr,
                       params=entry.make_params(params), model_aggregator=model_aggregator)
