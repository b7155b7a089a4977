"""What Keras' ``fit`` costs in fedlab's centrally trained models: a new model compiled and fit one TensorFlow call a
batch (Keras' default, how fedlab trained them before), the same an epoch a call, and
:func:`fedlab.models.models.train_keras` (an epoch a call on one compiled model reused from training to training),
side by side in one process; and what sharing the audit's reference model saves.

    python benchmarks/keras_fit.py [--repeats 3]

1. FLamby's heart-disease baselines as notebook 04 trains them (``flamby_baselines``: Adam 1e-3, batch 4, 50
   epochs; a site alone and the pooled data), TCGA-BRCA's pooled baseline as notebook 08 does (Cox model, batch 8,
   30 epochs) and the membership audit's reference model as notebook 03 trains it (mnist5k, logistic regression,
   half the test set, Adam 1e-3, batch 32, 20 epochs): each trained the three ways, interleaved, ``--repeats``
   times (``train_keras`` warmed by one training first, as a notebook's second baseline finds it). Prints the
   median seconds of each, their ratios to Keras' default, and whether the weights are the same to the bit.
2. The audits of nine finished runs (three seeds, three learning rates; digits, logistic regression, two rounds),
   with the reference model trained for each audit and shared by the audits of one seed
   (:func:`fedlab.studies.privacy.audit_membership`), interleaved, ``--repeats`` times: median seconds, ratio, and
   whether the audits are identical.

Prints JSON lines; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import numpy as np

    import fedlab as fl
    from fedlab.experiment.clients import dataset_for, spec_for
    from fedlab.models.models import ModelSpec, train_keras
    from fedlab.studies import crosssilo, privacy, tcga

    fl.setup()
    import tensorflow as tf

    heart = dataset_for(crosssilo.flamby_config())
    heart_spec = ModelSpec("logreg_torch", heart.num_features, heart.num_classes)
    brca = dataset_for(tcga.tcga_config())
    tcga_spec = spec_for(tcga.tcga_config(), brca)
    audited = fl.ExperimentConfig(dataset="mnist5k", model="logreg", num_clients=100, rounds=30, dp="fixed",
                                  clip_norm=0.5, delta=1e-5)  # notebook 03's data and model
    mnist = dataset_for(audited)
    mnist_spec = ModelSpec("logreg", mnist.num_features, mnist.num_classes)
    half = np.random.default_rng([0, 11]).permutation(len(mnist.x_test))[: len(mnist.x_test) // 2]
    fits = {  # name: (spec, x, y, epochs, batch, learning rate, Adam's epsilon, the model's seed)
        "flamby_local_site_0": (heart_spec, heart.x_train[heart.train_sites == 0],
                                heart.y_train[heart.train_sites == 0], 50, 4, 1e-3, 1e-8, 0),
        "flamby_pooled": (heart_spec, heart.x_train, heart.y_train, 50, 4, 1e-3, 1e-8, 0),
        "tcga_pooled": (tcga_spec, brca.x_train, brca.y_train, 30, 8, tcga.BASELINE_LR, 1e-8, 0),
        "audit_reference": (mnist_spec, mnist.x_test[half], mnist.y_test[half], 20, 32, 1e-3, 1e-7, 1),
    }

    def train(spec, x, y, epochs, batch, lr, eps, model_seed, way):
        t0 = time.perf_counter()
        if way == "reused":
            model = train_keras(spec, x, y, seed=0, model_seed=model_seed, epochs=epochs, batch_size=batch, lr=lr,
                                epsilon=eps)
        else:
            tf.keras.utils.set_random_seed(0)
            model = spec.build_keras(model_seed)
            model.compile(optimizer=tf.keras.optimizers.Adam(lr, epsilon=eps), loss=spec.loss(),
                          steps_per_execution=1 if way == "per_batch" else max(1, -(-len(x) // batch)))
            model.fit(x, spec.prepare_labels(y), epochs=epochs, batch_size=batch, shuffle=True, verbose=0)
        return time.perf_counter() - t0, model.get_weights()

    ways = ("per_batch", "per_epoch", "reused")
    for name, setting in fits.items():
        train(*setting, "reused")  # the compiled model's first training traces its step
        seconds = {way: [] for way in ways}
        weights = {}
        for _ in range(args.repeats):
            for way in ways:
                dt, weights[way] = train(*setting, way)
                seconds[way].append(dt)
        median = {way: statistics.median(seconds[way]) for way in ways}
        print(json.dumps({"fit": name, "examples": len(setting[1]), "epochs": setting[3], "batch": setting[4],
                          **{f"seconds_{way}": round(median[way], 3) for way in ways},
                          **{f"ratio_{way}": round(median[way] / median["per_batch"], 3) for way in ways[1:]},
                          "same_weights": all(all(np.array_equal(a, b) for a, b in zip(weights["per_batch"],
                                                                                        weights[way]))
                                              for way in ways[1:]),
                          "repeats": args.repeats}), flush=True)

    base = fl.ExperimentConfig(dataset="digits", model="logreg", num_clients=4, clients_per_round=4, rounds=2,
                               test_fraction=0.5)
    runs = [(c, fl.run_experiment(c, progress=False)) for c in
            (base.replace(seed=s, client_lr=lr) for s in (0, 1, 2) for lr in (0.05, 0.1, 0.2))]
    timings = {False: [], True: []}
    audits = {}
    for _ in range(args.repeats):  # interleaved: each mode's audits run after the other's as often as before them
        for shared in (False, True):
            privacy._REFERENCE_MODELS.clear()
            t0 = time.perf_counter()
            results = []
            for config, history in runs:
                if not shared:
                    privacy._REFERENCE_MODELS.clear()
                results.append(privacy.audit_membership(config, history, seed=config.seed))
            timings[shared].append(time.perf_counter() - t0)
            audits[shared] = results
    try:
        np.testing.assert_equal(audits[False], audits[True])
        same = True
    except AssertionError:
        same = False
    own, shared = statistics.median(timings[False]), statistics.median(timings[True])
    print(json.dumps({"audits": len(runs), "seconds_own_reference": round(own, 3),
                      "seconds_shared_reference": round(shared, 3), "ratio": round(shared / own, 3),
                      "same_audits": same, "repeats": args.repeats}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
