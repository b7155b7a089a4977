"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML, arXiv:1910.06378), Algorithm 1 with option II.

The server keeps a control variate c, every client i its own c_i (zero at
first). In a round each sampled client starts from the server model x and
takes K_i local steps y <- y - eta_l (g_i(y) - c_i + c), then sets
c_i+ = c_i - c + (x - y_i) / (K_i eta_l) and sends (y_i - x, c_i+ - c_i). The
server moves x by eta_g times the mean of y_i - x and sets
c <- c + (1/N) sum_{i in S} (c_i+ - c_i), N the number of clients.

TFF 0.87's learning templates keep no per-client state, so the round is split
(:mod:`fedlab.rounds.split_rounds`): the compiled client loop adds each client's
correction c - c_i to every gradient (:func:`fedlab.rounds.array_training.build_client_update`,
``corrected``); the control variates are updated in NumPy between the clients
and the server and kept in the state's ``client_work``, which checkpoints save.
Every client's c_i is held, N times the model's size (80 MB for the 2NN at 100
clients).

Departures from the paper, and why:

* the mean of the model updates uses the config's ``client_weighting``
  (examples processed by default, as fedlab's other algorithms);
  ``client_weighting="uniform"`` is the paper's 1/|S|. The control variates'
  mean is always the paper's, so c stays the mean of all c_i;
* a client whose update was not finite (TFF zeroes it and gives it weight 0)
  or that took no step keeps its c_i and adds nothing to c;
* K_i is the steps client i actually took (a deadline's ``partial`` work or
  ``local_steps`` may differ between clients), not one K for all.

Under an aggregator that hides each update from the server (user-level DP, TFF's
secure sum, the SecAgg/SecAgg+ protocols), the server learns the control variates
only as that aggregator releases them. Each client sends, beside its update, s_i =
kappa eta_l v_i (the side values of :class:`~fedlab.rounds.split_rounds.SplitRoundProcess`),
kappa the local steps (the config's ``local_steps``, which user-level DP requires;
else the mean steps planned for the round's clients, the runner's ``side_scale``):
about the size of an update, so that a b-bit sum does not round it away and the
joint clip bounds both. When the clip bites, a client of a secure sum keeps the
share of its change that was summed, so that c stays the mean of the c_i. The aggregator
treats (y_i - x, s_i) as one vector: clipped together to C, summed securely
together, noised together, so DP's sensitivity and accounting are those of one
update (the secure sum's rounding over both halves). With a secure sum, v_i =
c_i+ - c_i and the server sets c <- c + D mean(s) / (kappa eta_l N), D the clients
summed: the paper's c + (1/N) sum_i (c_i+ - c_i). Under DP, v_i = c_i+ and c <-
mean(s) / (kappa eta_l), the mean of the round's c_i+ over the expected K: c is
estimated afresh every round, since noise added to a running sum of changes would
stay in c and grow as a random walk (measured: SCAFFOLD under DP diverged that way
on heart_disease). A client's c_i changes when the sum is released (a protocol
round that aborts leaves every c_i and c as they were). The mean of the model
updates is unweighted, as the aggregator makes it.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from ..rounds.array_training import client_training, local_steps
from ..rounds.split_rounds import SplitRoundProcess, hides_updates, split_aggregator


class ScaffoldProcess(SplitRoundProcess):
    """SCAFFOLD's rounds: clients corrected by c - c_i, control variates updated between clients and server."""

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None) -> None:
        hides = hides_updates(model_aggregator)
        shapes = [tuple(np.shape(w)) for w in training.model.initial_weights[0]]
        super().__init__(training, model_aggregator, attack, side_shapes=shapes if hides else ())
        # DP noise on what the clients send: c is estimated afresh every round, or the noise would pile up in it
        self.noised = self.noised_count is not None
        if hides:
            self.round_inputs = self.round_inputs + ("side_scale",)

    def client_state(self, state, num_clients: int):
        """``state`` with zero control variates: the server's c and ``num_clients`` clients' c_i."""
        work = collections.OrderedDict(state.client_work)
        work["server_control"] = tuple(np.zeros(s, np.float32) for s in self.shapes)
        work["client_controls"] = tuple(np.zeros((num_clients,) + s, np.float32) for s in self.shapes)
        if self.side_shapes:  # set by every round (next); here so that a checkpoint's state has the same leaves
            work["side_scale"] = np.float32(1.0)
        return self._replace(state, client_work=work)

    def prepare(self, state, clients, client_data):
        server, controls = state.client_work["server_control"], state.client_work["client_controls"]
        return [collections.OrderedDict(data, correction=tuple((c - ci[cid]).astype(np.float32)
                                                               for c, ci in zip(server, controls)))
                for cid, data in zip(clients, client_data)]

    def next(self, state, client_data: list, *, side_scale: float = 1.0, **inputs):
        """A round; ``side_scale`` (kappa: the config's local steps, or the mean steps planned for the round's
        clients, from the runner) sizes what a client sends beside its update under an aggregator that hides it.
        A round whose sum is lost (a protocol that aborts) leaves every c_i as it was, as c."""
        if self.side_shapes:
            work = collections.OrderedDict(state.client_work, side_scale=np.float32(side_scale))
            state = self._replace(state, client_work=work)
        output = super().next(state, client_data, **inputs)
        if "pending_controls" not in output.state.client_work:
            return output
        work = collections.OrderedDict(output.state.client_work)
        del work["pending_controls"]  # never released: the clients keep their c_i
        return type(output)(state=self._replace(output.state, client_work=work), metrics=output.metrics)

    def between(self, state, clients, client_data, updates, update_weights):
        """Each client's control-variate change delta_i = c_i+ - c_i, c_i+ = c_i - c + (x - y_i) / (K_i eta_l)
        (option II; zero for a client that took no step). Seen by the server, c_i and c take it now; under an
        aggregator that hides the updates, each client sends kappa eta_l times its c_i+ (under DP) or delta_i
        beside its update, and the changes wait for the sum's release (:meth:`after`)."""
        work = collections.OrderedDict(state.client_work)
        learning_rate = float(work["learning_rate"])
        server = [np.asarray(c, np.float32) for c in work["server_control"]]
        controls = [np.array(ci, np.float32, copy=True) for ci in work["client_controls"]]
        changes = []
        for data, update, weight in zip(client_data, updates, update_weights):
            steps = local_steps(data)
            if steps > 0 and weight != 0:
                changes.append([np.asarray(u, np.float32) / np.float32(steps * learning_rate) - c
                                for u, c in zip(update, server)])
            else:
                changes.append([np.zeros_like(c) for c in server])
        if not self.side_shapes:
            total = [np.zeros_like(c) for c in server]
            for cid, deltas in zip(clients, changes):
                for k, d in enumerate(deltas):
                    controls[k][cid] += d
                    total[k] += d
            work["server_control"] = tuple(c + t / np.float32(controls[0].shape[0]) for c, t in zip(server, total))
            work["client_controls"] = tuple(controls)
            return self._replace(state, client_work=work)
        scale = np.float32(work.get("side_scale", 1.0) * learning_rate)
        pending = []
        for row, (cid, deltas) in enumerate(zip(clients, changes)):
            sent = [controls[k][cid] + d for k, d in enumerate(deltas)] if self.noised else deltas
            updates[row] = tuple(updates[row]) + tuple(scale * v for v in sent)
            if not self.noised and self.l2_clip is not None:
                # the sum takes the change clipped with the update: the client keeps that much of it, so that c
                # stays the mean of the c_i (under DP c is estimated afresh: each c_i keeps its own)
                norm = np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in updates[row]))
                factor = np.float32(min(1.0, self.l2_clip / norm)) if norm > 0 else np.float32(1.0)
                deltas = [factor * d for d in deltas]
            pending.append(deltas)
        work["pending_controls"] = (np.asarray(clients, np.int64), pending)  # each c_i moves when released (after)
        return self._replace(state, client_work=work)

    def after(self, state, side_mean, denominator):
        """The released mean m of what the clients sent moves the control variates. Without noise (a secure sum):
        c <- c + D m / (kappa eta_l N), the paper's c + sum_i delta_i / N. Under DP: c <- D m / (kappa eta_l K),
        K the expected clients (D = K): the released mean of the round's c_i+, so that no round's noise stays in
        c. Each client's c_i takes its change now."""
        work = collections.OrderedDict(state.client_work)
        scale = np.float32(work.get("side_scale", 1.0) * float(work["learning_rate"]))
        controls = [np.array(ci, np.float32, copy=True) for ci in work["client_controls"]]
        num_clients = np.float32(controls[0].shape[0])
        clients, pending = work.pop("pending_controls", (np.zeros(0, np.int64), []))
        for cid, deltas in zip(clients, pending):
            for k, d in enumerate(deltas):
                controls[k][cid] += d
        if self.noised:
            work["server_control"] = tuple(np.float32(denominator) * m / (scale * np.float32(self.mean_denominator
                                                                                             or denominator))
                                           for m in side_mean)
        else:
            work["server_control"] = tuple(np.asarray(c, np.float32) + np.float32(denominator) * m
                                           / (scale * num_clients) for c, m in zip(work["server_control"], side_mean))
        work["client_controls"] = tuple(controls)
        return self._replace(state, client_work=work)


def build_scaffold(model, *, client_lr: float, server_lr: float, params=None, model_aggregator=None,
                   client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
    """The ``on_arrays`` builder of SCAFFOLD: client SGD corrected by the control variates, server SGD."""
    from ..core.runtime import tff

    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    training = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting=client_weighting,
                               example_dp=example_dp, corrected=True)
    model_aggregator, attack = split_aggregator(model_aggregator)
    return ScaffoldProcess(training, model_aggregator, attack)
