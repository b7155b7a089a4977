"""Local fine-tuning evaluation (fedlab.rounds.finetune): each client's tuned model checked against SGD by hand, and a
run's per-client scores against the final global model tuned by hand and evaluated on each client's held-out data."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.experiment.clients import Clients, finetune_inputs, spec_for
from fedlab.experiment.evaluation import Evaluator, evaluate_logits
from fedlab.rounds.finetune import FineTuning
from fedlab.models.models import ModelSpec
from fedlab.core.runtime import tff
from fedlab.core.validation import ConfigError

from by_hand import X, Y, grad

RNG = np.random.default_rng(5)
W, B = RNG.normal(size=(2, 3)).astype(np.float32), RNG.normal(size=3).astype(np.float32)


def tuned_by_hand(w, b, data, lr):
    """Plain SGD on the client's batches: the epochs of ``data["orders"]`` cut into batches of ``data["batch"]``."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    batch = int(data["batch"])
    for order in data["orders"]:
        for j in range(0, len(order), batch):
            idx = order[j:j + batch]
            gw, gb = grad(w, b, data["x"][idx].astype(np.float64), data["y"][idx])
            w, b = w - lr * gw, b - lr * gb
    return w, b


@pytest.mark.parametrize("epochs, batch_size", [(1, 2), (3, 1), (2, 0)])
def test_each_client_tunes_the_global_model_on_its_own_data_as_by_hand(epochs, batch_size):
    lr = 0.4
    config = fl.ExperimentConfig(num_clients=3, clients_per_round=3, batch_size=batch_size, eval_per_client=True, finetune_epochs=epochs)
    data = [finetune_inputs(X[i], Y[i], config, round_num=2, client=i) for i in range(len(X))]
    assert [d["orders"].shape for d in data] == [(epochs, len(x)) for x in X]
    tuning = FineTuning(ModelSpec("logreg", 2, 3).functional_model())
    weights = tff().learning.models.ModelWeights(trainable=(W, B), non_trainable=())
    tuned = tuning.tuned_weights(weights, data, lr)
    assert len(tuned) == len(X)
    for i, d in enumerate(data):
        w, b = tuned_by_hand(W, B, d, lr)
        np.testing.assert_allclose(tuned[i].trainable[0], w, atol=1e-5)
        np.testing.assert_allclose(tuned[i].trainable[1], b, atol=1e-5)
    assert not np.allclose(tuned[1].trainable[0], tuned[2].trainable[0])


def test_tuning_orders_are_drawn_per_client_and_round_apart_from_training():
    from fedlab.experiment.clients import client_plan

    config = fl.ExperimentConfig(num_clients=3, clients_per_round=3, eval_per_client=True, finetune_epochs=2)
    x, y = np.zeros((20, 2), np.float32), np.zeros(20, np.int32)
    first = finetune_inputs(x, y, config, 4, 1)["orders"]
    np.testing.assert_array_equal(first, finetune_inputs(x, y, config, 4, 1)["orders"])
    assert not np.array_equal(first, finetune_inputs(x, y, config, 5, 1)["orders"])
    assert not np.array_equal(first, finetune_inputs(x, y, config, 4, 2)["orders"])
    assert not np.array_equal(first[0], client_plan(20, config, 4, 1)[0][0])
    assert sorted(first[1].tolist()) == list(range(20))


def test_a_run_scores_each_client_with_the_final_model_tuned_on_its_own_data():
    base = fl.ExperimentConfig(dataset="digits", partition="dirichlet", alpha=0.3, num_clients=4, clients_per_round=4,
                               rounds=2, client_lr=0.05, eval_per_client=True, local_test_fraction=0.3, eval_every=2)
    config = base.replace(finetune_epochs=2)
    plain, tuned = fl.run_experiment(base, progress=False), fl.run_experiment(config, progress=False)
    # tuning changes what each client is scored with, not the training or the global model's score
    np.testing.assert_array_equal(plain.eval_accuracy, tuned.eval_accuracy)
    np.testing.assert_array_equal(plain.train_loss, tuned.train_loss)
    table = fl.clients_table(tuned)
    assert len(table) == 4 and table.accuracy.notna().all()

    spec = spec_for(config, fl.dataset_for(config))
    clients = Clients.for_config(config, spec)
    w, b = fl.final_weights(tuned)
    evaluator = Evaluator(spec)
    for c in range(4):
        tw, tb = tuned_by_hand(w, b, finetune_inputs(clients.x[c], clients.y[c], config, 2, c), config.client_lr)
        evaluator.load([tw.astype(np.float32), tb.astype(np.float32)])
        loss, accuracy = evaluate_logits(evaluator.logits(clients.test_x[c]), clients.test_y[c], spec.binary)
        row = table[table.client == c].iloc[0]
        assert row.accuracy == pytest.approx(accuracy) and row.loss == pytest.approx(loss, rel=1e-4)
    assert tuned.client_accuracy_mean.iloc[-1] == pytest.approx(table.accuracy.mean())
    assert not np.allclose(fl.clients_table(plain).loss, table.loss)


@pytest.mark.parametrize("changes, field", [
    (dict(eval_per_client=False), "finetune_epochs"),
    (dict(algorithm="ditto"), "finetune_epochs"),
    (dict(algorithm="fedper", model="2nn"), "finetune_epochs"),
    (dict(finetune_epochs=-1), "finetune_epochs"),
    (dict(finetune_epochs=1.5), "finetune_epochs"),
])
def test_fine_tuning_refuses_what_it_cannot_honour(changes, field):
    with pytest.raises(ConfigError) as err:
        fl.ExperimentConfig(**{"dataset": "digits", "eval_per_client": True, "finetune_epochs": 1, **changes})
    assert err.value.field == field and len(str(err.value).splitlines()) == 1
