"""The benchmark's one workload, shared by every system (issue #9).

The 2NN (784-200-200-10, ReLU) on mnist5k, 1,000 IID clients of 40 training
examples each, K clients per round, 1 local epoch, batch size 10, plain SGD
with learning rate 0.1, FedAvg weighted by examples. mnist5k has 4,000
training images, so the workload's data set ``mnist5k_x10`` holds them ten
times over (registered here as a user registers a data set): every client does
the same work at every K, K = 10 to 1000, and growth with K is measured, not
assumed. ``export`` writes the arrays and each round's sampled clients to one
.npz, so the Flower system (in its own environment, without TensorFlow) trains
on exactly the same data.
"""

from __future__ import annotations

import pathlib

import numpy as np

NUM_CLIENTS = 1000
COPIES = 10
EPOCHS = 1
BATCH = 10
LR = 0.1
SEED = 0


def _register() -> None:
    import fedlab

    if "mnist5k_x10" in fedlab.DATASETS:
        return

    @fedlab.register_dataset("mnist5k_x10", images=True)
    def mnist5k_x10(*, seed: int = 0, test_fraction: float = 0.2) -> fedlab.Dataset:
        """mnist5k's training images ten times over (its test images once)."""
        import dataclasses

        data = fedlab.load_dataset("mnist5k", seed=seed, test_fraction=test_fraction)
        return dataclasses.replace(data, name="mnist5k_x10", x_train=np.tile(data.x_train, (COPIES, 1)),
                                   y_train=np.tile(data.y_train, COPIES))


def config(clients_per_round: int, rounds: int, **changes):
    import fedlab

    _register()
    return fedlab.ExperimentConfig(dataset="mnist5k_x10", model="2nn", partition="iid", num_clients=NUM_CLIENTS,
                                   clients_per_round=clients_per_round, local_epochs=EPOCHS, batch_size=BATCH,
                                   client_lr=LR, rounds=rounds, seed=SEED, **{"eval_every": rounds, **changes})


def export(path: pathlib.Path, ks, rounds: int) -> pathlib.Path:
    """x_train, y_train, each client's example ids, and the clients of every (K, round)."""
    from fedlab.experiment.clients import dataset_for, partition_for
    from fedlab.experiment.sampling import sample_clients

    base = config(max(ks), rounds)
    data = dataset_for(base)
    parts = partition_for(base, data)
    arrays = {"x_train": data.x_train.astype(np.float32), "y_train": data.y_train.astype(np.int64),
              "x_test": data.x_test.astype(np.float32), "y_test": data.y_test.astype(np.int64)}
    for c, p in enumerate(parts):
        arrays[f"client_{c}"] = np.asarray(p, dtype=np.int64)
    for k in ks:
        for r in range(1, rounds + 1):
            arrays[f"sample_k{k}_r{r}"] = sample_clients(config(k, rounds), r)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
