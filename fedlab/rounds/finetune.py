"""Local fine-tuning evaluation: each client adapts the global model to its own data before it is scored.

The simplest personalisation baseline (Wang et al. 2019, "Federated
Evaluation of On-device Personalization"; TFF's
``build_personalization_eval_computation``): at an evaluation round every
client starts from the server's model, trains ``finetune_epochs`` epochs of
plain SGD (the config's ``client_lr`` and ``batch_size``) on its own training
share, and its tuned model is scored on its own held-out share
(``eval_per_client`` with ``local_test_fraction``). Nothing of the tuning goes
back to the server; training goes on from the global model.

fedlab does not use TFF's builder: it takes a Keras model and a dict of
tf.data pipelines per client, so it would build a second, slower client work
beside fedlab's compiled loop. Here one TFF computation broadcasts the global
model and trains every client with the same compiled loop as a round
(:mod:`fedlab.rounds.array_training`, no proximal term, no DP), returning each
client's update; the tuned model is the global one minus that update.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .array_training import client_training, client_updates_computation, pack_clients
from ..core.runtime import tff


class FineTuning:
    """Tunes the global model on each client's arrays (:func:`fedlab.experiment.clients.finetune_inputs`) in one TFF call."""

    def __init__(self, model) -> None:
        training = client_training(model, client_lr=1.0, server_optimizer=tff().learning.optimizers.build_sgdm(1.0))
        self._tune_fn = client_updates_computation(training)
        self._data_type = training.data_type

    def tuned_weights(self, weights, client_data: Sequence, learning_rate: float) -> list:
        """Each client's tuned model (``ModelWeights``, frozen tensors as the global model's), in the order of
        ``client_data``."""
        if not client_data:
            return []
        updates = self._tune_fn(weights, np.float32(learning_rate), pack_clients(client_data, self._data_type))
        model_weights = tff().learning.models.ModelWeights
        start = [np.asarray(w) for w in weights.trainable]
        frozen = tuple(np.asarray(w) for w in weights.non_trainable)
        return [model_weights(trainable=tuple(w - np.asarray(u) for w, u in zip(start, update)),
                              non_trainable=frozen) for update in updates]
