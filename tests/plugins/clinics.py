"""A user's own components, as a plugin module: what tests/test_bring_your_own.py registers and runs."""

import dataclasses

import numpy as np

import fedlab as fl


@fl.register_dataset("toy_clinics", sites=3)
def toy_clinics(*, seed, test_fraction):
    """Three clinics of a linearly separable toy problem."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 5))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0, 1.0]) > 0).astype(int)
    return fl.Dataset.from_arrays("toy_clinics", x, y, sites=np.arange(300) % 3, seed=seed,
                                  test_fraction=test_fraction)


@fl.register_model("toy_linear")
def toy_linear(shape: fl.DataShape, seed: int):
    """A linear model with a zero start (so hand computations are easy)."""
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(shape.num_features,)),
                                tf.keras.layers.Dense(shape.num_outputs, kernel_initializer="zeros")])


@dataclasses.dataclass(frozen=True)
class ScaledParams(fl.AlgorithmParams):
    scale: float = fl.hparam(1.0, low=0.0, high=2.0, low_open=True, help="server step = scale * mean update")


@fl.register_algorithm("scaled_fedavg", params=ScaledParams, paper="a test algorithm", unweighted=True)
def scaled_fedavg(model, *, client_lr, server_lr, params, model_aggregator):
    """FedAvg whose server applies scale * the mean update."""
    import tensorflow_federated as tff

    sgd = tff.learning.optimizers.build_sgdm
    build = (tff.learning.algorithms.build_unweighted_fed_avg
             if isinstance(model_aggregator, tff.aggregators.UnweightedAggregationFactory)
             else tff.learning.algorithms.build_weighted_fed_avg)
    return build(model, client_optimizer_fn=sgd(client_lr), server_optimizer_fn=sgd(server_lr * params.scale),
                 model_aggregator=model_aggregator)


@fl.register_partitioner("round_robin")
def round_robin(config, site_ids=None):
    """Example i goes to client i mod N."""

    class RoundRobin(fl.Partitioner):
        def _partition(self, labels):
            return [np.arange(c, len(labels), self.num_partitions) for c in range(self.num_partitions)]

    return RoundRobin(config.num_clients, seed=config.seeds["data"])
