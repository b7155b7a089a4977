"""q-FFL by q-FedAvg (Li, Sanjabi, Beirami and Smith 2020, "Fair Resource Allocation in Federated Learning",
ICLR, arXiv:1905.10497, Algorithm 2).

q-FFL minimises sum_k p_k F_k^(q+1) / (q + 1): the larger q, the more a client
with a high loss counts, and the more even the accuracy over clients. Each
round every selected client k evaluates its loss F_k at the server's model w^t
on its local data, trains locally from w^t to w_k (E epochs of SGD, as FedAvg),
and with L = 1/eta (the paper's estimate of the Lipschitz constant):

    Delta w_k = L (w^t - w_k),  Delta_k = F_k^q Delta w_k,
    h_k = q F_k^(q-1) ||Delta w_k||^2 + L F_k^q;

the server sets w^(t+1) = w^t - sum_k Delta_k / sum_k h_k.

fedlab runs this in a split round (:mod:`fedlab.rounds.split_rounds`): a TFF
computation evaluates F_k before training; between the clients and the server
each update becomes Delta_k / h_k with weight h_k, so the aggregator's weighted
mean is sum_k Delta_k / sum_k h_k, which the server applies at ``server_lr``
(1, the paper's step, by default). q = 0 is FedAvg with every client weighted
equally (tested). The weights h_k replace ``client_weighting`` (a config
setting another is refused).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..rounds.array_training import arrays_of, client_training, pack_clients
from ..core.runtime import tff
from ..rounds.split_rounds import SplitRoundProcess, split_aggregator


class QFedAvgProcess(SplitRoundProcess):
    """q-FedAvg's rounds: each update scaled by F_k^q / h_k and weighted by h_k."""

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None, *, q: float) -> None:
        super().__init__(training, model_aggregator, attack)
        import tensorflow as tf

        t = tff()
        self.q = float(q)
        model = training.model

        @t.tensorflow.computation(training.weights_type, training.data_type)
        def local_loss(weights, data):  # F_k(w^t): the mean loss over the client's whole local data set
            x, y = arrays_of(model, data)
            output = model.predict_on_batch((tuple(weights.trainable), tuple(weights.non_trainable)), x,
                                            training=False)
            return model.loss(output=output, label=y)

        @t.federated_computation(t.FederatedType(training.weights_type, t.SERVER),
                                 t.FederatedType(training.data_type, t.CLIENTS))
        def losses_fn(weights, client_data):
            return t.federated_map(local_loss, (t.federated_broadcast(weights), client_data))

        self._losses_fn = losses_fn

    def between(self, state, clients, client_data, updates, update_weights):
        # F_k(w^t): the state still holds the model the clients started from
        losses = [float(v) for v in self._losses_fn(state.global_model_weights, pack_clients(client_data, self.data_type))]
        lipschitz = 1.0 / float(state.client_work["learning_rate"])
        for row, (update, loss) in enumerate(zip(updates, losses)):
            if update_weights[row] == 0:  # a non-finite update was zeroed: it stays out
                continue
            delta_w = [lipschitz * np.asarray(u, np.float64) for u in update]
            squared = sum(float(np.sum(d * d)) for d in delta_w)
            loss = max(loss, 1e-12)
            h = self.q * loss ** (self.q - 1) * squared + lipschitz * loss ** self.q if self.q else lipschitz
            scale = loss ** self.q / h
            updates[row] = tuple((scale * d).astype(np.float32) for d in delta_w)
            update_weights[row] = np.float32(h)
        return state


def build_qffl(model, *, client_lr: float, server_lr: float, params=None, model_aggregator=None,
               client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
    """The ``on_arrays`` builder of q-FedAvg (at server_lr 1 the step is the paper's sum Delta_k / sum h_k)."""
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    training = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting="uniform",
                               example_dp=example_dp)
    model_aggregator, attack = split_aggregator(model_aggregator)
    return QFedAvgProcess(training, model_aggregator, attack, q=params.q)
