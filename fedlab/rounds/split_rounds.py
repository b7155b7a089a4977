"""Rounds split at the clients' updates, with Python between the clients and the server.

Some algorithms and threat models need each client's update after training
and before aggregation, outside TFF's computations: an attacker that forges
its update from what it and its accomplices trained (:mod:`fedlab.rounds.attacks`),
SCAFFOLD's client control variates that outlive the round
(:mod:`fedlab.algorithms.scaffold`). TFF 0.87's learning templates keep no per-client
state and compose no step between client work and aggregator, so a round is
split there:

1. a TFF computation broadcasts the model, trains every client in fedlab's
   compiled loop (:mod:`fedlab.rounds.array_training`) and returns each client's
   update and weight (and the clients' metrics, summed then finalised);
2. Python sees the updates: the round's attackers replace theirs by forgeries
   (:meth:`SplitRoundProcess.forge`), a subclass updates state of its own
   (:meth:`SplitRoundProcess.between`);
3. a second TFF computation runs the config's ``tff.aggregators`` factory
   (mean, clipping, median, Krum, DP ...) on them and applies the server
   optimizer with TFF's finalizer; or, when the aggregator is a secure
   protocol (:class:`~fedlab.rounds.secure_rounds.ProtocolSum`), each update is
   encoded as the protocol's clients encode it, SecAgg or SecAgg+ sums them in
   Python (:mod:`fedlab.protection.secagg`, dropouts included) and a second computation
   decodes the sum and applies the finalizer (:meth:`SplitRoundProcess.protocol_step`).
   So forged updates and the personalised algorithms' own models stack with
   the protocol in one split round.

Without a step in between, the numbers are those of the one-computation
process (``tests/test_split_rounds.py``). The state is the same
``LearningAlgorithmState`` as other processes', held in Python between the
two computations; ``client_work`` may hold arrays of a subclass's own
(SCAFFOLD's control variates), which checkpoints save with the rest.
"""

from __future__ import annotations

import collections
import functools
import warnings
from typing import Optional, Sequence

import numpy as np

from ..protection import secagg
from .array_training import (client_updates_computation, finalize_metric_leaves, metric_leaf_specs, metric_leaves,
                             metrics_computation, pack_clients)
from .attacks import ATTACKS
from ..core.runtime import tff
from .secure_rounds import (ProtocolSum, aggregator_measurements, current_clip, lone_client, lost_round,
                            moved_clip, protocol_codec, signed_sum)
from ..core.validation import FedlabWarning


class SplitRoundProcess:
    """A learning process (``initialize``, ``next``, ``get_model_weights``, ``set_model_weights``) whose round
    is client training, :meth:`between`, then aggregation; ``round_inputs`` names what the runner passes to
    ``next`` besides the state and the clients' data."""

    ATTACK_INPUTS = ("attackers", "attack_boost", "attack_rng", "attack_clients")
    PROTOCOL_INPUTS = ("participants", "graph_seed", "noise_seed")

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None, *,
                 side_shapes: Sequence[tuple] = ()) -> None:
        t = tff()
        self.attack = ATTACKS[attack] if attack is not None else None
        self.protocol = model_aggregator if isinstance(model_aggregator, ProtocolSum) else None
        # an aggregator that hides the updates from the server (user-level DP, a secure sum: make_aggregator marks
        # them) and the denominator of its mean (DP's expected K; None: the updates it was given)
        self.hides_updates = self.protocol is not None or bool(getattr(model_aggregator, "hides_updates", False))
        self.mean_denominator = getattr(model_aggregator, "mean_denominator", None)
        self.l2_clip = (self.protocol.clip_norm if self.protocol is not None
                        else getattr(model_aggregator, "l2_clip", None))  # what each client's value is clipped to
        # values each client sends beside its update, aggregated with it by the same aggregator (clipped with it,
        # summed securely, noised with it): SCAFFOLD's control variates under an aggregator that hides updates
        self.side_shapes = [tuple(s) for s in side_shapes]
        self.data_type = training.data_type  # what a client's packed input is (pack_clients)
        self.round_inputs = (("clients",) + (self.ATTACK_INPUTS if attack is not None else ())
                             + (self.PROTOCOL_INPUTS if self.protocol is not None else ()))
        templates = t.learning.templates
        self._state_class = templates.LearningAlgorithmState
        weights_type = training.weights_type
        if model_aggregator is None or self.protocol is not None:  # the protocol's sum replaces the aggregator
            model_aggregator = t.aggregators.MeanFactory()
        if isinstance(model_aggregator, t.aggregators.UnweightedAggregationFactory):
            model_aggregator = t.aggregators.as_weighted_aggregator(model_aggregator)
        self.shapes = [tuple(np.shape(w)) for w in training.model.initial_weights[0]]
        value_type = weights_type.trainable
        if self.side_shapes:  # the update and the side values as one tuple of tensors
            value_type = t.StructWithPythonType(list(weights_type.trainable)
                                                + [t.TensorType(np.float32, s) for s in self.side_shapes], tuple)
        self.value_type, self.value_shapes = value_type, self.shapes + self.side_shapes
        aggregator = model_aggregator.create(value_type, t.TensorType(np.float32))
        finalizer = templates.build_apply_optimizer_finalizer(training.server_optimizer, weights_type)
        metrics_aggregation = t.learning.metrics.sum_then_finalize(training.model.finalize_metrics)
        split = self._split_computations(value_type, weights_type) if self.side_shapes else None
        self.weights_type, self.finalizer = weights_type, finalizer  # a subclass may aggregate outside TFF
        self._training = training

        adaptive = self.protocol is not None and self.protocol.adaptive  # the protocol's clip kept in the state

        @t.federated_computation()
        def init_fn():
            return t.federated_zip(self._state_class(
                t.federated_eval(training.initial_weights_fn, t.SERVER), t.federated_value((), t.SERVER),
                t.federated_eval(training.client_work_state, t.SERVER),
                t.federated_value(self.protocol.initial_aggregator_state(), t.SERVER) if adaptive
                else aggregator.initialize(), finalizer.initialize()))

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(t.TensorType(np.float32), t.SERVER),
                                 t.FederatedType(training.data_type, t.CLIENTS))
        def clients_fn(weights, learning_rate, client_data):  # client data last (client_updates_computation)
            result, unfinalized = t.federated_map(training.train_client, (
                t.federated_broadcast(weights), client_data, t.federated_broadcast(learning_rate)))
            return result.update, result.update_weight, metrics_aggregation(unfinalized)

        state_type = init_fn.type_signature.result.member

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 aggregator.initialize.type_signature.result,  # (not the protocol's clip)
                                 t.FederatedType(state_type.finalizer, t.SERVER),
                                 t.FederatedType(value_type, t.CLIENTS),
                                 t.FederatedType(t.TensorType(np.float32), t.CLIENTS))
        def server_fn(weights, aggregator_state, finalizer_state, updates, update_weights):
            aggregated = aggregator.next(aggregator_state, updates, update_weights)
            if split is None:
                finalized = finalizer.next(finalizer_state, weights, aggregated.result)
                return (finalized.result, aggregated.state, finalized.state, aggregated.measurements,
                        finalized.measurements)
            finalized = finalizer.next(finalizer_state, weights, t.federated_map(split[0], aggregated.result))
            return (finalized.result, aggregated.state, finalized.state, aggregated.measurements,
                    finalized.measurements, t.federated_map(split[1], aggregated.result))

        self._init_fn, self._clients_fn, self._server_fn = init_fn, clients_fn, server_fn
        if self.protocol is not None:
            self._protocol_fns = self._protocol_computations(weights_type, state_type.finalizer, finalizer, split)

    def _split_computations(self, value_type, weights_type) -> tuple:
        """(the update's part, the side values' part) of an aggregated value: TFF computations."""
        t = tff()
        count = len(self.shapes)

        @t.tensorflow.computation(value_type)
        def update_part(value):
            return tuple(value[:count])

        @t.tensorflow.computation(value_type)
        def side_part(value):
            return tuple(value[count:])

        return update_part, side_part

    def _protocol_computations(self, weights_type, finalizer_state_type, finalizer, split=None) -> tuple:
        """(encode every client's update for the ring, decode the sum and step the server): the protocol's
        client and server arithmetic (:func:`fedlab.rounds.secure_rounds.protocol_codec`); with side values,
        they are encoded and summed with the update, and the decoding returns their mean too."""
        t = tff()
        encode, undiscretize, divide = protocol_codec(self.protocol, self.value_type, self.value_shapes)
        scale = np.float32(self.protocol.scale)

        @t.federated_computation(t.FederatedType(self.value_type, t.CLIENTS),
                                 t.FederatedType((t.TensorType(np.float32), t.TensorType(np.float32)), t.SERVER))
        def encode_fn(updates, clip_and_scale):  # (C_t, its scale): ProtocolSum.constants
            constants = t.federated_broadcast(clip_and_scale)
            return t.federated_map(encode, (updates, constants[0], constants[1]))

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(finalizer_state_type, t.SERVER),
                                 t.FederatedType(undiscretize.type_signature.parameter[0], t.SERVER),
                                 t.FederatedType(divide.type_signature.parameter[1], t.SERVER),
                                 t.FederatedType(t.TensorType(np.float32), t.SERVER))
        def decode_fn(weights, finalizer_state, summed, noise, count):
            total = t.federated_map(undiscretize, (summed, t.federated_value(scale, t.SERVER)))
            mean = t.federated_map(divide, (total, noise, count))
            if split is None:
                finalized = finalizer.next(finalizer_state, weights, mean)
                return finalized.result, finalized.state, finalized.measurements
            finalized = finalizer.next(finalizer_state, weights, t.federated_map(split[0], mean))
            return finalized.result, finalized.state, finalized.measurements, t.federated_map(split[1], mean)

        return encode_fn, decode_fn

    # The learning process's interface ----------------------------------------------------------------
    def initialize(self):
        return self._init_fn()

    @staticmethod
    def get_model_weights(state):
        return state.global_model_weights

    def set_model_weights(self, state, weights):
        return self._replace(state, global_model_weights=weights)

    def _replace(self, state, **changes):
        fields = dict(global_model_weights=state.global_model_weights, distributor=state.distributor,
                      client_work=state.client_work, aggregator=state.aggregator, finalizer=state.finalizer)
        fields.update(changes)
        return self._state_class(**fields)

    def next(self, state, client_data: list, *, clients: Optional[Sequence[int]] = None,
             attackers: Sequence[bool] = (), attack_boost: int = 1, attack_rng: Optional[np.random.Generator] = None,
             attack_clients: Optional[int] = None,
             participants: Optional[Sequence[int]] = None, graph_seed: int = 0,
             noise_seed: Optional[int] = None):
        ids = list(range(len(client_data))) if clients is None else [int(c) for c in clients]
        client_data = self.prepare(state, ids, client_data)
        updates, update_weights, train_metrics = self.client_results(state, client_data)
        if self.attack is not None:
            updates = self.forge(updates, attackers, attack_boost, attack_rng, clients=attack_clients)
        state = self.between(state, ids, client_data, updates, update_weights)
        if self.protocol is not None:
            state, aggregated, finalized = self.protocol_step(state, ids, updates, participants, graph_seed,
                                                              noise_seed)
        else:
            weights, aggregator_state, finalizer_state, aggregated, finalized, *side = self._server_fn(
                state.global_model_weights, state.aggregator, state.finalizer, updates, update_weights)
            state = self._replace(state, global_model_weights=weights, aggregator=aggregator_state,
                                  finalizer=finalizer_state)
            if self.side_shapes:
                denominator = self.mean_denominator if self.mean_denominator is not None else len(updates)
                state = self.after(state, [np.asarray(v, np.float32) for v in side[0]], float(denominator))
        metrics = collections.OrderedDict(
            distributor=collections.OrderedDict(),
            client_work=collections.OrderedDict(train=train_metrics),
            aggregator=aggregated, finalizer=finalized)
        return tff().learning.templates.LearningProcessOutput(state, metrics)

    def protocol_step(self, state, ids: list, updates: list, participants, graph_seed: int,
                      noise_seed: Optional[int] = None) -> tuple:
        """(state, aggregator measurements, finalizer measurements) after the protocol sums ``updates``.

        Every client encodes its update as :class:`~fedlab.rounds.secure_rounds.SecureRoundProcess`'s clients do; the
        clients in ``participants`` but not in ``ids`` took part in the key exchange and dropped out before
        sending. The mean divides by the clients whose masked vector arrived; when too few remain to unmask, the
        round's update is lost and the global model stays as it was, or, under central DP, moves by the server's
        noise alone (:func:`~fedlab.rounds.secure_rounds.lost_round`; a warning says so); what the clients keep
        (FedPer's heads, Ditto's own models) they trained locally and keep. Attackers (:meth:`forge`) encode
        their forgeries as honest clients do, clipped to C: a real one could send any ring element, which the
        protocol bounds by nothing but the ring.
        """
        encode_fn, decode_fn = self._protocol_fns
        everyone = sorted(set(ids) | set(int(p) for p in (participants if participants is not None else ids)))
        stats = collections.OrderedDict(participants=len(everyone), included=0, aborted=0)
        finalized = collections.OrderedDict()
        clip = current_clip(state)
        constants = self.protocol.constants(clip)
        try:
            if lone_client(self.protocol, ids, everyone):  # summed without the protocol (see lone_client)
                total = np.concatenate([np.ravel(a) for a in encode_fn(updates, constants)[0]]).astype(np.uint64)
                included = 1
            else:
                if len(everyone) < 2:
                    raise secagg.SecAggAborted(f"secure aggregation needs 2 or more clients: {len(everyone)} took "
                                               "part")
                encoded = encode_fn(updates, constants)
                inputs = {cid: np.concatenate([np.ravel(a) for a in enc]).astype(np.uint64)
                          for cid, enc in zip(ids, encoded)}
                result = secagg.run_protocol(inputs, modulus_bits=self.protocol.modulus_bits,
                                             protocol=self.protocol.protocol, participants=everyone,
                                             graph_seed=int(graph_seed))
                total, included = result.total, len(result.included)
                stats.update(bytes_per_client=result.bytes_per_client, client_seconds=result.client_seconds,
                             server_seconds=result.server_seconds)
        except secagg.SecAggAborted as stopped:
            warnings.warn(f"fedlab: {stopped}; {lost_round(self.protocol)}", FedlabWarning, stacklevel=3)
            stats["aborted"] = 1
            if not self.protocol.central_dp:
                return state, aggregator_measurements(self.protocol, stats, clip), finalized
            total, summed, included = None, tuple(np.zeros(s, np.int64) for s in self.value_shapes), 0  # noise alone
        else:
            stats["included"] = included
            summed = signed_sum(total, self.protocol.modulus_bits, self.value_shapes)
        weights, finalizer_state, finalized, *side = decode_fn(state.global_model_weights, state.finalizer, summed,
                                                               self.protocol.noise(self.value_shapes, noise_seed),
                                                               self.protocol.divisor(included, clip))
        state = self._replace(state, global_model_weights=weights, finalizer=finalizer_state)
        state = moved_clip(self.protocol, state, clip, total, included, noise_seed)
        if self.side_shapes and not stats["aborted"]:  # a lost sum (its noise alone) tells nothing of the clients
            state = self.after(state, [np.asarray(v, np.float32) for v in side[0]],
                               float(self.protocol.count(included)))
        return state, aggregator_measurements(self.protocol, stats, clip), finalized

    def empty_round(self, state, noise_seed: Optional[int] = None):
        """The state after a round that sampled no client: under central DP on a protocol the server still adds
        its noise to the empty sum (the accounting's Poisson-sampled Gaussian releases it); else unchanged."""
        if self.protocol is None or not self.protocol.central_dp:
            return state
        _, decode_fn = self._protocol_fns
        clip = current_clip(state)
        weights, finalizer_state, _, *side = decode_fn(state.global_model_weights, state.finalizer,
                                                       tuple(np.zeros(s, np.int64) for s in self.value_shapes),
                                                       self.protocol.noise(self.value_shapes, noise_seed),
                                                       self.protocol.divisor(0, clip))
        state = self._replace(state, global_model_weights=weights, finalizer=finalizer_state)  # no client: no side
        return moved_clip(self.protocol, state, clip, None, 0, noise_seed)

    def client_results(self, state, client_data: list) -> tuple[list, list, object]:
        """Every client trained from the state's model: (updates, update weights, finalized training metrics)."""
        learning_rate = np.float32(state.client_work["learning_rate"])
        updates, update_weights, train_metrics = self._clients_fn(state.global_model_weights, learning_rate,
                                                                  pack_clients(client_data, self.data_type))
        return ([tuple(np.asarray(u) for u in update) for update in updates],
                [np.float32(w) for w in update_weights], train_metrics)

    # Jobs: clients trained one by one, their metrics summed later (FedBuff's jobs, a site's client) ----------
    @functools.cached_property
    def _jobs(self) -> tuple:
        """(jobs computation, metrics computation, unfinalized metrics type), built on first use."""
        return (client_updates_computation(self._training, with_weights_and_metrics=True),
                *metrics_computation(self._training))

    def train_jobs(self, weights, learning_rate, client_data: list) -> list[tuple]:
        """Each client input trained from ``weights`` (``ModelWeights``) at ``learning_rate``:
        [(update, weight, unfinalized metrics leaves)]."""
        if not client_data:
            return []
        updates, update_weights, metrics = self._jobs[0](weights, np.float32(learning_rate),
                                                          pack_clients(client_data, self.data_type))
        return [(tuple(np.asarray(u, np.float32) for u in update), np.float32(weight), metric_leaves(m))
                for update, weight, m in zip(updates, update_weights, metrics)]

    def train(self, state, client_data: list) -> list[tuple]:
        """:meth:`train_jobs` from the state's model and client learning rate."""
        return self.train_jobs(state.global_model_weights, state.client_work["learning_rate"], client_data)

    def train_metrics(self, results: Sequence[tuple]):
        """The finalized training metrics of jobs' ``results`` (summed, then finalized as TFF does)."""
        return self.metrics_of([r[2] for r in results])

    def metrics_of(self, leaves: Sequence[tuple]):
        """The finalized training metrics of clients whose unfinalized metrics are ``leaves`` (flat tuples)."""
        return finalize_metric_leaves(self._jobs[1], self._jobs[2], leaves)

    def metric_leaf_specs(self) -> list[tuple]:
        """(shape, dtype) of each unfinalized metrics leaf, from the client computation's type."""
        return metric_leaf_specs(self._jobs[2])

    def prepare(self, state, clients: list, client_data: list) -> list:
        """The clients' inputs before training (a subclass adds its own; default: as given)."""
        return client_data

    def between(self, state, clients: list, client_data: list, updates: list, update_weights: list):
        """The state after the clients sent ``updates`` (a subclass keeps per-client state; default: unchanged).
        With ``side_shapes``, it appends each client's side values to its update (in place)."""
        return state

    def after(self, state, side_mean: list, denominator: float):
        """The state after aggregation, given the aggregated mean of the side values and the count it divided
        by (a subclass's server state moved by what the aggregator released; default: unchanged)."""
        return state

    def forge(self, updates: list, attackers: Sequence[bool], boost: int, rng, clients: Optional[int] = None) -> list:
        """``updates`` with the round's attackers' replaced by the attack's forgeries (:mod:`fedlab.rounds.attacks`);
        ``clients``: the cohort size the attack is told (default: the round's updates)."""
        who = [i for i, attacking in enumerate(attackers) if attacking]
        if not who:
            return updates
        honest = np.stack([self.flatten(updates[i]) for i in who])
        forged = self.attack.apply(honest, clients=len(updates) if clients is None else int(clients), boost=boost,
                                   rng=rng if rng is not None else np.random.default_rng(0))
        if np.shape(forged) != honest.shape:
            raise ValueError(f"attack {self.attack.name!r}: returned shape {np.shape(forged)}, "
                             f"expected {honest.shape}")
        updates = list(updates)
        for row, i in enumerate(who):
            updates[i] = self.unflatten(forged[row])
        return updates

    # Updates as flat vectors --------------------------------------------------------------------------
    @staticmethod
    def flatten(update: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(a) for a in update])

    def unflatten(self, vector: np.ndarray, dtype=np.float32) -> tuple:
        out, start = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(np.asarray(vector[start:start + size], dtype=dtype).reshape(shape))
            start += size
        return tuple(out)


class UpdateAttackRounds:
    """The aggregator slot's value when attackers forge their updates: a split round (:class:`SplitRoundProcess`)
    with the registered attack, around the config's aggregator (the defence)."""

    def __init__(self, attack: str, model_aggregator=None) -> None:
        self.attack = attack
        self.model_aggregator = model_aggregator

    def build_round_process(self, training) -> SplitRoundProcess:
        return SplitRoundProcess(training, self.model_aggregator, self.attack)


def split_aggregator(model_aggregator) -> tuple:
    """``(aggregator, attack name or None)`` from the aggregator slot's value: a builder of its own split round
    (SCAFFOLD, FedPer, Ditto, q-FFL) takes the attack from :class:`UpdateAttackRounds` and runs it itself."""
    if isinstance(model_aggregator, UpdateAttackRounds):
        return model_aggregator.model_aggregator, model_aggregator.attack
    return model_aggregator, None
