import os
import pathlib

import pytest

import stalls

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_HEART = ROOT.parent / "shared" / "data" / "heart_disease"
SHARED_TCGA_BRCA = ROOT.parent / "shared" / "data" / "fed_tcga_brca"

# The loaders read the UCI and FLamby files from these folders; CI has ../shared beside the clone.
if "FEDLAB_HEART_DISEASE_DIR" not in os.environ and SHARED_HEART.is_dir():
    os.environ["FEDLAB_HEART_DISEASE_DIR"] = str(SHARED_HEART)
if "FEDLAB_TCGA_BRCA_DIR" not in os.environ and SHARED_TCGA_BRCA.is_dir():
    os.environ["FEDLAB_TCGA_BRCA_DIR"] = str(SHARED_TCGA_BRCA)

# Any one wait of fedlab's (a TFF call, a panel's next round, a sweep's next result, a lock) gives up after this many
# seconds and says what it waited for, in the test's own failure: half the watchdog's limit below, so that a stuck
# kernel's wait is named by fedlab (where TFF's event loop or the run's thread stood) before the watchdog stops it.
os.environ.setdefault("FEDLAB_WAIT_LIMIT_S", "300")


# No test waits forever: past its limit a test fails with the stacks of every thread of its process and of the
# processes it started (tests/stalls.py). Longer limits are marked on the test: @pytest.mark.stall_limit(seconds).
DEFAULT_STALL_LIMIT_S = 600.0


def pytest_configure(config):
    config.addinivalue_line("markers", "stall_limit(seconds): the test's watchdog limit (default "
                                       f"{DEFAULT_STALL_LIMIT_S:.0f} s)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("stall_limit")
    dog = stalls.Watchdog(float(marker.args[0]) if marker else DEFAULT_STALL_LIMIT_S, item.nodeid).start()
    result = None
    try:
        result = yield
    except BaseException:
        if dog.message is None:  # an ordinary failure
            dog.cancel()
            raise
    dog.cancel()
    if dog.message is not None:  # the stall, not what it caused (a killed kernel, a KeyboardInterrupt-like error)
        pytest.fail(dog.message, pytrace=False)
    return result


@pytest.fixture(scope="session")
def heart_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("FEDLAB_HEART_DISEASE_DIR", ""))
    if not (path / "processed.cleveland.data").exists():
        pytest.fail(f"heart disease files not found in {path}; set FEDLAB_HEART_DISEASE_DIR")
    return path


@pytest.fixture(scope="session")
def tcga_dir() -> pathlib.Path:
    """FLamby's Fed-TCGA-BRCA folder (it ships beside the checkout, like the heart-disease files: missing is a failure)."""
    path = pathlib.Path(os.environ.get("FEDLAB_TCGA_BRCA_DIR", "") or ROOT / "data" / "fed_tcga_brca")
    if not (path / "brca.csv").exists():
        pytest.fail(f"Fed-TCGA-BRCA files not found in {path}; set FEDLAB_TCGA_BRCA_DIR (see data/README.md)")
    return path


@pytest.fixture(scope="session")
def flamby_tcga_results() -> pathlib.Path:
    """FLamby's published per-seed Fed-TCGA-BRCA results (../shared/data/flamby_tcga_brca_results)."""
    path = ROOT.parent / "shared" / "data" / "flamby_tcga_brca_results"
    if not list(path.glob("tcga_seed*.csv")):
        pytest.fail(f"FLamby's Fed-TCGA-BRCA results not found in {path}")
    return path


@pytest.fixture(scope="session")
def notebook_cache(tmp_path_factory) -> pathlib.Path:
    """One results cache for every notebook execution in the session (browser test, then notebook test)."""
    return tmp_path_factory.mktemp("notebook-cache")


@pytest.fixture(scope="session")
def notebook_runs() -> dict:
    """Notebook name -> the results folder of a run already made against ``notebook_cache`` (by the browser test)."""
    return {}


def interrupt_after(run, config, round_num: int, checkpoint_dir) -> None:
    """Runs ``config`` with a checkpoint and stops it after ``round_num`` through the runner's own ``stop`` event
    (what Ctrl-C and the panel's Stop button use); ``run`` is ``run_experiment``."""
    import threading

    from fedlab.experiment.runner import RunStopped

    stop = threading.Event()

    def stop_then(row, history):
        if row["round"] == round_num:
            stop.set()

    with pytest.raises(RunStopped):
        run(config, checkpoint_dir=checkpoint_dir, progress=False, callback=stop_then, stop=stop)
