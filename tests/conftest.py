import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_HEART = ROOT.parent / "shared" / "data" / "heart_disease"

# The loader reads the UCI files from this folder; CI has ../shared beside the clone.
if "FEDLAB_HEART_DISEASE_DIR" not in os.environ and SHARED_HEART.is_dir():
    os.environ["FEDLAB_HEART_DISEASE_DIR"] = str(SHARED_HEART)


@pytest.fixture(scope="session")
def heart_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FEDLAB_HEART_DISEASE_DIR", ""))
    if not (path / "processed.cleveland.data").exists():
        pytest.fail(f"heart disease files not found in {path}; set FEDLAB_HEART_DISEASE_DIR")
    return path


@pytest.fixture(scope="session")
def notebook_cache(tmp_path_factory) -> pathlib.Path:
    """One results cache for every notebook execution in the session (browser test, then notebook test)."""
    return tmp_path_factory.mktemp("notebook-cache")


@pytest.fixture(scope="session")
def notebook_runs() -> dict:
    """Notebook name -> the results folder of a run already made against ``notebook_cache`` (by the browser test)."""
    return {}
