"""What one site holds: its own records, read by a registered site loader, and nothing of the other sites.

A site process (:mod:`fedlab.experiment.site_service`) is a hospital's: it reads its
records with the loader registered for the data set (``fl.register_site_loader``,
fedlab's own registered the same way) and keeps them in its process. A loader
makes exactly the arrays the simulation gives that site's client for the same
seed and test share, so a federation of site processes can be checked
against the simulation of the same data. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Callable, Optional

import numpy as np

from .data import (DATASETS, HEART_DISEASE_SITES, Dataset, heart_disease_site_arrays, read_heart_disease_site)
from ..core.registry import Registry, decorator
from ..core.validation import ConfigError


@dataclasses.dataclass(frozen=True)
class SiteData:
    """One site's records: ``data`` holds only them (its ``train_sites``/``test_sites`` all ``index``);
    ``index`` is the site's client number in the data set's natural partition, ``name`` its name."""

    data: Dataset
    index: int
    name: str

    def describe(self) -> dict:
        """What the site tells a driver: sizes, features, classes and label balance; never a record."""
        labels = np.asarray(self.data.y_train)
        balance = ({str(c): int((labels == c).sum()) for c in range(self.data.num_classes)}
                   if self.data.task == "classification" else {})
        return {"dataset": self.data.name, "site": self.name, "index": self.index,
                "site_names": list(self.data.site_names or ()), "train_rows": int(len(self.data.y_train)),
                "test_rows": int(len(self.data.y_test)), "features": self.data.num_features,
                "num_classes": int(self.data.num_classes), "task": self.data.task, "label_counts": balance,
                "image_shape": list(self.data.image_shape) if self.data.image_shape else None}


@dataclasses.dataclass(frozen=True)
class SiteLoader:
    """``load(site, directory, *, seed, test_fraction) -> SiteData`` for one registered data set."""

    dataset: str
    load: Callable[..., SiteData]
    sites: tuple[str, ...]


SITE_LOADERS: Registry[SiteLoader] = Registry("site loader", "dataset")


def register_site_loader(dataset: str, *, sites: tuple[str, ...], replace: bool = False):
    """Registers ``load(site, directory, *, seed, test_fraction) -> SiteData`` for ``dataset``: how one site
    reads its own records (``python -m fedlab site --dataset NAME --name SITE --data PATH``)."""
    return decorator(SITE_LOADERS, dataset, lambda fn: SiteLoader(dataset, fn, tuple(sites)), replace=replace)


def load_site(dataset: str, site: str, directory, *, seed: int, test_fraction: Optional[float]) -> SiteData:
    """The site's records for a run with this data seed and test share (one line naming what is wrong)."""
    loader = SITE_LOADERS[dataset]
    if site not in loader.sites:
        raise ConfigError("name", f"must be one of the {dataset} sites {', '.join(loader.sites)}, got {site!r}")
    if test_fraction is None:  # the data set's own default share, as the simulation takes it
        test_fraction = DATASETS[dataset].test_fraction
    return _cached(loader, site, str(pathlib.Path(directory).expanduser()), int(seed), float(test_fraction))


@functools.lru_cache(maxsize=8)
def _cached(loader: SiteLoader, site: str, directory: str, seed: int, test_fraction) -> SiteData:
    return loader.load(site, pathlib.Path(directory), seed=seed, test_fraction=test_fraction)


@register_site_loader("heart_disease", sites=HEART_DISEASE_SITES)
def heart_disease_site(site: str, directory: pathlib.Path, *, seed: int = 0, test_fraction: float = 1 / 3) -> SiteData:
    """One UCI hospital's file (``processed.<site>.data``, checksum checked), FLamby's protocol."""
    index = HEART_DISEASE_SITES.index(site)
    arrays, names = heart_disease_site_arrays(read_heart_disease_site(site, directory), index, seed, test_fraction)
    sites = {"train_sites": np.full(len(arrays["y_train"]), index, np.int32),
             "test_sites": np.full(len(arrays["y_test"]), index, np.int32)}
    data = Dataset("heart_disease", num_classes=2, feature_names=names, site_names=HEART_DISEASE_SITES,
                   **arrays, **sites)
    return SiteData(data, index, site)
