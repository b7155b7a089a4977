"""Encryption at rest: the file format refuses what it must in one line; a run with it on writes nothing in the
clear and gives the same numbers."""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest

import fedlab as fl
from fedlab.core import array_files, encryption
from fedlab.core.encryption import MAGIC, EncryptionError, Key, decrypt, encrypt, load_key, new_key
from fedlab.core.storage import DamagedFileWarning, StorageError
from fedlab.core.validation import ConfigError


@pytest.fixture(autouse=True)
def encryption_off_after():
    yield
    fl.use_encryption(None)


def one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text, text
    return text


# The file format, by hand --------------------------------------------------------------------------
def test_key_ids_are_the_first_8_bytes_of_sha256():
    # sha256(bytes(range(32))) = 630dcd2966c43366..., sha256(bytes(32)) = 66687aadf862bd77...
    assert Key(bytes(range(32))).id_hex == "630dcd2966c43366"
    assert Key(bytes(32)).id_hex == "66687aadf862bd77"
    assert "630dcd" in repr(Key(bytes(range(32)))) and bytes(range(32)).hex() not in repr(Key(bytes(range(32))))


def test_key_file_is_whole_private_and_read_back(tmp_path):
    key = new_key(tmp_path / "k.key")
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    first, second = (tmp_path / "k.key").read_text().splitlines()
    assert first == f"fedlab-aes256gcm-key v1 id={key.id_hex}" and len(bytes.fromhex(second)) == 32
    assert load_key(tmp_path / "k.key").id == key.id
    with pytest.raises(FileExistsError):
        new_key(tmp_path / "k.key")
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temporary file left


@pytest.mark.parametrize("text, problem", [
    (b"hello\n", "is not a fedlab key file"),
    (b"fedlab-aes256gcm-key v1 id=0000000000000000\n" + bytes(32).hex().encode() + b"\n", "is damaged"),
    (b"fedlab-aes256gcm-key v1 id=66687aadf862bd77\n" + bytes(31).hex().encode() + b"\n", "is damaged"),
])
def test_a_file_that_is_not_a_key_is_refused_in_one_line(tmp_path, text, problem):
    (tmp_path / "k.key").write_bytes(text)
    with pytest.raises(ConfigError, match=problem) as err:
        fl.use_encryption(key_file=tmp_path / "k.key")
    assert err.value.field == "encryption_key" and str(tmp_path / "k.key") in one_line(err)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key(tmp_path / "missing.key")


def test_round_trip_and_layout():
    key = Key(bytes(range(32)))
    data = b"train_loss,eval_accuracy\n0.5,0.9\n"
    blob = encrypt(data, label="out/history.csv", key=key)
    assert blob[:6] == MAGIC and blob[6:14] == key.id
    assert len(blob) == 6 + 8 + 12 + len(data) + 16
    assert data not in blob
    assert decrypt(blob, label="out/history.csv", key=key) == data
    assert encrypt(data, label="out/history.csv", key=key) != blob  # a fresh nonce each time
    assert decrypt(encrypt(b"", label="x", key=key), label="x", key=key) == b""


def blob_and_key():
    key = Key(bytes(range(32)))
    return encrypt(b"x" * 300, label="checkpoint/program_state_3/state.npz", key=key), key


@pytest.mark.parametrize("change, message, damaged", [
    (lambda b, k: (b[:100] + bytes([b[100] ^ 1]) + b[101:], k, "checkpoint/program_state_3/state.npz"),
     "is damaged: it fails its authentication check", True),
    (lambda b, k: (b[:-1], k, "checkpoint/program_state_3/state.npz"), "is damaged: it fails", True),
    (lambda b, k: (b[:20], k, "checkpoint/program_state_3/state.npz"), "is damaged: truncated to 20 bytes", True),
    (lambda b, k: (b, k, "checkpoint/program_state_4/state.npz"), "moved from another name", True),
    (lambda b, k: (b[:6] + bytes(8) + b[14:], k, "checkpoint/program_state_3/state.npz"), "another key", False),
    (lambda b, k: (b, Key(bytes(32)), "checkpoint/program_state_3/state.npz"),
     "encrypted with another key \\(key id 630dcd2966c43366, the key in use is 66687aadf862bd77\\)", False),
])
def test_tampering_truncation_renaming_and_another_key_are_refused_in_one_line(change, message, damaged):
    blob, key = blob_and_key()
    blob, key, label = change(blob, key)
    with pytest.raises(EncryptionError, match=message) as err:
        decrypt(blob, label=label, key=key, where="/data/ckpt/state.npz")
    assert one_line(err).startswith("/data/ckpt/state.npz") and err.value.damaged is damaged


def test_encrypted_file_with_encryption_off_and_plain_file_with_it_on_are_refused(tmp_path):
    fl.use_encryption(key_file=new_key(tmp_path / "k.key").path)
    blob = encryption.seal("secret", label="out/config.json")
    assert encryption.unseal(blob, label="out/config.json") == b"secret"
    with pytest.raises(EncryptionError, match="is not encrypted, and encryption is on") as err:
        encryption.unseal(b'{"dataset": 1}', label="out/config.json", where="OUT/config.json")
    one_line(err)
    fl.use_encryption(None)
    assert encryption.seal("plain", label="x") == b"plain"
    with pytest.raises(EncryptionError, match="is encrypted \\(key id .*\\) and encryption is off") as err:
        encryption.unseal(blob, label="out/config.json", where="OUT/config.json")
    one_line(err)


# A run with encryption on ----------------------------------------------------------------------------
CONFIG = fl.ExperimentConfig(dataset="breast_cancer", model="logreg", num_clients=3, clients_per_round=3, rounds=2,
                             seed=0, eval_every=1)
NUMBERS = ["round", "train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "clients_this_round",
           "cumulative_bytes"]


@pytest.fixture(scope="module")
def plain():
    fl.use_encryption(None)
    return fl.run_experiment(CONFIG, progress=False)


@pytest.fixture(scope="module")
def encrypted_run(tmp_path_factory, plain):
    """The same run with encryption on, twice: in this process (cache, checkpoint, TensorBoard; array files and
    temporary files pointed into the folder) and through the command line (--out, its checkpoint, --tensorboard,
    TMPDIR in the folder)."""
    root = tmp_path_factory.mktemp("encrypted")
    key_file = root / "keys" / "run.key"
    new_key(key_file)
    written = root / "written"
    (written / "tmp").mkdir(parents=True)
    saved_files, saved_tempdir = array_files.FILES, tempfile.tempdir
    array_files.FILES, tempfile.tempdir = array_files.ArrayFiles(root=written / "tmp"), str(written / "tmp")
    try:
        fl.use_encryption(key_file=key_file)
        history = fl.run_experiment(CONFIG, results_cache=written / "cache", checkpoint_dir=written / "ckpt",
                                    tensorboard_dir=written / "tb", progress=False)
    finally:
        fl.use_encryption(None)
        array_files.FILES, tempfile.tempdir = saved_files, saved_tempdir
    args = [sys.executable, "-m", "fedlab", "run", "--dataset", "breast_cancer", "--model", "logreg",
            "--num-clients", "3", "--clients-per-round", "3", "--rounds", "2", "--seed", "0", "--eval-every", "1",
            "--quiet", "--out", str(written / "out"), "--tensorboard", str(written / "cli-tb"),
            "--encryption-key", str(key_file)]
    cli = subprocess.run(args, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TMPDIR": str(written / "tmp")})
    assert cli.returncode == 0, cli.stderr
    return root, key_file, written, history


def test_an_encrypted_run_writes_nothing_in_the_clear(encrypted_run, plain):
    root, key_file, written, history = encrypted_run
    weights = fl.final_weights(plain)
    needles = [b"train_loss", b"eval_accuracy", b'"dataset"', b'"client_lr"', b'"num_clients"', b"\x93NUMPY",
               b"PK\x03\x04", b"breast_cancer"]
    for w in weights:
        for dtype in (np.float32, np.float64):
            raw = np.asarray(w, dtype).tobytes()
            needles += [raw, raw[:16]]
    files = [p for p in written.rglob("*") if p.is_file()]
    folders = {p.relative_to(written).parts[0] for p in files}
    assert {"cache", "ckpt", "tb", "out", "cli-tb"} <= folders, folders
    names = {p.name for p in files}
    assert {"state.npz", "weights.npz", "history.json", "config.json", "history.csv.enc", "config.json.enc"} <= names
    assert any(n.startswith("events.") and n.endswith(".enc") for n in names), names
    assert not any("tfevents" in n or n.endswith(".pb") for n in names), names
    assert not (written / "out" / "history.csv").exists()  # the command line's copy says it is encrypted
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{path.relative_to(written)} holds {needle[:20]!r} in the clear"
        if not path.name.startswith("manifest_") and path.name != "MANIFEST.json":
            assert data.startswith(MAGIC), f"{path.relative_to(written)} is not encrypted"


def test_same_numbers_with_and_without_encryption(encrypted_run, plain, tmp_path):
    root, key_file, written, history = encrypted_run
    pd.testing.assert_frame_equal(history[NUMBERS], plain[NUMBERS])
    for a, b in zip(fl.final_weights(history), fl.final_weights(plain)):
        np.testing.assert_array_equal(a, b)
    # the command line's copy, read back through `fedlab show` (which decrypts)
    shown = subprocess.run([sys.executable, "-m", "fedlab", "show", str(written / "out" / "history.csv.enc"),
                            "--encryption-key", str(key_file)], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    (tmp_path / "h.csv").write_text(shown.stdout)
    cli = pd.read_csv(tmp_path / "h.csv", float_precision="round_trip")
    pd.testing.assert_frame_equal(cli[NUMBERS], plain[NUMBERS], check_dtype=False)


def test_show_without_the_key_and_a_renamed_file_are_refused_in_one_line(encrypted_run, tmp_path):
    root, key_file, written, history = encrypted_run
    shown = subprocess.run([sys.executable, "-m", "fedlab", "show", str(written / "out" / "history.csv.enc")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert "is encrypted" in shown.stderr and "history.csv.enc" in shown.stderr
    moved = tmp_path / "config.json.enc"
    moved.write_bytes((written / "out" / "history.csv.enc").read_bytes())
    shown = subprocess.run([sys.executable, "-m", "fedlab", "show", str(moved), "--encryption-key", str(key_file)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2 and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert "is damaged" in shown.stderr and "moved from another name" in shown.stderr


def test_the_cache_reads_back_with_its_key_only(encrypted_run, plain, tmp_path):
    root, key_file, written, history = encrypted_run
    fl.use_encryption(key_file=key_file)
    again = fl.run_experiment(CONFIG, results_cache=written / "cache", progress=False)
    assert again.attrs["from_cache"] is True
    pd.testing.assert_frame_equal(again[NUMBERS], plain[NUMBERS])
    for a, b in zip(fl.final_weights(again), fl.final_weights(plain)):
        np.testing.assert_array_equal(a, b)
    fl.use_encryption(key_file=new_key(tmp_path / "other.key").path)
    with pytest.raises(StorageError, match="results cache: .*history.json was encrypted with another key") as err:
        fl.run_experiment(CONFIG, results_cache=written / "cache", progress=False)
    one_line(err)
    with pytest.raises(StorageError, match="checkpoint_dir: .*config.json was encrypted with another key") as err:
        fl.run_experiment(CONFIG, checkpoint_dir=written / "ckpt", progress=False)
    one_line(err)
    fl.use_encryption(None)
    with pytest.raises(StorageError, match="is encrypted \\(key id") as err:
        fl.run_experiment(CONFIG, results_cache=written / "cache", progress=False)
    one_line(err)
    entries = [p.name for p in (written / "cache").iterdir()]
    assert not any("damaged" in n for n in entries), entries  # a key problem is never set aside as damage


def test_tensorboard_events_decrypt_to_the_history(encrypted_run, plain, tmp_path):
    from fedlab.experiment.tensorboard import export, read_scalars

    root, key_file, written, history = encrypted_run
    [folder] = [p for p in (written / "tb").iterdir() if p.is_dir()]
    fl.use_encryption(key_file=key_file)
    scalars = read_scalars(folder)
    assert [s for s, _ in scalars["eval_accuracy"]] == [1, 2]
    assert [v for _, v in scalars["train_loss"]] == pytest.approx(plain["train_loss"].tolist(), rel=1e-6)
    exported = export(folder, tmp_path / "plain")
    assert exported and all("tfevents" in p.name for p in exported)
    fl.use_encryption(None)
    assert read_scalars(tmp_path / "plain")["train_loss"] == scalars["train_loss"]
    with pytest.raises(EncryptionError, match="is encrypted"):
        read_scalars(folder)
    from fedlab.__main__ import main  # the command line's way: show RUN_FOLDER --to PLAIN

    [cli_folder] = [p for p in (written / "cli-tb").iterdir() if p.is_dir()]
    assert main(["show", str(cli_folder), "--to", str(tmp_path / "cli-plain"), "--encryption-key", str(key_file)]) == 0
    assert read_scalars(tmp_path / "cli-plain")["train_loss"] == scalars["train_loss"]


def test_a_tampered_checkpoint_version_is_damage_and_the_previous_one_is_used(encrypted_run, plain, tmp_path):
    """An authentication failure is damage, handled as a wrong checksum is: here the attacker also rewrote the
    manifest, so only GCM's tag can tell."""
    from fedlab.core.storage import sha256

    root, key_file, written, history = encrypted_run
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(written / "ckpt", folder)
    state = folder / "state" / "program_state_2" / "state.npz"
    data = state.read_bytes()
    state.write_bytes(data[:50] + bytes([data[50] ^ 0x01]) + data[51:])
    manifest_path = folder / "state" / "manifest_2.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["state.npz"] = sha256(state)
    manifest_path.write_text(json.dumps(manifest))
    fl.use_encryption(key_file=key_file)
    with pytest.warns(DamagedFileWarning, match="round 2 .*fails its authentication check.*resuming from round 1"):
        resumed = fl.run_experiment(CONFIG, checkpoint_dir=folder, progress=False)
    pd.testing.assert_frame_equal(resumed[NUMBERS], plain[NUMBERS])


# The command line's keys ---------------------------------------------------------------------------
def test_keys_new_writes_a_key_and_refuses_to_replace_it(tmp_path):
    from fedlab.__main__ import main

    assert main(["keys", "new", str(tmp_path / "k.key")]) == 0
    assert load_key(tmp_path / "k.key").path == tmp_path / "k.key"
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    before = (tmp_path / "k.key").read_bytes()
    assert main(["keys", "new", str(tmp_path / "k.key")]) == 2
    assert (tmp_path / "k.key").read_bytes() == before


def test_bad_encryption_key_option_is_one_line(tmp_path, capsys):
    from fedlab.__main__ import main

    (tmp_path / "bad.key").write_text("not a key\n")
    assert main(["run", "--rounds", "1", "--out", str(tmp_path / "o"), "--encryption-key",
                 str(tmp_path / "bad.key")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedlab run: error: --encryption-key:") and "not a fedlab key" in err[0]
    assert not (tmp_path / "o").exists()


def test_keys_ckks_writes_the_site_and_server_keys(tmp_path):
    import stat

    import tenseal as ts

    from fedlab.__main__ import main

    assert main(["keys", "ckks", str(tmp_path / "ckks")]) == 0
    secret, public = tmp_path / "ckks" / "ckks-secret.context", tmp_path / "ckks" / "ckks-public.context"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert ts.context_from(secret.read_bytes()).is_private()
    assert not ts.context_from(public.read_bytes()).is_private()  # the server's holds no key


# A site's data files ---------------------------------------------------------------------------------
def test_a_sites_data_files_read_encrypted_give_the_same_data(heart_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from fedlab.__main__ import main
    from fedlab.data.data import DataUnavailableError

    site = tmp_path / "site"
    shutil.copytree(heart_dir, site)
    plain = fl.load_dataset("heart_disease", seed=0)
    key_file = new_key(tmp_path / "site.key").path
    assert main(["keys", "seal-data", str(site), "--encryption-key", str(key_file), "--remove-plain"]) == 0
    fl.use_encryption(None)
    names = sorted(p.name for p in site.iterdir())
    assert names and all(n.endswith(".enc") for n in names), names
    for path in site.iterdir():
        data = path.read_bytes()
        assert data.startswith(MAGIC) and b"63.0,1.0,1.0,145.0" not in data  # Cleveland's first patient
    monkeypatch.setenv("FEDLAB_HEART_DISEASE_DIR", str(site))
    fl.use_encryption(key_file=key_file)
    sealed = fl.load_dataset("heart_disease", seed=0)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(sealed, field), getattr(plain, field))
    fl.use_encryption(None)  # without the key: one line, and nothing is downloaded in its place
    with pytest.raises(DataUnavailableError, match="processed.cleveland.data.enc is encrypted") as err:
        fl.load_dataset("heart_disease", seed=0)
    one_line(err)
    assert sorted(p.name for p in site.iterdir()) == names
    cleveland = site / "processed.cleveland.data.enc"
    data = cleveland.read_bytes()
    cleveland.write_bytes(data[:60] + bytes([data[60] ^ 4]) + data[61:])
    fl.use_encryption(key_file=key_file)
    with pytest.raises(DataUnavailableError, match="cleveland.data.enc is damaged") as err:
        fl.load_dataset("heart_disease", seed=0)
    one_line(err)


# A file copied from another run ----------------------------------------------------------------------
def _rows(last):
    return [{"round": r, "train_loss": 1.0 / r} for r in range(1, last + 1)]


def test_a_checkpoint_version_copied_from_another_run_is_damage_never_resumed_from(tmp_path):
    """Same key, manifests rewritable: only the label's run digest tells run A's version from run B's."""
    import shutil

    from fedlab.core.storage import Checkpoint

    fl.use_encryption(key_file=new_key(tmp_path / "k.key").path)
    config_a, config_b = CONFIG, CONFIG.replace(seed=1)
    state_a, state_b = [np.full(3, 1.0), np.zeros(2)], [np.full(3, 2.0), np.ones(2)]
    a, b = Checkpoint(tmp_path / "a", config_a), Checkpoint(tmp_path / "b", config_b)
    for r in (1, 2):
        a.save(state_a, r, _rows(r), [], "round\n")
        b.save(state_b, r, _rows(r), [], "round\n")
    for name in ("program_state_2",):  # A's version 2, its folder and its manifest, over B's
        shutil.rmtree(tmp_path / "b" / "state" / name)
        shutil.copytree(tmp_path / "a" / "state" / name, tmp_path / "b" / "state" / name)
    shutil.copy(tmp_path / "a" / "state" / "manifest_2.json", tmp_path / "b" / "state" / "manifest_2.json")
    with pytest.warns(DamagedFileWarning, match="round 2 .*state.npz is damaged: it fails its authentication "
                                                "check.*resuming from round 1") as record:
        state, last, rows, _ = Checkpoint(tmp_path / "b", config_b).load([np.zeros(3), np.zeros(2)])
    assert last == 1 and rows == _rows(1) and "\n" not in str(record[0].message)
    np.testing.assert_array_equal(state[0], state_b[0])
    # with only A's versions in B's folder, nothing is resumed from: set aside, starting again
    shutil.rmtree(tmp_path / "b" / "state")
    shutil.copytree(tmp_path / "a" / "state", tmp_path / "b" / "state")
    with pytest.warns(DamagedFileWarning, match="no intact saved state .*starting again from round 1"):
        assert Checkpoint(tmp_path / "b", config_b).load([np.zeros(3), np.zeros(2)])[1] == 0
    # A's own folder still resumes (the digest is of the config.json it saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Checkpoint(tmp_path / "a", config_a).load([np.zeros(3), np.zeros(2)])[1] == 2


def test_an_out_file_copied_from_another_run_is_refused_by_show(encrypted_run, tmp_path, capsys):
    from fedlab.__main__ import main

    root, key_file, written, history = encrypted_run
    other = tmp_path / "other"
    other.mkdir()
    fl.use_encryption(key_file=key_file)
    (other / "config.json.enc").write_bytes(encryption.seal(CONFIG.replace(seed=1).to_json() + "\n",
                                                            label="out/config.json"))
    fl.use_encryption(None)
    (other / "history.csv.enc").write_bytes((written / "out" / "history.csv.enc").read_bytes())
    assert main(["show", str(other / "history.csv.enc"), "--encryption-key", str(key_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and "another run's folder" in err[0], err
    (other / "config.json.enc").unlink()  # no config beside it: one line saying so
    assert main(["show", str(other / "history.csv.enc"), "--encryption-key", str(key_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json.enc" in err[0], err


# TensorBoard's marker ----------------------------------------------------------------------------------
def test_a_damaged_tensorboard_marker_is_reported_and_rounds_written_again(tmp_path):
    from fedlab.experiment.tensorboard import MARKER, TensorBoardLog, run_folder

    fl.use_encryption(key_file=new_key(tmp_path / "k.key").path)
    key = "0123456789abcdef-test"
    folder = run_folder(tmp_path / "tb", CONFIG, key)
    folder.mkdir(parents=True)
    # a marker from another run's folder (the same key): it fails its check
    (folder / MARKER).write_bytes(encryption.seal("2", label="tensorboard/other-run/last_round_written"))
    with pytest.warns(DamagedFileWarning, match="tensorboard_dir: .*last_round_written is damaged") as record:
        log = TensorBoardLog(tmp_path / "tb", CONFIG, key)
    assert log.written == 0
    [warning] = [w for w in record if issubclass(w.category, DamagedFileWarning)]
    assert "\n" not in str(warning.message) and str(folder / MARKER) in str(warning.message)


# Key files ---------------------------------------------------------------------------------------------
def test_a_readable_key_file_is_warned_about(tmp_path):
    from fedlab.core.encryption import KeyFileWarning

    path = new_key(tmp_path / "k.key").path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_key(path)  # 0600: nothing to say
    os.chmod(path, 0o644)
    with pytest.warns(KeyFileWarning, match="can be read by its group and everyone \\(mode 0644\\); chmod 600") as rec:
        load_key(path)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)


def test_new_key_never_replaces_a_file_that_appears_after_its_check(tmp_path, monkeypatch):
    path = tmp_path / "k.key"
    path.write_text("someone else's\n")
    monkeypatch.setattr(pathlib.Path, "exists", lambda self: False)  # the check passes; the file is there
    with pytest.raises(FileExistsError, match="never replaced"):
        new_key(path)
    monkeypatch.undo()
    assert path.read_text() == "someone else's\n"
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]  # no temporary file left


def test_seal_data_leaves_key_files_in_the_folder_alone(tmp_path, capsys):
    from fedlab.__main__ import main

    site = tmp_path / "site"
    site.mkdir()
    (site / "a.csv").write_text("1,2\n3,4\n")
    key = new_key(site / "site.key")  # the key in use, in the folder it seals
    other = new_key(site / "zz-other.key")  # another key file
    before = {p.name: p.read_bytes() for p in (site / "site.key", site / "zz-other.key")}
    assert main(["keys", "seal-data", str(site), "--encryption-key", str(key.path), "--remove-plain"]) == 0
    assert sorted(p.name for p in site.iterdir()) == ["a.csv.enc", "site.key", "zz-other.key"]
    assert {n: (site / n).read_bytes() for n in before} == before
    assert load_key(site / "site.key").id == key.id and load_key(site / "zz-other.key").id == other.id
    fl.use_encryption(key_file=key.path)
    assert encryption.unseal((site / "a.csv.enc").read_bytes(), label="data/a.csv") == b"1,2\n3,4\n"
    capsys.readouterr()
    assert main(["keys", "seal-data", str(tmp_path / "nowhere"), "--encryption-key", str(key.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedlab keys: error: DIR: {tmp_path / 'nowhere'} is not a folder (it does not exist)"], err


def test_seal_data_leaves_no_temporary_file_when_a_write_fails(tmp_path, monkeypatch):
    from fedlab.data import data

    site = tmp_path / "site"
    site.mkdir()
    (site / "a.csv").write_text("1,2\n")
    fl.use_encryption(key_file=new_key(tmp_path / "k.key").path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        data.seal_folder(site, remove_plain=True)
    monkeypatch.undo()
    assert sorted(p.name for p in site.iterdir()) == ["a.csv"]  # the plain file kept, nothing half-written


def test_an_os_error_in_keys_ckks_is_one_line(tmp_path, capsys):
    from fedlab.__main__ import main

    (tmp_path / "file").write_text("not a folder\n")
    assert main(["keys", "ckks", str(tmp_path / "file" / "ckks")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedlab keys: error: DIR: cannot write") and "Traceback" not in err[0]
