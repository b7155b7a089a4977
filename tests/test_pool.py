"""A sweep's runs spread over worker processes (fedlab/experiment/pool.py): the same numbers as one after the
other, errors and fedlab's warnings raised where the sweep runs, nothing waiting forever."""

import multiprocessing
import os
import warnings

import numpy as np
import pytest

import fedlab as fl
from fedlab.core.validation import ConfigError, SettingWarning
from fedlab.experiment import pool
from fedlab.experiment.config import RECORD_LEVEL

BASE = fl.ExperimentConfig(dataset="digits", model="logreg", num_clients=10, clients_per_round=3, rounds=3,
                           local_epochs=1, batch_size=10)
METRICS = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "clients_this_round"]


def weights(history):
    return fl.final_weights(history)


NOTEBOOK_CELL = '''
import dataclasses
import fedlab as fl
import tensorflow as tf
import tensorflow_federated as tff


@fl.register_dataset("pool_notebook_digits")
def notebook_digits(seed: int = 0, test_fraction: float = 0.2):
    """digits, registered in a notebook cell."""
    return fl.load_dataset("digits", seed=seed, test_fraction=test_fraction)


@dataclasses.dataclass(frozen=True)
class DecayParams(fl.AlgorithmParams):
    decay: float = fl.hparam(0.9, low=0.0, high=1.0, help="server learning rate factor per round")


@fl.register_algorithm("pool_notebook_fedavg_decay", params=DecayParams)
def fedavg_decay(model, *, client_lr, server_lr, params, model_aggregator):
    """FedAvg whose server learning rate shrinks by decay every round."""
    sgd, schedule = tff.learning.optimizers.build_sgdm, tff.learning.optimizers.schedule_learning_rate
    server = schedule(sgd(server_lr), lambda r: server_lr * params.decay ** tf.cast(r - 1, tf.float32))
    return tff.learning.algorithms.build_weighted_fed_avg(
        model, client_optimizer_fn=sgd(client_lr), server_optimizer_fn=server, model_aggregator=model_aggregator)
'''


@pytest.mark.slow
def test_a_sweep_spread_over_two_processes_gives_the_numbers_of_one_process(tmp_path, monkeypatch, request):
    import json
    import linecache

    # half the runs use a data set and an algorithm (with its parameters' class) registered as a notebook cell
    # registers them: their source in this process's linecache only, so a worker process, which receives them by
    # value, cannot read it
    cell = str(tmp_path / "ipykernel_0" / "1.py")  # no such file
    linecache.cache[cell] = (len(NOTEBOOK_CELL), None, NOTEBOOK_CELL.splitlines(True), cell)
    request.addfinalizer(lambda: linecache.cache.pop(cell, None))
    request.addfinalizer(lambda: fl.DATASETS._entries.pop("pool_notebook_digits", None))
    request.addfinalizer(lambda: fl.ALGORITHMS._entries.pop("pool_notebook_fedavg_decay", None))
    exec(compile(NOTEBOOK_CELL, cell, "exec"), {"__name__": "__main__"})
    configs = fl.grid(BASE, seed=[0, 1], client_lr=[0.05, 0.2])
    configs = configs[:2] + [c.replace(dataset="pool_notebook_digits", algorithm="pool_notebook_fedavg_decay",
                                       decay=0.5) for c in configs[2:]]
    assert pool.spreadable(configs, None) == [0, 1, 2, 3]
    alone = [fl.run_experiment(c, progress=False) for c in configs]
    monkeypatch.setenv("FEDLAB_PROFILE", str(tmp_path / "profile.jsonl"))
    # the first run starts here; from its second round the four are worth spreading at any pace
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "1e-9")
    started = []
    start = pool._Lanes.start
    monkeypatch.setattr(pool._Lanes, "start", lambda lanes, todo: (started.append(list(todo)), start(lanes, todo)))
    spread = pool.run_all(configs, results_cache=tmp_path / "cache", processes=2, progress=False)
    assert started == [[0, 1, 2, 3]]  # the first run too: it stopped after its second round
    assert len(list((tmp_path / "cache").iterdir())) == 4  # each trained once, in a worker process
    lines = [json.loads(line) for line in (tmp_path / "profile.jsonl").read_text().splitlines()]
    stopped = [line for line in lines if line.get("stopped_to_spread")]
    lines = [line for line in lines if not line.get("stopped_to_spread")]
    trained = {line["key"] for line in lines if line["worker"] and not line["from_cache"]}
    read_back = {line["key"] for line in lines if not line["worker"] and line["from_cache"]}
    assert len(lines) == 8 and len(trained) == 4 and trained == read_back  # the profile tells the two apart
    assert len(stopped) == 1 and not stopped[0]["worker"] and stopped[0]["key"] in trained  # and the stopped one,
    assert stopped[0]["rounds"] == 2  # after its second round
    monkeypatch.delenv("FEDLAB_PROFILE")
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")  # below: every run spread from the start
    for one, other in zip(alone, spread):
        assert not other.attrs["from_cache"]  # trained by this call
        assert one[METRICS].equals(other[METRICS])
        for a, b in zip(weights(one), weights(other)):
            np.testing.assert_array_equal(a, b)  # bit for bit
    import threading

    # nothing of the pool outlives the sweep: no worker process, no thread (a later fork() would be unsafe)
    assert not multiprocessing.active_children()
    assert not [t.name for t in threading.enumerate() if "Executor" in type(t).__name__ or "Feeder" in t.name]
    again = pool.run_all(configs, results_cache=tmp_path / "cache", processes=2, progress=False)
    assert all(h.attrs["from_cache"] for h in again)
    # without a results cache the spread runs pass through a temporary one, removed after
    swept = fl.run_sweep(configs, processes=2, progress=False, labels={"lr": lambda c: c.client_lr})
    assert swept.groupby(["seed", "lr"]).size().tolist() == [3, 3, 3, 3]
    for (seed, lr), one in zip([(c.seed, c.client_lr) for c in configs], alone):
        rows = swept[(swept.seed == seed) & (swept.lr == lr)].reset_index(drop=True)
        assert rows[METRICS].equals(one[METRICS])


def test_a_sweep_is_spread_once_the_runs_left_would_take_longer_here_than_the_limit():
    assert not pool.worth_spreading(None, 100, 10, 30.0)  # nothing measured yet
    assert pool.worth_spreading(None, 100, 10, 0.0)  # 0: spread from the start
    assert not pool.worth_spreading(None, 100, 0, 0.0)  # no run left
    assert pool.worth_spreading(0.5, 61, 1, 30.0)  # 61 rounds at 0.5 s > 30 s
    assert not pool.worth_spreading(0.5, 60, 3, 30.0)


def test_a_runs_pace_is_its_median_round_after_the_first_among_those_where_a_client_trained():
    import pandas as pd

    history = pd.DataFrame({"round": [1, 2, 3, 4, 5], "seconds": [2.5, 0.25, 0.5, 1e-4, 0.75],
                            "clients_this_round": [3, 3, 3, 0, 3]})  # round 1 traced TFF's computations
    assert pool.round_pace(history) == 0.5  # of 0.25, 0.5 and 0.75; the empty round 4 left out
    assert pool.round_pace(history.iloc[:1]) is None  # the first round alone: nothing to go by
    assert pool.round_pace(history.iloc[:4].assign(clients_this_round=[3, 0, 0, 0])) is None


def test_the_spreading_limit_is_read_and_checked(monkeypatch):
    monkeypatch.delenv(pool.SPREAD_VARIABLE, raising=False)
    assert pool.spread_after() == pool.SPREAD_AFTER_S == 30.0
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "2.5")
    assert pool.spread_after() == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv(pool.SPREAD_VARIABLE, bad)
        with pytest.raises(ValueError, match=r"^FEDLAB_SPREAD_AFTER_S: must be a number of seconds >= 0"):
            pool.spread_after()


@pytest.mark.slow
def test_a_short_sweep_trains_here_without_starting_a_worker_process(tmp_path, monkeypatch):
    def no_pool(processes):
        raise AssertionError("a worker process was started")

    monkeypatch.delenv(pool.SPREAD_VARIABLE, raising=False)
    monkeypatch.setattr(pool, "_executor", no_pool)
    configs = [BASE.replace(seed=s) for s in range(3)]  # nine rounds of a tiny model: seconds, not 30
    histories = pool.run_all(configs, results_cache=tmp_path, processes=2, progress=False)
    assert len(list(tmp_path.iterdir())) == 3 and not any(h.attrs["from_cache"] for h in histories)
    assert all(h.attrs["from_cache"] for h in pool.run_all(configs, results_cache=tmp_path, processes=2,
                                                           progress=False))


@pytest.mark.slow
def test_runs_left_worth_spreading_before_a_run_starts_here_are_all_spread(tmp_path, monkeypatch):
    started = []

    def record(lanes, todo):  # no worker process: the sweep's reading loop then trains them itself
        started.append(list(todo))
        lanes.futures = {}

    monkeypatch.setattr(pool._Lanes, "start", record)
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "1e-9")
    configs = [BASE.replace(seed=s, rounds=1) for s in range(3)]  # one round: no pace from a run
    pool.run_all(configs, results_cache=tmp_path, processes=2, progress=False)
    assert started == []  # never measured, never spread
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")
    pool.run_all([c.replace(seed=c.seed + 3) for c in configs], results_cache=tmp_path, processes=2, progress=False)
    assert started == [[0, 1, 2]]


def test_what_a_worker_process_cannot_run_stays_here():
    assert pool.why_here(BASE) is None
    assert "workers" in pool.why_here(BASE.replace(workers=("localhost:1",)))

    @fl.register_dataset("pool_test_digits")
    def mine(seed: int = 0, test_fraction: float = 0.2):
        """digits, registered by a notebook."""
        return fl.load_dataset("digits", seed=seed, test_fraction=test_fraction)

    import threading

    @fl.register_attack("pool_test_attack")
    def zero_update(honest, *, clients, boost, rng):
        """Sends nothing."""
        return np.zeros_like(honest)

    lock = threading.Lock()

    @fl.register_dataset("pool_test_locked")
    def locked(seed: int = 0, test_fraction: float = 0.2):
        """digits behind a lock: a lock cannot be pickled."""
        with lock:
            return fl.load_dataset("digits", seed=seed, test_fraction=test_fraction)

    try:  # registered here, sent by value to a worker process (the slow test above trains one there)
        assert pool.why_here(BASE.replace(dataset="pool_test_digits")) is None
        assert [kind for kind, _ in pool.sent_components(BASE.replace(dataset="pool_test_digits"))] == ["dataset"]
        assert pool.sent_components(BASE) == []  # only what a run names goes
        with_attack = BASE.replace(attack="pool_test_attack")  # named, not attacking: still looked up in a run
        assert [kind for kind, _ in pool.sent_components(with_attack)] == ["attack"]
        assert pool.why_here(BASE.replace(dataset="pool_test_locked")) == (
            "'pool_test_locked' was registered in this process and cannot be pickled for a worker process "
            "(TypeError: cannot pickle '_thread.lock' object)")
        assert pool.spreadable([BASE.replace(dataset="pool_test_locked")] * 3 + [BASE, BASE], None) == [3]
    finally:
        fl.DATASETS._entries.pop("pool_test_digits")
        fl.DATASETS._entries.pop("pool_test_locked")
        fl.ATTACKS._entries.pop("pool_test_attack")
        pool._PICKLED.clear()


def test_a_worker_process_registers_what_it_receives_and_the_same_pickle_once():
    @fl.register_dataset("pool_test_sent")
    def mine(seed: int = 0, test_fraction: float = 0.2):
        """digits, registered by a notebook."""
        return fl.load_dataset("digits", seed=seed, test_fraction=test_fraction)

    config = BASE.replace(dataset="pool_test_sent")
    try:
        here = fl.DATASETS.entry("pool_test_sent")
        sent = pool.sent_components(config)
        again = pool.sent_components(config)  # pickled once per sweep: the same bytes object for every run
        assert len(sent) == 1 and all(a is b for (_, a), (_, b) in zip(sent, again))
        pool._receive(sent)
        received = fl.DATASETS.entry("pool_test_sent")
        assert received is not here and received.component.load is not mine  # a copy, by value
        assert received.component.load.__code__.co_code == mine.__code__.co_code
        pool._receive(sent)
        assert fl.DATASETS.entry("pool_test_sent") is received  # the sweep's next run: the same objects
    finally:
        fl.DATASETS._entries.pop("pool_test_sent")
        pool._RECEIVED.clear()
        pool._PICKLED.clear()


def test_a_run_whose_component_a_worker_process_cannot_unpickle_is_trained_here_and_said(tmp_path, monkeypatch):
    import concurrent.futures
    import sys
    import types

    import cloudpickle

    module = types.ModuleType("pool_test_only_here")  # importable here only: pickled by reference
    exec("import fedlab as fl\n\ndef digits(seed=0, test_fraction=0.2):\n"
         "    return fl.load_dataset('digits', seed=seed, test_fraction=test_fraction)\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "pool_test_only_here", module)
    fl.register_dataset("pool_test_only_here")(module.digits)
    config = BASE.replace(dataset="pool_test_only_here")
    try:
        sent, blob = pool.sent_components(config), cloudpickle.dumps(config)
    finally:
        fl.DATASETS._entries.pop("pool_test_only_here")
        pool._PICKLED.clear()
    monkeypatch.delitem(sys.modules, "pool_test_only_here")  # as in a worker process that cannot import it
    try:
        error, caught = pool._train(blob, str(tmp_path), None, None, str(tmp_path / "beat"), sent, ["digest"])
    finally:
        pool._RECEIVED.clear()
    assert isinstance(error, pool._NotReceived) and caught == []
    assert "(ModuleNotFoundError: No module named 'pool_test_only_here')" in str(error)
    assert "did not unpickle" in str(pool._train(b"not a pickle", str(tmp_path), None, None, "beat")[0])
    assert not list(tmp_path.iterdir())  # nothing trained or stored there
    future = concurrent.futures.Future()
    future.set_result((error, caught))
    back = []
    said = (r"^run 1 of 1 \(fedavg, seed 0\): its config or a component registered in the sweep's process did not "
            r"unpickle in its worker process \(ModuleNotFoundError: .*\); trained in the sweep's process$")
    with pytest.warns(RuntimeWarning, match=said):
        pool._collect({future: 0}, [config], str(tmp_path), lambda i: pytest.fail("stored"), back.append)
    assert back == [0]

    def looks_up(*args, **kwargs):  # a component sent along that finds another by name, which was not sent
        return fl.DATASETS.entry("pool_test_not_sent")

    monkeypatch.setattr(pool, "run_experiment", looks_up)
    error, _ = pool._train(BASE, str(tmp_path), None, None, str(tmp_path / "beat"), [], None)
    assert type(error).__name__ == "UnknownComponent"  # nothing was sent: the user's mistake, said as such
    fl.register_dataset("pool_test_sent_along")(lambda *, seed, test_fraction: None)
    try:
        sent = pool.sent_components(BASE.replace(dataset="pool_test_sent_along"))
        error, _ = pool._train(BASE, str(tmp_path), None, None, str(tmp_path / "beat"), sent, ["digest"])
    finally:
        fl.DATASETS._entries.pop("pool_test_sent_along")
        pool._PICKLED.clear()
        pool._RECEIVED.clear()
    assert isinstance(error, pool._NotReceived)  # trained in the sweep's process, which has both
    assert "looked up another that was not sent (dataset: must be one of" in str(error)


def test_a_run_sent_back_here_is_not_counted_as_trained_by_the_workers(tmp_path, monkeypatch):
    import concurrent.futures

    class Executor:
        def submit(self, *args):
            return concurrent.futures.Future()

        def stop(self, warn=True):
            return ""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    def collect(futures, configs, beats, on_done, back_here):
        back_here(0)  # its component did not unpickle in the worker
        on_done(1)

    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")  # both to the (fake) workers from the start
    monkeypatch.setattr(pool, "_executor", lambda processes: Executor())
    monkeypatch.setattr(pool, "_collect", collect)
    with pool.spread([BASE, BASE.replace(seed=1)], tmp_path, processes=2, on_done=lambda i: None) as done:
        assert done.trained == {1}  # run 0 is trained by whoever reads the cache: run_all counts it then


def test_processes_are_checked():
    assert pool.sweep_processes(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="processes: must be a whole number >= 1"):
            pool.sweep_processes(bad)
    os.environ[pool.PROCESSES_VARIABLE] = "none"
    try:
        with pytest.raises(ValueError, match="FEDLAB_SWEEP_PROCESSES: must be a whole number of processes >= 1"):
            pool.sweep_processes()
        os.environ[pool.PROCESSES_VARIABLE] = "1"
        assert pool.sweep_processes() == 1
    finally:
        del os.environ[pool.PROCESSES_VARIABLE]


def test_config_errors_and_setting_warnings_survive_the_trip_between_processes():
    import pickle

    err = pickle.loads(pickle.dumps(ConfigError("batch_size", "must be below 5")))
    assert (type(err), err.field, str(err)) == (ConfigError, "batch_size", "batch_size: must be below 5")
    warning = pickle.loads(pickle.dumps(SettingWarning("quantization_bits", "2 bits round to zero")))
    assert (warning.field, str(warning)) == ("quantization_bits", "quantization_bits: 2 bits round to zero")


@pytest.mark.slow
def test_an_error_in_a_worker_process_is_raised_here_and_its_warnings_too(tmp_path, monkeypatch):
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")  # every run in a worker process
    vanishing = BASE.replace(secure_aggregation=True, quantization_bits=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pool.run_all([vanishing, vanishing.replace(seed=1)], results_cache=tmp_path, processes=2, progress=False)
    setting = [w for w in caught if issubclass(w.category, SettingWarning)]
    assert len(setting) == 2 and all(str(w.message).startswith("quantization_bits: 2 bits") for w in setting)

    too_big = BASE.replace(dp=RECORD_LEVEL, noise_multiplier=1.0, clip_norm=1.0, batch_size=500)
    with pytest.raises(ConfigError, match="^batch_size: must be below the smallest client's") as raised:
        pool.run_all([too_big, too_big.replace(seed=1)], results_cache=tmp_path, processes=2, progress=False)
    assert raised.value.field == "batch_size"


@pytest.mark.slow
def test_a_sweep_whose_runs_make_no_progress_stops_and_says_which(tmp_path, monkeypatch):
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")  # every run in a worker process
    monkeypatch.setenv("FEDLAB_WAIT_LIMIT_S", "1")  # a worker process takes longer than that to import TFF
    configs = [BASE.replace(seed=s) for s in range(3)]
    with pytest.raises(pool.SweepStalled, match=r"^no round finished within 1 s \(FEDLAB_WAIT_LIMIT_S\) in "
                                                r".*; stopped the worker processes$"):
        with pool.spread(configs, tmp_path, processes=2):
            pass
    assert not multiprocessing.active_children()  # its worker processes were stopped, not left running


def test_a_worker_process_touches_the_runs_heartbeat_as_it_starts_and_after_every_round(monkeypatch, tmp_path):
    import pathlib

    beat, touched = tmp_path / "beat", []
    touch = pathlib.Path.touch
    monkeypatch.setattr(pathlib.Path, "touch", lambda path, *a, **k: (touched.append(path), touch(path, *a, **k))[1])
    error, _ = pool._train(BASE, str(tmp_path / "cache"), None, None, str(beat))
    assert error is None and touched.count(beat) == 1 + BASE.rounds  # the start, then each round
    touched.clear()
    error, _ = pool._train(BASE, str(tmp_path / "cache"), None, None, str(beat))
    assert error is None and touched.count(beat) == 1  # read from the cache: the start only


def test_a_worker_error_keeps_its_traceback_and_a_users_mistake_stays_one_line(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise KeyError("weights")

    monkeypatch.setattr(pool, "run_experiment", broken)
    error, _ = pool._train(BASE, str(tmp_path), None, None, str(tmp_path / "beat"))
    assert isinstance(error, KeyError) and "in a sweep's worker process:" in error.__notes__[0]
    assert "in broken" in error.__notes__[0] and "raise KeyError" in error.__notes__[0]

    def mistake(*args, **kwargs):
        raise ConfigError("batch_size", "must be below 5")

    monkeypatch.setattr(pool, "run_experiment", mistake)
    error, _ = pool._train(BASE, str(tmp_path), None, None, str(tmp_path / "beat"))
    assert isinstance(error, ConfigError) and not getattr(error, "__notes__", None)

    class Unpicklable(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    copy = pool._picklable(Unpicklable(1, 2))
    assert type(copy) is RuntimeError and str(copy) == "Unpicklable: 1 and 2"


def test_warnings_of_a_worker_keep_their_category_place_and_module(monkeypatch, tmp_path):
    import importlib
    import sys

    (tmp_path / "pool_test_library.py").write_text(
        "import warnings\n\ndef remark():\n    warnings.warn(\"a library's remark\", UserWarning)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    library = importlib.import_module("pool_test_library")

    def noisy_run(*args, **kwargs):
        library.remark()
        warnings.warn(SettingWarning("quantization_bits", "rounds to zero"))

    monkeypatch.setattr(pool, "run_experiment", noisy_run)
    error, caught = pool._train(BASE, str(tmp_path), None, None, str(tmp_path / "beat"))
    sys.modules.pop("pool_test_library")
    assert error is None
    (text, category, filename, _, module), (setting, *_rest) = caught
    assert (str(text), category, module) == ("a library's remark", UserWarning, "pool_test_library")
    assert filename == library.__file__
    assert isinstance(setting, SettingWarning) and setting.field == "quantization_bits"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=UserWarning, module="pool_test_library")  # a quiet filter
        registry = {}
        for message, category, filename, lineno, module in caught * 2:  # as the sweep's process raises them
            warnings.warn_explicit(message, category, filename, lineno, module=module, registry=registry)
    assert [type(w.message) for w in seen] == [SettingWarning]  # the filter applies; shown once per place


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_its_sweep_once(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "sweep.py"
    script.write_text("import fedlab as fl\nprint('top level ran', flush=True)\n"
                      "base = fl.ExperimentConfig(dataset='digits', model='logreg', num_clients=6, clients_per_round=2,"
                      " rounds=2)\n"
                      "table = fl.run_sweep(fl.grid(base, seed=[0, 1]), processes=2, progress=False)\n"
                      "print('rows', len(table), flush=True)\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=dict(os.environ, **{pool.SPREAD_VARIABLE: "0"}))  # spread from the start
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["top level ran", "rows 4"]


@pytest.mark.slow
def test_a_worker_process_killed_mid_sweep_is_named_and_the_next_sweep_starts_new_ones(tmp_path, monkeypatch):
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")  # every run in a worker process
    import threading
    import time

    import tempfile

    configs = [BASE.replace(seed=s, rounds=40) for s in range(4)]
    outcome = {}
    beats = tmp_path / "tmp"
    beats.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(beats))  # where the sweep keeps its heartbeat files

    def sweep():
        try:
            pool.run_all(configs, results_cache=tmp_path, processes=2, progress=False)
        except Exception as err:  # noqa: BLE001 - what the test looks at
            outcome["error"] = err

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline = time.monotonic() + 300
    while not list(beats.glob("fedlab-sweep-*/*")):  # a run has started
        assert time.monotonic() < deadline and thread.is_alive(), "no run started"
        time.sleep(0.05)
    multiprocessing.active_children()[0].kill()  # out of memory, say
    thread.join(timeout=300)
    assert not thread.is_alive()
    message = str(outcome.get("error", ""))
    assert message.startswith("a worker process of the sweep ended abruptly (killed, out of memory, or it could not "
                              "start: its standard error says why); going: run "), message
    assert not list(tmp_path.glob(".*"))  # no half-written cache entry left
    histories = pool.run_all(configs, results_cache=tmp_path, processes=2, progress=False)
    assert [h["round"].max() for h in histories] == [40] * 4


def test_a_broken_pool_stops_the_survivors_first_and_counts_the_runs_that_had_finished(tmp_path, monkeypatch):
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    finished, going = concurrent.futures.Future(), concurrent.futures.Future()
    finished.set_result((None, []))  # stored whole before the pool broke, not yet collected
    going.set_running_or_notify_cancel()
    calls = []

    class Executor:
        def __init__(self):
            self.futures = iter([finished, going])

        def submit(self, *args):
            return next(self.futures)

        def stop(self, warn=True):
            calls.append("stop")
            return ""

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append("close")

    def broken(futures, configs, beats, on_done, back_here):
        for i in futures.values():
            (pathlib.Path(beats) / str(i)).touch()  # both runs had started
        raise BrokenProcessPool()

    import pathlib

    monkeypatch.setattr(pool, "_executor", lambda processes: Executor())
    monkeypatch.setattr(pool, "_collect", broken)
    monkeypatch.setattr(pool, "_remove_partial", lambda cache, configs: calls.append(("remove", len(configs))))
    configs = [BASE.replace(seed=s) for s in range(2)]
    with pytest.raises(RuntimeError) as raised:
        with pool._Lanes(configs, str(tmp_path), 2, lambda i: None) as lanes:
            lanes.start([0, 1])
            lanes.finish()
    assert "going: run 2 of 2 (fedavg, seed 1);" in str(raised.value)  # not run 1: it had finished
    assert calls == ["stop", ("remove", 1), "close"]  # the survivors stopped before their partial entries go


def test_whether_a_run_was_stored_is_read_off_its_future():
    import concurrent.futures

    def future(result=None, error=None, cancel=False):
        f = concurrent.futures.Future()
        if cancel:
            f.cancel()
        elif error is not None:
            f.set_exception(error)
        elif result is not None:
            f.set_result(result)
        return f

    assert pool._stored(future(result=(None, [])))
    assert not pool._stored(future(result=(ValueError("x"), [])))  # the run raised: no entry
    assert not pool._stored(future(error=RuntimeError("broken")))
    assert not pool._stored(future(cancel=True))
    assert not pool._stored(future())  # still going


def test_a_worker_process_that_outlives_the_wait_is_said(monkeypatch):
    class Stuck:
        pid = 4242

        def join(self, timeout=None):
            pass

        def kill(self):
            pass

        def is_alive(self):
            return True

    class Pool:
        _processes = {4242: Stuck()}
        _executor_manager_thread = None

        def shutdown(self, wait, cancel_futures):
            pass

    monkeypatch.setattr(pool, "wait_limit", lambda: 0.01)
    with pytest.warns(RuntimeWarning, match=r"did not all end within 0.01 s \(FEDLAB_WAIT_LIMIT_S\): still running: "
                                            r"4242$"):
        pool._close(Pool(), kill=True)


def test_a_run_stopped_to_spread_counts_as_stopped_not_as_a_second_run_trained(tmp_path):
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("figures_profile", ROOT / "benchmarks" / "figures_profile.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    executed = tmp_path / "nb.ipynb"
    executed.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": 1, "source": ["sweep"],
                                               "metadata": {"papermill": {"duration": 9.0}}}]}))
    line = {"cell": 1, "key": "k", "wall": 1.0, "rounds": 2, **{s: 0.0 for s in profile.SECONDS}}
    log = tmp_path / "profile.jsonl"
    log.write_text("\n".join(json.dumps({**line, **extra}) for extra in (
        {"worker": False, "from_cache": False, "stopped_to_spread": True},  # stopped after two rounds
        {"worker": True, "from_cache": False, "rounds": 30, "wall": 5.0},  # trained again in a worker
        {"worker": False, "from_cache": True, "rounds": 30, "wall": 0.1})) + "\n")  # read back by the sweep
    [row] = profile.cell_rows(executed, profile.read_runs(log))
    assert (row["runs_trained"], row["runs_cached"], row["runs_stopped"], row["rounds_trained"]) == (1, 0, 1, 32)
    assert row["in_runs"] == 1.0 and row["in_workers"] == 5.0


def test_a_profile_stopped_before_its_first_cell_ended_is_tabulated(tmp_path):
    import importlib.util
    import json

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("figures_profile", ROOT / "benchmarks" / "figures_profile.py")
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    executed = tmp_path / "nb.ipynb"
    executed.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "source": ["x = 1"],
                                               "metadata": {}}]}))
    frame, total = profile.notebook_frame(tmp_path / "01_x.ipynb", executed, tmp_path / "none.jsonl", None)
    assert total["complete"] is False and total["seconds"] == 0.0 and total["runs_trained"] == 0
    assert frame["cell"].tolist() == ["all"]


class _Recorder:
    """A stand-in for a sweep's process pool whose runs are done at once; it records being closed."""

    def __init__(self, calls):
        self.calls = calls

    def submit(self, *args):
        import concurrent.futures

        future = concurrent.futures.Future()
        future.set_result((None, []))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.calls.append("close")


def _mid_run(report=True):
    """A stand-in for run_experiment: two rounds of a second each, reported to the callback (``report``), then the
    history returned."""
    import pandas as pd

    def run(config, results_cache=None, progress=False, callback=None):
        history = pd.DataFrame({"round": [1, 2], "seconds": [1.0, 1.0], "clients_this_round": [3, 3]})
        if callback is not None and report:
            callback(history.iloc[-1].to_dict(), history)
        return history

    return run


def test_the_worker_processes_are_stopped_before_the_sweeps_block_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pool, "_executor", lambda processes: _Recorder(calls))
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "0")
    with pool.spread([BASE.replace(seed=s) for s in range(3)], tmp_path, processes=2) as done:
        assert calls == ["close"] and done.trained == {0, 1, 2}  # the block may fork: no pool's threads beside it
    assert calls == ["close"]


def test_a_run_found_worth_spreading_mid_way_stops_and_goes_to_the_workers_with_the_rest(tmp_path, monkeypatch):
    started, stored = [], []

    def record(lanes, todo):
        started.append(list(todo))
        lanes.futures = {}  # no worker process: the runs are left untrained

    monkeypatch.setattr(pool._Lanes, "start", record)
    monkeypatch.setattr(pool, "run_experiment", _mid_run())  # reports two rounds of a second each
    configs = [BASE.replace(seed=s, rounds=30) for s in range(3)]
    # after the first run's second round: the 60 rounds after it at 1 s, less the 2 it would lose, beat 57 s
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "57")
    with pool.spread(configs, tmp_path, processes=2, on_done=stored.append):
        pass
    assert started == [[0, 1, 2]] and stored == []  # the first run stopped, not stored: a worker trains it
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "58")  # 58 s is not worth stopping it: it finishes, and the 60 rounds
    # after it are spread before the next run starts
    with pool.spread([c.replace(seed=c.seed + 3) for c in configs], tmp_path, processes=2, on_done=stored.append):
        pass
    assert started == [[0, 1, 2], [1, 2]] and stored == [0]
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "60")  # never worth it: every run here
    with pool.spread([c.replace(seed=c.seed + 6) for c in configs], tmp_path, processes=2, on_done=stored.append):
        pass
    assert started == [[0, 1, 2], [1, 2]] and stored == [0, 0, 1, 2]
    # a run whose pace shows at its last round is finished and kept, and the runs after it spread
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "1")
    short = [BASE.replace(seed=s, rounds=2) for s in range(9, 12)]
    with pool.spread(short, tmp_path, processes=2, on_done=stored.append):
        pass
    assert started == [[0, 1, 2], [1, 2], [1, 2]] and stored == [0, 0, 1, 2, 0]


def test_earlier_runs_pace_spreads_the_runs_left_before_the_next_starts_here(tmp_path, monkeypatch):
    started = []

    def record(lanes, todo):
        started.append(list(todo))
        lanes.futures = {}  # no worker process: the runs are left untrained

    monkeypatch.setattr(pool._Lanes, "start", record)
    monkeypatch.setattr(pool, "run_experiment", _mid_run(report=False))  # each run's pace known once it ended
    configs = [BASE.replace(seed=s, rounds=30) for s in range(4)]
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "89")  # 1 s a round: the 90 rounds after run 1 are worth it
    with pool.spread(configs, tmp_path, processes=2):
        pass
    assert started == [[1, 2, 3]]
    monkeypatch.setenv(pool.SPREAD_VARIABLE, "90")  # not 90 rounds, and then not 60: all four here
    with pool.spread([c.replace(seed=c.seed + 4) for c in configs], tmp_path, processes=2):
        pass
    assert started == [[1, 2, 3]]


def test_a_cleanup_removes_the_partial_entries_of_dead_writers_and_keeps_a_live_ones(tmp_path):
    """Two of reproduce's notebooks may train one run at once: a sweep cleaning up after its killed worker must not
    take the other notebook's half-written entry."""
    import subprocess
    import sys

    from fedlab.core.storage import partial_prefix

    key = pool.cache_key(BASE, pool.component_digests(BASE))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True, timeout=60)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folders = {who: tmp_path / (partial_prefix(key, pid) + "x") for who, pid in
                   (("dead", int(dead.stdout)), ("alive", other.pid), ("mine", os.getpid()))}
        folders["unnamed"] = tmp_path / f".{key}.abc"  # written before folders carried their writer's id
        for folder in folders.values():
            folder.mkdir()
        pool._remove_partial(str(tmp_path), [BASE])
        assert [who for who, folder in folders.items() if folder.exists()] == ["alive"]
    finally:
        other.kill()
        other.wait(timeout=60)
