"""Rounds whose weighted mean update is computed by a server that sees only CKKS ciphertexts (:mod:`fedlab.protection.ckks`).

A split round (:class:`fedlab.rounds.split_rounds.SplitRoundProcess`) with the
aggregation replaced:

1. its TFF computation broadcasts the model and trains every client in
   fedlab's compiled loop; each client's update (float32) and weight (as
   ``client_weighting`` says) come back;
2. in Python, each client encrypts its update with the sites' shared secret
   context; the server object (:class:`fedlab.protection.ckks.CkksServer`, public context
   only) multiplies each client's ciphertexts by the plain weight
   n_i / sum n over the clients whose update arrived, and adds them;
3. **the key holders (the sites) decrypt the weighted mean update**, and a
   second TFF computation applies it with TFF's server-optimizer finalizer.

Where the update is decrypted, and by whom: the aggregating object
(:class:`fedlab.protection.ckks.CkksServer`) never holds a key or a plaintext. In this
simulation the driver decrypts the mean and the server step (TFF's finalizer,
a SERVER-placed computation) runs on it in the clear, so the model is held in
the clear by the simulation's server state, and the decrypted mean reaches
the server step, which can leak about the key (IND-CPA-D: Li and Micciancio
2021). FedAvg's step w - lr x mean could be run at the sites to keep the model
encrypted (NVIDIA FLARE does); that is not built. An adaptive server optimizer
(FedAdam, FedYogi, server momentum) needs the mean in the clear anyway.

No clipping or quantization: CKKS encrypts floats (|value| < 2^16). A client
whose update has a non-finite value (fedlab's compiled loop gives it weight 0)
or one beyond the range (weight 0 here, with a one-line ``FedlabWarning``
naming the client and the round) sends nothing, as do clients with weight 0.
With dropouts the clients that sent nothing are left out and the weights
renormalised over those that arrived. Only clients with a positive weight
count: with none, the mean is 0 (as TFF's mean, which divides no-NaN) and the
server step runs on it; with one, the round is stopped (the key holders would
read that client's update) and the model stays as it was. With exactly two,
each key holder can compute the other's update from the mean and its own: the
rule only keeps the server from reading one client's update. The decrypted
mean is within :func:`fedlab.protection.ckks.error_bound` of the exact one (with high
probability) and, with ``noise_source="seeded"``, the same bit for bit in two
runs of one config.

**Seeded encryption (``noise_source="seeded"``, the default) is for
reproducible simulation only**: each ciphertext's randomness comes from (the
round's noise seed, the run's config digest ``config.fingerprint()``, client,
chunk), so two configs never share it, but anyone who knows the config knows
it, and with it the plaintexts and the secret key. It gives no confidentiality
against them; the 128-bit security claim applies to ``noise_source="unseeded"``
only (SEAL's randomness from the OS). The state counts the rounds (its
aggregator slot) to name them in warnings.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from typing import Optional, Sequence

import numpy as np

from ..protection import ckks
from .array_training import flat_length, pack_clients
from ..core.runtime import tff
from .split_rounds import SplitRoundProcess
from ..core.validation import FedlabWarning


@dataclasses.dataclass(frozen=True)
class HomomorphicMean:
    """The aggregator slot's value for ``secure_protocol="ckks"``: the weighted mean computed under CKKS.

    ``seeded``: encryption randomness from (round's noise seed, ``run_digest``, client, chunk): simulation only,
    no confidentiality against whoever knows the config; else from the OS. ``run_digest``: the config's
    fingerprint (hex), so that two configs never encrypt with the same randomness.
    """

    protocol: str = "ckks"
    seeded: bool = True
    run_digest: str = ""

    def build_round_process(self, training) -> "HomomorphicRoundProcess":
        return HomomorphicRoundProcess(training, seeded=self.seeded, run_digest=self.run_digest)

    @staticmethod
    def upload_bytes(parameters: int) -> int:
        """Bytes a client sends for ``parameters`` trainable values (whole ciphertexts, uncompressed)."""
        return ckks.upload_bytes(parameters)


@functools.lru_cache(maxsize=1)
def _keys() -> tuple[bytes, bytes]:
    # One key pair per driver process: the decrypted mean does not depend on the key (fedlab.protection.ckks), so runs
    # stay reproducible; a deployment makes them once with `python -m fedlab keys ckks DIR`.
    return ckks.make_keys()


class HomomorphicRoundProcess(SplitRoundProcess):
    """A learning process whose round is client training, CKKS aggregation in Python, then TFF's finalizer.

    ``next(state, client_data, clients=..., participants=..., noise_seed=...)``:
    ``participants`` are the clients selected (those not in ``clients``
    dropped out), ``noise_seed`` seeds the round's encryptions with the run
    digest (None: the OS's). The state's aggregator slot counts the rounds.
    """

    round_inputs = ("clients", "participants", "noise_seed")

    def __init__(self, training, *, seeded: bool = True, run_digest: str = "") -> None:
        super().__init__(training)
        t = tff()
        self.round_inputs = HomomorphicRoundProcess.round_inputs
        self.seeded = seeded
        # Seeded CKKS is for reproducible simulation only: whoever knows the config knows this seed, hence every
        # ciphertext's mask and noise. The digest keeps two configs in one process from sharing randomness.
        self._digest = [int(run_digest[i:i + 8], 16) for i in range(0, len(run_digest), 8)]
        finalizer, weights_type = self.finalizer, self.weights_type
        state_type = self._init_fn.type_signature.result.member

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(state_type.finalizer, t.SERVER),
                                 t.FederatedType(weights_type.trainable, t.SERVER))
        def apply_fn(weights, finalizer_state, mean):
            finalized = finalizer.next(finalizer_state, weights, mean)
            return finalized.result, finalized.state, finalized.measurements

        self._apply_fn = apply_fn

    def initialize(self):
        return self._replace(super().initialize(), aggregator=collections.OrderedDict(rounds=np.int64(0)))

    def next(self, state, client_data: list, *, clients: Optional[Sequence[int]] = None,
             participants: Optional[Sequence[int]] = None, noise_seed: Optional[int] = None):
        ids, everyone, round_num, stats = self.round_of(state, client_data, clients, participants)
        learning_rate = np.float32(state.client_work["learning_rate"])
        updates, update_weights, train_metrics = self._clients_fn(state.global_model_weights, learning_rate,
                                                                  pack_clients(client_data, self.data_type))
        vectors, weights = {}, {}
        for cid, update, w in zip(ids, updates, update_weights):
            vectors[cid] = self.flatten([np.asarray(a) for a in update])
            weights[cid] = self.checked_weight(round_num, cid, float(w), self.beyond_range(vectors[cid]))
            if weights[cid] <= 0:
                vectors[cid] = np.zeros_like(vectors[cid])  # sends nothing: run_round leaves it out
        mean = None
        if self.enough(round_num, weights, everyone, stats):
            secret, public = _keys()
            if any(w > 0 for w in weights.values()):
                result = ckks.run_round(vectors, weights, secret_context=secret, public_context=public,
                                        seed=self.round_seed(noise_seed))
                stats.update(included=len(result.included), bytes_per_client=result.bytes_per_client,
                             client_seconds=result.client_seconds, server_seconds=result.server_seconds)
                mean = result.mean
            else:  # no positive weight: TFF's weighted mean divides no-NaN, to 0
                mean = np.zeros(self.length)
        return self.finish(state, mean, round_num, stats, train_metrics)

    # The steps around the encrypted mean, shared with a federation of sites (fedlab.experiment.site_rounds) ---------------
    @property
    def length(self) -> int:
        return flat_length(self.shapes)

    def round_of(self, state, client_data: list, clients, participants) -> tuple:
        """(client ids, everyone selected, this round's number, the round's protocol statistics so far)."""
        ids = list(range(len(client_data))) if clients is None else [int(c) for c in clients]
        everyone = sorted(set(ids) | set(int(p) for p in (participants if participants is not None else ids)))
        stats = collections.OrderedDict(participants=len(everyone), included=0, aborted=0)
        return ids, everyone, int(state.aggregator["rounds"]) + 1, stats

    def round_seed(self, noise_seed: Optional[int]) -> Optional[list]:
        """The round's encryption seed (each client extends it by its id); None: the OS's randomness."""
        return None if not self.seeded or noise_seed is None else [int(noise_seed), *self._digest]

    @staticmethod
    def beyond_range(vector: np.ndarray) -> Optional[float]:
        """The update's largest magnitude when it is beyond CKKS's range, else None."""
        return None if ckks.in_range(vector) else float(np.max(np.abs(vector)))

    @staticmethod
    def checked_weight(round_num: int, client: int, weight: float, largest: Optional[float]) -> float:
        """The client's weight, 0 (with a one-line warning) when its update reaches ``largest``, beyond CKKS's
        range (:meth:`beyond_range`)."""
        if weight > 0 and largest is not None:
            warnings.warn(f"fedlab: ckks round {round_num}: client {client}'s update reaches {largest:.3g}, beyond "
                          "CKKS's range (|x| < 2^16): left out (weight 0)", FedlabWarning, stacklevel=3)
            return 0.0
        return weight

    @staticmethod
    def enough(round_num: int, weights: dict, everyone: list, stats: dict) -> bool:
        """False (the round stopped, with a warning) when exactly one client has a positive weight: the mean
        would be that client's update."""
        if sum(w > 0 for w in weights.values()) == 1:
            warnings.warn(f"fedlab: ckks round {round_num} stopped: 1 of {len(everyone)} clients sent an update with "
                          "a positive weight, and the mean would be that update; the round's update is lost, the "
                          "model is unchanged", FedlabWarning, stacklevel=3)
            stats["aborted"] = 1
            return False
        return True

    def finish(self, state, mean: Optional[np.ndarray], round_num: int, stats: dict, train_metrics):
        """The server step on the decrypted ``mean`` (None: the round stopped, the model unchanged), the round
        counted, the round's output."""
        finalized = collections.OrderedDict()
        if mean is not None:
            weights_out, finalizer_state, finalized = self._apply_fn(state.global_model_weights, state.finalizer,
                                                                     self.unflatten(mean, dtype=np.float32))
            state = self._replace(state, global_model_weights=weights_out, finalizer=finalizer_state)
        state = self._replace(state, aggregator=collections.OrderedDict(rounds=np.int64(round_num)))
        metrics = collections.OrderedDict(
            distributor=collections.OrderedDict(),
            client_work=collections.OrderedDict(train=train_metrics),
            aggregator=collections.OrderedDict(secagg=stats), finalizer=finalized)
        return tff().learning.templates.LearningProcessOutput(state, metrics)
