"""Models: Keras builders by name, and what TFF needs of them.

A model builder takes the data's shape and a seed and returns an uncompiled
Keras model from flat float32 features to logits: one per class, or a single
logit for two classes (logistic regression with a sigmoid, trained with binary
cross-entropy). Builders are registered with :func:`register_model`, fedlab's
own (``logreg``, ``2nn``, ``cnn``) exactly as a user's. :class:`ModelSpec`
turns one into the TFF functional model the algorithms train.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
from typing import Callable, Optional

import numpy as np

from ..core.registry import Registry, decorator
from ..core.runtime import held
from ..data.tasks import LOSSES, TASKS


@dataclasses.dataclass(frozen=True)
class DataShape:
    """What a model builder is told about the data."""

    num_features: int
    num_classes: int
    image_shape: Optional[tuple[int, int]] = None  # (height, width) when features are a flattened image
    task: str = "classification"  # a fedlab.data.tasks name: what the labels mean

    @property
    def num_outputs(self) -> int:
        """Outputs the model must have: for classification 1 logit for two classes, else one per class; for
        survival 1 (the risk score)."""
        return TASKS[self.task].num_outputs(self.num_classes)


@dataclasses.dataclass(frozen=True)
class ModelBuilder:
    """A registered model: ``build(shape, seed) -> tf.keras.Model``.

    ``images``: needs image data (``shape.image_shape``); ``weight_layers``:
    layers with weights, output included, when known without building (bounds
    ``freeze_layers`` before TensorFlow is imported).
    """

    name: str
    build: Callable
    images: bool = False
    weight_layers: Optional[int] = None


MODELS: Registry[ModelBuilder] = Registry("model", "model")


def register_model(name: str, *, images: bool = False, weight_layers: Optional[int] = None,
                   paper: Optional[str] = None, replace: bool = False):
    """Registers ``build(shape: DataShape, seed: int) -> tf.keras.Model`` under ``name``.

    The model maps ``shape.num_features`` flat float32 inputs to
    ``shape.num_outputs`` logits; its initial weights depend only on ``seed``.
    """
    return decorator(MODELS, name, lambda build: ModelBuilder(name, build, images, weight_layers),
                     paper=paper, replace=replace)


def _glorot(seed: int, offset: int):
    import tensorflow as tf

    return tf.keras.initializers.GlorotUniform(seed=seed * 1000 + offset)


@register_model("logreg", weight_layers=1)
def logreg(shape: DataShape, seed: int):
    """Logistic regression: one dense layer (sigmoid unit for two classes, softmax otherwise)."""
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential([layers.InputLayer(input_shape=(shape.num_features,)),
                                layers.Dense(shape.num_outputs, kernel_initializer=_glorot(seed, 0))])


@register_model("logreg_torch", weight_layers=1, paper="FLamby's Fed-Heart-Disease Baseline (nn.Linear)")
def logreg_torch(shape: DataShape, seed: int):
    """Logistic regression initialised as PyTorch's nn.Linear: weights and bias from U(-1/sqrt(d), 1/sqrt(d)).

    FLamby's Fed-Heart-Disease model; fedlab's ``logreg`` starts from
    Glorot-uniform weights and a zero bias (about 2.4 times wider for 13 features).
    """
    import tensorflow as tf

    bound = 1.0 / np.sqrt(shape.num_features)
    init = lambda offset: tf.keras.initializers.RandomUniform(-bound, bound, seed=seed * 1000 + offset)  # noqa: E731
    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(shape.num_features,)),
                                tf.keras.layers.Dense(shape.num_outputs, kernel_initializer=init(0),
                                                      bias_initializer=init(1))])


@register_model("cox_linear", weight_layers=1, paper="FLamby's Fed-TCGA-BRCA Baseline (nn.Linear(39, 1))")
def cox_linear(shape: DataShape, seed: int):
    """A linear risk score (a Cox model's log hazard ratio), initialised as PyTorch's nn.Linear."""
    return logreg_torch(shape, seed)


@register_model("2nn", weight_layers=3, paper="McMahan et al. 2017, arXiv:1602.05629")
def two_nn(shape: DataShape, seed: int):
    """The 2NN: two hidden layers of 200 ReLU units."""
    import tensorflow as tf

    layers = tf.keras.layers
    return tf.keras.Sequential([layers.InputLayer(input_shape=(shape.num_features,)),
                                layers.Dense(200, activation="relu", kernel_initializer=_glorot(seed, 1)),
                                layers.Dense(200, activation="relu", kernel_initializer=_glorot(seed, 2)),
                                layers.Dense(shape.num_outputs, kernel_initializer=_glorot(seed, 0))])


@register_model("cnn", images=True, weight_layers=4, paper="McMahan et al. 2017, arXiv:1602.05629 (smaller)")
def cnn(shape: DataShape, seed: int):
    """A small CNN: two 5x5 convolutions (16, 32 channels) with 2x2 max pooling, then 128 dense units."""
    import tensorflow as tf

    if shape.image_shape is None:
        raise ValueError("model: 'cnn' needs image data (image_shape is unknown)")
    layers = tf.keras.layers
    h, w = shape.image_shape
    return tf.keras.Sequential([
        layers.InputLayer(input_shape=(shape.num_features,)),
        layers.Reshape((h, w, 1)),
        layers.Conv2D(16, 5, padding="same", activation="relu", kernel_initializer=_glorot(seed, 1)),
        layers.MaxPool2D(2, padding="same"),
        layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=_glorot(seed, 2)),
        layers.MaxPool2D(2, padding="same"),
        layers.Flatten(),
        layers.Dense(128, activation="relu", kernel_initializer=_glorot(seed, 3)),
        layers.Dense(shape.num_outputs, kernel_initializer=_glorot(seed, 0))])


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a model needs to be built: its registered name and the shape of the data."""

    name: str
    num_features: int
    num_classes: int
    image_shape: Optional[tuple[int, int]] = None
    freeze_layers: int = 0  # the first n layers with weights stay at their initial values
    task: str = "classification"  # a fedlab.data.tasks name: the loss, the labels and the metrics

    @property
    def binary(self) -> bool:
        """Two-class classification: one logit, binary cross-entropy."""
        return self.task == "classification" and self.num_classes == 2

    @property
    def shape(self) -> DataShape:
        return DataShape(self.num_features, self.num_classes, self.image_shape, self.task)

    @property
    def task_entry(self):
        return TASKS[self.task]

    @property
    def builder(self) -> ModelBuilder:
        return MODELS[self.name]

    def build_keras(self, seed: int = 0):
        """A fresh, uncompiled Keras model whose initial weights depend only on ``seed``."""
        model = self.builder.build(self.shape, seed)
        outputs = model.output_shape[-1] if getattr(model, "output_shape", None) else None
        if outputs != self.shape.num_outputs:
            raise ValueError(f"model {self.name!r}: outputs {outputs} logits; this data needs "
                             f"{self.shape.num_outputs} (DataShape.num_outputs)")
        weighted = [layer for layer in model.layers if layer.weights]
        if self.freeze_layers >= len(weighted):
            raise ValueError(f"freeze_layers: must be below {len(weighted)} for model {self.name!r} "
                             "(something must stay trainable)")
        for layer in weighted[: self.freeze_layers]:
            layer.trainable = False
        return model

    def input_spec(self):
        import tensorflow as tf

        return (tf.TensorSpec([None, self.num_features], tf.float32), self.task_entry.label_spec(self.num_classes))

    def prepare_labels(self, y: np.ndarray) -> np.ndarray:
        """Labels in the form the loss expects (classification: a float column for two classes, an int vector
        otherwise; survival: float32 (event, time) rows)."""
        return self.task_entry.prepare_labels(y, self.num_classes)

    def loss(self):
        return LOSSES[self.task_entry.loss].keras(self.num_classes)

    def metrics_constructor(self):
        return self.task_entry.train_metrics(self.num_classes)

    def functional_model(self, seed: int = 0):
        """The TFF functional model; faster in simulation than the Keras-model path.

        Converted once per spec, seed and registered model, task and loss in this process
        (:func:`_functional_model`; :func:`clear_converted_models` forgets them): every process built for the spec
        takes the same one, and TFF traces it into each process's graphs.
        With frozen layers, TFF 0.87's ``functional_model_from_keras`` mis-orders
        the weights (it takes a frozen layer's variables for trainable ones), so
        the model of every layer trainable is converted and wrapped
        (:func:`_with_frozen_layers`): its weights are split as the Keras model
        with frozen layers splits them, trainable then non-trainable.
        """
        return _functional_model(self, self.builder, self.task_entry, self.task_entry.loss_entry, seed)

    def tensor_sizes(self) -> tuple[list[int], list[int]]:
        """Element counts of the trainable and the non-trainable tensors (counted once per spec and registered
        model while cached in this process)."""
        trainable, non_trainable = _tensor_sizes(self, self.builder)
        return list(trainable), list(non_trainable)

    def tff_model(self, seed: int = 0):
        """What TFF's own builders take (algorithms without fedlab's compiled loop): the functional model, or,
        with frozen layers, a Keras-model function (TFF's builders are not given fedlab's wrapped model)."""
        if self.freeze_layers == 0:
            return self.functional_model(seed)
        import tensorflow as tf
        import tensorflow_federated as tff

        def model_fn():
            accuracy = (tf.keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy") if self.binary
                        else tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
            return tff.learning.models.from_keras_model(self.build_keras(seed), loss=self.loss(),
                                                        input_spec=self.input_spec(), metrics=[accuracy])

        return model_fn

    def num_parameters(self) -> int:
        return sum(self.tensor_sizes()[0])


# Keyed by the spec, its registered builder, task and loss, and the seed: a model, task or loss registered again
# under the same name (an edited notebook cell) is converted anew. A converted model's traces keep the graphs of the
# processes built from it: forgotten with the processes (fedlab.experiment.processes.clear_process_cache).
@functools.lru_cache(maxsize=32)
def _functional_model(spec: "ModelSpec", builder: ModelBuilder, task, loss, seed: int):
    import tensorflow_federated as tff

    if spec.freeze_layers:
        return _with_frozen_layers(spec, seed)
    model = tff.learning.models.functional_model_from_keras(
        spec.build_keras(seed), spec.loss(), spec.input_spec(), spec.metrics_constructor())
    if type(model) is tff.learning.models.FunctionalModel:  # (a later TFF's subclass keeps its own methods)
        model.__class__ = _plain_methods()  # the same model and functions; only its four methods are plain
    return model


@functools.lru_cache(maxsize=None)
def _plain_methods() -> type:
    """TFF's ``FunctionalModel`` whose ``predict_on_batch`` and metrics methods are plain methods.

    TFF decorates them with ``tf.function``, which binds such a method to each instance through a weak
    reference (TF's ``TfMethodTarget``) and traces it into every graph that calls it, a nested function
    each time. In one CI run (of 5889af6, notebook 06's first run in a new kernel) TFF's
    ``initialize_metrics_state`` ran with that binding object as ``self`` while fedlab's client loop was traced
    (``'TfMethodTarget' object has no attribute '_initialize_metrics_state'``); the cause was not found, and this
    takes fedlab off that path. Each method is one line that calls a function the model was made with; here that
    line (TFF's own, ``python_function``) runs in the caller's graph. fedlab's converted models are of this class,
    with frozen layers too (whose metrics functions are then the whole model's plain methods).
    """
    import tensorflow_federated as tff

    base = tff.learning.models.FunctionalModel

    class PlainMethodsFunctionalModel(base):
        def predict_on_batch(self, model_weights, x, training=True):
            return base.predict_on_batch.python_function(self, model_weights, x, training)

        def initialize_metrics_state(self):
            return base.initialize_metrics_state.python_function(self)

        def update_metrics_state(self, state, labels, batch_output, sample_weight=None):
            return base.update_metrics_state.python_function(self, state, labels, batch_output, sample_weight)

        def finalize_metrics(self, state):
            return base.finalize_metrics.python_function(self, state)

    return PlainMethodsFunctionalModel


@functools.lru_cache(maxsize=64)
def _tensor_sizes(spec: "ModelSpec", builder: ModelBuilder) -> tuple[tuple[int, ...], tuple[int, ...]]:
    model = spec.build_keras(0)
    return (tuple(int(np.prod(v.shape)) for v in model.trainable_variables),
            tuple(int(np.prod(v.shape)) for v in model.non_trainable_variables))


def clear_converted_models() -> None:
    """Forget the converted functional models (and the graphs their traces keep)."""
    _functional_model.cache_clear()


def _weight_paths(model, variables) -> list[tuple[int, int]]:
    """(layer index, weight index) of each of ``variables`` in a Keras ``model``."""
    where = {id(w): (i, k) for i, layer in enumerate(model.layers) for k, w in enumerate(layer.weights)}
    return [where[id(v)] for v in variables]


def _with_frozen_layers(spec: "ModelSpec", seed: int):
    """``spec``'s functional model with its first ``freeze_layers`` weighted layers frozen.

    TFF converts the model with every layer trainable (its weight order is then
    right); this model's weights are ``(trainable, non_trainable)`` in the order
    of the Keras model with the layers frozen (what TFF's Keras-model path and
    ``ModelSpec.tensor_sizes`` give), and ``predict_on_batch`` puts them back in
    the converted model's places. Loss and metrics are the converted model's.
    """
    import tensorflow as tf
    import tensorflow_federated as tff

    whole = dataclasses.replace(spec, freeze_layers=0)
    converted = whole.functional_model(seed)
    keras_whole, keras_frozen = whole.build_keras(seed), spec.build_keras(seed)
    slots = {path: ("t", i) for i, path in enumerate(_weight_paths(keras_whole, keras_whole.trainable_variables))}
    slots.update({path: ("n", i) for i, path in
                  enumerate(_weight_paths(keras_whole, keras_whole.non_trainable_variables))})
    trainable_slots = [slots[p] for p in _weight_paths(keras_frozen, keras_frozen.trainable_variables)]
    frozen_slots = [slots[p] for p in _weight_paths(keras_frozen, keras_frozen.non_trainable_variables)]
    whole_weights = {"t": list(converted.initial_weights[0]), "n": list(converted.initial_weights[1])}
    for kind, variables in (("t", keras_whole.trainable_variables), ("n", keras_whole.non_trainable_variables)):
        # the same seed built both: equal values, in the same order, or the places below would be wrong
        if len(whole_weights[kind]) != len(variables) or not all(
                np.shape(w) == tuple(v.shape) and np.array_equal(w, v.numpy())
                for w, v in zip(whole_weights[kind], variables)):
            raise RuntimeError(f"model {spec.name!r}: TFF's converted weights are not in the Keras model's order")
    counts = (len(whole_weights["t"]), len(whole_weights["n"]))
    initial = (tuple(whole_weights[k][i] for k, i in trainable_slots),
               tuple(whole_weights[k][i] for k, i in frozen_slots))

    @tf.function
    def predict_on_batch(model_weights, x, training=True):
        places = {"t": [None] * counts[0], "n": [None] * counts[1]}
        for (kind, i), w in zip(trainable_slots + frozen_slots, list(model_weights[0]) + list(model_weights[1])):
            places[kind][i] = w
        return converted.predict_on_batch((tuple(places["t"]), tuple(places["n"])), x, training)

    metrics = (converted.initialize_metrics_state, converted.update_metrics_state, converted.finalize_metrics)
    return _plain_methods()(initial_weights=initial, predict_on_batch_fn=predict_on_batch, loss_fn=converted.loss,
                            metrics_fns=metrics, input_spec=converted.input_spec)


def train_keras(spec: ModelSpec, x: np.ndarray, y: np.ndarray, *, seed: int, model_seed: int, epochs: int,
                batch_size: int, lr: float, epsilon: float = 1e-7):
    """A model of ``spec`` built from ``model_seed`` and trained by Keras' ``fit`` with Adam(``lr``, ``epsilon``) on
    ``x, y`` (labels as the data holds them), reshuffled every epoch, after TensorFlow's global seeds are set from
    ``seed``. Returns a new Keras model holding the trained weights (uncompiled, but for a user's model).

    Two things make it cheaper than compiling a new model and fitting it, with the same weights to the bit (what
    ``tests/test_centralized_fit.py`` checks on this library build): an epoch is one TensorFlow call
    (``steps_per_execution`` is the epoch's batches), not one call from Python a batch; and, for fedlab's own
    models, one compiled model per spec and optimizer setting (:func:`_compiled`) trains every time, its weights
    set to the new model's and Adam's state to zero first, so Keras traces its train step once, not once a model.
    A model registered by a user is compiled anew each time: it may draw random numbers in training (dropout),
    whose generators a reused model would carry from one training to the next. FLamby's and TCGA-BRCA's baselines
    train in a fifth to two fifths of the time (``benchmarks/keras_fit.py``).
    """
    import tensorflow as tf

    with held(_TRAINING, "train_keras's compiled models (another thread is training one)"):  # one at a time
        tf.keras.utils.set_random_seed(seed)
        model = spec.build_keras(model_seed)
        if not _reusable(spec):
            return _fit(_compile(model, spec, float(lr), float(epsilon)), spec, x, y, epochs, batch_size)
        compiled = _compiled(spec, spec.builder, spec.task_entry, spec.task_entry.loss_entry, float(lr),
                             float(epsilon))
        compiled.set_weights(model.get_weights())
        for variable in compiled.optimizer.variables:  # the step count and Adam's moments: a new optimizer's
            variable.assign(tf.zeros_like(variable))
        model.set_weights(_fit(compiled, spec, x, y, epochs, batch_size).get_weights())
    return model


def _fit(compiled, spec: ModelSpec, x: np.ndarray, y: np.ndarray, epochs: int, batch_size: int):
    """``compiled`` (:func:`_compile`) trained on ``x, y``, an epoch a call (``steps_per_execution``: its batches)."""
    compiled._steps_per_execution.assign(max(1, -(-len(x) // batch_size)))
    compiled.fit(x, spec.prepare_labels(y), epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return compiled


_TRAINING = threading.Lock()


def _reusable(spec: ModelSpec) -> bool:
    """Whether :func:`train_keras` may train ``spec`` on a reused compiled model: a model of fedlab's own (dense and
    convolutional layers, nothing random in training), not one a user registered, under that name or another."""
    return spec.builder.build.__module__ == __name__


def _compile(model, spec: ModelSpec, lr: float, epsilon: float):
    """``model`` compiled with Adam(``lr``, ``epsilon``) and its train step made the loop of ``steps_per_execution``
    steps a call, whatever the steps of its first training: Keras makes the function once, a single step if
    ``steps_per_execution`` is 1 when it does, and a later training of more batches would then run one batch of
    each call's several."""
    import tensorflow as tf

    model.compile(optimizer=tf.keras.optimizers.Adam(lr, epsilon=epsilon), loss=spec.loss(), steps_per_execution=2)
    model.make_train_function()
    return model


@functools.lru_cache(maxsize=8)
def _compiled(spec: ModelSpec, builder: ModelBuilder, task, loss, lr: float, epsilon: float):
    """The Keras model :func:`train_keras` trains for ``spec`` with Adam(``lr``, ``epsilon``), compiled once in this
    process; ``builder``, ``task`` and ``loss`` key a model, task or loss registered again apart."""
    del builder, task, loss  # in the key only
    return _compile(spec.build_keras(0), spec, lr, epsilon)


def evaluate_logits(logits: np.ndarray, y: np.ndarray, binary: bool) -> tuple[float, float]:
    """(loss, accuracy) of logits against integer labels, in float64.

    Binary: sigmoid cross-entropy, predicted positive when the logit > 0
    (probability > 0.5). Otherwise softmax cross-entropy and arg-max.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        return float("nan"), float("nan")
    if binary:
        z = logits.reshape(-1)
        # log(1 + exp(-|z|)) + max(z, 0) - z*y: the stable form of BCE with logits.
        loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        return float(loss.mean()), float(((z > 0).astype(int) == y).mean())
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y]
    return float(loss.mean()), float((logits.argmax(axis=1) == y).mean())
