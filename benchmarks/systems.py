"""fedlab, a plain Keras FedAvg loop, and the compute limit, timed on the workload.

    python benchmarks/systems.py SYSTEM --workload build/bench/workload.npz --ks 10,100,1000 --rounds 4

prints one JSON line per K: {"system", "clients_per_round", "round_seconds": [...]}. Run as its own
process by benchmarks/run.py, which samples its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workload  # noqa: E402


def fedlab_rounds(data, k, rounds):
    import fedlab

    history = fedlab.run_experiment(workload.config(k, rounds), progress=False)
    return history["seconds"].tolist()


def fedlab_bookkeeping_rounds(data, k, rounds):
    """As a notebook's panel runs: evaluation every round, a checkpoint every round, a callback with the history.

    Times whole rounds (callback to callback): training plus the per-round bookkeeping.
    """
    import tempfile

    import fedlab

    stamps = [time.perf_counter()]
    with tempfile.TemporaryDirectory() as folder:
        fedlab.run_experiment(workload.config(k, rounds, eval_every=1), progress=False, checkpoint_dir=folder,
                              callback=lambda row, history: stamps.append(time.perf_counter()))
    return np.diff(stamps).tolist()


def keras_model():
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                                tf.keras.layers.Dense(200, activation="relu"),
                                tf.keras.layers.Dense(200, activation="relu"),
                                tf.keras.layers.Dense(10)])


def keras_loop_rounds(data, k, rounds):
    """What a researcher writes without a framework: model.fit per client, weights averaged in NumPy."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    global_model, client = keras_model(), keras_model()
    client.compile(optimizer=tf.keras.optimizers.SGD(workload.LR),
                   loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data["x_train"], data["y_train"]
    times = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        weights, sizes = [], []
        for c in data[f"sample_k{k}_r{r}"]:
            idx = data[f"client_{c}"]
            client.set_weights(global_model.get_weights())
            client.fit(x[idx], y[idx], epochs=workload.EPOCHS, batch_size=workload.BATCH, shuffle=True, verbose=0)
            weights.append(client.get_weights())
            sizes.append(len(idx))
        share = np.asarray(sizes, dtype=np.float64) / sum(sizes)
        global_model.set_weights([sum(s * w[i] for s, w in zip(share, weights)) for i in range(len(weights[0]))])
        times.append(time.perf_counter() - t0)
    return times


def limit_rounds(data, k, rounds):
    """The same examples and batches in one compiled loop: one model, no federation, no averaging."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = keras_model()
    optimizer = tf.keras.optimizers.SGD(workload.LR)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train(xb, yb):
        for i in tf.range(tf.shape(xb)[0]):
            with tf.GradientTape() as tape:
                loss = loss_fn(yb[i], model(xb[i], training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    x, y = data["x_train"], data["y_train"]
    rng = np.random.default_rng(0)
    times = []
    for r in range(1, rounds + 1):
        batches = []
        for c in data[f"sample_k{k}_r{r}"]:
            idx = rng.permutation(data[f"client_{c}"])
            batches += [idx[i:i + workload.BATCH] for i in range(0, len(idx) - workload.BATCH + 1, workload.BATCH)]
        ids = np.stack(batches)
        t0 = time.perf_counter()
        train(tf.constant(x[ids]), tf.constant(y[ids]))
        times.append(time.perf_counter() - t0)
    return times


SYSTEMS = {"fedlab": fedlab_rounds, "fedlab_bookkeeping": fedlab_bookkeeping_rounds, "keras_loop": keras_loop_rounds,
           "limit": limit_rounds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--workload", required=True)
    parser.add_argument("--ks", default="10,50,100")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.system.startswith("fedlab"):
        import fedlab

        fedlab.setup()
    data = dict(np.load(args.workload))
    for k in (int(v) for v in args.ks.split(",")):
        times = SYSTEMS[args.system](data, k, args.rounds)
        print(json.dumps({"system": args.system, "clients_per_round": k, "round_seconds": times}), flush=True)


if __name__ == "__main__":
    main()
