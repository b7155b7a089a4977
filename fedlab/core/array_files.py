"""Client arrays written once to files that TFF's runtime on this machine reads, so that rounds send paths.

TFF 0.87's Python side turns every tensor of every client's input into
protocol buffers and sends it to its worker, every round: at 100 clients,
83 % of the samples of TFF's execution thread were in
``RemoteExecutor.create_value`` (py-spy), 12.5 MB a round
(``benchmarks/round_split.py``). A client's arrays are the same every round.
Here each array is written once, as a serialised ``TensorProto``, into a
directory of this process; a round carries the file's path, and the client's
computation reads it (``tf.io.read_file`` and ``tf.io.parse_tensor``) where it
trains. The same bytes arrive, so the numbers are the same.

Only for runtimes that see this machine's files: TFF's local worker and its
in-process test runtime. A process built for remote workers (``workers=``)
is sent the arrays themselves (:func:`building_for_remote_workers`).

With encryption at rest on (:mod:`fedlab.core.encryption`) no array file is
written: TFF's worker is a separate C++ process that reads these files with
``tf.io.read_file``, which cannot decrypt them, and TF's in-memory ``ram://``
filesystem is that of the process that writes it, not the worker's. Processes
built then are sent the arrays themselves, as for remote workers (the same
bytes arrive, so the same numbers), at the cost the paragraph above measures.

An array is known by its identity: fedlab makes a run's client arrays once
and does not change them in place. Its file is deleted when the array is
garbage collected, and the directory when this process exits; directories
left by processes that were killed are removed by the next one.

The files go to memory (``/dev/shm``) when it is there with at least
``MEMORY_FREE_BYTES`` free and no variable chooses the temporary folder
(:func:`default_root`), else to the temporary directory: on this machine's disk (ext4) writing a
client's two files took about 1.6 ms, which at ``make bench``'s K = 10 (ten
new clients a round) was half of fedlab's CPU a round. Memory that fills up
(``ENOSPC``) sends that file and the ones after it to the temporary directory.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import errno
import os
import pathlib
import shutil
import tempfile
import threading
import weakref

import numpy as np

from . import encryption, scratch
from .runtime import held, process_alive

PREFIX = "fedlab-arrays-"
MEMORY_FREE_BYTES = 2 * 2**30  # the array files go to memory only while it has this much free
_local_files = contextvars.ContextVar("fedlab_local_array_files", default=True)


@contextlib.contextmanager
def building_for_remote_workers(remote: bool = True):
    """While ``remote``, processes built here take client arrays themselves, not paths (:func:`enabled`)."""
    token = _local_files.set(not remote)
    try:
        yield
    finally:
        _local_files.reset(token)


def enabled() -> bool:
    """Whether a process built now reads its clients' arrays from files (not while building for remote workers,
    nor with encryption at rest on: the files would hold the clients' data in the clear)."""
    return _local_files.get() and encryption.current() is None


def _remove_abandoned(root: pathlib.Path) -> None:
    """Directories of this kind whose process no longer runs (killed before its exit handler)."""
    for path in root.glob(f"{PREFIX}*"):
        try:
            pid = int(path.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def default_root() -> pathlib.Path:
    """Where this process's array files go: memory with :data:`MEMORY_FREE_BYTES` free
    (:func:`fedlab.core.scratch.memory_folder`), else the temporary directory."""
    memory = scratch.memory_folder(MEMORY_FREE_BYTES)
    return pathlib.Path(memory if memory is not None else tempfile.gettempdir())


class ArrayFiles:
    """Paths of files holding arrays as serialised ``TensorProto`` s, each written once per array object."""

    def __init__(self, root=None) -> None:
        """``root``: the directory whose sub-directory holds the files (default: :func:`default_root`, chosen
        when the first file is written)."""
        self._given_root = pathlib.Path(root) if root is not None else None
        self._root = None
        self._directory = None
        self._full: list[pathlib.Path] = []  # directories that ran out of space, deleted with the rest
        self._paths: dict[int, tuple[weakref.ref, str]] = {}
        self._count = 0
        # re-entrant: a weakref callback (:meth:`_forget`) can run in the middle of :meth:`path`, on the same
        # thread, whenever an allocation there sets off the garbage collector; a plain Lock then deadlocks
        self._lock = threading.RLock()

    @property
    def directory(self) -> pathlib.Path:
        if self._directory is None:
            if self._root is None:
                self._root = self._given_root or default_root()
            memory = {pathlib.Path(scratch.MEMORY_FOLDER)} if self._given_root is None else set()
            for root in {self._root} | memory:  # a killed process's files in memory hold memory
                _remove_abandoned(root)
            self._directory = pathlib.Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self._root))
            atexit.register(self.close)
        return self._directory

    def _out_of_space(self, directory: pathlib.Path) -> bool:
        """After ``ENOSPC`` in ``directory``: whether to write again, in the temporary directory (False: the files
        were already there, nowhere else to go)."""
        with held(self._lock, "the index of the array files"):
            if self._directory != directory:
                return True  # another thread moved on already
            fallback = pathlib.Path(tempfile.gettempdir())
            if self._root == fallback:
                return False
            self._full.append(directory)
            self._root, self._directory = fallback, None
            return True

    def path(self, array: np.ndarray) -> str:
        """The file holding ``array`` (written now if this array object has none yet)."""
        if encryption.current() is not None:  # a process built before encryption was turned on
            raise RuntimeError("array files: encryption at rest is on, and client arrays are never written to "
                               "files then; this process was built before it was turned on (rebuild it)")
        with held(self._lock, "the index of the array files"):
            known = self._paths.get(id(array))
            if known is not None and known[0]() is array:
                return known[1]
            self._count += 1
            directory = self.directory
            path = str(directory / f"{self._count}.pb")
        try:
            _write_whole(path, array)
        except OSError as err:
            if err.errno != errno.ENOSPC or not self._out_of_space(directory):
                raise
            return self.path(array)
        with held(self._lock, "the index of the array files"):
            key = id(array)
            self._paths[key] = (weakref.ref(array, lambda _, key=key, path=path: self._forget(key, path)), path)
        return path

    def _forget(self, key: int, path: str) -> None:
        with held(self._lock, "the index of the array files"):
            known = self._paths.get(key)
            if known is not None and known[1] == path:
                del self._paths[key]
        with contextlib.suppress(OSError):
            os.remove(path)

    def __len__(self) -> int:
        return len(self._paths)

    def close(self) -> None:
        """Deletes every file and the directory."""
        with held(self._lock, "the index of the array files"):
            self._paths.clear()
            directories = self._full + [self._directory]
            self._full, self._directory = [], None
        for directory in directories:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def _write_whole(path: str, array: np.ndarray) -> None:
    """The array's ``TensorProto`` at ``path``, written whole (a temporary file renamed) or not at all."""
    import tensorflow as tf

    data = tf.make_tensor_proto(array).SerializeToString()
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(data)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    os.replace(partial, path)


FILES = ArrayFiles()  # this process's


def read(path, dtype, shape):
    """Inside a TF computation: the array at ``path`` (a string tensor) with ``dtype`` and static ``shape``."""
    import tensorflow as tf

    return tf.ensure_shape(tf.io.parse_tensor(tf.io.read_file(path), dtype), shape)
