"""Algorithm builders: thin, named wrappers over ``tff.learning.algorithms``.

Every builder takes a :class:`~fedlab.models.ModelSpec` and keyword-only
hyperparameters and returns a ``tff.learning.templates.LearningProcess``.
``model_aggregator`` is where differential privacy, secure aggregation and
compression plug in (any ``tff.aggregators`` weighted factory).
"""

from __future__ import annotations

from typing import Any, Optional

from .models import ModelSpec
from .runtime import tff


def build_fedavg(spec: ModelSpec, *, client_lr: float, server_lr: float = 1.0, server_momentum: Optional[float] = None,
                 model_aggregator: Any = None):
    """Federated Averaging (McMahan et al. 2017, arXiv:1602.05629), example-weighted.

    With ``server_momentum`` this is FedAvgM (Hsu et al. 2019, arXiv:1909.06335).
    An unweighted ``model_aggregator`` (the DP factories) gives unweighted
    FedAvg: each client's update counts once, as user-level DP requires.
    """
    t = tff()
    return _fed_avg_builder(model_aggregator)(
        spec.tff_model(),
        client_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=client_lr),
        server_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=server_lr, momentum=server_momentum),
        model_aggregator=model_aggregator,
    )


def _fed_avg_builder(model_aggregator):
    t = tff()
    if isinstance(model_aggregator, t.aggregators.UnweightedAggregationFactory):
        return t.learning.algorithms.build_unweighted_fed_avg
    return t.learning.algorithms.build_weighted_fed_avg


def build_fedavgm(spec: ModelSpec, *, client_lr: float, server_lr: float = 1.0, server_momentum: float = 0.9,
                  model_aggregator: Any = None):
    """FedAvg with server momentum (Hsu, Qi and Brown 2019, arXiv:1909.06335)."""
    return build_fedavg(spec, client_lr=client_lr, server_lr=server_lr, server_momentum=server_momentum,
                        model_aggregator=model_aggregator)


def build_fedsgd(spec: ModelSpec, *, client_lr: float, model_aggregator: Any = None):
    """Federated SGD (McMahan et al. 2017): one full-batch gradient per client, step ``client_lr``.

    Equivalent to FedAvg with E = 1 and B = infinity; the averaged gradient is
    applied at the server with learning rate ``client_lr`` (the paper's eta).
    """
    t = tff()
    return t.learning.algorithms.build_fed_sgd(
        spec.tff_model(),
        server_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=client_lr),
        model_aggregator=model_aggregator,
    )


def build_fedprox(spec: ModelSpec, *, client_lr: float, mu: float, server_lr: float = 1.0,
                  model_aggregator: Any = None):
    """FedProx (Li et al. 2020, arXiv:1812.06127): local loss + mu/2 ||w - w_server||^2.

    Uses :mod:`fedlab.fedprox`, which corrects the sign of TFF 0.87's proximal term.
    """
    from .fedprox import build_weighted_fed_prox

    t = tff()
    return build_weighted_fed_prox(
        spec.tff_model(),
        proximal_strength=mu,
        client_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=client_lr),
        server_optimizer_fn=t.learning.optimizers.build_sgdm(learning_rate=server_lr),
        model_aggregator=model_aggregator,
    )


def build_fedopt(spec: ModelSpec, *, server_optimizer: str, client_lr: float, server_lr: float,
                 server_epsilon: float = 1e-3, model_aggregator: Any = None):
    """FedAdam, FedYogi, FedAdagrad (Reddi et al. 2021, arXiv:2003.00295).

    ``server_epsilon`` is the paper's adaptivity tau.
    """
    t = tff()
    opt = t.learning.optimizers
    builders = {
        "adam": lambda: opt.build_adam(learning_rate=server_lr, epsilon=server_epsilon),
        "yogi": lambda: opt.build_yogi(learning_rate=server_lr, epsilon=server_epsilon),
        "adagrad": lambda: opt.build_adagrad(learning_rate=server_lr, epsilon=server_epsilon),
    }
    if server_optimizer not in builders:
        raise ValueError(f"server_optimizer: must be one of {', '.join(builders)}; got {server_optimizer!r}")
    return _fed_avg_builder(model_aggregator)(
        spec.tff_model(),
        client_optimizer_fn=opt.build_sgdm(learning_rate=client_lr),
        server_optimizer_fn=builders[server_optimizer](),
        model_aggregator=model_aggregator,
    )


def process_key(config, spec: ModelSpec) -> tuple:
    """What a built process depends on; configs with the same key share one process.

    Data, partition, clients, epochs, batch size, rounds and seeds are not in
    it: they change the data fed to ``next``, not the computation.
    """
    a = config.algorithm
    hyper: tuple = (config.client_lr,)
    if a in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        hyper += (config.effective_server_lr,)
    if a == "fedprox":
        hyper += (config.mu,)
    if a == "fedavgm":
        hyper += (config.server_momentum,)
    if a in ("fedadam", "fedyogi", "fedadagrad"):
        hyper += (config.server_epsilon,)
    return (spec, a, hyper, aggregator_key(config))


def aggregator_key(config) -> tuple:
    from .aggregation import aggregator_key as key

    return key(config)


def make_aggregator(config):
    """The ``tff.aggregators`` factory the config asks for (see :mod:`fedlab.aggregation`)."""
    from .aggregation import make_aggregator as make

    return make(config)


def build_process(config, spec: ModelSpec, *, model_aggregator: Any = None):
    """The learning process for ``config.algorithm`` with the config's hyperparameters and aggregator."""
    a = config.algorithm
    if model_aggregator is None:
        model_aggregator = make_aggregator(config)
    common = dict(client_lr=config.client_lr, model_aggregator=model_aggregator)
    if a == "fedavg":
        return build_fedavg(spec, server_lr=config.effective_server_lr, **common)
    if a == "fedavgm":
        return build_fedavgm(spec, server_lr=config.effective_server_lr, server_momentum=config.server_momentum,
                             **common)
    if a == "fedsgd":
        return build_fedsgd(spec, **common)
    if a == "fedprox":
        return build_fedprox(spec, mu=config.mu, server_lr=config.effective_server_lr, **common)
    if a in ("fedadam", "fedyogi", "fedadagrad"):
        return build_fedopt(spec, server_optimizer=a[3:], server_lr=config.effective_server_lr,
                            server_epsilon=config.server_epsilon, **common)
    raise ValueError(f"algorithm: unknown {a!r}")


_PROCESS_CACHE: dict[tuple, Any] = {}


def get_process(config, spec: ModelSpec):
    """A built process from the in-memory cache, building it (about 4 s) only once per key."""
    key = process_key(config, spec)
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = build_process(config, spec)
    return _PROCESS_CACHE[key]


def clear_process_cache() -> None:
    _PROCESS_CACHE.clear()


def process_cache_size() -> int:
    return len(_PROCESS_CACHE)
