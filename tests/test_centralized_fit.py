"""train_keras (fedlab/models/models.py), with which FLamby's and TCGA-BRCA's baselines and the audit's reference
model train: an epoch a TensorFlow call and one compiled model reused from training to training give the weights of
a new model compiled and fit one batch a call, to the bit."""

import numpy as np
import pytest

import fedlab as fl
from fedlab.models import models
from fedlab.models.models import ModelSpec, train_keras


def fit_new_model(spec, x, y, *, seed, model_seed, batch):
    """Keras' own way: a new model compiled with Adam and fit, one call a batch, three epochs."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    model = spec.build_keras(model_seed)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss=spec.loss())
    model.fit(x, spec.prepare_labels(y), epochs=3, batch_size=batch, shuffle=True, verbose=0)
    return model.get_weights()


def assert_trains_as_a_new_model(spec, trainings, batch):
    """Each (x, y, seed, model seed) trained by train_keras, one after the other on one compiled model made for the
    first, gives the weights of a new model fit by Keras' own way."""
    models._compiled.cache_clear()
    compiled = None
    for x, y, seed, model_seed in trainings:
        ours = train_keras(spec, x, y, seed=seed, model_seed=model_seed, epochs=3, batch_size=batch, lr=1e-2)
        now = models._compiled(spec, spec.builder, spec.task_entry, spec.task_entry.loss_entry, 1e-2, 1e-7)
        assert compiled is None or (now is compiled and now.train_function is train_function)  # traced once
        compiled, train_function = now, now.train_function
        batches = -(-len(x) // batch)
        assert int(compiled._steps_per_execution.numpy()) == batches  # an epoch's batches in one call
        assert compiled.optimizer.iterations.numpy() == 3 * batches  # Adam started again from step 0
        expected = fit_new_model(spec, x, y, seed=seed, model_seed=model_seed, batch=batch)
        for a, b, start in zip(expected, ours.get_weights(), spec.build_keras(model_seed).get_weights()):
            assert not np.array_equal(a, start)  # trained
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model, classes", [("logreg", 10), ("logreg_torch", 2), ("2nn", 10)])
def test_trainings_on_one_compiled_model_give_the_weights_of_new_models(model, classes):
    data = fl.load_dataset("digits")
    x, y = data.x_train, data.y_train % classes
    spec = ModelSpec(model, data.num_features, classes)
    # one batch first (Keras makes its train function once, for the steps a call it then has); then 203 = 12
    # batches of 16 and one of 11; other examples, seeds and size; the second again
    assert_trains_as_a_new_model(spec, [(x[500:512], y[500:512], 1, 2), (x[:203], y[:203], 3, 3),
                                        (x[300:420], y[300:420], 5, 6), (x[:203], y[:203], 3, 3)], batch=16)


def test_the_cox_model_on_survival_data_too(tcga_dir):
    from fedlab.experiment.clients import spec_for
    from fedlab.studies import tcga

    data = fl.load_dataset("fed_tcga_brca")
    spec = spec_for(tcga.tcga_config(), data)
    x, y = data.x_train, data.y_train  # 83 = 10 batches of 8 and one of 3: Breslow's loss couples a batch
    assert_trains_as_a_new_model(spec, [(x[:83], y[:83], 0, 0), (x[100:160], y[100:160], 1, 1)], batch=8)


@fl.register_model("dropout_mlp_for_tests", weight_layers=2)
def dropout_mlp(shape, seed):
    """A user's model that draws random numbers in training: dropout, unseeded."""
    import tensorflow as tf

    return tf.keras.Sequential([tf.keras.Input((shape.num_features,)), tf.keras.layers.Dense(16, activation="relu"),
                                tf.keras.layers.Dropout(0.5), tf.keras.layers.Dense(shape.num_outputs)])


def test_a_users_model_is_compiled_anew_each_time_and_trains_as_a_new_model(monkeypatch):
    monkeypatch.setattr(models, "_compiled", lambda *a: pytest.fail("a user's model went to a reused compiled model"))
    data = fl.load_dataset("digits")
    spec = ModelSpec("dropout_mlp_for_tests", data.num_features, 10)
    for seed in (1, 2, 1):  # a reused model would carry its dropout's generator from one training to the next
        ours = train_keras(spec, data.x_train[:100], data.y_train[:100], seed=seed, model_seed=seed, epochs=3,
                           batch_size=16, lr=1e-2)
        expected = fit_new_model(spec, data.x_train[:100], data.y_train[:100], seed=seed, model_seed=seed, batch=16)
        for a, b in zip(expected, ours.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_the_baselines_train_with_it(monkeypatch):
    from fedlab.studies import crosssilo

    calls = []
    monkeypatch.setattr(crosssilo, "train_keras", lambda spec, x, y, **k: calls.append((len(x), k)))
    data = fl.load_dataset("digits")
    crosssilo.train_centralized(ModelSpec("logreg", data.num_features, 10), data.x_train[:20], data.y_train[:20],
                                epochs=1, batch_size=4, seed=2, lr=0.01, epsilon=1e-8)
    assert calls == [(20, dict(seed=2, model_seed=2, epochs=1, batch_size=4, lr=0.01, epsilon=1e-8))]


def test_a_training_waits_for_another_at_most_the_wait_limit_and_says_for_what(monkeypatch):
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "0.2")
    data = fl.load_dataset("digits")
    with models._TRAINING:  # another thread's training
        with pytest.raises(TimeoutError, match="waited 0.2 s for train_keras's compiled models"):
            train_keras(ModelSpec("logreg", data.num_features, 10), data.x_train[:20], data.y_train[:20], seed=0,
                        model_seed=0, epochs=1, batch_size=4, lr=0.01)
