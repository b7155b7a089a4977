"""Rounds whose weighted mean update is computed by a server that sees only CKKS ciphertexts (:mod:`fedlab.ckks`).

A split round (:class:`fedlab.split_rounds.SplitRoundProcess`) with the
aggregation replaced:

1. its TFF computation broadcasts the model and trains every client in
   fedlab's compiled loop; each client's update (float32) and weight (as
   ``client_weighting`` says) come back;
2. in Python, each client encrypts its update with the sites' shared secret
   context; the server object (:class:`fedlab.ckks.CkksServer`, public context
   only) multiplies each client's ciphertexts by the plain weight
   n_i / sum n over the clients whose update arrived, and adds them;
3. **the key holders (the sites) decrypt the weighted mean update**, and a
   second TFF computation applies it with TFF's server-optimizer finalizer.

Where the update is decrypted, and by whom: FedAvg's server step is
w - lr x mean, so the mean could stay encrypted and the sites alone decrypt
the model (NVIDIA FLARE keeps the global model encrypted). An adaptive server
optimizer (FedAdam, FedYogi, server momentum) needs the mean in the clear to
update its moments: the key holders decrypt it and the server optimizer runs
on the decrypted mean. In this simulation both happen in the driver process,
and the history's model is the decrypted one; a deployment would run the
finalizer at the sites, so that the server never sees the mean nor the model.

No clipping or quantization: CKKS encrypts floats (|value| < 2^16). With
dropouts the clients that sent nothing are left out and the weights
renormalised over those that arrived; a round with fewer than two updates
is stopped (the key holders would read that client's update) and the model
stays as it was. The decrypted mean is within :func:`fedlab.ckks.error_bound`
of the exact one and, with ``noise_source="seeded"``, the same bit for bit in
two runs of one config (encryption seeded by (noise seed, round, client)).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from typing import Optional, Sequence

import numpy as np

from . import ckks
from .runtime import tff
from .split_rounds import SplitRoundProcess
from .validation import FedlabWarning


@dataclasses.dataclass(frozen=True)
class HomomorphicMean:
    """The aggregator slot's value for ``secure_protocol="ckks"``: the weighted mean computed under CKKS.

    ``seeded``: encryption randomness from ``(noise seed, round, client)`` (simulation) or from the OS.
    """

    protocol: str = "ckks"
    seeded: bool = True

    def build_round_process(self, training) -> "HomomorphicRoundProcess":
        return HomomorphicRoundProcess(training, seeded=self.seeded)

    @staticmethod
    def upload_bytes(parameters: int) -> int:
        """Bytes a client sends for ``parameters`` trainable values (whole ciphertexts)."""
        return ckks.upload_bytes(parameters)


@functools.lru_cache(maxsize=1)
def _keys() -> tuple[bytes, bytes]:
    # One key pair per driver process: the decrypted mean does not depend on the key (fedlab.ckks), so runs
    # stay reproducible; a deployment makes them once with `python -m fedlab keys ckks DIR`.
    return ckks.make_keys()


class HomomorphicRoundProcess(SplitRoundProcess):
    """A learning process whose round is client training, CKKS aggregation in Python, then TFF's finalizer.

    ``next(state, client_data, clients=..., participants=..., noise_seed=...)``:
    ``participants`` are the clients selected (those not in ``clients``
    dropped out), ``noise_seed`` seeds the round's encryptions (None: the OS's).
    """

    round_inputs = ("clients", "participants", "noise_seed")

    def __init__(self, training, *, seeded: bool = True) -> None:
        super().__init__(training)
        t = tff()
        self.round_inputs = HomomorphicRoundProcess.round_inputs
        self.seeded = seeded
        finalizer, weights_type = self.finalizer, self.weights_type
        state_type = self._init_fn.type_signature.result.member

        @t.federated_computation(t.FederatedType(weights_type, t.SERVER),
                                 t.FederatedType(state_type.finalizer, t.SERVER),
                                 t.FederatedType(weights_type.trainable, t.SERVER))
        def apply_fn(weights, finalizer_state, mean):
            finalized = finalizer.next(finalizer_state, weights, mean)
            return finalized.result, finalized.state, finalized.measurements

        self._apply_fn = apply_fn

    def next(self, state, client_data: list, *, clients: Optional[Sequence[int]] = None,
             participants: Optional[Sequence[int]] = None, noise_seed: Optional[int] = None):
        from .array_training import pack_clients

        ids = list(range(len(client_data))) if clients is None else [int(c) for c in clients]
        everyone = sorted(set(ids) | set(int(p) for p in (participants if participants is not None else ids)))
        learning_rate = np.float32(state.client_work["learning_rate"])
        updates, update_weights, train_metrics = self._clients_fn(state.global_model_weights,
                                                                  pack_clients(client_data, self.data_type),
                                                                  learning_rate)
        stats = collections.OrderedDict(participants=len(everyone), included=0, aborted=0)
        finalized = collections.OrderedDict()
        if len(ids) < 2:
            warnings.warn(f"fedlab: ckks aggregation stopped: {len(ids)} of {len(everyone)} clients sent an update "
                          "and the key holders would read it; the round's update is lost, the model is unchanged",
                          FedlabWarning, stacklevel=2)
            stats["aborted"] = 1
        else:
            vectors = {cid: self.flatten([np.asarray(a) for a in update]) for cid, update in zip(ids, updates)}
            weights = {cid: float(w) for cid, w in zip(ids, update_weights)}
            secret, public = _keys()
            seed = None if not self.seeded or noise_seed is None else [int(noise_seed)]
            result = ckks.run_round(vectors, weights, secret_context=secret, public_context=public, seed=seed)
            stats.update(included=len(result.included), bytes_per_client=result.bytes_per_client,
                         client_seconds=result.client_seconds, server_seconds=result.server_seconds)
            mean = self.unflatten(result.mean, dtype=np.float32)
            weights_out, finalizer_state, finalized = self._apply_fn(state.global_model_weights, state.finalizer,
                                                                     mean)
            state = self._replace(state, global_model_weights=weights_out, finalizer=finalizer_state)
        metrics = collections.OrderedDict(
            distributor=collections.OrderedDict(),
            client_work=collections.OrderedDict(train=train_metrics),
            aggregator=collections.OrderedDict(secagg=stats), finalizer=finalized)
        return tff().learning.templates.LearningProcessOutput(state, metrics)
