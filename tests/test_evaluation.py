"""The central evaluator: its compiled forward pass gives the model's own logits, traced at most twice."""

import numpy as np
import pytest

from fedlab.experiment.evaluation import Evaluator, evaluate_logits
from fedlab.models.models import ModelSpec


@pytest.mark.parametrize("spec", [ModelSpec("2nn", 784, 10), ModelSpec("cnn", 784, 10, image_shape=(28, 28)),
                                  ModelSpec("logreg", 13, 2)],
                         ids=["2nn", "cnn", "logreg"])
def test_the_compiled_forward_pass_gives_the_models_logits_for_any_batch_length(spec):
    evaluator = Evaluator(spec, compiled=True)
    rng = np.random.default_rng(0)
    evaluator.load([rng.normal(0, 0.1, v.shape).astype(np.float32) for v in evaluator.model.trainable_variables])
    lengths = [300, 1, 37, 9, 2500, 4, 120]  # 2,500: two forward batches of at most 2,048
    for n in lengths:
        x = rng.random((n, spec.num_features), dtype=np.float32)
        eager = evaluator.model(x, training=False).numpy()
        np.testing.assert_allclose(evaluator.logits(x), eager, rtol=1e-5, atol=1e-6)
    # one trace for the first length, one with the batch dimension left unknown; none per client after that
    assert evaluator._forward.experimental_get_tracing_count() <= 2


def test_client_rows_score_each_client_on_its_own_data():
    spec = ModelSpec("logreg", 4, 3)
    evaluator = Evaluator(spec)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=v.shape).astype(np.float32) for v in evaluator.model.trainable_variables]
    evaluator.load(weights)
    xs = [rng.normal(size=(n, 4)).astype(np.float32) for n in (5, 0, 12)]
    ys = [rng.integers(0, 3, len(x)) for x in xs]
    rows = evaluator.client_rows(xs, ys, round_num=7)
    assert [r["client"] for r in rows] == [0, 1, 2] and all(r["round"] == 7 for r in rows)
    assert [r["num_examples"] for r in rows] == [5, 0, 12]
    assert np.isnan(rows[1]["loss"]) and np.isnan(rows[1]["accuracy"])
    w, b = weights
    for row, x, y in zip(rows, xs, ys):
        if len(y):
            loss, accuracy = evaluate_logits(x.astype(np.float64) @ w + b, y, binary=False)
            assert row["loss"] == pytest.approx(loss, rel=1e-5) and row["accuracy"] == accuracy


def test_a_site_with_nothing_to_test_on_scores_nan_with_or_without_its_own_model():
    import dataclasses

    from fedlab.data.data import load_dataset
    from fedlab.experiment.clients import spec_for
    from fedlab.experiment.config import ExperimentConfig

    data = load_dataset("breast_cancer_sites")
    kept = data.test_sites != 2  # site 2 has no test rows
    data = dataclasses.replace(data, x_test=data.x_test[kept], y_test=data.y_test[kept],
                               test_sites=data.test_sites[kept])
    evaluator = Evaluator(spec_for(ExperimentConfig(dataset="breast_cancer_sites", model="logreg"), data))
    assert evaluator.logits(data.x_test[:0]).shape == (0, evaluator.logits(data.x_test[:1]).shape[1])
    compiled = Evaluator(evaluator.spec, compiled=True)  # as the runner keeps them
    assert compiled.logits(data.x_test[:0]).shape == (0, compiled.logits(data.x_test[:1]).shape[1])
    initial = evaluator.model.get_weights()

    class Weights:  # what TFF's ModelWeights holds
        trainable, non_trainable = initial, []

    for weights_for in (None, lambda site: Weights):
        scores = evaluator.site_metrics(data, weights_for=weights_for)
        empty = data.site_names[2]
        assert np.isnan(scores[f"site_accuracy_{empty}"]) and np.isnan(scores[f"site_auc_{empty}"])
        assert all(np.isfinite(scores[f"site_accuracy_{name}"]) for name in data.site_names if name != empty)
        others = [scores[f"site_accuracy_{name}"] for name in data.site_names if name != empty]
        assert scores["mean_site_accuracy"] == pytest.approx(np.mean(others))
