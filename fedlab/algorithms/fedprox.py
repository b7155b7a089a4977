"""FedProx with the proximal gradient pointing the right way.

FedProx (Li et al. 2020, arXiv:1812.06127) minimises, on each client,
``loss(w) + mu/2 * ||w - w_server||^2``, whose gradient adds
``mu * (w - w_server)``. TFF 0.87.0's ``build_weighted_fed_prox`` adds
``mu * (w_server - w)`` instead (``proximal_client_work.py``, both the
functional and the Keras path), which pushes clients *away* from the server
model. ``tests/test_algorithms_by_hand.py`` shows both against a NumPy
computation.

The fix keeps TFF's own composition (distributor, aggregator, finalizer,
client work) and replaces only the per-client update function, a copy of
TFF's ``_build_functional_model_delta_update`` (Apache 2.0, The TensorFlow
Federated Authors) with the sign corrected.
"""

from __future__ import annotations

import contextlib
from unittest import mock

from ..core.runtime import tff


def _corrected_update(*, model, weighting, delta_l2_regularizer):
    import tensorflow as tf
    from tensorflow_federated.python.learning.models import variable
    from tensorflow_federated.python.learning.templates import client_works, proximal_client_work
    from tensorflow_federated.python.learning import loop_builder
    from tensorflow_federated.python.learning import tensor_utils

    dataset_reduce_fn = loop_builder.build_training_loop(loop_builder.LoopImplementation.DATASET_ITERATOR)

    @tf.function
    def client_update(optimizer, initial_weights, data):
        initial_trainable_weights, initial_non_trainable_weights = initial_weights
        trainable_weights = initial_trainable_weights

        def reduce_fn(state, batch):
            num_examples_sum, model_weights, metrics_state, optimizer_state = state
            trainable_weights, non_trainable_weights = model_weights
            x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
            with tf.GradientTape() as tape:
                tape.watch(trainable_weights)
                batch_output = model.predict_on_batch(model_weights, x, training=True)
                batch_loss = model.loss(output=batch_output, label=y)
            gradients = tape.gradient(batch_loss, trainable_weights)
            if delta_l2_regularizer > 0.0:
                # d/dw [mu/2 ||w - w0||^2] = mu (w - w0): current minus initial.
                proximal_term = tf.nest.map_structure(
                    lambda w, w0: delta_l2_regularizer * (w - w0), trainable_weights, initial_trainable_weights
                )
                gradients = tf.nest.map_structure(tf.add, gradients, proximal_term)
            optimizer_state, updated = optimizer.next(optimizer_state, tuple(trainable_weights), tuple(gradients))
            trainable_weights = tf.nest.pack_sequence_as(trainable_weights, updated)
            batch_num_examples = tf.shape(tf.nest.flatten(batch_output)[0])[0]
            num_examples_sum += tf.cast(batch_num_examples, tf.int64)
            metrics_state = model.update_metrics_state(
                metrics_state,
                batch_output=variable.BatchOutput(loss=batch_loss, predictions=batch_output,
                                                  num_examples=batch_num_examples),
                labels=y,
            )
            return num_examples_sum, (trainable_weights, non_trainable_weights), metrics_state, optimizer_state

        def initial_state_for_reduce_fn():
            specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in tf.nest.flatten(trainable_weights))
            return (tf.zeros(shape=[], dtype=tf.int64),
                    (initial_trainable_weights, initial_non_trainable_weights),
                    model.initialize_metrics_state(), optimizer.initialize(specs))

        num_examples, model_weights, metrics_state, _ = dataset_reduce_fn(reduce_fn, data, initial_state_for_reduce_fn)
        trained, _ = model_weights
        update = tf.nest.map_structure(tf.subtract, initial_trainable_weights, trained)
        update, has_non_finite = tensor_utils.zero_all_if_any_non_finite(update)
        weight = proximal_client_work._choose_client_weight(weighting, has_non_finite, num_examples)  # noqa: SLF001
        return client_works.ClientResult(update=update, update_weight=weight), metrics_state

    return client_update


@contextlib.contextmanager
def _corrected_proximal_term():
    from tensorflow_federated.python.learning.templates import proximal_client_work

    with mock.patch.object(proximal_client_work, "_build_functional_model_delta_update", _corrected_update):
        yield


def build_weighted_fed_prox(functional_model, *, proximal_strength: float, client_optimizer_fn,
                            server_optimizer_fn, model_aggregator=None):
    """TFF's weighted FedProx for a functional model, with the proximal gradient corrected."""
    t = tff()
    with _corrected_proximal_term():
        return t.learning.algorithms.build_weighted_fed_prox(
            functional_model,
            proximal_strength=float(proximal_strength),
            client_optimizer_fn=client_optimizer_fn,
            server_optimizer_fn=server_optimizer_fn,
            model_aggregator=model_aggregator,
        )
