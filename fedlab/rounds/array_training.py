"""Learning processes whose clients train on their arrays in one compiled loop.

TFF 0.87's stock client work trains on a ``tf.data`` pipeline that its runtime
instantiates, rewrites and reduces per client per round; on small models that,
not the arithmetic, is most of a round (``../shared/probes/client_work_probe.py``,
``make bench``). Here each client receives its arrays and a plan (the
example order of each local epoch, the batch size, a step cap) and trains in
one ``tf.while_loop`` that gathers each batch by index: no tf.data, no Keras.
On this machine's runtimes a client is sent its arrays' file paths instead,
written once (:mod:`fedlab.core.array_files`), so a round does not serialise the
same arrays again.

Everything else is TFF's own: the broadcast distributor, the
``tff.aggregators`` factory (so DP, secure aggregation, compression and robust
aggregation keep their meaning, each TFF client being one real client), the
finalizer applying the server optimizer, and the metrics aggregation. The
client step uses TFF's optimizer interface exactly as TFF's client work does,
so the numbers equal the stock path's (``tests/test_array_training.py``).

Departures from ``tff.learning.algorithms.build_weighted_fed_avg``, and why:

* client data is a structure of tensors, not a sequence, so
  ``compose_learning_process`` (which insists on sequences) is replaced by the
  same composition written out here;
* ``client_weighting`` may also be ``"dataset"``: a client's weight is the
  size of its local data set, not the examples it processed (FLamby weights
  sites this way; TFF 0.87 takes no callable for functional models);
* FedProx's proximal term has the sign of the paper (TFF 0.87's is flipped,
  :mod:`fedlab.algorithms.fedprox`); FedSGD's client returns the mean gradient of its
  full batch, as TFF's ``build_fed_sgd`` does.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from ..core import array_files
from ..core.recent import keep, recall
from ..core.runtime import tff

WEIGHTINGS = ("examples", "dataset", "uniform")


@dataclasses.dataclass(frozen=True)
class ClientTraining:
    """The pieces of a compiled-loop process before aggregation: what an aggregation of fedlab's own
    (:func:`_fused_mean_process`, :mod:`fedlab.rounds.split_rounds`) builds its round from."""

    model: Any  # the TFF functional model
    weights_type: Any  # TFF type of ModelWeights
    data_type: Any  # TFF type of one client's input (:func:`client_data_type`)
    train_client: Any  # tf computation (weights, data, learning rate) -> (ClientResult, metrics state)
    initial_weights_fn: Any  # tf computation () -> ModelWeights
    client_work_state: Any  # tf computation () -> the client-work state (the client learning rate)
    learning_rate_of: Any  # tf computation (client-work state) -> learning rate
    server_optimizer: Any  # tff.learning.optimizers.Optimizer
    # computations built from the ones above once and kept with them (:func:`_fused_mean_process`'s): shared by the
    # copies of a traced training that :func:`client_training` gives out
    derived: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def with_learning_rates(state, client_lr: float, server_lr: Optional[float] = None):
    """``state`` of a process from :func:`build_array_process` with these learning rates.

    The client's learning rate lives in the client-work state and is broadcast
    each round; the server's is the ``learning_rate`` hyperparameter of the
    server optimizer's state. Built processes are therefore shared by every
    learning rate (a learning-rate sweep builds one process, not one per rate).
    """
    client_work = collections.OrderedDict(state.client_work if isinstance(state.client_work, dict) else ())
    client_work["learning_rate"] = np.float32(client_lr)  # other entries (SCAFFOLD's control variates) stay
    finalizer = state.finalizer
    if server_lr is not None:
        if not (isinstance(finalizer, collections.OrderedDict) and "learning_rate" in finalizer):
            raise ValueError("the server optimizer keeps no learning_rate in its state")
        finalizer = collections.OrderedDict(finalizer)
        finalizer["learning_rate"] = np.float32(server_lr)
    return type(state)(global_model_weights=state.global_model_weights, distributor=state.distributor,
                       client_work=client_work, aggregator=state.aggregator, finalizer=finalizer)


def client_data_type(x_spec, y_spec, normalized: bool = False, correction_type=None, personal_type=None,
                     files: bool = False):
    """The TFF type of one client's input as TFF is sent it (:func:`pack_client_data`): its arrays (with
    ``files``, the paths of the files holding them, :mod:`fedlab.core.array_files`) and its ``plan``, one int64 vector of batch size, step cap (-1: none), the batches of the first epoch to skip (where
    the previous round stopped), the client's random key for this round (record-level DP's Poisson batches and
    noise), E and n, then the example orders (E, n) row by row; with ``normalized``, also the round's tau_eff;
    with a ``correction_type`` (the trainable weights' type), a ``correction`` added to every local gradient
    (SCAFFOLD's c - c_i, :mod:`fedlab.algorithms.scaffold`); with a ``personal_type``, the client's own values of the last
    trainable tensors, which it starts from instead of the server's (FedPer, :mod:`fedlab.algorithms.personal`)."""
    t = tff()
    extra = [("tau_eff", t.TensorType(np.float32, []))] if normalized else []
    extra += [("correction", correction_type)] if correction_type is not None else []
    extra += [("personal", personal_type)] if personal_type is not None else []
    arrays = ([("x_file", t.TensorType(np.str_, [])), ("y_file", t.TensorType(np.str_, []))] if files else
              [("x", t.TensorType(x_spec.dtype.as_numpy_dtype, x_spec.shape)),
               ("y", t.TensorType(y_spec.dtype.as_numpy_dtype, y_spec.shape))])
    return t.StructWithPythonType(arrays + [("plan", t.TensorType(np.int64, [None]))] + extra,
                                  collections.OrderedDict)


def reads_files(data_type) -> bool:
    """Whether clients of this input type (:func:`client_data_type`) are sent their arrays' paths."""
    from tensorflow_federated.python.common_libs import structure

    return "x_file" in structure.name_list(data_type)


def arrays_of(model, data):
    """Inside a TF computation: a client's (x, y), read from their files or as sent (:func:`client_data_type`)."""
    if "x_file" in data:
        x_spec, y_spec = model.input_spec
        return (array_files.read(data["x_file"], x_spec.dtype, x_spec.shape),
                array_files.read(data["y_file"], y_spec.dtype, y_spec.shape))
    return data["x"], data["y"]


PLANNED = ("orders", "batch", "steps", "skip", "key")  # what a client's input holds that its plan packs


def pack_client_data(data, files: bool = False) -> collections.OrderedDict:
    """One client's round input (:func:`fedlab.experiment.clients.client_inputs`: x, y, orders, batch, steps, skip, key and
    any extra fields) with the five planning fields packed into one int64 ``plan`` (:func:`client_data_type`);
    with ``files``, x and y as the paths of files holding them (:mod:`fedlab.core.array_files`).

    TFF serialises each tensor of the clients' values one by one in Python: 100 clients of seven tensors took
    0.117 s, of three 0.060 s (timed alone); whole rounds gained a few per cent (README, "Performance").
    Already packed input is returned as it is.
    """
    if "plan" in data:
        return data
    orders = np.asarray(data["orders"], np.int64)
    head = [int(data["batch"]), int(data["steps"]), int(data["skip"]), *np.asarray(data["key"], np.int64).ravel(),
            orders.shape[0], orders.shape[1]]
    if files:
        x, y = np.asarray(data["x"]), np.asarray(data["y"])  # held by the packed input while TFF reads the files
        packed = collections.OrderedDict(x_file=array_files.FILES.path(x), y_file=array_files.FILES.path(y))
        packed._arrays = (x, y)
    else:
        packed = collections.OrderedDict(x=data["x"], y=data["y"])
    packed["plan"] = np.concatenate([np.asarray(head, np.int64), orders.ravel()])
    packed.update((k, v) for k, v in data.items() if k not in packed and k not in PLANNED and k not in ("x", "y"))
    return packed


def rekeyed(data, salt: int) -> collections.OrderedDict:
    """A client's input (packed or not) with its DP-SGD key replaced by one derived from it and ``salt``: another
    DP-SGD pass over the same records draws its own Poisson batches and noise (the same noise twice would cancel
    in the difference of the two results)."""
    out = collections.OrderedDict(data)
    if hasattr(data, "_arrays"):
        out._arrays = data._arrays

    def derive(key):
        entropy = [int(k) % (1 << 64) for k in np.asarray(key).ravel()] + [int(salt)]
        return np.random.SeedSequence(entropy).generate_state(2, np.uint32).astype(np.int64)

    if "plan" in out:
        plan = np.array(out["plan"], np.int64, copy=True)
        plan[3:5] = derive(plan[3:5])  # after batch, steps, skip (pack_client_data)
        out["plan"] = plan
    else:
        out["key"] = derive(out["key"])
    return out


def pack_clients(client_data, data_type) -> list:
    """:func:`pack_client_data` of every client's input, as a computation taking ``data_type`` is sent it."""
    files = reads_files(data_type)
    return [pack_client_data(d, files) for d in client_data]


def unpack_plan(plan):
    """(orders, batch, steps, skip, key) from a packed ``plan`` (inside a TF computation)."""
    import tensorflow as tf

    orders = tf.reshape(plan[7:], tf.stack([plan[5], plan[6]]))
    return orders, plan[0], plan[1], plan[2], plan[3:5]


def local_steps(inputs) -> int:
    """tau_i: the local steps a client trains on ``inputs`` (:func:`fedlab.experiment.clients.client_inputs`), as
    :func:`build_client_update` counts them."""
    epochs, n = np.shape(inputs["orders"])
    batch, steps, skip = int(inputs["batch"]), int(inputs["steps"]), int(inputs["skip"])
    total = epochs * -(-n // batch)
    end = min(total, skip + steps) if steps >= 0 else total
    return end - skip


def with_tau_eff(inputs: list, weighting: str, public_steps: Optional[int] = None) -> list:
    """FedNova's round input: every client's inputs with tau_eff = sum_i p_i tau_i (Wang et al. 2020, eq. 5).

    p_i is the client's share of the cohort's data (``examples``, ``dataset``)
    or 1/m (``uniform``), the weights its normalised update is averaged with.

    ``public_steps`` (user-level DP): tau_eff is that public number, the steps the server asks of every client,
    instead of the mean over the round's clients. The two are equal when every client takes its steps; with
    partial work the mean would scale every client's update by who was sampled, beyond the one user's clipped
    update that the noise covers, while the public number leaves each user only its own (clipped) update.
    """
    if public_steps is not None:
        tau_eff = np.float32(public_steps)
        return [collections.OrderedDict(i, tau_eff=tau_eff) for i in inputs]
    taus = np.array([local_steps(i) for i in inputs], dtype=np.float64)
    sizes = np.array([np.shape(i["orders"])[1] for i in inputs], dtype=np.float64)
    p = np.ones_like(sizes) if weighting == "uniform" else sizes
    tau_eff = np.float32((p * taus).sum() / p.sum()) if len(inputs) else np.float32(0)
    return [collections.OrderedDict(i, tau_eff=tau_eff) for i in inputs]


def build_client_update(model, *, client_optimizer, proximal_strength: float = 0.0, full_batch: bool = False,
                        weighting: str = "examples", example_dp: Optional[tuple[float, float]] = None,
                        normalized: bool = False, corrected: bool = False, personal: int = 0,
                        anchor_to_server: bool = False):
    """The per-client training function: ``(initial weights, client data, learning rate) -> (ClientResult,
    metrics state)``. The learning rate is a tensor, so one built process serves every learning rate.

    ``example_dp=(z, C)``: record-level DP-SGD in the client (Abadi et al. 2016, "Deep Learning with
    Differential Privacy", arXiv:1607.00133): each step's batch is a Poisson sample of the client's
    examples (each with probability q = batch / n, keyed by the client's ``key`` and the step), every
    per-example gradient is clipped to L2 norm C, the clipped sum gets N(0, (z C)^2) noise and is divided
    by the expected batch size q n. A FedProx term, if any, is added after the noise (it depends on no
    example). With ``full_batch`` (FedSGD) the batch is every record (q = 1) and the one noised mean
    gradient is the update.

    ``normalized``: FedNova (Wang et al. 2020, "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization", arXiv:2007.07481) with plain local SGD (a_i = tau_i): the client
    divides its update by its local steps tau_i and multiplies by the round's tau_eff (in its data, from
    :func:`with_tau_eff`), and is weighted by its data-set size p_i (``examples`` and ``dataset``) or 1
    (``uniform``). The weighted mean is then tau_eff sum_i p_i d_i, the paper's server update with server
    learning rate 1. The server computes tau_eff from the steps it asked of each client (under user-level DP:
    the public number of steps, :func:`with_tau_eff`) and sends it with the model; TFF 0.87's templates have no
    second aggregate for it.

    ``corrected``: every local gradient g becomes g + the client's ``correction`` (SCAFFOLD's
    g - c_i + c, Karimireddy et al. 2020, Algorithm 1 line 10), before any proximal term.

    ``personal`` > 0: the last ``personal`` trainable tensors start from the client's own values (its
    ``personal`` input), not the server's; the update holds the change of those too.
    ``anchor_to_server``: the proximal term pulls towards the server's weights, not the starting point
    (Ditto's personal model: start from v_k, penalise lambda/2 ||v - w_server||^2).
    """
    import tensorflow as tf
    from tensorflow_federated.python.learning import tensor_utils
    from tensorflow_federated.python.learning.models import variable

    client_result = tff().learning.templates.ClientResult

    @tf.function(autograph=False)  # the loop and branches are written as tf.while_loop/tf.cond: nothing to convert
    def client_update(initial_weights, data, learning_rate):
        x, y = arrays_of(model, data)
        orders, batch, steps, skip, key = unpack_plan(data["plan"])
        trainable0, non_trainable = tuple(initial_weights[0]), tuple(initial_weights[1])
        server0 = trainable0
        if personal:
            trainable0 = trainable0[:-personal] + tuple(data["personal"])
        specs = tuple(tf.TensorSpec.from_tensor(w) for w in trainable0)
        n = tf.cast(tf.shape(orders)[1], tf.int64)
        per_epoch = (n + batch - 1) // batch
        total = tf.cast(tf.shape(orders)[0], tf.int64) * per_epoch  # batches i in [skip, end) are trained
        end = tf.where(steps >= 0, tf.minimum(total, skip + steps), total)

        def batch_at(i):
            epoch, j = i // per_epoch, i % per_epoch
            idx = orders[epoch, j * batch: tf.minimum((j + 1) * batch, n)]
            return tf.gather(x, idx), tf.gather(y, idx)

        def forward(trainable, xb, yb):
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                output = model.predict_on_batch((trainable, non_trainable), xb, training=True)
                loss = model.loss(output=output, label=yb)
            return output, loss, tape.gradient(loss, trainable)

        def private_gradients(trainable, key, step):
            """A Poisson batch, per-example gradients clipped to C, their sum noised, over the expected size."""
            z, clip = example_dp
            step_key = tf.random.experimental.stateless_fold_in(key, step)
            q = tf.cast(batch, tf.float32) / tf.cast(n, tf.float32)
            chosen = tf.where(tf.random.stateless_uniform([n], seed=step_key) < q)[:, 0]
            xb, yb = tf.gather(x, chosen), tf.gather(y, chosen)

            def one(example):
                xi, yi = example
                with tf.GradientTape() as tape:
                    tape.watch(trainable)
                    out = model.predict_on_batch((trainable, non_trainable), xi[None], training=True)
                    example_loss = model.loss(output=out, label=yi[None])
                return tuple(tape.gradient(example_loss, trainable))

            def clipped_sum():
                per_example = tf.vectorized_map(one, (xb, yb))
                count = tf.shape(xb)[0]
                squares = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [count, -1]), axis=1) for g in per_example])
                factor = tf.minimum(1.0, clip / tf.maximum(tf.sqrt(squares), 1e-12))
                return tuple(tf.reduce_sum(g * tf.reshape(factor, [-1] + [1] * (len(g.shape) - 1)), axis=0)
                             for g in per_example)

            total = tf.cond(tf.size(chosen) > 0, clipped_sum, lambda: tuple(tf.zeros_like(w) for w in trainable))
            noised = tuple(t + tf.random.stateless_normal(tf.shape(t), seed=tf.random.experimental.stateless_fold_in(
                step_key, k + 1), stddev=z * clip, dtype=t.dtype) for k, t in enumerate(total))
            return xb, yb, tuple(v / tf.cast(batch, v.dtype) for v in noised)

        def metrics_after(metrics_state, output, loss, yb):
            count = tf.shape(tf.nest.flatten(output)[0])[0]
            return model.update_metrics_state(
                metrics_state, batch_output=variable.BatchOutput(loss=loss, predictions=output, num_examples=count),
                labels=yb), tf.cast(count, tf.int64)

        if full_batch and example_dp is not None:
            # FedSGD under DP-SGD: every record's gradient clipped, their sum noised, over n (q = 1: DP-GD); as
            # with batches, nothing about the records leaves the client but the noised update
            metrics_state, num_examples = model.initialize_metrics_state(), tf.constant(0, tf.int64)
            update = private_gradients(trainable0, key, skip)[2]
        elif full_batch:  # FedSGD: the mean gradient of the whole local data set is the update
            xb, yb = batch_at(skip)
            output, loss, gradients = forward(trainable0, xb, yb)
            metrics_state, num_examples = metrics_after(model.initialize_metrics_state(), output, loss, yb)
            count = tf.cast(num_examples, tf.float32)  # as TFF's FedSGD: example-weighted sum, then the mean
            update = tuple((count * g) / count for g in gradients)
        else:
            def body(i, trainable, optimizer_state, metrics_state, num_examples):
                if example_dp is None:
                    xb, yb = batch_at(i)
                    output, loss, gradients = forward(trainable, xb, yb)
                else:  # nothing about the private batch leaves the client but the noised update
                    _, _, gradients = private_gradients(trainable, key, i)
                if corrected:
                    gradients = tuple(g + c for g, c in zip(gradients, data["correction"]))
                if proximal_strength > 0.0:  # d/dw mu/2 ||w - w0||^2 = mu (w - w0)
                    anchor = server0 if anchor_to_server else trainable0
                    gradients = tuple(g + proximal_strength * (w - w0)
                                      for g, w, w0 in zip(gradients, trainable, anchor))
                optimizer_state, trainable = client_optimizer.next(optimizer_state, trainable, tuple(gradients))
                if example_dp is None:
                    metrics_state, count = metrics_after(metrics_state, output, loss, yb)
                    num_examples += count
                return i + 1, tuple(trainable), optimizer_state, metrics_state, num_examples

            _, trained, _, metrics_state, num_examples = tf.while_loop(
                lambda i, *_: i < end, body,
                (skip, trainable0,
                 client_optimizer.set_hparams(client_optimizer.initialize(specs), {"learning_rate": learning_rate}),
                 model.initialize_metrics_state(), tf.constant(0, tf.int64)))
            update = tuple(tf.nest.map_structure(tf.subtract, trainable0, trained))
        if normalized:
            tau = tf.cast(tf.maximum(end - skip, 1), tf.float32)
            update = tuple(u * (data["tau_eff"] / tau) for u in update)
        update, has_non_finite = tensor_utils.zero_all_if_any_non_finite(update)
        if normalized and weighting != "uniform":  # FedNova's p_i: the client's share of the data
            weight = tf.cast(n, tf.float32)
        elif weighting == "examples" and example_dp is not None:
            # Record-level DP: the expected number of records used (steps x batch), not the Poisson batches' real
            # sizes, which the accounting does not cover; training metrics are not released either.
            weight = tf.cast((end - skip) * batch, tf.float32)
        elif weighting == "examples":
            weight = tf.cast(num_examples, tf.float32)
        elif weighting == "dataset":
            weight = tf.cast(n, tf.float32)
        else:
            weight = tf.constant(1.0, tf.float32)
        weight = tf.where(tf.cast(has_non_finite, tf.bool), tf.constant(0.0), weight)
        return client_result(update=update, update_weight=weight), metrics_state

    return client_update


def client_training(model, *, client_lr: float, server_optimizer, proximal_strength: float = 0.0,
                    full_batch: bool = False, weighting: str = "examples", client_optimizer=None,
                    example_dp: Optional[tuple[float, float]] = None, normalized: bool = False,
                    corrected: bool = False, personal: int = 0, anchor_to_server: bool = False) -> ClientTraining:
    """The compiled-loop client training of ``model`` and the computations around it (:class:`ClientTraining`).

    ``corrected``: each client's data carries a ``correction`` added to its gradients (SCAFFOLD);
    ``personal``: and its own values of the last ``personal`` trainable tensors (FedPer).
    Traced once per model and settings (:data:`_TRAININGS`): a later call with the same ones gets the same
    computations, with its own ``server_optimizer``.
    """
    t = tff()
    if weighting not in WEIGHTINGS:
        raise ValueError(f"client_weighting: must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    # the values the key holds are the ones traced
    client_lr, proximal_strength = float(client_lr), float(proximal_strength)
    example_dp = None if example_dp is None else tuple(float(v) for v in example_dp)
    key = None
    if client_optimizer is None:  # a given optimizer's settings are not known here: traced anew
        key = (id(model), client_lr, proximal_strength, bool(full_batch), weighting, example_dp, bool(normalized),
               bool(corrected), int(personal), bool(anchor_to_server), array_files.enabled())
        kept = recall(_TRAININGS, key)
        if kept is not None and kept[0] is model:
            return dataclasses.replace(kept[1], server_optimizer=server_optimizer)
    training = _trace_client_training(t, model, client_lr=client_lr, server_optimizer=server_optimizer,
                                      proximal_strength=proximal_strength, full_batch=full_batch,
                                      weighting=weighting, client_optimizer=client_optimizer,
                                      example_dp=example_dp, normalized=normalized, corrected=corrected,
                                      personal=personal, anchor_to_server=anchor_to_server)
    if key is not None:
        keep(_TRAININGS, key, (model, training), TRAININGS_KEPT)
    return training


def server_finalizer(server_optimizer, weights_type):
    """TFF's finalizer applying ``server_optimizer`` to weights of ``weights_type``
    (``tff.learning.templates.build_apply_optimizer_finalizer``), traced once per optimizer class and settings
    when those are all it is traced from (:func:`_optimizer_key`), else anew."""
    optimizer_key = _optimizer_key(server_optimizer)
    if optimizer_key is None:
        return tff().learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type)
    key = (optimizer_key, weights_type)
    finalizer = recall(_FINALIZERS, key)
    if finalizer is None:
        finalizer = keep(_FINALIZERS, key,
                         tff().learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type),
                         TRAININGS_KEPT)
    return finalizer


_PLAIN = (bool, int, float, str, type(None))


def _optimizer_key(optimizer) -> Optional[tuple]:
    """A hashable key of what ``optimizer`` traces, or None: its class and its attributes when the class is TFF's
    or fedlab's and every attribute is a plain value (number, string, None) or a list, tuple or dict of them. An
    optimizer of another library or a user's is traced anew each time (its class may hold more than it shows)."""
    cls = type(optimizer)
    if not cls.__module__.startswith(("tensorflow_federated.", "fedlab.")):
        return None

    def plain(value):
        if isinstance(value, _PLAIN):
            return (type(value).__name__, value)
        if isinstance(value, (list, tuple)):
            items = [plain(v) for v in value]
            return None if None in items else (type(value).__name__, tuple(items))
        if isinstance(value, dict):
            items = [(plain(k), plain(v)) for k, v in value.items()]
            return None if any(None in item for item in items) else (type(value).__name__, tuple(items))
        return None

    settings = plain(getattr(optimizer, "__dict__", None) or {})
    return None if settings is None else (cls, settings)


# Client trainings already traced (tracing the client's loop is most of a process's build after TFF's compilation),
# keyed by all that client_training traces them from: the functional model (by identity: one per spec and seed,
# ModelSpec.functional_model), the hyperparameters, and whether the clients' arrays come from files. Processes that
# differ only after the clients (the aggregator: DP at the server, compression, a robust rule, a secure sum; the
# server optimizer) share one trace of the same graphs. Forgotten with the built processes (clear_traced).
_TRAININGS: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_FINALIZERS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()  # server_finalizer's
TRAININGS_KEPT = 16  # of each


def clear_traced() -> None:
    """Forget the traced client trainings (and the functional models they hold) and server finalizers."""
    _TRAININGS.clear()
    _FINALIZERS.clear()


def _trace_client_training(t, model, *, client_lr, server_optimizer, proximal_strength, full_batch, weighting,
                           client_optimizer, example_dp, normalized, corrected, personal,
                           anchor_to_server) -> ClientTraining:
    import tensorflow as tf

    client_optimizer = client_optimizer or t.learning.optimizers.build_sgdm(learning_rate=client_lr)

    def spec(array):
        return tf.TensorSpec(array.shape, tf.dtypes.as_dtype(array.dtype))

    weights_spec = t.learning.models.ModelWeights(tuple(spec(w) for w in model.initial_weights[0]),
                                                  tuple(spec(w) for w in model.initial_weights[1]))
    weights_type = t.types.tensorflow_to_type(weights_spec)
    x_spec, y_spec = model.input_spec
    personal_type = (t.StructWithPythonType(list(weights_type.trainable)[-personal:], tuple) if personal else None)
    data_type = client_data_type(x_spec, y_spec, normalized, weights_type.trainable if corrected else None,
                                 personal_type, files=array_files.enabled())
    update = build_client_update(model, client_optimizer=client_optimizer, proximal_strength=float(proximal_strength),
                                 full_batch=full_batch, weighting=weighting, example_dp=example_dp,
                                 normalized=normalized, corrected=corrected, personal=personal,
                                 anchor_to_server=anchor_to_server)

    @t.tensorflow.computation(weights_type, data_type, t.TensorType(np.float32))
    def train_client(initial_weights, data, learning_rate):
        return update((initial_weights.trainable, initial_weights.non_trainable), data, learning_rate)

    @t.tensorflow.computation()
    def client_work_state():
        return collections.OrderedDict(learning_rate=tf.constant(client_lr, tf.float32))

    @t.tensorflow.computation(t.StructWithPythonType([("learning_rate", t.TensorType(np.float32))],
                                                     collections.OrderedDict))
    def learning_rate_of(state):
        return state["learning_rate"]

    @t.tensorflow.computation()
    def initial_weights_fn():
        return t.learning.models.ModelWeights(*tf.nest.map_structure(tf.constant, model.initial_weights))

    return ClientTraining(model, weights_type, data_type, train_client, initial_weights_fn, client_work_state,
                          learning_rate_of, server_optimizer)


def client_updates_computation(training: ClientTraining, *, with_weights_and_metrics: bool = False):
    """A federated computation (weights at the server, learning rate at the server, client data) -> each client's
    update (start - trained) at the clients: training without aggregation (Ditto's own models, fine-tuning); with
    ``with_weights_and_metrics``, each client's (update, weight, unfinalized metrics) (FedBuff's jobs).

    The clients' data comes last, as in every computation fedlab runs on workers: TFF 0.87's mergeable context
    (``_partition_value``) splits the clients among workers by the counters of an argument's last element, so a
    clients-placed argument before a server-placed one gives every worker the first workers' clients."""
    t = tff()

    @t.federated_computation(t.FederatedType(training.weights_type, t.SERVER),
                             t.FederatedType(t.TensorType(np.float32), t.SERVER),
                             t.FederatedType(training.data_type, t.CLIENTS))
    def client_updates(weights, learning_rate, client_data):
        result, unfinalized = t.federated_map(training.train_client, (
            t.federated_broadcast(weights), client_data, t.federated_broadcast(learning_rate)))
        if with_weights_and_metrics:
            return result.update, result.update_weight, unfinalized
        return result.update

    return client_updates


def metrics_computation(training: ClientTraining) -> tuple:
    """(federated computation: the clients' unfinalized metrics -> finalized at the server, as TFF sums then
    finalizes them; the unfinalized metrics' type): for clients trained one by one (jobs, sites)."""
    t = tff()
    metrics_type = training.train_client.type_signature.result[1]
    metrics_aggregation = t.learning.metrics.sum_then_finalize(training.model.finalize_metrics)

    @t.federated_computation(t.FederatedType(metrics_type, t.CLIENTS))
    def metrics_fn(unfinalized):
        return metrics_aggregation(unfinalized)

    return metrics_fn, metrics_type


def structure():
    """TFF's structure module (flatten, pack_sequence_as): how TFF itself orders a value's leaves."""
    from tensorflow_federated.python.common_libs import structure as module

    return module


def metric_leaves(metrics) -> tuple:
    """A client's unfinalized metrics as a flat tuple of arrays, in TFF's order."""
    return tuple(np.asarray(m) for m in structure().flatten(structure().from_container(metrics, recursive=True)))


def flat_length(shapes) -> int:
    """How many numbers tensors of these shapes hold: the length of a flattened update."""
    return sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


def metric_leaf_specs(metrics_type) -> list[tuple]:
    """(shape, dtype) of each unfinalized metrics leaf of a client computation's metrics type."""
    return [(tuple(leaf.shape), np.dtype(leaf.dtype)) for leaf in structure().flatten(metrics_type)]


def finalize_metric_leaves(metrics_fn, metrics_type, leaves: Sequence) -> object:
    """The finalized metrics of clients whose unfinalized metrics are ``leaves`` (one flat tuple each)."""
    return metrics_fn([structure().pack_sequence_as(metrics_type, list(m)) for m in leaves])


def build_array_process(model, *, client_lr: float, server_optimizer, model_aggregator: Any = None,
                        proximal_strength: float = 0.0, full_batch: bool = False, weighting: str = "examples",
                        client_optimizer=None, example_dp: Optional[tuple[float, float]] = None,
                        normalized: bool = False):
    """A ``tff.learning.templates.LearningProcess`` (in a :class:`PackingProcess`) whose
    ``next(state, client_data)`` takes arrays per client (:func:`fedlab.experiment.clients.client_inputs`).

    ``model``: a TFF functional model; ``server_optimizer``: a
    ``tff.learning.optimizers.Optimizer``; ``model_aggregator``: a weighted or
    unweighted ``tff.aggregators`` factory (None: the weighted mean), or an
    object whose ``build_round_process(training)`` builds a round of its own
    (a split round for a secure protocol or an attack on the updates, FedBuff's, sites', CKKS's).
    """
    t = tff()
    templates = t.learning.templates
    training = client_training(model, client_lr=client_lr, server_optimizer=server_optimizer,
                               proximal_strength=proximal_strength, full_batch=full_batch, weighting=weighting,
                               client_optimizer=client_optimizer, example_dp=example_dp, normalized=normalized)
    (weights_type, data_type, train_client, initial_weights_fn, client_work_state,
     learning_rate_of) = (training.weights_type, training.data_type, training.train_client,
                          training.initial_weights_fn, training.client_work_state, training.learning_rate_of)
    if model_aggregator is None:
        return _fused_mean_process(t, training)
    if hasattr(model_aggregator, "build_round_process"):  # a round of its own (fedlab.rounds.split_rounds, ...)
        return model_aggregator.build_round_process(training)
    if isinstance(model_aggregator, t.aggregators.UnweightedAggregationFactory):
        model_aggregator = t.aggregators.as_weighted_aggregator(model_aggregator)
    update_type = weights_type.trainable
    distributor = templates.build_broadcast_process(weights_type)
    aggregator = model_aggregator.create(update_type, t.TensorType(np.float32))
    finalizer = server_finalizer(server_optimizer, weights_type)
    metrics_aggregation = t.learning.metrics.sum_then_finalize(model.finalize_metrics)
    state_class = templates.LearningAlgorithmState

    @t.federated_computation()
    def init_fn():
        return t.federated_zip(state_class(
            t.federated_eval(initial_weights_fn, t.SERVER), distributor.initialize(),
            t.federated_eval(client_work_state, t.SERVER), aggregator.initialize(), finalizer.initialize()))

    @t.federated_computation(init_fn.type_signature.result, t.FederatedType(data_type, t.CLIENTS))
    def next_fn(state, client_data):
        distributed = distributor.next(state.distributor, state.global_model_weights)
        learning_rate = t.federated_broadcast(t.federated_map(learning_rate_of, state.client_work))
        result, unfinalized_metrics = t.federated_map(train_client, (distributed.result, client_data, learning_rate))
        train_metrics = metrics_aggregation(unfinalized_metrics)
        aggregated = aggregator.next(state.aggregator, result.update, result.update_weight)
        finalized = finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
        new_state = t.federated_zip(state_class(finalized.result, distributed.state, state.client_work,
                                                aggregated.state, finalized.state))
        metrics = t.federated_zip(collections.OrderedDict(
            distributor=distributed.measurements,
            client_work=t.federated_zip(collections.OrderedDict(train=train_metrics)),
            aggregator=aggregated.measurements, finalizer=finalized.measurements))
        return templates.LearningProcessOutput(new_state, metrics)

    return _learning_process(t, init_fn, next_fn)


def model_weights_accessors(t, state_type):
    """``get_model_weights(state)`` and ``set_model_weights(state, weights)`` computations for a
    ``LearningAlgorithmState`` of TFF type ``state_type`` (unplaced)."""
    state_class = t.learning.templates.LearningAlgorithmState

    @t.tensorflow.computation(state_type)
    def get_model_weights(state):
        return state.global_model_weights

    @t.tensorflow.computation(state_type, state_type.global_model_weights)
    def set_model_weights(state, weights):
        return state_class(global_model_weights=weights, distributor=state.distributor,
                           client_work=state.client_work, aggregator=state.aggregator, finalizer=state.finalizer)

    return get_model_weights, set_model_weights


def _learning_process(t, init_fn, next_fn):
    accessors = model_weights_accessors(t, next_fn.type_signature.parameter[0].member)
    return PackingProcess(t.learning.templates.LearningProcess(init_fn, next_fn, *accessors))


class PackingProcess:
    """A TFF learning process whose ``next`` takes each client's input as :func:`fedlab.experiment.clients.client_inputs`
    makes it and packs it (:func:`pack_client_data`) before TFF serialises it; otherwise the process itself."""

    def __init__(self, process) -> None:
        self.process = process

    def initialize(self):
        return self.process.initialize()

    def next(self, state, client_data):
        data_type = self.process.next.type_signature.parameter[1].member
        return self.process.next(state, pack_clients(client_data, data_type))

    def get_model_weights(self, state):
        return self.process.get_model_weights(state)

    def set_model_weights(self, state, weights):
        return self.process.set_model_weights(state, weights)


def _fused_mean_process(t, training: "ClientTraining"):
    """The plain weighted mean, fused: each client sends (weight x update, weight, metrics) and one
    ``federated_sum`` adds them all.

    The same arithmetic as TFF's ``MeanFactory`` (the client multiplies, the
    server divides) and ``sum_then_finalize`` (sum, then finalize), but one sum
    instead of three: TFF's runtime adds the clients' values with one
    TensorFlow call per client and per sum, which at 100 clients a round is a
    measurable share of the round (``make bench``).
    """
    import tensorflow as tf

    model, weights_type, data_type, train_client = (training.model, training.weights_type, training.data_type,
                                                    training.train_client)
    initial_weights_fn, client_work_state, learning_rate_of = (training.initial_weights_fn,
                                                               training.client_work_state, training.learning_rate_of)
    server_optimizer = training.server_optimizer
    templates = t.learning.templates
    state_class = templates.LearningAlgorithmState
    distributor = templates.build_broadcast_process(weights_type)
    finalizer = server_finalizer(server_optimizer, weights_type)
    if "fused" not in training.derived:  # once per traced training, whatever the server optimizer

        @t.tensorflow.computation(weights_type, data_type, t.TensorType(np.float32))
        def weighted_client(initial_weights, data, learning_rate):
            result, metrics_state = train_client(initial_weights, data, learning_rate)
            weight = result.update_weight
            return (tf.nest.map_structure(lambda x: x * tf.cast(weight, x.dtype), result.update), weight,
                    metrics_state)

        @t.tensorflow.computation(weighted_client.type_signature.result)
        def mean_and_metrics(summed):
            total, weight, metrics_state = summed
            mean = tf.nest.map_structure(lambda x: tf.math.divide(x, tf.cast(weight, x.dtype)), total)
            return mean, model.finalize_metrics(metrics_state)

        training.derived["fused"] = (weighted_client, mean_and_metrics)
    weighted_client, mean_and_metrics = training.derived["fused"]

    @t.federated_computation()
    def init_fn():
        return t.federated_zip(state_class(
            t.federated_eval(initial_weights_fn, t.SERVER), distributor.initialize(),
            t.federated_eval(client_work_state, t.SERVER), t.federated_value((), t.SERVER), finalizer.initialize()))

    @t.federated_computation(init_fn.type_signature.result, t.FederatedType(data_type, t.CLIENTS))
    def next_fn(state, client_data):
        distributed = distributor.next(state.distributor, state.global_model_weights)
        learning_rate = t.federated_broadcast(t.federated_map(learning_rate_of, state.client_work))
        contributions = t.federated_map(weighted_client, (distributed.result, client_data, learning_rate))
        mean, train_metrics = t.federated_map(mean_and_metrics, t.federated_sum(contributions))
        finalized = finalizer.next(state.finalizer, state.global_model_weights, mean)
        new_state = t.federated_zip(state_class(finalized.result, distributed.state, state.client_work,
                                                state.aggregator, finalized.state))
        metrics = t.federated_zip(collections.OrderedDict(
            distributor=distributed.measurements,
            client_work=t.federated_zip(collections.OrderedDict(train=train_metrics)),
            aggregator=t.federated_value(collections.OrderedDict(), t.SERVER), finalizer=finalized.measurements))
        return templates.LearningProcessOutput(new_state, metrics)

    return _learning_process(t, init_fn, next_fn)
