"""Per-round metrics as TensorBoard event files, through TFF's own release manager (``tff.program``).

``run_experiment(config, tensorboard_dir=DIR)`` (``--tensorboard DIR``) writes
each run into ``DIR/<algorithm>-<result-cache key>/`` with the run's
``config.json`` beside its events, so ``tensorboard --logdir DIR`` shows every
run of a sweep side by side. Rounds already written (a resumed run, a run read
from the result cache) are not written twice.

With encryption at rest on (:mod:`fedlab.core.encryption`) no event reaches the
disk in the clear: TFF's release manager writes into TF's in-memory ``ram://``
filesystem (of this process: TFF releases from Python), and after every write
each event file is stored encrypted in the run folder as ``events.<...>.enc``
(no ``tfevents`` in the name, so TensorBoard does not try to read it), beside
an encrypted ``config.json``. :func:`read_scalars` decrypts them;
:func:`export` (``python -m fedlab show RUN_FOLDER --to PLAIN``) writes
plain event files where the user asks, for TensorBoard.

The run folder's name holds the run's result-cache key, and every file's
label names the folder: an event file or marker copied from another run's
folder fails its check. A ``last_round_written`` marker that fails it is
reported (:class:`fedlab.core.storage.DamagedFileWarning`, one line naming the
file) and the run's rounds are written again.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import uuid
import warnings
import weakref
from typing import Iterable

from ..core import encryption
from ..core.encryption import EncryptionError
from ..core.runtime import run_coroutine, tff
from ..core.storage import DamagedFileWarning, StorageError, read_sealed, write_sealed

MARKER = "last_round_written"
EVENTS = "events.out.tfevents."
SEALED_SUFFIX = ".enc"


def sealed_name(name: str) -> str:
    """``events.out.tfevents.X`` -> ``events.X.enc``: TensorBoard reads every file with ``tfevents`` in its name."""
    return "events." + name[len(EVENTS):] + SEALED_SUFFIX


def _label(folder: pathlib.Path, name: str) -> str:
    return f"tensorboard/{pathlib.Path(folder).name}/{name}"


def _drop_ram(writer, ram: str) -> None:
    """Frees a collected log's in-memory events (a notebook's sweep would otherwise keep every run's)."""
    import tensorflow as tf

    writer.close()
    if tf.io.gfile.exists(ram):
        tf.io.gfile.rmtree(ram)


def run_folder(root, config, key: str) -> pathlib.Path:
    """``key``: the run's whole result-cache key (config, fedlab's code, the user's components, a worker thread
    count other than the default), so that a run of other code never shares a folder, or a record of rounds
    written, with this one (its rounds would not be written: the folder's marker says they were)."""
    return pathlib.Path(root) / f"{config.algorithm}-{key}"


class TensorBoardLog:
    """Writes a run's rows as scalars (one step per round) with ``tff.program.TensorBoardReleaseManager``."""

    def __init__(self, root, config, key: str):
        self.dir = run_folder(root, config, key)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sealed = encryption.current() is not None
        marker = self.dir / MARKER
        try:
            text = read_sealed(marker, _label(self.dir, MARKER)).decode() if marker.exists() else ""
        except EncryptionError as err:
            if err.damaged:  # rounds are written again: a duplicate step is better than a lost one
                warnings.warn(f"tensorboard_dir: {err}; writing the run's rounds again", DamagedFileWarning,
                              stacklevel=2)
                text = ""
            else:
                raise StorageError(f"tensorboard_dir: {err}") from None
        self.written = int(text) if text.strip().isdigit() else 0
        write_sealed(self.dir / "config.json", config.to_json() + "\n", _label(self.dir, "config.json"))
        # with encryption on the events stay in memory, stored encrypted after each write
        self.events = (f"ram://fedlab-tensorboard/{os.getpid()}-{uuid.uuid4().hex}/{self.dir.name}" if self.sealed
                       else str(self.dir))
        self.manager = tff().program.TensorBoardReleaseManager(self.events)
        if self.sealed:  # not at exit: the process's memory goes with it
            weakref.finalize(self, _drop_ram, self.manager._summary_writer, self.events).atexit = False  # noqa: SLF001

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            round_num = int(row["round"])
            if round_num <= self.written:
                continue
            values = {k: float(v) for k, v in row.items()
                      if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(float(v))}
            run_coroutine(self.manager.release(values, key=round_num))
            self.written = round_num
        # TFF's release manager leaves flushing to TensorFlow (every 10 events or 120 s): flush its writer
        # before the marker says the rounds are on disk, or a crash could lose them for good.
        self.manager._summary_writer.flush()  # noqa: SLF001 - TFF 0.87 exposes no flush
        if self.sealed:
            import tensorflow as tf

            for name in tf.io.gfile.listdir(self.events):
                with tf.io.gfile.GFile(f"{self.events}/{name}", "rb") as f:
                    data = f.read()
                write_sealed(self.dir / sealed_name(name), data, _label(self.dir, sealed_name(name)))
        write_sealed(self.dir / MARKER, str(self.written), _label(self.dir, MARKER))


def _event_files(folder: pathlib.Path) -> tuple[list[tuple[str, str]], str]:
    """([(event file name, path TF reads it from)], ram folder): plain event files in ``folder`` as they are,
    encrypted ones decrypted into the ``ram://`` folder, which the caller deletes."""
    import tensorflow as tf

    plain = [(p.name, str(p)) for p in sorted(folder.glob(EVENTS + "*"))]
    sealed = sorted(folder.glob("events.*" + SEALED_SUFFIX))
    ram = f"ram://fedlab-tensorboard-read/{uuid.uuid4().hex}"
    decrypted = []
    for path in sealed:
        data = read_sealed(path, _label(folder, path.name))
        name = EVENTS + path.name[len("events."):-len(SEALED_SUFFIX)]
        tf.io.gfile.makedirs(ram)
        with tf.io.gfile.GFile(f"{ram}/{name}", "wb") as f:
            f.write(data)
        decrypted.append((name, f"{ram}/{name}"))
    return plain + decrypted, ram


def export(folder, to) -> list[pathlib.Path]:
    """Writes the event files of a run folder, decrypted, into ``to`` (for ``tensorboard --logdir``): with
    encryption at rest they are in the clear there, wherever the user chose."""
    import tensorflow as tf

    folder, to = pathlib.Path(folder), pathlib.Path(to)
    to.mkdir(parents=True, exist_ok=True)
    files, ram = _event_files(folder)
    written = []
    try:
        for name, source in files:
            with tf.io.gfile.GFile(source, "rb") as f:
                (to / name).write_bytes(f.read())
            written.append(to / name)
    finally:
        if tf.io.gfile.exists(ram):
            tf.io.gfile.rmtree(ram)
    return written


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run folder's event files: tag -> [(step, value)] (for tests and notebooks)."""
    import tensorflow as tf

    out: dict[str, list] = {}
    files, ram = _event_files(pathlib.Path(folder))
    try:
        for _, path in sorted(files):
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = value.simple_value if value.HasField("simple_value") else float(
                        tf.make_ndarray(value.tensor))
                    out.setdefault(value.tag, []).append((int(event.step), number))
    finally:
        if tf.io.gfile.exists(ram):
            tf.io.gfile.rmtree(ram)
    return out


def describe(root) -> str:
    runs = sorted(p.name for p in pathlib.Path(root).iterdir() if (p / "config.json").exists())
    return json.dumps(runs)
