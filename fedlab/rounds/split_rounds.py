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
   protocol (:class:`~fedlab.rounds.secure_rounds.ProtocolSum`), a computation
   encodes each update as the protocol's clients encode it, SecAgg or SecAgg+
   sums them in Python (:mod:`fedlab.protection.secagg`, dropouts included) and
   another computation decodes the sum and applies the finalizer
   (:meth:`SplitRoundProcess.protocol_step`).
   So forged updates and the personalised algorithms' own models stack with
   the protocol in one split round.

The round is split once, where Python must see something: with a protocol and
nothing between the clients' training and their encoding (no attack, no
per-client state, no side values), one computation trains and encodes and the
protocol sums its ring vectors (:meth:`SplitRoundProcess.secure_sum`, which a
federation of site processes replaces: :mod:`fedlab.experiment.site_rounds`).

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
from ..protection.skellam_shares import share_codec
from .array_training import (client_updates_computation, finalize_metric_leaves, flat_length, metric_leaf_specs,
                             metric_leaves, metrics_computation, pack_clients, server_finalizer)
from .attacks import ATTACKS
from ..core.runtime import tff
from .secure_rounds import (ProtocolSum, aggregator_measurements, current_clip, lone_client, lost_round,
                            moved_clip, protocol_codec, signed_sum)
from ..core.validation import FedlabWarning


class SplitRoundProcess:
    """A learning process (``initialize``, ``next``, ``get_model_weights``, ``set_model_weights``) whose round
    is client training, :meth:`between`, then aggregation (with a protocol and nothing between, training and
    encoding in one computation: :attr:`fused`); ``round_inputs`` names what the runner passes to ``next``
    besides the state and the clients' data."""

    ATTACK_INPUTS = ("attackers", "attack_boost", "attack_rng", "attack_clients")
    PROTOCOL_INPUTS = ("participants", "graph_seed", "noise_seed")

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None, *,
                 side_shapes: Sequence[tuple] = ()) -> None:
        t = tff()
        self.attack = ATTACKS[attack] if attack is not None else None
        self.protocol = model_aggregator if isinstance(model_aggregator, ProtocolSum) else None
        # whether the aggregator hides the updates from the server (hides_updates) and the denominator of its mean
        # (DP's expected K; None: the updates it was given)
        self.hides_updates = hides_updates(model_aggregator)
        self.mean_denominator = getattr(model_aggregator, "mean_denominator", None)
        self.l2_clip = (self.protocol.clip_norm if self.protocol is not None
                        else getattr(model_aggregator, "l2_clip", None))  # what each client's value is clipped to
        # the fixed count a noised mean divides by (user-level DP's expected K, on TFF's aggregator or the
        # protocol's server), or None: the sum carries no noise
        self.noised_count = (self.mean_denominator if self.mean_denominator is not None else
                             float(self.protocol.denominator) if self.protocol is not None and self.protocol.central_dp
                             else None)
        # values each client sends beside its update, aggregated with it by the same aggregator (clipped with it,
        # summed securely, noised with it): SCAFFOLD's control variates under an aggregator that hides updates
        self.side_shapes = [tuple(s) for s in side_shapes]
        # nothing runs in Python between the clients' training and the protocol's encoding: one computation does both
        self.fused = self.protocol is not None and self.protocol.shares is None and attack is None \
            and not self.side_shapes and all(
            getattr(type(self), name) is getattr(SplitRoundProcess, name)
            for name in ("prepare", "between", "client_results"))
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
        finalizer = server_finalizer(training.server_optimizer, weights_type)
        metrics_aggregation = t.learning.metrics.sum_then_finalize(training.model.finalize_metrics)
        split = self._split_computations(value_type) if self.side_shapes else None
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
            self._protocol_fns = self._protocol_computations(weights_type, state_type.finalizer, finalizer, split,
                                                             metrics_aggregation)

    def _split_computations(self, value_type) -> tuple:
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

    def _protocol_computations(self, weights_type, finalizer_state_type, finalizer, split=None,
                               metrics_aggregation=None) -> tuple:
        """(encode every client's update for the ring, decode the sum and step the server, train and encode in
        one computation or None): the protocol's client and server arithmetic
        (:func:`fedlab.rounds.secure_rounds.protocol_codec`); with side values, they are encoded and summed with
        the update, and the decoding returns their mean too."""
        if self.protocol.shares is not None:
            return self._share_computations(weights_type, finalizer_state_type, finalizer, split)
        t = tff()
        training = self._training
        encode, undiscretize, divide = protocol_codec(self.protocol, self.value_type, self.value_shapes)
        scale = np.float32(self.protocol.scale)
        constants_type = t.FederatedType((t.TensorType(np.float32), t.TensorType(np.float32)), t.SERVER)
        self._encode = encode

        @t.federated_computation(t.FederatedType(self.value_type, t.CLIENTS), constants_type)
        def encode_fn(updates, clip_and_scale):  # (C_t, its scale): ProtocolSum.constants
            constants = t.federated_broadcast(clip_and_scale)
            return t.federated_map(encode, (updates, constants[0], constants[1]))

        train_encode_fn = None
        if self.fused:
            @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                     t.FederatedType(t.TensorType(np.float32), t.SERVER),
                                     t.FederatedType(training.data_type, t.CLIENTS), constants_type)
            def train_encode_fn(weights, learning_rate, client_data, clip_and_scale):
                encoded, unfinalized = self._trained_and_encoded(weights, learning_rate, client_data, clip_and_scale)
                return encoded, metrics_aggregation(unfinalized)

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(finalizer_state_type, t.SERVER),
                                 t.FederatedType(undiscretize.type_signature.parameter[0], t.SERVER),
                                 t.FederatedType(divide.type_signature.parameter[1], t.SERVER),
                                 t.FederatedType(t.TensorType(np.float32), t.SERVER))
        def decode_fn(weights, finalizer_state, summed, noise, count):
            total = t.federated_map(undiscretize, (summed, t.federated_value(scale, t.SERVER)))
            return _finalized(finalizer, split, finalizer_state, weights,
                              t.federated_map(divide, (total, noise, count)))

        return encode_fn, decode_fn, train_encode_fn

    def _share_computations(self, weights_type, finalizer_state_type, finalizer, split=None) -> tuple:
        """(encode every client's update with its noise share, decode the sum and step the server, None): distributed
        DP's client and server arithmetic around the protocol's sum mod 2^b (:mod:`fedlab.protection.skellam_shares`);
        the round's key (:meth:`ProtocolSum.round_key`) goes to both."""
        t = tff()
        encode, decode, params = share_codec(self.protocol.shares, self.value_type)
        self._share_length = params.padded_dim
        key_type = t.FederatedType(t.TensorType(np.int64, [2]), t.SERVER)

        @t.federated_computation(t.FederatedType(self.value_type, t.CLIENTS), key_type)
        def encode_fn(updates, key):
            return t.federated_map(encode, (updates, t.federated_broadcast(key)))

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(finalizer_state_type, t.SERVER),
                                 t.FederatedType(decode.type_signature.parameter[0], t.SERVER),
                                 t.FederatedType(t.TensorType(np.int32), t.SERVER), key_type)
        def decode_fn(weights, finalizer_state, total, count, key):
            return _finalized(finalizer, split, finalizer_state, weights,
                              t.federated_map(decode, (total, count, key)))

        return encode_fn, decode_fn, None

    def _decoded(self, state, total: Optional[np.ndarray], included: int, noise_seed: Optional[int], clip,
                 key: Optional[np.ndarray] = None) -> list:
        """The decoding computation's outputs (new weights, finalizer state and measurements, side values) for the
        protocol's sum ``total`` (ring elements; None: a lost or empty sum, the noise alone under DP) of ``included``
        clients; ``key``: distributed DP's key of the round, the one its clients encoded with."""
        _, decode_fn, _ = self._protocol_fns
        if self.protocol.shares is not None:  # the noise shares of the clients not included are the server's draw
            summed = (np.zeros(self._share_length, np.int32) if total is None
                      else np.asarray(total, np.uint64).astype(np.int32))  # < 2^b <= 2^16
            return decode_fn(state.global_model_weights, state.finalizer, summed, np.int32(included),
                             self.protocol.round_key(noise_seed) if key is None else key)
        summed = (tuple(np.zeros(s, np.int64) for s in self.value_shapes) if total is None
                  else signed_sum(total, self.protocol.modulus_bits, self.value_shapes))
        return decode_fn(state.global_model_weights, state.finalizer, summed,
                         self.protocol.noise(self.value_shapes, noise_seed), self.protocol.divisor(included, clip))

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
        if self.fused:
            state, aggregated, finalized, train_metrics = self.fused_protocol_step(state, ids, client_data,
                                                                                   participants, graph_seed, noise_seed)
            return self._output(state, train_metrics, aggregated, finalized)
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
        return self._output(state, train_metrics, aggregated, finalized)

    @staticmethod
    def _output(state, train_metrics, aggregated, finalized):
        metrics = collections.OrderedDict(
            distributor=collections.OrderedDict(),
            client_work=collections.OrderedDict(train=train_metrics),
            aggregator=aggregated, finalizer=finalized)
        return tff().learning.templates.LearningProcessOutput(state, metrics)

    def protocol_step(self, state, ids: list, updates: list, participants, graph_seed: int,
                      noise_seed: Optional[int] = None) -> tuple:
        """(state, aggregator measurements, finalizer measurements) after the protocol sums ``updates``.

        Every client encodes its update as the protocol's clients do
        (:func:`~fedlab.rounds.secure_rounds.protocol_codec`); the clients in ``participants`` but not in ``ids``
        took part in the key exchange and dropped out before sending. The mean divides by the clients whose masked
        vector arrived; when too few remain to unmask, the round's update is lost and the global model stays as it
        was, or, under central DP, moves by the server's noise alone (:func:`~fedlab.rounds.secure_rounds.lost_round`;
        a warning says so); what the clients keep (FedPer's heads, Ditto's own models) they trained locally and
        keep. Attackers (:meth:`forge`) encode their forgeries as honest clients do, clipped to C: a real one could
        send any ring element, which the protocol bounds by nothing but the ring.
        """
        encode_fn, key = self._protocol_fns[0], None
        if self.protocol.shares is not None:  # each update with its noise share, at the round's key (drawn once:
            key = self.protocol.round_key(noise_seed)  # unseeded, each call draws another; the server decodes with it)
            vectors = functools.cache(lambda: [ring_vector((enc,)) for enc in encode_fn(updates, key)])
        else:
            vectors = functools.cache(lambda: [ring_vector(enc) for enc in
                                               encode_fn(updates, self.protocol.constants(current_clip(state)))])
        return self._protocol_release(
            state, ids, participants, noise_seed, lone=lambda: vectors()[0], too_few=lambda: None,
            secure_sum=lambda everyone: self._run_protocol(dict(zip(ids, vectors())), everyone, graph_seed), key=key)

    def fused_protocol_step(self, state, ids: list, client_data: list, participants, graph_seed: int,
                            noise_seed: Optional[int] = None) -> tuple:
        """(state, aggregator measurements, finalizer measurements, training metrics): :meth:`protocol_step` for
        clients trained and encoded in one computation (:attr:`fused`), summed by :meth:`secure_sum`."""
        trained = {}

        def lone():
            encoded, trained["metrics"] = self.train_encode(state, client_data)
            return ring_vector(encoded[0])

        def secure_sum(everyone):
            try:
                result, trained["metrics"] = self.secure_sum(state, ids, client_data, everyone, graph_seed)
            except secagg.SecAggAborted as stopped:
                trained["metrics"] = getattr(stopped, "train_metrics", None)
                raise
            return result

        def too_few():  # its clients trained all the same
            trained["metrics"] = self.metrics_without_sum(state, client_data)

        state, aggregated, finalized = self._protocol_release(state, ids, participants, noise_seed, lone=lone,
                                                              secure_sum=secure_sum, too_few=too_few)
        return state, aggregated, finalized, trained.get("metrics")

    def _protocol_release(self, state, ids: list, participants, noise_seed: Optional[int], *, lone, secure_sum,
                          too_few, key: Optional[np.ndarray] = None) -> tuple:
        """(state, aggregator measurements, finalizer measurements) once the protocol summed the round: ``lone()``
        the ring vector of a round's one client under central DP (:func:`~fedlab.rounds.secure_rounds.lone_client`),
        ``secure_sum(everyone)`` the protocol's result, ``too_few()`` before a round of fewer than 2 aborts; ``key``:
        distributed DP's key the clients encoded with."""
        everyone = sorted(set(ids) | set(int(p) for p in (participants if participants is not None else ids)))
        stats = collections.OrderedDict(participants=len(everyone), included=0, aborted=0)
        finalized = collections.OrderedDict()
        clip = current_clip(state)
        try:
            if lone_client(self.protocol, ids, everyone):  # summed without the protocol (see lone_client)
                total, included = lone(), 1
            else:
                if len(everyone) < 2:
                    too_few()
                    raise secagg.SecAggAborted(f"secure aggregation needs 2 or more clients: {len(everyone)} took "
                                               "part")
                result = secure_sum(everyone)
                total, included = result.total, len(result.included)
                stats.update(bytes_per_client=result.bytes_per_client, client_seconds=result.client_seconds,
                             server_seconds=result.server_seconds)
        except secagg.SecAggAborted as stopped:
            warnings.warn(f"fedlab: {stopped}; {lost_round(self.protocol)}", FedlabWarning, stacklevel=4)
            stats["aborted"] = 1
            if not self.protocol.central_dp:
                return state, aggregator_measurements(self.protocol, stats, clip), finalized
            total, included = None, 0  # the noise alone
        else:
            stats["included"] = included
        weights, finalizer_state, finalized, *side = self._decoded(state, total, included, noise_seed, clip, key)
        state = self._replace(state, global_model_weights=weights, finalizer=finalizer_state)
        state = moved_clip(self.protocol, state, clip, total, included, noise_seed)
        if self.side_shapes and not stats["aborted"]:  # a lost sum (its noise alone) tells nothing of the clients
            state = self.after(state, [np.asarray(v, np.float32) for v in side[0]],
                               float(self.protocol.count(included)))
        return state, aggregator_measurements(self.protocol, stats, clip), finalized

    # The fused protocol round's clients: trained and encoded in one computation ------------------------------
    def train_encode(self, state, client_data: list) -> tuple:
        """(each client's ring vector as a tuple of int64 tensors, the finalized training metrics): every client
        trained from the state's model and encoded at the round's clip."""
        return self._protocol_fns[2](state.global_model_weights, np.float32(state.client_work["learning_rate"]),
                                     pack_clients(client_data, self.data_type),
                                     self.protocol.constants(current_clip(state)))

    def secure_sum(self, state, ids: list, client_data: list, everyone: list, graph_seed: int):
        """(the protocol's :class:`secagg.SecAggResult`, the clients' finalized training metrics): here every
        client is simulated in this process (a federation of site processes: :mod:`fedlab.experiment.site_rounds`).
        An abort carries the metrics of the clients that trained (``train_metrics``)."""
        encoded, train_metrics = self.train_encode(state, client_data)
        try:
            return self._run_protocol({cid: ring_vector(enc) for cid, enc in zip(ids, encoded)}, everyone,
                                      graph_seed), train_metrics
        except secagg.SecAggAborted as stopped:
            stopped.train_metrics = train_metrics  # the clients trained: their metrics are reported
            raise

    def _run_protocol(self, vectors: dict, everyone: list, graph_seed: int) -> secagg.SecAggResult:
        """The protocol's sum of the clients' ring vectors (``vectors``: client id -> vector), ``everyone`` having
        taken part in the key exchange."""
        return secagg.run_protocol(vectors, modulus_bits=self.protocol.modulus_bits, protocol=self.protocol.protocol,
                                   participants=everyone, graph_seed=int(graph_seed))

    def metrics_without_sum(self, state, client_data: list):
        """The training metrics of a round too small for the protocol (its clients trained all the same)."""
        return self.train_encode(state, client_data)[1]

    @functools.cached_property
    def _encode_jobs_fn(self):
        """Jobs computation: weights, learning rate, client data -> each client's ring vector and unfinalized
        metrics (a site's clients), built on first use."""
        t = tff()
        training = self._training
        constants = self.protocol.constants(self.protocol.clip_norm)

        @t.federated_computation(t.FederatedType(training.weights_type, t.SERVER),
                                 t.FederatedType(t.TensorType(np.float32), t.SERVER),
                                 t.FederatedType(training.data_type, t.CLIENTS))
        def jobs_fn(weights, learning_rate, client_data):  # client data last (client_updates_computation)
            return self._trained_and_encoded(weights, learning_rate, client_data,
                                             t.federated_value(constants, t.SERVER))

        return jobs_fn

    def _trained_and_encoded(self, weights, learning_rate, client_data, clip_and_scale) -> tuple:
        """Inside a federated computation: (each client's update encoded at ``clip_and_scale``, (C_t, its scale) at
        the server; each client's unfinalized training metrics), every client trained from ``weights``."""
        t = tff()
        result, unfinalized = t.federated_map(self._training.train_client, (
            t.federated_broadcast(weights), client_data, t.federated_broadcast(learning_rate)))
        constants = t.federated_broadcast(clip_and_scale)
        return t.federated_map(self._encode, (result.update, constants[0], constants[1])), unfinalized

    def encode_jobs(self, weights, learning_rate, client_data: list) -> list[tuple]:
        """Each client input trained from ``weights`` and encoded for the ring: [(uint64 vector, metric leaves)]."""
        if self.protocol.adaptive:  # the jobs encode at the first clip; a site is not told the round's C_t
            raise ValueError("protocol: an adaptive clip's clients encode at the round's clip, which jobs run at a "
                             "site are not given (sites refuse user-level DP on the protocol)")
        encoded, metrics = self._encode_jobs_fn(weights, np.float32(learning_rate),
                                                pack_clients(client_data, self.data_type))
        return [(ring_vector(enc), metric_leaves(m)) for enc, m in zip(encoded, metrics)]

    @property
    def length(self) -> int:
        """How many ring elements a client's encoded update has (every value it sends, and the bit of an adaptive
        clip)."""
        if self.protocol.shares is not None:  # one vector, padded to even (distributed DP)
            return self._share_length
        return flat_length(self.value_shapes) + int(self.protocol.adaptive)

    def empty_round(self, state, noise_seed: Optional[int] = None) -> tuple:
        """(state, aggregator measurements) after a round that sampled no client: under central DP the server still
        adds its noise to the empty sum (the accounting's Poisson-sampled Gaussian releases it), on a protocol or
        through the DP aggregator (which draws its noise and moves an adaptive clip as in any round, and reports
        that clip); else the state unchanged. What the clients send beside their updates (SCAFFOLD's) is not taken
        from a sum of no client."""
        if self.protocol is None and self.mean_denominator is not None:  # user-level DP's aggregator
            weights, aggregator_state, finalizer_state, measured, *_ = self._server_fn(
                state.global_model_weights, state.aggregator, state.finalizer, [], [])
            return self._replace(state, global_model_weights=weights, aggregator=aggregator_state,
                                 finalizer=finalizer_state), measured
        if self.protocol is None or not self.protocol.central_dp:
            return state, collections.OrderedDict()
        clip = current_clip(state)
        weights, finalizer_state, _, *side = self._decoded(state, None, 0, noise_seed, clip)
        state = self._replace(state, global_model_weights=weights, finalizer=finalizer_state)  # no client: no side
        measured = (collections.OrderedDict(dp_query_metrics=collections.OrderedDict(clip=np.float32(clip)))
                    if self.protocol.adaptive else collections.OrderedDict())
        return moved_clip(self.protocol, state, clip, None, 0, noise_seed), measured

    def client_results(self, state, client_data: list) -> tuple[list, list, object]:
        """Every client trained from the state's model: (updates, update weights, finalized training metrics)."""
        learning_rate = np.float32(state.client_work["learning_rate"])
        updates, update_weights, train_metrics = self._clients_fn(state.global_model_weights, learning_rate,
                                                                  pack_clients(client_data, self.data_type))
        return ([tuple(np.asarray(u) for u in update) for update in updates],
                [np.float32(w) for w in update_weights], train_metrics)

    # Jobs: clients trained one by one, their metrics summed later (FedBuff's jobs, a site's client) ----------
    @functools.cached_property
    def _jobs(self):
        """The jobs computation (each client's update, weight and unfinalized metrics), built on first use."""
        return client_updates_computation(self._training, with_weights_and_metrics=True)

    @functools.cached_property
    def _metrics_fns(self) -> tuple:
        """(metrics computation, unfinalized metrics type), built on first use."""
        return metrics_computation(self._training)

    def train_jobs(self, weights, learning_rate, client_data: list) -> list[tuple]:
        """Each client input trained from ``weights`` (``ModelWeights``) at ``learning_rate``:
        [(update, weight, unfinalized metrics leaves)]."""
        if not client_data:
            return []
        updates, update_weights, metrics = self._jobs(weights, np.float32(learning_rate),
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
        return finalize_metric_leaves(*self._metrics_fns, leaves)

    def metric_leaf_specs(self) -> list[tuple]:
        """(shape, dtype) of each unfinalized metrics leaf, from the client computation's type."""
        return metric_leaf_specs(self._metrics_fns[1])

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


def _finalized(finalizer, split, finalizer_state, weights, mean) -> tuple:
    """Inside a federated computation: the server optimizer's step on the aggregated ``mean`` (its update's part,
    with side values: ``split``), as (weights, finalizer state, measurements[, the side values' mean])."""
    t = tff()
    if split is None:
        finalized = finalizer.next(finalizer_state, weights, mean)
        return finalized.result, finalized.state, finalized.measurements
    finalized = finalizer.next(finalizer_state, weights, t.federated_map(split[0], mean))
    return finalized.result, finalized.state, finalized.measurements, t.federated_map(split[1], mean)


def ring_vector(encoded: Sequence[np.ndarray]) -> np.ndarray:
    """A client's encoded tensors as the one vector of ring elements the protocol sums."""
    return np.concatenate([np.ravel(a) for a in encoded]).astype(np.uint64)


def hides_updates(model_aggregator) -> bool:
    """Whether an aggregator hides each client's update from the server: a secure protocol, or one
    :func:`fedlab.aggregators.aggregation.make_aggregator` marks (user-level DP, a secure sum)."""
    return isinstance(model_aggregator, ProtocolSum) or bool(getattr(model_aggregator, "hides_updates", False))


class SplitRounds:
    """The aggregator slot's value for a split round (:class:`SplitRoundProcess`): the config's aggregator (the
    defence, or a secure protocol) and the registered attack whose attackers forge their updates, if any."""

    def __init__(self, model_aggregator=None, attack: Optional[str] = None) -> None:
        self.attack = attack
        self.model_aggregator = model_aggregator

    def build_round_process(self, training) -> SplitRoundProcess:
        return SplitRoundProcess(training, self.model_aggregator, self.attack)


def split_aggregator(model_aggregator) -> tuple:
    """``(aggregator, attack name or None)`` from the aggregator slot's value: a builder of its own split round
    (SCAFFOLD, FedPer, Ditto, q-FFL) takes the attack from :class:`SplitRounds` and runs it itself."""
    if isinstance(model_aggregator, SplitRounds):
        return model_aggregator.model_aggregator, model_aggregator.attack
    return model_aggregator, None
