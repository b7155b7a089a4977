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

Under secure aggregation (TFF's b-bit secure sum, SecAgg, SecAgg+) the server
learns only sums, and a sum's fixed range needs bounded values. With the public
bound H (``weight_bound``) each client k sends its step s_k = Delta_k / h_k
times its weight's share a_k = min(h_k, H) / H, and a_k c (c = C / 2) beside
it; the server divides the sum of the first by the sum of the second and
multiplies by c: sum_k a_k s_k / sum_k a_k, which is q-FedAvg's step whenever
every h_k <= H (a larger h_k counts as H). Like every update on a secure sum,
the pair is L2-clipped to C with its b-bit code: clipping scales a_k s_k and
a_k c alike, so it lowers that client's weight and leaves its step, and it
does not bind while ||a_k s_k||^2 + (a_k c)^2 <= C^2. Both are b-bit codes:
too large an H leaves every a_k s_k small, to the rounding (at 8 bits and
H = 1000 on the digits logistic regression every step rounds to 0 and the model
stays; H = 100, above every h_k there, gives q-FedAvg's losses within 1e-5 at 16
bits and C = 2 over a few rounds): take H near the largest h_k expected. The server learns one sum more
than FedAvg's, sum_k a_k, a function of the clients' losses. A client that
forged its pair could send a large step with a share near 0, which then counts
about ||v|| / sum_k a_k: the larger H is against the h_k, the more (fedlab's
update attacks forge the update before its client's encoding, as honest clients
send it).

Under user-level DP (fixed or adaptive clip, on TFF's aggregator or a secure
protocol's server) the weights meet the same problem as on a secure sum: a
user's whole contribution, its weight included, must be bounded for the noise
to hide it, and an h_k read from its loss is not. So the pair goes through the
DP aggregator as above: clipped together to C, summed, noised together (the
sensitivity is C, as DP-FedAvg's, the share counted among the values a secure
sum rounds), and the ratio of the two noised sums is post-processing. DP-FedAvg caps each user's weight the same
way (min(n_k / w, 1), McMahan et al. 2018). The noised sum of the shares can
come near 0 or below it, where the ratio would multiply the numerator's noise
without bound: the server divides by at least one whole share (sum_k a_k >= 1),
a public floor, so a round's step is at most the noised sum of the steps. The
noise on the shares' sum is z C / c = 2z shares, against at most one a client:
the fewer clients or the smaller their shares, the noisier the step. Under an
adaptive clip C_t, c stays the first clip's half (a constant the server's
computation holds) while C_t follows the target quantile of the pairs' norms,
which grow with the shares: the clients above that quantile, the heaviest
(default 0.5: half of them), are clipped and their weights cut towards it,
against q-FFL's aim, and the noise on the shares is 2 z_t C_t / C shares
(z_t the updates' part of the noise); a target_quantile near 1 keeps the
weighting.

Under record-level DP (``dp="example"``, DP-SGD in every client) the loss F_k
is computed from the client's records too, which DP-SGD does not cover. It is
then released as a DP-SGD step releases a gradient (``loss_clip`` B): a
Poisson sample of the records at DP-SGD's rate batch / n, drawn with a key of
its own, each record's loss clipped to [0, B], the sum plus N(0, (z B)^2),
over the expected batch. One record moves that sum by at most B, so the
release costs what one more DP-SGD step costs, and the accounting counts it so
(``record_dp_extra_steps``). h_k then depends on the records only through the
noised loss and the DP-SGD update: post-processing. The noise is z B / batch
in loss units (0.5 at z = 1, B = 5, batches of 10). A draw at or below 0
counts as 1e-12: at q = 1 that client's step is about 0 while its weight
||L Delta w||^2 stays (it dilutes the round), at q > 1 its weight is about 0;
0 < q < 1 is refused (the weight would grow without bound). With q > 1 a high
draw can dominate a round. B near the typical loss and larger batches keep the
noise smaller.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..rounds.array_training import arrays_of, client_training, pack_clients, rekeyed, unpack_plan
from ..core.runtime import tff
from ..rounds.split_rounds import SplitRoundProcess, hides_updates, split_aggregator


class QFedAvgProcess(SplitRoundProcess):
    """q-FedAvg's rounds: each update scaled by F_k^q / h_k and weighted by h_k (on a secure sum or under
    user-level DP: by its share a_k = min(h_k, H) / H, sent beside it)."""

    LOSS_KEY = 0x1055  # the salt of a client's key for its noised loss under record-level DP (rekeyed)

    def __init__(self, training, model_aggregator=None, attack: Optional[str] = None, *, q: float,
                 weight_bound: float = 0.0, example_dp: Optional[tuple[float, float]] = None,
                 loss_clip: float = 0.0) -> None:
        self.q, self.weight_bound, self.loss_clip = float(q), float(weight_bound), float(loss_clip)
        self.private = example_dp is not None  # record-level DP: the loss too is a noised sum of clipped values
        if self.private and not self.loss_clip > 0:
            raise ValueError("loss_clip: q-FFL under record-level DP needs the bound B > 0 on each record's loss")
        hides = hides_updates(model_aggregator)
        if hides and not self.weight_bound:
            raise ValueError("weight_bound: q-FFL on a sum that hides the updates (a secure sum, user-level DP's) "
                             "needs the public bound H > 0")
        if hides and not getattr(model_aggregator, "clip_norm", None) and not getattr(model_aggregator, "l2_clip",
                                                                                      None):
            raise ValueError("model_aggregator: q-FFL on a sum that hides the updates needs one that L2-clips "
                             "every client's value (a b-bit sum's, DP's)")
        super().__init__(training, model_aggregator, attack, side_shapes=[()] if hides else ())
        t = tff()
        model = training.model

        @t.tensorflow.computation(training.weights_type, training.data_type)
        def exact_loss(weights, data):  # F_k(w^t): the mean loss over the client's whole local data set
            x, y = arrays_of(model, data)
            output = model.predict_on_batch((tuple(weights.trainable), tuple(weights.non_trainable)), x,
                                            training=False)
            return model.loss(output=output, label=y)

        client_loss = self._noised_loss(training, float(example_dp[0])) if self.private else exact_loss

        @t.federated_computation(t.FederatedType(training.weights_type, t.SERVER),
                                 t.FederatedType(training.data_type, t.CLIENTS))
        def losses_fn(weights, client_data):
            return t.federated_map(client_loss, (t.federated_broadcast(weights), client_data))

        self._losses_fn = losses_fn

    def _noised_loss(self, training, z: float):
        """The TF computation (weights, client input) -> F~_k(w^t), released as a DP-SGD step releases a gradient:
        a Poisson sample of the records at rate batch / n (the client's key, rekeyed for the loss), each record's
        loss clipped to [0, B], the sum noised by z B, over the expected batch. One record moves the sum by at most
        B: a Poisson-subsampled Gaussian at DP-SGD's rate and noise multiplier, one more step in the accounting."""
        import tensorflow as tf

        t = tff()
        model, bound = training.model, np.float32(self.loss_clip)

        @t.tensorflow.computation(training.weights_type, training.data_type)
        def noised_loss(weights, data):
            x, y = arrays_of(model, data)
            _, batch, _, _, key = unpack_plan(data["plan"])
            n = tf.shape(x)[0]
            rate = tf.cast(batch, tf.float32) / tf.cast(n, tf.float32)
            chosen = tf.where(tf.random.stateless_uniform(
                [n], seed=tf.random.experimental.stateless_fold_in(key, 0)) < rate)[:, 0]
            xb, yb = tf.gather(x, chosen), tf.gather(y, chosen)
            parameters = (tuple(weights.trainable), tuple(weights.non_trainable))

            def one(example):
                xi, yi = example
                return model.loss(output=model.predict_on_batch(parameters, xi[None], training=False),
                                  label=yi[None])

            def clipped_sum():  # a non-finite loss (NaN too, which clip_by_value keeps) counts as B
                losses = tf.vectorized_map(one, (xb, yb))
                return tf.reduce_sum(tf.clip_by_value(tf.where(tf.math.is_finite(losses), losses, bound), 0.0, bound))

            total = tf.cond(tf.size(chosen) > 0, clipped_sum, lambda: tf.constant(0.0))
            noise = tf.random.stateless_normal([], seed=tf.random.experimental.stateless_fold_in(key, 1),
                                               stddev=z * bound)
            return (total + noise) / tf.cast(batch, tf.float32)

        return noised_loss

    def between(self, state, clients, client_data, updates, update_weights):
        # F_k(w^t): the state still holds the model the clients started from
        if self.private:  # each client's loss from a Poisson sample and noise of its own (not its DP-SGD steps')
            client_data = [rekeyed(data, self.LOSS_KEY) for data in client_data]
        losses = [float(v) for v in self._losses_fn(state.global_model_weights,
                                                    pack_clients(client_data, self.data_type))]
        lipschitz = 1.0 / float(state.client_work["learning_rate"])
        for row, (update, loss) in enumerate(zip(updates, losses)):
            if update_weights[row] == 0:  # a non-finite update was zeroed: it stays out
                if self.side_shapes:  # its zero step, and a zero share of the weights
                    updates[row] = tuple(update) + (np.float32(0.0),)
                continue
            delta_w = [lipschitz * np.asarray(u, np.float64) for u in update]
            squared = sum(float(np.sum(d * d)) for d in delta_w)
            loss = max(loss, 1e-12)
            h = self.q * loss ** (self.q - 1) * squared + lipschitz * loss ** self.q if self.q else lipschitz
            scale = loss ** self.q / h
            if self.side_shapes:  # a sum that hides the updates: the step times its weight's share, the share times c
                share = min(h, self.weight_bound) / self.weight_bound
                updates[row] = tuple((share * scale * d).astype(np.float32) for d in delta_w) + (
                    np.float32(share * self._side_unit),)
                update_weights[row] = np.float32(1.0)
                continue
            updates[row] = tuple((scale * d).astype(np.float32) for d in delta_w)
            update_weights[row] = np.float32(h)
        return state

    @property
    def _side_unit(self) -> float:
        """c: what a client's whole weight (share 1) is sent as beside its step, half the clip C."""
        return 0.5 * float(self.l2_clip)

    def _split_computations(self, value_type) -> tuple:
        """(the step the server applies, the side values): the summed steps over the summed shares, times c
        (0 when no share was summed); on a noised sum, over at least one whole share (c over the count the
        noised mean divides by)."""
        import tensorflow as tf

        t = tff()
        count, unit = len(self.shapes), np.float32(self._side_unit)
        floor = None if self.noised_count is None else np.float32(self._side_unit / self.noised_count)
        _, side_part = super()._split_computations(value_type)

        @t.tensorflow.computation(value_type)
        def update_part(value):
            shares = value[count] if floor is None else tf.maximum(value[count], floor)
            factor = tf.math.divide_no_nan(unit, shares)
            return tuple(u * factor for u in value[:count])

        return update_part, side_part


def build_qffl(model, *, client_lr: float, server_lr: float, params=None, model_aggregator=None,
               client_weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None):
    """The ``on_arrays`` builder of q-FedAvg (at server_lr 1 the step is the paper's sum Delta_k / sum h_k)."""
    optimizer = tff().learning.optimizers.build_sgdm(learning_rate=server_lr)
    training = client_training(model, client_lr=client_lr, server_optimizer=optimizer, weighting="uniform",
                               example_dp=example_dp)
    model_aggregator, attack = split_aggregator(model_aggregator)
    return QFedAvgProcess(training, model_aggregator, attack, q=params.q, weight_bound=params.weight_bound,
                          example_dp=example_dp, loss_clip=params.loss_clip)
