"""Rounds whose clients are site processes: the sites train, the driver aggregates and steps the server.

The round is split at the clients' updates as in :mod:`fedlab.rounds.split_rounds`
(and, under secure aggregation, at the ring vectors, as there with the
protocol's stage of :mod:`fedlab.rounds.secure_rounds`), the split made by the same classes: a site
builds the same process from the config and runs its client part
(:meth:`SplitRoundProcess.train_jobs`, :meth:`SplitRoundProcess.encode_jobs`)
on its own records; the driver sends the model and runs the rest. With the
same clients the numbers are those of the simulation, within float32
summation order (``tests/test_sites.py``).

Secure aggregation: each site is a client of the SecAgg/SecAgg+ protocol
(:mod:`fedlab.protection.secagg`) with its own keys, masks and shares; the driver is its
server and only relays messages. A site that stops answering during the
protocol has dropped out, as the protocol defines it.
"""

from __future__ import annotations

import secrets
import warnings

import numpy as np

from ..protection import ckks, secagg
from ..workers import wire
from ..rounds.homomorphic_rounds import HomomorphicMean, HomomorphicRoundProcess
from ..rounds.secure_rounds import ProtocolSum
from .sites import SiteError, SiteJob, SiteLostError, call_all
from ..rounds.split_rounds import SplitRoundProcess
from ..core.validation import FedlabWarning


class SiteRounds:
    """The aggregator slot's value for a federation of sites: the config's aggregator (or secure protocol),
    with the clients' part of every round run at the sites."""

    def __init__(self, model_aggregator=None) -> None:
        self.model_aggregator = model_aggregator

    def build_round_process(self, training):
        if isinstance(self.model_aggregator, ProtocolSum):
            return SiteSecureProcess(training, self.model_aggregator)
        if isinstance(self.model_aggregator, HomomorphicMean):
            return SiteHomomorphicProcess(training, seeded=self.model_aggregator.seeded,
                                          run_digest=self.model_aggregator.run_digest)
        return SiteProcess(training, self.model_aggregator)


def tolerating(job: SiteJob, call):
    """``call(job)``; None, with a warning naming the site, when the site stops answering and the round's policy
    (``straggler_policy`` drop or partial) goes on without a late client, else :class:`SiteLostError`."""
    try:
        return call(job)
    except SiteLostError as lost:
        if not job.tolerant:
            raise
        warnings.warn(f"fedlab: round {job.round}: {lost.args[0].split('. ')[0]}; the round goes on without it "
                      "(straggler_policy)", FedlabWarning, stacklevel=2)
        return None


def nan_metrics(metrics):
    """``metrics`` (finalized, nested) with NaN in place of every value: metrics of a round nobody trained in."""
    if isinstance(metrics, dict):
        return type(metrics)((k, nan_metrics(v)) for k, v in metrics.items())
    return np.full(np.shape(metrics), np.nan, np.float32)


def weights_message(weights) -> dict:
    """``ModelWeights`` as the arrays of a message: trainable then non-trainable tensors."""
    return {**wire.pack_list([np.asarray(w) for w in weights.trainable], "trainable"),
            **wire.pack_list([np.asarray(w) for w in weights.non_trainable], "non_trainable")}


def job_header(job: SiteJob, learning_rate) -> dict:
    return {"config": job.config, "round": int(job.round), "client": int(job.client), "steps": int(job.steps),
            "learning_rate": float(np.float32(learning_rate))}


class SiteProcess(SplitRoundProcess):
    """A split round whose clients train at their sites (``next`` is given :class:`SiteJob` s)."""

    def client_results(self, state, client_data: list) -> tuple[list, list, object]:
        weights = weights_message(state.global_model_weights)
        learning_rate = state.client_work["learning_rate"]

        def train(job: SiteJob):
            header, arrays = job.site.call("Train", job_header(job, learning_rate), weights)
            update = tuple(np.asarray(u, np.float32) for u in wire.unpack_list(arrays, "update"))
            if [u.shape for u in update] != [tuple(s) for s in self.shapes]:
                raise SiteError(job.site.address, f"site {job.site.name!r} sent an update of shapes "
                                                  f"{[u.shape for u in update]}, not the model's {self.shapes}")
            return update, np.float32(header["weight"]), tuple(wire.unpack_list(arrays, "metrics"))

        results = [r for r in call_all(lambda job: tolerating(job, train), client_data) if r is not None]
        if client_data and not results:
            job = client_data[0]
            raise SiteLostError(job.site.address, f"round {job.round}: none of its sites answered")
        return [r[0] for r in results], [r[1] for r in results], self.train_metrics(results)


class _SiteParty:
    """The driver's handle on one site's client role in the protocol: each stage one call to the site; a site
    that stops answering has dropped out (:class:`secagg.PartyLost`). A participant that the round's schedule
    drops (``trains=False``) exchanges keys and then sends no masked input, as in the simulation."""

    def __init__(self, job: SiteJob, trains: bool, run: str, header: dict, weights: dict, length: int) -> None:
        self.job, self.trains, self.run, self.length = job, trains, run, length
        self._header, self._weights = header, weights
        self.seconds = 0.0
        self.metrics = None  # the site's unfinalized training metrics, once it trained
        self._keys = None

    def start(self) -> None:
        """Trains and encodes at the site (or only makes keys), which then holds its role's secrets."""
        try:
            header, arrays = self.call("SecureTrain", {**self._header, "trains": self.trains},
                                       self._weights if self.trains else {})
        except secagg.PartyLost:
            return
        if self.trains:
            self.metrics = tuple(wire.unpack_list(arrays, "metrics"))
        self._keys = (arrays["channel_pk"].tobytes(), arrays["mask_pk"].tobytes())

    def call(self, method: str, header: dict, arrays=()):
        try:
            answer, out = self.job.site.call(method, {**header, "run": self.run, "round": self.job.round}, arrays)
        except SiteLostError as lost:
            raise secagg.PartyLost(str(lost)) from None
        except SiteError as refused:
            if method == "SecureTrain":  # the run's config or the site's policy: not a dropout
                raise
            warnings.warn(f"fedlab: round {self.job.round}: {refused}; it drops out of the protocol", FedlabWarning,
                          stacklevel=2)
            raise secagg.PartyLost(str(refused)) from None
        self.seconds += float(answer.get("seconds", 0.0))
        return answer, out

    def advertise_keys(self):
        if self._keys is None:
            raise secagg.PartyLost("did not answer")
        return self._keys

    def share_keys(self, keys):
        arrays = {**wire.pack_bytes({v: k[0] for v, k in keys.items()}, "channel"),
                  **wire.pack_bytes({v: k[1] for v, k in keys.items()}, "mask")}
        return wire.unpack_bytes(self.call("ShareKeys", {}, arrays)[1], "cipher")

    def masked_input(self, inbox):
        if not self.trains:
            raise secagg.PartyLost("dropped out before sending its masked input (the round's schedule)")
        y = self.call("MaskedInput", {}, wire.pack_bytes(inbox, "mail"))[1].get("y")
        if y is None or y.shape != (self.length,) or y.dtype.kind != "u":
            warnings.warn(f"fedlab: round {self.job.round}: site {self.job.site.name!r} sent a malformed masked "
                          "vector; it drops out of the protocol", FedlabWarning, stacklevel=2)
            raise secagg.PartyLost("malformed masked input")
        return y

    def unmask(self, survivors):
        arrays = self.call("Unmask", {"survivors": sorted(int(s) for s in survivors)})[1]
        return wire.unpack_bytes(arrays, "b"), wire.unpack_bytes(arrays, "s")


class SiteSecureProcess(SplitRoundProcess):
    """A secure-protocol round whose clients (training, encoding and the protocol's client role) are sites: the
    fused protocol round (:meth:`SplitRoundProcess.fused_protocol_step`) with the sites' protocol as its sum."""

    def __init__(self, training, protocol: ProtocolSum) -> None:
        super().__init__(training, protocol)
        if not self.fused:  # the driver holds no client inputs: nothing may run between training and encoding
            raise ValueError("protocol: a site round must train and encode at the sites in one step")

    def secure_sum(self, state, ids: list, client_data: list, everyone: list, graph_seed: int):
        jobs = dict(zip(ids, client_data))
        weights = weights_message(state.global_model_weights)
        learning_rate = state.client_work["learning_rate"]
        run = secrets.token_hex(8)
        setup = secagg.make_setup(everyone, self.length, self.protocol.modulus_bits, self.protocol.protocol, graph_seed)
        some = client_data[0]
        parties = {}
        for u in everyone:
            job = jobs[u] if u in jobs else some.other(u)
            parties[u] = _SiteParty(job, u in jobs, run, {**job_header(job, learning_rate),
                                                          "participants": list(everyone),
                                                          "graph_seed": int(graph_seed)}, weights, self.length)
        call_all(lambda party: party.start(), list(parties.values()))
        trained = [p.metrics for p in parties.values() if p.metrics is not None]
        train_metrics = self.metrics_of(trained) if trained else self.metrics_without_sum(state, [])
        try:
            result, _ = secagg.run_parties(setup, parties)
        except secagg.SecAggAborted as stopped:
            stopped.train_metrics = train_metrics
            raise
        return result, train_metrics

    def metrics_without_sum(self, state, client_data: list):
        """No site trained: NaN in every training metric, without calling a site."""
        return nan_metrics(self.metrics_of([tuple(np.zeros(s, d) for s, d in self.metric_leaf_specs())]))


class SiteHomomorphicProcess(HomomorphicRoundProcess):
    """A CKKS round whose clients are sites: each trains and encrypts its update with the sites' shared secret
    context; the driver adds the ciphertexts with the public context only; a site decrypts the weighted mean.
    The secret key never reaches the driver."""

    def next(self, state, client_data: list, *, clients=None, participants=None, noise_seed=None):
        del noise_seed  # each site derives its encryption randomness itself (fedlab.experiment.site_service)
        ids, everyone, round_num, stats = self.round_of(state, client_data, clients, participants)
        weights_arrays = weights_message(state.global_model_weights)
        learning_rate = state.client_work["learning_rate"]
        run = secrets.token_hex(8)
        answers = call_all(lambda job: tolerating(job, lambda job: job.site.call(
            "HomomorphicTrain", {**job_header(job, learning_rate), "run": run}, weights_arrays)), client_data)
        if client_data and all(a is None for a in answers):
            raise SiteLostError(client_data[0].site.address, f"round {client_data[0].round}: none of its sites answered")
        weights, sent, seconds, leaves = {}, {}, {}, []
        for cid, answer in zip(ids, answers):
            if answer is None:  # lost this round: it sends nothing
                continue
            header, arrays = answer
            weights[cid] = self.checked_weight(round_num, cid, float(header["weight"]), header.get("largest"))
            leaves.append(tuple(wire.unpack_list(arrays, "metrics")))
            if weights[cid] > 0:
                chunks = wire.unpack_bytes(arrays, "ct")
                sent[cid], seconds[cid] = [chunks[k] for k in sorted(chunks)], float(header["seconds"])
        mean = None
        if self.enough(round_num, weights, everyone, stats):
            positive = sorted(c for c, w in weights.items() if w > 0)
            mean = np.zeros(self.length)  # no positive weight: TFF's weighted mean divides no-NaN, to 0
            if positive:
                holder = client_data[ids.index(positive[0])].site  # a key holder decrypts the mean
                public = holder.call("PublicContext", {})[1]["context"].tobytes()
                raw = np.array([weights[c] for c in positive])
                server = ckks.CkksServer(public)
                total = server.weighted_sum([sent[c] for c in positive], (raw / raw.sum()).tolist())
                header, arrays = holder.call("Decrypt", {"length": self.length, "run": run, "included": len(positive),
                                                         "round": client_data[0].round},
                                             wire.pack_bytes(dict(enumerate(total)), "ct"))
                mean = arrays["mean"]
                if mean.shape != (self.length,):
                    raise SiteError(holder.address, f"site {holder.name!r} sent a mean of shape {mean.shape}")
                stats.update(included=len(positive), server_seconds=server.seconds,
                             bytes_per_client=float(np.mean([(len(sent[c]) + len(total)) * ckks.ciphertext_bytes()
                                                             for c in positive])),
                             client_seconds=float(np.mean([seconds[c] for c in positive])) + header["seconds"])
        return self.finish(state, mean, round_num, stats, self.metrics_of(leaves))


__all__ = ["SiteRounds", "SiteProcess", "SiteSecureProcess", "SiteError"]
