"""Personalisation: a model for each client, kept on the client between rounds.

FedPer (Arivazhagan et al. 2019, "Federated Learning with Personalization Layers", arXiv:1912.00818):
a shared body, a personal head.

The last ``personal_layers`` weight layers (their kernel and bias) never leave
the client: each client starts every round from the server's body and its
own head, trains both with SGD, sends only the body's update and keeps its
head. The server averages and applies the body's updates as FedAvg does.
Every client's head starts as the initial model's head.

The round is split (:mod:`fedlab.rounds.split_rounds`): the client's head reaches
fedlab's compiled client loop in its inputs (``personal``); between the
clients and the server the new heads are stored in the state's
``client_work`` (checkpointed with it) and the heads' part of every update
is zeroed, so the aggregator only ever sees the body. The server model's head
therefore stays the initial one: its ``eval_accuracy`` on the pooled test set
is not FedPer's metric. FedPer's metric is each client's own model (server
body, own head) on its own held-out data: ``eval_per_client`` with
``local_test_fraction`` (:meth:`PersonalLayersProcess.client_weights`).

Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML, arXiv:2012.04221, Algorithm 1): the global model is
trained by FedAvg, unchanged; besides, each selected client k trains its own
model v_k, from where it left it, for the same local steps on the same batches,
on its loss plus lambda/2 ||v_k - w^t||^2, w^t the global model it received
this round. Every v_k starts as the initial model. A second TFF computation in
the split round trains the personal models (:class:`DittoProcess`). Under
record-level DP (``dp="example"``) both passes run DP-SGD, the own model's with
Poisson batches and noise of its own (not the same batches), and a round
counts both passes' steps in the accounting (``record_dp_passes=2``).

Both take an unweighted aggregator (user-level DP, TFF's secure sum) for what
the server aggregates: FedPer's body (the zeroed head adds nothing to a clipped
norm or a sum; DP noise lands on the server's head too, which no client uses),
Ditto's global model. The guarantee covers that global model; each client's
own head or model never leaves it and is outside it, as are the per-client
scores of those own models.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from ..rounds.array_training import client_training, client_updates_computation, pack_clients, rekeyed
from ..rounds.split_rounds import SplitRoundProcess, split_aggregator
from ..core.validation import ConfigError


class PersonalLayersProcess(SplitRoundProcess):
    """FedPer's rounds: the last ``personal`` trainable tensors are each client's own."""

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None, *, personal: int) -> None:
        super().__init__(training, model_aggregator, attack)
        self.personal = int(personal)

    def client_state(self, state, num_clients: int):
        """``state`` with every client's head set to the server model's (the initial) head."""
        work = collections.OrderedDict(state.client_work)
        heads = list(state.global_model_weights.trainable)[-self.personal:]
        work["personal"] = tuple(np.repeat(np.asarray(h, np.float32)[None], num_clients, axis=0) for h in heads)
        return self._replace(state, client_work=work)

    def prepare(self, state, clients, client_data):
        heads = state.client_work["personal"]
        return [collections.OrderedDict(data, personal=tuple(h[cid] for h in heads))
                for cid, data in zip(clients, client_data)]

    def between(self, state, clients, client_data, updates, update_weights):
        work = collections.OrderedDict(state.client_work)
        heads = [np.array(h, np.float32, copy=True) for h in work["personal"]]
        for row, (cid, update, weight) in enumerate(zip(clients, updates, update_weights)):
            if weight != 0:  # a non-finite update was zeroed: the client keeps its head
                for k, change in enumerate(update[-self.personal:]):
                    heads[k][cid] -= np.asarray(change, np.float32)  # update = start - trained
            updates[row] = tuple(update[:-self.personal]) + tuple(np.zeros_like(u) for u in update[-self.personal:])
        work["personal"] = tuple(heads)
        return self._replace(state, client_work=work)

    def client_weights(self, state, client: int):
        """Client ``client``'s own model: the server's body and its head (what FedPer evaluates)."""
        weights = state.global_model_weights
        trainable = list(weights.trainable)[:-self.personal] + [h[client] for h in state.client_work["personal"]]
        return type(weights)(trainable=type(weights.trainable)(trainable), non_trainable=weights.non_trainable)


def build_fedper(model, *, client_lr: float, server_lr: float, params=None, model_aggregator=None,
                 client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
    """The ``on_arrays`` builder of FedPer: FedAvg on the body, the last ``params.personal_layers`` layers local."""
    from ..core.runtime import tff

    personal = 2 * int(params.personal_layers)  # each weight layer: kernel and bias
    if personal >= len(model.initial_weights[0]):
        raise ConfigError("personal_layers", f"must leave the clients a trainable layer to share: the model has "
                                             f"{len(model.initial_weights[0]) // 2} trainable weight layers "
                                             f"(frozen layers do not count), got {params.personal_layers}")
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    training = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting=client_weighting,
                               example_dp=example_dp, personal=personal)
    model_aggregator, attack = split_aggregator(model_aggregator)
    return PersonalLayersProcess(training, model_aggregator, attack, personal=personal)


class DittoProcess(SplitRoundProcess):
    """Ditto's rounds: FedAvg on the global model, and each selected client's own model trained towards it."""

    PERSONAL_KEY = 0xD1770  # DP-SGD: the own model's pass draws batches and noise of its own (array_training.rekeyed)

    def __init__(self, training, personal_training, model_aggregator=None, attack: Optional[str] = None, *,
                 private: bool = False) -> None:
        super().__init__(training, model_aggregator, attack)
        self._personal_fn = client_updates_computation(personal_training)
        self._personal_type = personal_training.data_type
        self.private = private

    def client_state(self, state, num_clients: int):
        """``state`` with every client's own model set to the server's (the initial) model."""
        work = collections.OrderedDict(state.client_work)
        work["personal"] = tuple(np.repeat(np.asarray(w, np.float32)[None], num_clients, axis=0)
                                 for w in state.global_model_weights.trainable)
        return self._replace(state, client_work=work)

    def between(self, state, clients, client_data, updates, update_weights):
        work = collections.OrderedDict(state.client_work)
        models = [np.array(v, np.float32, copy=True) for v in work["personal"]]
        own = [collections.OrderedDict(rekeyed(data, self.PERSONAL_KEY) if self.private else data,
                                       personal=tuple(v[cid] for v in models))
               for cid, data in zip(clients, client_data)]
        changes = self._personal_fn(state.global_model_weights, np.float32(work["learning_rate"]),
                                    pack_clients(own, self._personal_type))
        for cid, change in zip(clients, changes):
            for k, c in enumerate(change):
                models[k][cid] -= np.asarray(c, np.float32)  # update = start - trained
        work["personal"] = tuple(models)
        return self._replace(state, client_work=work)

    def client_weights(self, state, client: int):
        """Client ``client``'s own model v_k (what Ditto evaluates)."""
        weights = state.global_model_weights
        return type(weights)(trainable=type(weights.trainable)(v[client] for v in state.client_work["personal"]),
                             non_trainable=weights.non_trainable)


def build_ditto(model, *, client_lr: float, server_lr: float, params=None, model_aggregator=None,
                client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
    """The ``on_arrays`` builder of Ditto: FedAvg, and personal models with the proximal strength ``params.lam``."""
    from ..core.runtime import tff

    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    training = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting=client_weighting,
                               example_dp=example_dp)
    personal = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting=client_weighting,
                               proximal_strength=float(params.lam), personal=len(model.initial_weights[0]),
                               anchor_to_server=True, example_dp=example_dp)
    model_aggregator, attack = split_aggregator(model_aggregator)
    return DittoProcess(training, personal, model_aggregator, attack, private=example_dp is not None)
