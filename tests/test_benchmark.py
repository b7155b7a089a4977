"""Cross-silo pieces: local steps, validation split, excluded sites, site scores by hand, covariate sites."""

import numpy as np
import pytest

from fedlab import ExperimentConfig, dataset_for, run_experiment
from fedlab.studies import crosssilo
from fedlab.data.data import Dataset, load_breast_cancer, with_covariate_sites
from fedlab.experiment.clients import client_dataset
from fedlab.experiment.sampling import sample_clients


def test_local_steps_gives_exactly_that_many_batches():
    x, y = np.zeros((10, 3), np.float32), np.zeros(10, np.int32)
    config = ExperimentConfig(batch_size=4, local_steps=7)
    batches = list(client_dataset(x, y, config, round_num=1, client=0))
    assert len(batches) == 7  # 3 batches per epoch (4, 4, 2): three epochs cut at 7
    assert [len(b[0]) for b in batches] == [4, 4, 2, 4, 4, 2, 4]
    assert len(list(client_dataset(x, y, config.replace(local_steps=None, local_epochs=2), 1, 0))) == 6


def test_validation_split_is_carved_from_training_data(heart_dir):
    config = crosssilo.heart_disease_config()
    full, tuning = dataset_for(config), dataset_for(config.replace(validation_fraction=0.2))
    assert len(tuning.x_train) + len(tuning.x_test) == len(full.x_train)
    # validation rows are training rows; no test row is used while tuning
    train_rows = {r.tobytes() for r in full.x_train}
    assert all(r.tobytes() in train_rows for r in tuning.x_test)
    # every site keeps 20 % of its own training patients for validation (stratified, so within a patient or two)
    per_site = np.bincount(tuning.test_sites, minlength=4) / np.bincount(full.train_sites, minlength=4)
    assert np.all(np.abs(per_site - 0.2) < 0.05), per_site


def test_heart_disease_protocol_split_is_two_thirds(heart_dir):
    data = dataset_for(crosssilo.heart_disease_config())
    assert len(data.x_train) + len(data.x_test) == 740
    assert len(data.x_test) / 740 == pytest.approx(1 / 3, abs=0.02)


def test_excluded_clients_never_train():
    config = ExperimentConfig(num_clients=6, clients_per_round=3, exclude_clients=(1, 4))
    for r in range(1, 30):
        assert not set(sample_clients(config, r)) & {1, 4}
    with pytest.raises(ValueError, match="clients_per_round"):
        ExperimentConfig(num_clients=4, clients_per_round=4, exclude_clients=(0,))


def test_site_scores_by_hand():
    data = Dataset("toy", np.zeros((1, 1)), np.zeros(1, np.int32), np.zeros((6, 1), np.float32),
                   np.array([1, 0, 1, 1, 1, 1], np.int32), num_classes=2,
                   test_sites=np.array([0, 0, 0, 1, 1, 1]), site_names=("a", "b"))
    logits = np.array([2.0, -1.0, -0.5, 3.0, 1.0, -2.0])
    rows = crosssilo.site_scores(logits, data)
    # site a: predictions 1,0,0 vs labels 1,0,1 -> 2/3; AUC: positives 2.0 and -0.5 against negative -1.0 -> 1.0
    assert rows[0]["accuracy"] == pytest.approx(2 / 3) and rows[0]["auc"] == 1.0
    # site b: all positive -> AUC undefined; predictions 1,1,0 -> 2/3
    assert rows[1]["accuracy"] == pytest.approx(2 / 3) and np.isnan(rows[1]["auc"])


def test_covariate_sites_follow_the_feature():
    data = with_covariate_sites(load_breast_cancer(seed=0), feature=0, num_sites=4, mixing=0.0)
    means = [data.x_train[data.train_sites == s, 0].mean() for s in range(4)]
    assert means == sorted(means) and np.bincount(data.train_sites).min() >= len(data.x_train) // 4 - 1
    assert data.site_names == ("site0", "site1", "site2", "site3")


def test_covariate_sites_do_not_depend_on_the_cpus_sort():
    """Equal values (breast cancer repeats 70 of its 456 training radii) keep their order in the data. numpy's
    default quicksort left their order to the CPU (its AVX-512 sort orders ties otherwise), which moved patients
    between sites and changed notebook 04's breast-cancer table from one machine to another."""
    data = with_covariate_sites(load_breast_cancer(seed=0), feature=0, num_sites=4, mixing=0.0)
    assert len(np.unique(data.x_train[:, 0])) < len(data.x_train)  # there are ties to break
    for x, sites in ((data.x_train, data.train_sites), (data.x_test, data.test_sites)):
        order = sorted(range(len(x)), key=lambda i: x[i, 0])  # Python's sort: stable, the same everywhere
        ranks = np.empty(len(x), int)
        ranks[order] = np.arange(len(x))
        np.testing.assert_array_equal(sites, ranks * 4 // len(x))


def test_site_accuracy_columns_and_fast_benchmark(heart_dir):
    config = crosssilo.heart_disease_config(rounds=2, local_steps=5, eval_every=1)
    history = run_experiment(config, progress=False)
    assert {f"site_accuracy_{s}" for s in ("cleveland", "hungarian", "switzerland", "va")} <= set(history.columns)
    scores = crosssilo.federated_scores(config)
    assert list(scores["site"]) == ["cleveland", "hungarian", "switzerland", "va"]
    last = history.iloc[-1]
    assert scores.set_index("site")["accuracy"]["va"] == pytest.approx(last["site_accuracy_va"])
