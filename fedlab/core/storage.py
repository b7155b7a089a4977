"""Files that hold results: written whole or not at all, checked when read back.

* :func:`atomic_write`: a temporary file in the same folder, then a rename.
* :class:`ResultCache`: finished runs keyed by config and code version, one
  folder per run, written under a temporary name and renamed into place; a
  manifest of SHA-256 sums tells a damaged entry from a good one. A damaged
  entry is moved aside with a warning and the run is computed again.
* :class:`Checkpoint`: TFF's program state (its tensors in one ``.npz``) plus
  the run's history, saved together in one version folder (so they cannot
  disagree), with a manifest per version. A damaged version, or one whose folder is gone but whose
  manifest is there, is reported in one line and the previous one used; with none intact the run
  starts over (same seeds, same numbers).

Histories are stored as JSON rows (floats round-trip exactly, NaN and
infinity included); config columns are rebuilt from the config itself.

With encryption on (:mod:`fedlab.core.encryption`) every file here but the
manifests is written encrypted, labelled with its path in its store and its
run: a cache entry's folder is its result-cache key, and a checkpoint's files
but ``config.json`` name the digest of that ``config.json``
(:func:`run_digest`). So a file moved to another entry or version, or copied
from another run's checkpoint (manifest entry and all), fails its check; the
manifests hold the
checksums of the encrypted bytes, so damage is found without the key. A file
that fails authentication is damaged, handled as above; a wrong key, or
encryption on for a plain store (or off for an encrypted one), is a
:class:`StorageError` in one line: nothing is set aside for a key typo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import warnings
from typing import Any, Iterable, Optional

import numpy as np

from .encryption import EncryptionError, seal, unseal
from .runtime import process_alive
from .validation import FedlabWarning

MANIFEST = "MANIFEST.json"


class StorageError(ValueError):
    """A results folder cannot be used (it is a file, not writable, ...)."""


class CheckpointMismatchError(StorageError):
    """A checkpoint folder holds the run of another config."""


class DamagedFileWarning(FedlabWarning):
    """A stored result or checkpoint failed its check and was set aside (a UserWarning, printed as one line)."""


def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_sealed(path: pathlib.Path, data: str | bytes, label: str) -> None:
    """:func:`atomic_write` of ``data``, encrypted for ``label`` when encryption is on (:func:`fedlab.core.encryption.seal`)."""
    atomic_write(path, seal(data, label=label))


def read_sealed(path: pathlib.Path, label: str) -> bytes:
    """The data of a file :func:`write_sealed` wrote; :class:`fedlab.core.encryption.EncryptionError` naming ``path``."""
    return unseal(pathlib.Path(path).read_bytes(), label=label, where=str(path))


def run_digest(config_json: str | bytes) -> str:
    """What binds a run's encrypted files to the run: SHA-256 of its ``config.json`` as written (first 32 hex
    digits), in the labels of a checkpoint's files and of ``run --out``'s."""
    data = config_json.encode() if isinstance(config_json, str) else bytes(config_json)
    return hashlib.sha256(data).hexdigest()[:32]


def npz_bytes(arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(a) for a in arrays])
    return buffer.getvalue()


def npz_arrays(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _key_problem(err: Exception) -> bool:
    """A key that does not fit the file (not damage): reported, never set aside."""
    return isinstance(err, EncryptionError) and not err.damaged


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_manifest(root: pathlib.Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (the manifest itself excluded)."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def check_manifest(root: pathlib.Path, manifest: dict[str, str]) -> Optional[str]:
    """None if every file listed is there with its sum and nothing else is; else what is wrong."""
    root = pathlib.Path(root)
    for name, digest in manifest.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum"
    extra = sorted(set(tree_manifest(root)) - set(manifest))
    if extra:
        return f"{extra[0]} is not in the manifest"
    return None


def ensure_folder(path: pathlib.Path, what: str) -> pathlib.Path:
    """Creates ``path`` if needed and checks that files can be written there; one-line errors."""
    path = pathlib.Path(path)
    if str(path) == "":
        raise StorageError(f"{what}: must name a folder, got an empty path")
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise StorageError(f"{what}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise StorageError(f"{what}: cannot write to {path} ({err.strerror or err})") from None
    return path


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def rows_to_json(rows: list[dict]) -> str:
    """Rows as JSON: floats written so they read back bit for bit, NaN and infinity included."""
    return json.dumps([{k: _json_value(v) for k, v in row.items()} for row in rows], allow_nan=True)


def rows_from_json(text: str | bytes) -> list[dict]:
    rows = json.loads(text)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("not a list of rows")
    return rows


def check_rounds(rows: list[dict], last: int, what: str) -> None:
    """The rows are rounds 1..``last``, each once, in order."""
    rounds = [r.get("round") for r in rows]
    if rounds != list(range(1, last + 1)):
        have = f"rounds {rounds[0]}-{rounds[-1]} ({len(rounds)} rows)" if rounds else "no rounds"
        raise ValueError(f"{what} holds {have}, expected rounds 1-{last}")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of fedlab's source: part of the result-cache key, so changed code never reads stale results."""
    digest = hashlib.sha256()
    package = pathlib.Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        if any(part.startswith(".") for part in path.relative_to(package).parts):
            continue  # .ipynb_checkpoints and the like: not fedlab's code
        digest.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def partial_prefix(name: str, pid: Optional[int] = None) -> str:
    """How :func:`write_folder` names its temporary folder for ``name``: with the writing process's id, so that a
    cleanup removes only the folders of processes no longer alive (two processes may write one entry at once)."""
    return f".{name}.{os.getpid() if pid is None else pid}."


def remove_dead_partials(folder: pathlib.Path, name: str) -> None:
    """Removes :func:`write_folder`'s temporary folders for ``name`` in ``folder`` left by processes no longer alive,
    and this process's (it is not writing now); another live process's stays. Folders named before they carried
    their writer's id are removed."""
    for partial in pathlib.Path(folder).glob(f".{name}.*"):
        writer = partial.name[len(name) + 2:].split(".")[0]
        if writer.isdigit() and int(writer) != os.getpid() and process_alive(int(writer)):
            continue
        shutil.rmtree(partial, ignore_errors=True)


def write_folder(target: pathlib.Path, write, *, keep_existing: bool = False) -> None:
    """Fills a temporary folder beside ``target`` with ``write(folder)``, then renames it to ``target``
    (replacing an older one): the folder appears whole or not at all. ``keep_existing``: a folder found at
    ``target`` (another process wrote the same entry meanwhile, e.g. two notebooks of ``reproduce`` training the
    same run) is kept and this one dropped, so no reader ever sees it half removed."""
    target = pathlib.Path(target)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=partial_prefix(target.name), dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            if keep_existing:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError as err:  # another writer's folder landed between the check and the rename
            if not (keep_existing and err.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _set_aside(path: pathlib.Path) -> pathlib.Path:
    for i in range(1, 1000):
        target = path.with_name(f"{path.name}.damaged-{i}")
        if not target.exists():
            path.rename(target)
            return target
    raise StorageError(f"{path}: too many damaged copies beside it; clean the folder")


class ResultCache:
    """Finished runs in ``folder``, one subfolder per (config, fedlab code, user components)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = pathlib.Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise StorageError(f"results_cache: {self.folder} is a file, not a folder")

    def path(self, key: str) -> pathlib.Path:
        return self.folder / key

    def load(self, key: str, rounds: int) -> Optional[dict]:
        """The stored run (``rows``, ``clients``, ``weights``), None if absent; a damaged entry is set aside."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            problem = check_manifest(path, manifest)
            if problem:
                raise ValueError(problem)
            rows = rows_from_json(read_sealed(path / "history.json", f"results-cache/{key}/history.json"))
            check_rounds(rows, rounds, "history.json")
            clients = rows_from_json(read_sealed(path / "clients.json", f"results-cache/{key}/clients.json"))
            weights = npz_arrays(read_sealed(path / "weights.npz", f"results-cache/{key}/weights.npz"))
        except (OSError, ValueError, KeyError) as err:
            if _key_problem(err):
                raise StorageError(f"results cache: {err}") from None
            moved = _set_aside(path)
            warnings.warn(f"results cache: entry {path.name} is damaged ({err}); moved to {moved.name}, "
                          "computing the run again", DamagedFileWarning, stacklevel=3)
            return None
        return {"rows": rows, "clients": clients, "weights": weights}

    def save(self, key: str, rows: list[dict], clients: list[dict], weights: list[np.ndarray],
             config_json: str) -> None:
        """Writes the entry under a temporary name, then renames it into place."""
        self.folder.mkdir(parents=True, exist_ok=True)
        def write(tmp: pathlib.Path) -> None:
            for name, data in (("history.json", rows_to_json(rows)), ("clients.json", rows_to_json(clients)),
                               ("config.json", config_json), ("weights.npz", npz_bytes(weights))):
                (tmp / name).write_bytes(seal(data, label=f"results-cache/{key}/{name}"))
            (tmp / MANIFEST).write_text(json.dumps(tree_manifest(tmp), indent=1, sort_keys=True))

        write_folder(self.path(key), write, keep_existing=True)  # a key names one run, whoever trains it


class Checkpoint:
    """Program state plus history in one folder; a rerun resumes after the last saved round.

    The folder's ``config.json`` is written with the first saved round, never
    for a refused run; ``history.csv`` beside the state is a readable copy.
    With encryption on, every other file's label names :func:`run_digest` of
    that ``config.json`` (``checkpoint/run-<digest>/...``): a version copied
    from another run's checkpoint fails its check, as damage.
    """

    STATE = "state"

    def __init__(self, directory: str | os.PathLike, config, *, keep: int = 2):
        self.dir = pathlib.Path(directory)
        self.config = config
        self.keep = keep
        self._run = None  # run_digest of config.json: of the saved one, or of the one the first save writes
        config_path = self.dir / "config.json"
        if self.dir.exists() and not self.dir.is_dir():
            raise StorageError(f"checkpoint_dir: {self.dir} is a file, not a folder")
        if not config_path.exists() and list((self.dir / self.STATE).glob("program_state_*")):
            raise CheckpointMismatchError(
                f"checkpoint_dir: {self.dir} holds saved state but no config.json, so which run it belongs to "
                "is unknown; use a new folder or delete it")
        if config_path.exists():
            try:
                saved_bytes = read_sealed(config_path, "checkpoint/config.json")
                self._run = run_digest(saved_bytes)
                saved = json.loads(saved_bytes)
                if not isinstance(saved, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as err:
                if _key_problem(err):
                    raise CheckpointMismatchError(f"checkpoint_dir: {err}") from None
                raise CheckpointMismatchError(
                    f"checkpoint_dir: {config_path} is damaged ({err}); use a new folder or delete it") from None
            wanted = json.loads(json.dumps(config.experiment_dict()))
            saved.pop("workers", None)  # where the run executes: it may resume on other workers
            params = config.algorithm_params
            with_defaults = list(dataclasses.fields(config)) + (list(dataclasses.fields(params))
                                                                 if dataclasses.is_dataclass(params) else [])
            for f in with_defaults:  # a field (or an algorithm's parameter) added since the save: its default was in force
                if f.name in wanted and f.name not in saved and f.default is not dataclasses.MISSING:
                    saved[f.name] = json.loads(json.dumps(f.default))
                # a field the experiment leaves out at its default (a synchronous run's async_*)
                if f.name not in wanted and f.name in saved and f.default is not dataclasses.MISSING \
                        and saved[f.name] == json.loads(json.dumps(f.default)):
                    del saved[f.name]
            if saved != wanted:  # the same run on other workers may resume here
                changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise CheckpointMismatchError(
                    f"checkpoint_dir: {self.dir} holds a run with other settings ({', '.join(changed)}); "
                    "use a new folder or delete it")

    def _label(self, name: str) -> str:
        """The label of the file ``name`` (relative to the folder): its path, under the run's config digest."""
        if self._run is None:
            self._run = run_digest(self.config.to_json())
        return f"checkpoint/run-{self._run}/{name}"

    def _manifest_path(self, version: int) -> pathlib.Path:
        return self.dir / self.STATE / f"manifest_{version}.json"

    def _version_dir(self, version: int) -> pathlib.Path:
        return self.dir / self.STATE / f"program_state_{version}"

    def _versions(self) -> list[int]:
        """Saved rounds: a version folder or its manifest (a manifest without its folder: the folder was lost)."""
        found = set()
        for path in (self.dir / self.STATE).glob("program_state_*"):
            suffix = path.name[len("program_state_"):]
            if path.is_dir() and suffix.isdigit():
                found.add(int(suffix))
        for path in (self.dir / self.STATE).glob("manifest_*.json"):
            suffix = path.name[len("manifest_"):-len(".json")]
            if suffix.isdigit():
                found.add(int(suffix))
        return sorted(found)

    def load(self, state_template) -> tuple[Any, int, list[dict], list[dict]]:
        """(state, last round, history rows, client rows) of the newest intact version; (None, 0, [], []) if none."""
        damaged = []
        for version in reversed(self._versions()):
            try:
                manifest_path = self._manifest_path(version)
                if not self._version_dir(version).is_dir():
                    raise ValueError(f"its folder {self._version_dir(version).name} is missing")
                if not manifest_path.exists():
                    raise ValueError("it has no manifest (the save was interrupted)")
                problem = check_manifest(self._version_dir(version), json.loads(manifest_path.read_text()))
                if problem:
                    raise ValueError(problem)
                if not (self._version_dir(version) / "state.npz").exists():
                    raise ValueError("it was saved by an older fedlab (TFF's SavedModel), which this one does not read")
                folder, label = self._version_dir(version), self._label(f"program_state_{version}")
                state = _load_state(read_sealed(folder / "state.npz", f"{label}/state.npz"), state_template)
                rows = rows_from_json(read_sealed(folder / "history.json", f"{label}/history.json"))
                check_rounds(rows, version, "the saved history")
                client_rows = rows_from_json(read_sealed(folder / "clients.json", f"{label}/clients.json"))
            except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways
                if _key_problem(err):
                    raise StorageError(f"checkpoint {self.dir}: {err}") from None
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                damaged.append(f"round {version} ({reason})")
                continue
            if damaged:
                warnings.warn(f"checkpoint {self.dir}: cannot use the saved state of {'; '.join(damaged)}; "
                              f"resuming from round {version}", DamagedFileWarning, stacklevel=3)
            return state, version, rows, client_rows
        if damaged:
            moved = _set_aside(self.dir / self.STATE)
            warnings.warn(f"checkpoint {self.dir}: no intact saved state ({', '.join(damaged)}); moved to "
                          f"{moved.name}, starting again from round 1", DamagedFileWarning, stacklevel=3)
        return None, 0, [], []

    def save(self, state, round_num: int, rows: list[dict], client_rows: list[dict], history_csv: str) -> None:
        """Writes round ``round_num``'s version (state, history, client rows) whole, then its manifest.

        The state's leaves go to one ``.npz`` (TFF's ``FileProgramStateManager``
        wrote a SavedModel, about 0.18 s a round, three times a K = 10 round of
        the benchmark; this takes milliseconds and restores the same bits).
        """
        state_dir = self.dir / self.STATE
        state_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / "config.json"
        if not config_path.exists():
            config_json = self.config.to_json()
            self._run = run_digest(config_json)
            write_sealed(config_path, config_json, "checkpoint/config.json")
        version_dir = self._version_dir(round_num)
        with contextlib.suppress(FileNotFoundError):  # left by a run interrupted after saving this round
            self._manifest_path(round_num).unlink()
        for stale in state_dir.glob(".program_state_*"):  # a save killed half-way (one writer per folder)
            shutil.rmtree(stale, ignore_errors=True)
        manifest = {}

        def write(tmp: pathlib.Path) -> None:
            for name, data in (("state.npz", npz_bytes(_tree().flatten(state))), ("history.json", rows_to_json(rows)),
                               ("clients.json", rows_to_json(client_rows))):
                (tmp / name).write_bytes(seal(data, label=self._label(f"program_state_{round_num}/{name}")))
            manifest.update(tree_manifest(tmp))

        write_folder(version_dir, write)
        atomic_write(self._manifest_path(round_num), json.dumps(manifest, sort_keys=True))
        for version in self._versions()[:-self.keep]:
            with contextlib.suppress(FileNotFoundError):
                self._manifest_path(version).unlink()
            shutil.rmtree(self._version_dir(version), ignore_errors=True)
        write_sealed(self.dir / "history.csv", history_csv, self._label("history.csv"))

    def describe(self) -> str:
        """What the folder holds, for messages: "rounds 1-3" or "nothing yet"."""
        versions = [int(p.stem.split("_")[1]) for p in (self.dir / self.STATE).glob("manifest_*.json")]
        return f"rounds 1-{max(versions)}" if versions else "no saved round"


def _tree():
    import tree  # dm-tree, a TFF dependency: flattens TFF's state structures (attrs, named tuples, dicts)

    return tree


def _load_state(data: bytes, template):
    """The state in ``data`` (an ``.npz``'s bytes), in the structure of ``template``; ValueError if it does not fit."""
    expected = _tree().flatten(template)
    leaves = npz_arrays(data)
    if len(leaves) != len(expected):
        raise ValueError(f"its state has {len(leaves)} tensors, the process {len(expected)}")
    for i, (leaf, want) in enumerate(zip(leaves, expected)):
        want = np.asarray(want)
        if leaf.shape != want.shape or leaf.dtype.kind != want.dtype.kind:
            raise ValueError(f"its tensor {i} is {leaf.dtype}{list(leaf.shape)}, the process wants "
                             f"{want.dtype}{list(want.shape)}")
    return _tree().unflatten_as(template, leaves)


def cache_key(config, components: Iterable[str] = ()) -> str:
    """The result-cache key: the config's fingerprint, fedlab's code version, digests of user components, and
    what TensorFlow's arithmetic is set to where it is not fedlab's default: TFF's worker's intra-op threads
    (another count can sum a large matrix product in another order) and oneDNN's kernels turned off (Eigen's sum
    in another order: :func:`fedlab.core.runtime.onednn_on`); a run cached with one is not served to a run with
    the other."""
    from .runtime import onednn_on, worker_environment

    threads = worker_environment().get("TF_NUM_INTRAOP_THREADS", "1")
    extra = "".join(c for c in components if c) + (
        "" if threads == "1" else f"worker-intraop-threads={threads}") + ("" if onednn_on() else "onednn=off")
    suffix = "-" + hashlib.sha256(extra.encode()).hexdigest()[:8] if extra else ""
    return f"{config.fingerprint()}-{code_version()}{suffix}"
