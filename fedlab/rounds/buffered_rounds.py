"""FedBuff's server steps on TFF: clients trained on the model version they started on, the server stepping on a
buffer of their staleness-weighted updates (the schedule: :mod:`fedlab.systems.asynchronous`).

The round is split as in :mod:`fedlab.rounds.split_rounds`: one TFF computation
trains the jobs that start on the current version (fedlab's compiled client
loop) and returns each job's update, weight and unfinalized metrics; they wait
in the state's ``client_work`` (``slots`` places, saved by checkpoints) until
the step that takes them; a second computation runs the config's aggregator on
the step's updates, each scaled by its staleness weight, and applies the
server optimizer. With every staleness 0 and every job started on the last
version, a step is one synchronous round of the same clients
(``tests/test_asynchronous.py``).
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from .split_rounds import SplitRoundProcess


class BufferedRounds:
    """The aggregator slot's value in an asynchronous run: FedBuff's steps around the config's aggregator, with
    ``slots`` places for updates that wait for their step."""

    def __init__(self, model_aggregator, slots: int) -> None:
        self.model_aggregator = model_aggregator
        self.slots = int(slots)

    def build_round_process(self, training) -> "BufferedProcess":
        return BufferedProcess(training, self.model_aggregator, slots=self.slots)


class BufferedProcess(SplitRoundProcess):
    """``train`` jobs on a version, hold their updates in the state, ``step`` the server on a buffer of them."""

    def __init__(self, training, model_aggregator=None, *, slots: int) -> None:
        super().__init__(training, model_aggregator)
        self.slots = slots

    # Waiting updates, in the state (checkpoints save them) --------------------------------------------------
    def client_state(self, state, num_clients: int):
        del num_clients  # the places are the most updates that can wait at once, not the clients
        return self.hold(state, {})

    def hold(self, state, pending: dict) -> "object":
        """``state`` with ``pending`` (job id -> (update, weight, metrics leaves)) in its places."""
        if len(pending) > self.slots:
            raise RuntimeError(f"async: {len(pending)} updates wait, more than the {self.slots} places")
        work = collections.OrderedDict(state.client_work)
        ids = np.full(self.slots, -1, np.int64)
        updates = [np.zeros((self.slots,) + s, np.float32) for s in self.shapes]
        weights = np.zeros(self.slots, np.float32)
        leaves = None
        for i, (job, (update, weight, metrics)) in enumerate(sorted(pending.items())):
            ids[i], weights[i] = job, weight
            for k, u in enumerate(update):
                updates[k][i] = u
            if leaves is None:
                leaves = [np.zeros((self.slots,) + np.shape(m), np.asarray(m).dtype) for m in metrics]
            for k, m in enumerate(metrics):
                leaves[k][i] = m
        work["pending_job"], work["pending_weight"], work["pending_update"] = ids, weights, tuple(updates)
        if leaves is None:
            leaves = [np.zeros((self.slots,) + s, d) for s, d in self.metric_leaf_specs()]
        work["pending_metrics"] = tuple(leaves)
        return self._replace(state, client_work=work)

    def held(self, state) -> dict:
        """The updates waiting in ``state``: job id -> (update, weight, metrics leaves)."""
        work = state.client_work
        out = {}
        for i, job in enumerate(np.asarray(work["pending_job"])):
            if job >= 0:
                out[int(job)] = (tuple(np.asarray(u[i], np.float32) for u in work["pending_update"]),
                                 np.float32(work["pending_weight"][i]),
                                 tuple(np.asarray(m[i]) for m in work["pending_metrics"]))
        return out

    # The server's step ----------------------------------------------------------------------------------
    def step(self, state, results: Sequence[tuple], factors: Sequence[float]):
        """The server's step on ``results`` (update, weight, metrics), update i scaled by ``factors[i]``:
        (state, aggregator measurements, finalizer measurements)."""
        updates = [tuple((u * np.float32(f)).astype(np.float32) for u in r[0]) for r, f in zip(results, factors)]
        weights = [np.float32(r[1]) for r in results]
        new_weights, aggregator_state, finalizer_state, aggregated, finalized = self._server_fn(
            state.global_model_weights, state.aggregator, state.finalizer, updates, weights)
        state = self._replace(state, global_model_weights=new_weights, aggregator=aggregator_state,
                              finalizer=finalizer_state)
        return state, aggregated, finalized
