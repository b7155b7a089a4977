"""Nothing lost, nothing silently shortened: interrupted runs, damaged checkpoints and damaged cache entries.

Every case ends with the full, uninterrupted history (same numbers), after a
one-line warning where something had to be set aside, or with a one-line
error; never with fewer rounds than asked for.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.core.storage import CheckpointMismatchError, DamagedFileWarning, StorageError

BASE = fl.ExperimentConfig(dataset="digits", partition="dirichlet", alpha=0.5, num_clients=10, clients_per_round=4,
                           rounds=4, seed=3, eval_every=1)
NUMBERS = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "clients_this_round",
           "bytes_up", "cumulative_bytes", "sim_round_seconds", "sim_elapsed_seconds", "clients_completed"]
SYSTEMS_FIELDS = ["device_profile", "straggler_policy", "round_deadline", "over_selection", "dropout_rate",
                  "systems_seed"]


@pytest.fixture(scope="module")
def reference():
    return fl.run_experiment(BASE, progress=False)


def same_numbers(history, reference):
    pd.testing.assert_frame_equal(history[NUMBERS].reset_index(drop=True), reference[NUMBERS].reset_index(drop=True))


# Damaged files -------------------------------------------------------------------------------------
def damage(path: pathlib.Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1:])
    elif how == "delete":
        path.unlink()


HOWS = ["truncate", "empty", "flip", "delete"]


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, reference):
    folder = tmp_path_factory.mktemp("checkpoint")
    fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
    return folder


def checkpoint_files(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_checkpoint_holds_what_the_test_damages(saved_checkpoint):
    names = checkpoint_files(saved_checkpoint)
    assert "config.json" in names and "history.csv" in names
    assert any(n == "state/program_state_4/state.npz" for n in names)
    assert "state/manifest_4.json" in names and "state/manifest_3.json" in names


@pytest.mark.parametrize("how", HOWS)
def test_every_damaged_checkpoint_file_resumes_to_the_full_history(saved_checkpoint, reference, tmp_path, how):
    for name in checkpoint_files(saved_checkpoint):
        folder = tmp_path / f"{how}-{name.replace('/', '_')}"
        shutil.copytree(saved_checkpoint, folder)
        damage(folder / name, how)
        if name == "config.json":  # which run the state belongs to is unknown: refused in one line
            if how == "delete":
                with pytest.raises(CheckpointMismatchError, match="config.json"):
                    fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
            else:
                with pytest.raises(CheckpointMismatchError) as info:
                    fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
                assert "\n" not in str(info.value)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
        same_numbers(history, reference)
        damaged = [w for w in caught if issubclass(w.category, DamagedFileWarning)]
        if name.startswith("state/program_state_4") or name == "state/manifest_4.json":
            assert len(damaged) == 1 and "resuming from round 3" in str(damaged[0].message), (name, how)
        elif name.startswith("state/"):
            assert not damaged, (name, how)  # the older version was damaged, the newest is intact
        # history.csv is only a readable copy: the history lives in the program state


def test_checkpoint_with_no_intact_state_starts_over_with_a_warning(saved_checkpoint, reference, tmp_path):
    folder = tmp_path / "all-damaged"
    shutil.copytree(saved_checkpoint, folder)
    for manifest in (folder / "state").glob("manifest_*.json"):
        manifest.unlink()
    with pytest.warns(DamagedFileWarning, match="no intact saved state.*starting again from round 1"):
        history = fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
    same_numbers(history, reference)
    assert list(folder.glob("state.damaged-*")), "the damaged state was moved aside, not deleted"


def test_refused_config_leaves_the_folder_as_it_was(saved_checkpoint, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(saved_checkpoint, folder)
    before = (folder / "config.json").read_bytes()
    with pytest.raises(CheckpointMismatchError, match="rounds"):
        fl.run_experiment(BASE.replace(rounds=5), checkpoint_dir=folder, progress=False)
    assert (folder / "config.json").read_bytes() == before


def test_checkpoint_from_before_the_systems_fields_resumes_in_full(saved_checkpoint, reference, tmp_path):
    """A checkpoint written before device profiles existed: its config lacks their fields (their defaults were in
    force) and its rows lack the clock's columns (recomputed from the config)."""
    import json

    from fedlab.core.storage import tree_manifest

    folder = tmp_path / "older"
    shutil.copytree(saved_checkpoint, folder)
    shutil.rmtree(folder / "state" / "program_state_4")
    (folder / "state" / "manifest_4.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in SYSTEMS_FIELDS}))
    version = folder / "state" / "program_state_3"
    rows = json.loads((version / "history.json").read_text())
    clock = {"sim_round_seconds", "sim_elapsed_seconds", "clients_selected", "clients_completed", "clients_dropped"}
    (version / "history.json").write_text(json.dumps([{k: v for k, v in r.items() if k not in clock} for r in rows]))
    (folder / "state" / "manifest_3.json").write_text(json.dumps(tree_manifest(version)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedFileWarning)
        history = fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
    same_numbers(history, reference)


def test_history_csv_lost_or_cut_still_resumes_in_full(saved_checkpoint, reference, tmp_path):
    """The bug this fixes: a deleted or truncated history.csv gave a history without the lost rounds."""
    folder = tmp_path / "cut"
    shutil.copytree(saved_checkpoint, folder)
    shutil.rmtree(folder / "state" / "program_state_4")
    (folder / "state" / "manifest_4.json").unlink()
    (folder / "history.csv").write_text("round\n1\n")
    history = fl.run_experiment(BASE, checkpoint_dir=folder, progress=False)
    same_numbers(history, reference)
    assert history["cumulative_bytes"].is_monotonic_increasing


CACHE_FILES = ["history.json", "clients.json", "weights.npz", "config.json", "MANIFEST.json"]


@pytest.mark.parametrize("how", HOWS)
def test_every_damaged_cache_file_is_set_aside_and_recomputed(reference, tmp_path, how):
    config = BASE.replace(eval_per_client=True)
    first = fl.run_experiment(config, results_cache=tmp_path, progress=False)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in CACHE_FILES:
        damage(entry / name, how)
        with pytest.warns(DamagedFileWarning, match="moved to"):
            again = fl.run_experiment(config, results_cache=tmp_path, progress=False)
        assert not again.attrs["from_cache"]
        same_numbers(again, first)
        pd.testing.assert_frame_equal(fl.clients_table(again), fl.clients_table(first))
        served = fl.run_experiment(config, results_cache=tmp_path, progress=False)
        assert served.attrs["from_cache"]
        same_numbers(served, first)
        for a, b in zip(fl.final_weights(served), fl.final_weights(first)):
            np.testing.assert_array_equal(a, b)
    assert len(list(tmp_path.glob("*.damaged-*"))) == len(CACHE_FILES)


def test_cache_entry_equals_the_fresh_history_exactly(tmp_path):
    fresh = fl.run_experiment(BASE, results_cache=tmp_path, progress=False)
    served = fl.run_experiment(BASE, results_cache=tmp_path, progress=False)
    pd.testing.assert_frame_equal(served, fresh)


def test_results_cache_that_is_a_file_fails_before_training(tmp_path):
    afile = tmp_path / "cache"
    afile.write_text("")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="is a file, not a folder"):
        fl.run_experiment(BASE.replace(rounds=1000), results_cache=afile, progress=False)
    assert time.monotonic() - t0 < 5


# Interrupted runs -----------------------------------------------------------------------------------
CLI = [sys.executable, "-m", "fedlab", "run", "--dataset", "digits", "--partition", "dirichlet", "--alpha", "0.5",
       "--num-clients", "10", "--clients-per-round", "4", "--rounds", "20", "--seed", "3", "--quiet"]
CLI_CONFIG = fl.ExperimentConfig(dataset="digits", partition="dirichlet", alpha=0.5, num_clients=10,
                                 clients_per_round=4, rounds=20, seed=3)


def _tff_workers_of(pid: int) -> list[int]:
    from fedlab.core.runtime import descendants, process_table

    table = process_table()
    return [p for p in descendants(pid, table) if table[p][1].endswith("worker_binary")]


def _orphaned_workers(before: set[int]) -> list[int]:
    from fedlab.core.runtime import process_table

    return [pid for pid, (parent, cmd, _) in process_table().items()
            if cmd.endswith("worker_binary") and parent == 1 and pid not in before]


def _saved_rounds(out: pathlib.Path) -> list[int]:
    """The rounds whose checkpoint manifests are in ``out`` now (the checkpoint keeps the last two)."""
    found = (re.fullmatch(r"manifest_(\d+)\.json", p.name) for p in (out / "checkpoint" / "state").glob("manifest_*"))
    return [int(m.group(1)) for m in found if m]


def _wait_for_round(out: pathlib.Path, round_num: int, process, timeout=240) -> None:
    """Until the run has saved round ``round_num`` or a later one: a round's manifest is removed two rounds on, so
    a poll that comes late (a loaded machine) would miss the round itself and wait for a run that has ended."""
    deadline = time.monotonic() + timeout
    while not any(r >= round_num for r in _saved_rounds(out)):
        assert process.poll() is None, (f"the run ended before saving round {round_num}", process.communicate())
        assert time.monotonic() < deadline, f"no round {round_num} saved within {timeout} s"
        time.sleep(0.05)


def test_interrupted_cli_run_resumes_to_the_uninterrupted_history(tmp_path):
    """Ctrl-C at a random round, then SIGKILL at a later one, then the same command to the end: the history is
    the uninterrupted run's, and no TFF worker outlives the killed run."""
    from fedlab.core.runtime import process_table

    rng = np.random.default_rng(2026)  # random rounds, drawn from a fixed seed
    first = int(rng.integers(1, 5))
    second = first + int(rng.integers(1, 4))
    before = {pid for pid, (_, cmd, _) in process_table().items() if cmd.endswith("worker_binary")}
    out = tmp_path / "cut"
    for sig, at in ((signal.SIGINT, first), (signal.SIGKILL, second)):
        with open(tmp_path / "err.txt", "w") as err:
            process = subprocess.Popen(CLI + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=err)
            _wait_for_round(out, at, process)
            os.kill(process.pid, sig)
            code = process.wait(timeout=60)
        message = (tmp_path / "err.txt").read_text().strip()
        if sig == signal.SIGINT:
            assert code == 130, message
            assert message.splitlines()[-1].startswith("fedlab run: interrupted; the checkpoint in") and \
                "run the same command again to resume" in message and "Traceback" not in message, message
        else:
            assert code == -signal.SIGKILL
            time.sleep(0.5)
            assert not _orphaned_workers(before), "TFF's worker outlived a run killed with SIGKILL"
    resumed = subprocess.run(CLI + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    reference = fl.run_experiment(CLI_CONFIG, progress=False)
    same_numbers(pd.read_csv(out / "history.csv", float_precision="round_trip"), reference)
    assert len(reference) == 20


def cache_entry(cache, key, value):
    cache.save(key, [{"round": 1, "eval_loss": value}], [], [np.zeros(2)], "{}")


def test_a_cache_entry_another_process_wrote_first_is_kept_whole(tmp_path, monkeypatch):
    """Two of reproduce's notebooks can train the same run at once: the first entry written stays, the second is
    dropped, and no reader ever sees the first half removed."""
    from fedlab.core import storage

    cache = storage.ResultCache(tmp_path)
    cache_entry(cache, "k", 1.0)
    cache_entry(cache, "k", 2.0)  # found there before the rename
    assert cache.load("k", 1)["rows"] == [{"round": 1, "eval_loss": 1.0}]
    rename = os.rename

    def another_writer_first(source, target):  # the other process's folder lands between the check and the rename
        if pathlib.Path(target).name == "k2" and not pathlib.Path(target).exists():
            shutil.copytree(tmp_path / "k", target)
        return rename(source, target)
    monkeypatch.setattr(storage.os, "rename", another_writer_first)
    cache_entry(cache, "k2", 3.0)
    assert cache.load("k2", 1)["rows"] == [{"round": 1, "eval_loss": 1.0}]  # the other's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k2"]  # no temporary folder left


def test_a_folder_written_without_keep_existing_replaces_the_old_one(tmp_path):
    from fedlab.core.storage import write_folder

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "old").write_text("old")
    write_folder(tmp_path / "v", lambda folder: (folder / "new").write_text("new"))
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]
