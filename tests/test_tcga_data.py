"""Fed-TCGA-BRCA as FLamby gives it: the fixed split per region, raw features, (event, time) labels, checked files.

The real-data tests need FLamby's files beside the checkout (the ``tcga_dir`` fixture fails, saying where it looked).
"""

import shutil

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.data import data

# FLamby's per-region split (its README and train_test_split.csv): patients and events, training / test.
SIZES = {"northeast": (248, 63), "south": (156, 40), "west": (164, 42), "midwest": (129, 33), "europe": (129, 33),
         "canada": (40, 11)}
EVENTS = {"northeast": (45, 14), "south": (35, 4), "west": (14, 8), "midwest": (16, 3), "europe": (7, 2),
          "canada": (2, 1)}


@pytest.fixture(scope="module")
def tcga(tcga_dir):
    return data.load_tcga_brca(directory=tcga_dir)


def test_split_per_region_is_flambys(tcga):
    assert tcga.site_names == data.TCGA_BRCA_REGIONS and tcga.task == "survival" and tcga.num_classes == 0
    train = np.bincount(tcga.train_sites, minlength=6).tolist()
    test = np.bincount(tcga.test_sites, minlength=6).tolist()
    assert list(zip(train, test)) == list(SIZES.values())
    assert (len(tcga.y_train), len(tcga.y_test)) == (866, 222)
    events = [(int(tcga.y_train[tcga.train_sites == s, 0].sum()), int(tcga.y_test[tcga.test_sites == s, 0].sum()))
              for s in range(6)]
    assert events == list(EVENTS.values())
    assert len(tcga.y_test) / (len(tcga.y_train) + len(tcga.y_test)) == data.TCGA_BRCA_TEST_FRACTION


def test_features_are_raw_and_labels_event_time(tcga, tcga_dir):
    header = tuple(pd.read_csv(tcga_dir / "brca.csv", nrows=0).columns)
    assert tcga.feature_names == header[1:40] and tcga.num_features == 39 and tcga.feature_names[0] == "age_at_index"
    x = np.concatenate([tcga.x_train, tcga.x_test])
    assert x.dtype == np.float32
    age = x[:, 0]
    assert age.min() == 26 and age.max() == 90 and np.array_equal(age, np.round(age))  # years, not scaled
    assert set(np.unique(x[:, 1:])) == {0.0, 1.0}
    for y in (tcga.y_train, tcga.y_test):
        assert y.dtype == np.float32 and y.ndim == 2 and y.shape[1] == 2
        assert set(np.unique(y[:, 0])) == {0.0, 1.0} and y[:, 1].min() >= 0  # (E, T): event, days
    assert tcga.train_sites.dtype == np.int32


def test_rows_follow_brca_csv_within_each_region(tcga, tcga_dir):
    """Grouped by client 0..5, each client's rows in brca.csv order, as FLamby's FedTcgaBrca(center=k) holds them."""
    table = data.read_tcga_brca(tcga_dir, download=False)
    assert len(table) == 1088 and table["client"].dtype.kind == "i"
    brca = pd.read_csv(tcga_dir / "brca.csv")
    assert len(brca) == 1096 and brca["pid"].isin(table["pid"]).sum() == 1088
    for fold, x, y, sites in (("train", tcga.x_train, tcga.y_train, tcga.train_sites),
                              ("test", tcga.x_test, tcga.y_test, tcga.test_sites)):
        assert np.all(np.diff(sites) >= 0)
        for s in range(6):
            rows = brca[brca["pid"].isin(table.loc[table["fold2"] == f"{fold}_{s}", "pid"])]  # FLamby's own query
            assert np.array_equal(x[sites == s], rows.iloc[:, 1:40].to_numpy(np.float32))
            assert np.array_equal(y[sites == s], rows.iloc[:, 40:42].to_numpy(np.float32))


def test_region_order_matches_centers_through_the_tss_code(tcga_dir):
    table = data.read_tcga_brca(tcga_dir, download=False)
    centers = pd.read_csv(tcga_dir / "centers.csv")
    region = table["pid"].str[5:7].map(dict(zip(centers["TSS Code"], centers["Region"].str.lower())))
    assert region.notna().all()
    for k, name in enumerate(data.TCGA_BRCA_REGIONS):
        assert set(region[table["client"] == k]) == {name}
    assert (table["fold"] == table["fold2"].str.split("_").str[0]).all()


def test_seed_does_not_change_the_split(tcga, tcga_dir):
    other = data.load_tcga_brca(seed=7, directory=tcga_dir)
    for key in ("x_train", "y_train", "x_test", "y_test", "train_sites", "test_sites"):
        assert np.array_equal(getattr(tcga, key), getattr(other, key))


def test_another_test_fraction_is_refused(tcga_dir):
    with pytest.raises(fl.ConfigError, match="test_fraction: must be left unset for fed_tcga_brca"):
        data.load_tcga_brca(test_fraction=0.2, directory=tcga_dir)


def test_registered_as_a_survival_dataset(tcga_dir, monkeypatch):
    monkeypatch.setenv(data.TCGA_BRCA_ENV, str(tcga_dir))
    source = fl.DATASETS["fed_tcga_brca"]
    assert (source.sites, source.task, source.test_fraction) == (6, "survival", 222 / 1088)
    ds = fl.load_dataset("fed_tcga_brca", seed=3)
    assert ds.task == "survival" and (len(ds.y_train), len(ds.y_test)) == (866, 222)
    assert fl.DATASETS["heart_disease"].task == "classification"
    with pytest.raises(fl.ConfigError, match="test_fraction"):
        fl.load_dataset("fed_tcga_brca", test_fraction=0.3)


def test_checksum_mismatch_is_an_error(tcga_dir, tmp_path):
    for name in data.TCGA_BRCA_SHA256:
        shutil.copy(tcga_dir / name, tmp_path / name)
    assert set(data.fetch_tcga_brca(tmp_path, download=False)) == set(data.TCGA_BRCA_SHA256)
    path = tmp_path / "train_test_split.csv"
    path.write_bytes(path.read_bytes().replace(b"train_0", b"test_0", 1))
    with pytest.raises(data.DataUnavailableError, match="SHA-256 .* not the one FLamby publishes"):
        data.load_tcga_brca(directory=tmp_path)


def test_offline_and_missing_names_the_variable_folder_and_source(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("download=False must not go to the network")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(data.DataUnavailableError) as info:
        data.fetch_tcga_brca(tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("fed_tcga_brca: ")
    assert data.TCGA_BRCA_ENV in message and str(tmp_path) in message
    assert "github" in message and data.FLAMBY_COMMIT in message


def test_download_failure_says_why(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    monkeypatch.setenv(data.TCGA_BRCA_ENV, str(tmp_path / "nowhere"))
    assert data.tcga_brca_dir() == tmp_path / "nowhere"
    with pytest.raises(data.DataUnavailableError, match=r"FEDLAB_TCGA_BRCA_DIR.*network is unreachable"):
        data.read_tcga_brca()


def test_urls_point_at_flambys_files():
    urls = [data.TCGA_BRCA_URL.format(path=p) for p in data.TCGA_BRCA_PATHS.values()]
    base = f"https://raw.githubusercontent.com/owkin/FLamby/{data.FLAMBY_COMMIT}/flamby/datasets/fed_tcga_brca/"
    assert urls == [base + "brca.csv", base + "centers.csv", base + "dataset_creation_scripts/train_test_split.csv"]
