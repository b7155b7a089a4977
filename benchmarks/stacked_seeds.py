"""What batching seeds into one compiled program could gain on notebook 01's clients, measured side by side
(issue #38: "a 10-seed sweep of one notebook-01 configuration in at most 2x the wall time of one seed").

    python benchmarks/stacked_seeds.py [--seeds 10] [--repeats 30] [--out results/benchmarks/stacked_seeds.csv]

One process, one TensorFlow graph, one thread pool, the five measurements and one matrix product interleaved in every repeat, so the
ratios are measured side by side. Each seed's client 0, in round 1 (notebook 01's setting: mnist5k, the 2NN, two
label shards each, E = 5, B = 10), is trained

* alone, by fedlab's own client update (:func:`fedlab.rounds.array_training.build_client_update`), the
  computation each client runs inside TFF's worker;
* every seed one after the other, by the same update;
* every seed stacked: one loop whose step computes all seeds' gradients at once (``tf.vectorized_map`` over a
  leading seed axis of the weights and the batches: batched matrix products), the issue's "leading experiment
  axis". Written here for the measurement only (plain SGD, clients of equal size, and, unlike fedlab's update,
  no training metrics and no check for non-finite updates, so it does a little less per step); its updates are
  checked against the ones trained alone;
* the stacked loop compiled by XLA (``tf.function(jit_compile=True)``), for one seed and for every seed. XLA is in
  TensorFlow 2.14 in fedlab's own process, not in TFF 0.87's worker binary, so this is what an engine in fedlab's
  process could reach.

It also measures what this machine's TensorFlow reaches on one large matrix product, and prints what a 10-seed
sweep at 2x one seed would ask of the clients' arithmetic. The stacked loops run in this process on TensorFlow's
default intra-op threads (the CSV's ``threads``), not on the one thread of TFF's worker. Writes every
measurement to OUT.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_seconds(fns: dict, repeats: int) -> dict:
    """The median seconds of each of ``fns``, timed in turn within every repeat (drift hits them alike)."""
    for fn in fns.values():
        for _ in range(3):
            fn()  # warm: kernels chosen, memory allocated
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "results" / "benchmarks" / "stacked_seeds.csv")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.repeats < 1:
        raise SystemExit("--seeds: at least 2; --repeats: at least 1")

    import numpy as np
    import pandas as pd

    import fedlab as fl

    fl.setup()
    import tensorflow as tf

    from fedlab.core.runtime import tff
    from fedlab.experiment.clients import Clients, client_inputs, dataset_for, spec_for
    from fedlab.rounds import array_training

    base = fl.ExperimentConfig(dataset="mnist5k", model="2nn", num_clients=100, clients_per_round=10, rounds=1,
                               client_lr=0.1, partition="shards", shards_per_client=2, local_epochs=5, batch_size=10)
    data = dataset_for(base)
    inputs = []
    for seed in range(args.seeds):
        config = base.replace(seed=seed)
        spec = spec_for(config, data)
        clients = Clients.for_config(config, spec)
        inputs.append(array_training.pack_client_data(client_inputs(clients.x[0], clients.y[0], config, 0, 0)))
    if len({len(i["x"]) for i in inputs}) != 1:
        raise SystemExit("the seeds' first clients differ in size: the stacked loop here needs equal sizes")
    model = spec.functional_model()
    update = array_training.build_client_update(
        model, client_optimizer=tff().learning.optimizers.build_sgdm(learning_rate=base.client_lr))

    graph = tf.Graph()
    with graph.as_default():
        def held(value):  # a variable, not a constant: nothing of the work can be folded away when the graph is built
            return tf.Variable(value, trainable=False).read_value()

        trainable0 = tuple(held(w) for w in model.initial_weights[0])
        non_trainable = tuple(held(w) for w in model.initial_weights[1])
        lr = held(np.float32(base.client_lr))
        fed = [{k: held(v) for k, v in i.items()} for i in inputs]
        alone = [update((trainable0, non_trainable), d, lr)[0].update for d in fed]

        xs, ys = tf.stack([d["x"] for d in fed]), tf.stack([d["y"] for d in fed])
        plans = [array_training.unpack_plan(d["plan"]) for d in fed]
        orders = tf.stack([p[0] for p in plans])  # (seeds, E, n)
        # the stacked loop's sizes as Python numbers, so that XLA compiles it with static shapes (captured tensors
        # would reach it as inputs of unknown value): equal full batches, as in this setting
        n, batch, epochs = len(inputs[0]["x"]), base.batch_size, base.local_epochs
        if n % batch:
            raise SystemExit(f"the stacked loop here needs full batches: {n} examples, batches of {batch}")
        per_epoch = n // batch
        total = epochs * per_epoch
        steps = int(array_training.local_steps(client_inputs(clients.x[0], clients.y[0], base, 0, 0)))
        if steps != total:
            raise SystemExit(f"the stacked loop would run {total} steps, fedlab's update {steps}")

        def gradients(args):
            trainable, xb, yb = args
            with tf.GradientTape() as tape:
                tape.watch(trainable)
                loss = model.loss(output=model.predict_on_batch((trainable, non_trainable), xb, training=True),
                                  label=yb)
            return tuple(tape.gradient(loss, trainable))

        def stacked_loop(xs, ys, orders, start):
            """Every seed's client trained at once; their updates (seeds first)."""
            orders = tf.reshape(orders, [-1, epochs, n])

            def step(i, trainable):
                epoch, j = i // per_epoch, i % per_epoch
                idx = tf.slice(tf.gather(orders, epoch, axis=1), tf.stack([0, j * batch]), [-1, batch])
                xb, yb = tf.gather(xs, idx, batch_dims=1), tf.gather(ys, idx, batch_dims=1)
                grads = tf.vectorized_map(gradients, (trainable, xb, yb))
                return i + 1, tuple(w - lr * g for w, g in zip(trainable, grads))

            _, trained = tf.while_loop(lambda i, *_: i < total, step, (tf.constant(0, tf.int32), start),
                                       maximum_iterations=total)
            return tuple(a - b for a, b in zip(start, trained))

        start = tuple(tf.stack([w] * args.seeds) for w in trainable0)
        stacked = stacked_loop(xs, ys, orders, start)
        # the same loop compiled by XLA (TensorFlow 2.14 in this process has it; TFF 0.87's worker does not), for
        # all seeds and for one seed alone
        compiled = tf.function(stacked_loop, jit_compile=True, autograph=False)
        xla_stacked = compiled(xs, ys, orders, start)
        xla_one = compiled(xs[:1], ys[:1], orders[:1], tuple(w[:1] for w in start))
        big = held(np.random.default_rng(0).standard_normal((2000, 2000), dtype=np.float32))
        product = tf.reduce_sum(tf.matmul(big, big))
        initialize = tf.compat.v1.global_variables_initializer()
    session = tf.compat.v1.Session(graph=graph)
    session.run(initialize)

    seconds = median_seconds({"one": lambda: session.run(alone[0]),
                              "sequential": lambda: [session.run(a) for a in alone],
                              "stacked": lambda: session.run(stacked),
                              "xla_one": lambda: session.run(xla_one),
                              "xla_stacked": lambda: session.run(xla_stacked),
                              "product": lambda: session.run(product)}, args.repeats)
    one_s, sequential_s, stacked_s, matmul_s = (seconds[k] for k in ("one", "sequential", "stacked", "product"))

    each = session.run(alone)
    together, xla_together, xla_alone = session.run(stacked), session.run(xla_stacked), session.run(xla_one)
    worst = max(float(np.abs(together[k][s] - each[s][k]).max()) for s in range(args.seeds) for k in range(len(each[0])))
    xla_worst = max(float(np.abs(xla_together[k][s] - each[s][k]).max()) for s in range(args.seeds)
                    for k in range(len(each[0])))
    xla_one_worst = max(float(np.abs(xla_alone[k][0] - each[0][k]).max()) for k in range(len(each[0])))
    n_examples, steps = len(inputs[0]["x"]), int(array_training.local_steps(client_inputs(
        clients.x[0], clients.y[0], base, 0, 0)))
    params = [w.shape for w in model.initial_weights[0] if len(w.shape) == 2]
    # per dense layer a x b: forward 2ab, the weights' gradient 2ab, and the input's gradient 2ab except for the
    # first layer, whose input is the data (TensorFlow does not compute that one)
    flops_per_example = sum((4 if i == 0 else 6) * a * b for i, (a, b) in enumerate(params))
    flops = flops_per_example * steps * base.batch_size  # one client's local training
    rows = [
        {"measure": "one seed's client (fedlab's update)", "seconds": one_s, "ratio_to_one": 1.0},
        {"measure": f"{args.seeds} seeds' clients one after the other", "seconds": sequential_s,
         "ratio_to_one": sequential_s / one_s},
        {"measure": f"{args.seeds} seeds' clients stacked in one loop", "seconds": stacked_s,
         "ratio_to_one": stacked_s / one_s},
        {"measure": "one seed's client, the stacked loop compiled by XLA", "seconds": seconds["xla_one"],
         "ratio_to_one": seconds["xla_one"] / one_s},
        {"measure": f"{args.seeds} seeds' clients, the stacked loop compiled by XLA", "seconds": seconds["xla_stacked"],
         "ratio_to_one": seconds["xla_stacked"] / one_s},
    ]
    table = pd.DataFrame(rows)
    table["gflop_per_s"] = [flops / one_s / 1e9, args.seeds * flops / sequential_s / 1e9,
                            args.seeds * flops / stacked_s / 1e9, flops / seconds["xla_one"] / 1e9,
                            args.seeds * flops / seconds["xla_stacked"] / 1e9]
    # the stacked updates against the ones trained alone by fedlab's update
    table["max_abs_difference"] = [float("nan"), float("nan"), worst, xla_one_worst, xla_worst]
    table.loc[len(table)] = {"measure": "one 2000x2000 matrix product", "seconds": matmul_s,
                             "ratio_to_one": float("nan"), "gflop_per_s": 2 * 2000 ** 3 / matmul_s / 1e9,
                             "max_abs_difference": float("nan")}
    need = args.seeds * flops / (2 * one_s) / 1e9  # GFLOP/s for the seeds' clients in 2x one seed's time
    table = table.assign(repeats=args.repeats, local_steps=steps, mflop_per_client=flops / 1e6,
                         need_gflop_per_s_for_2x=need,
                         threads=os.environ.get("TF_NUM_INTRAOP_THREADS", "default"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    table.to_csv(partial, index=False, float_format="%.6g")
    partial.replace(args.out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\none client: {steps} local steps of {base.batch_size} of its {n_examples} examples, {flops / 1e6:.0f} "
          f"MFLOP; the stacked updates equal the ones trained alone within {worst:.1e}.\n"
          f"{args.seeds} seeds' clients in 2x one seed's time need {need:.0f} GFLOP/s on batches of "
          f"{base.batch_size}; stacked they reach {table.gflop_per_s[2]:.0f}, compiled by XLA "
          f"{table.gflop_per_s[4]:.0f} (within {xla_worst:.1e} of alone), one large product "
          f"{table.gflop_per_s[5]:.0f} (threads: {os.environ.get('TF_NUM_INTRAOP_THREADS', 'default')}). "
          f"Written {args.out}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
