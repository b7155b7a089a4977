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
client's two files took about 1.6 ms, a quarter of fedlab's CPU a round at
``make bench``'s K = 10, where most of a round's clients are new. Before each
write the free memory is looked at again: below ``MEMORY_FREE_BYTES`` (other
processes fill it too), or on ``ENOSPC``, that file and the ones after it go
to the temporary directory. Each directory holds a lock file its process keeps
locked, so that a process sharing the folder from another PID namespace (a
container sharing ``/dev/shm``) does not take a live directory for abandoned.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import errno
import fcntl
import os
import pathlib
import shutil
import stat
import tempfile
import threading
import weakref
from typing import Optional

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


LOCK = ".owner"  # in each directory: a file its process holds an exclusive lock on (flock) while it lives


def _remove_abandoned(root: pathlib.Path) -> None:
    """Directories of this kind whose process no longer runs (killed before its exit handler): their owner's lock
    is free (a process in another PID namespace sharing the folder holds its lock too), or, for a directory without
    a lock file, their process id is not running."""
    for path in root.glob(f"{PREFIX}*"):
        try:
            pid = int(path.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:  # not following a link, not waiting on a pipe: another user's folder could hold either
            fd = os.open(path / LOCK, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            abandoned = not process_alive(pid)
        except OSError:
            continue
        else:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                abandoned = True
            except OSError:  # held: its process is alive
                abandoned = False
            finally:
                os.close(fd)
        if abandoned:
            shutil.rmtree(path, ignore_errors=True)


def _locked_directory(root: pathlib.Path) -> tuple[pathlib.Path, int]:
    """A new directory of this process in ``root`` with its lock file held (the open lock file returned): made
    under another name and renamed once locked, so that no other process's :func:`_remove_abandoned` ever sees it
    without its lock."""
    making = pathlib.Path(tempfile.mkdtemp(prefix=f".{PREFIX}making-", dir=root))
    owner = None
    try:
        owner = os.open(making / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(owner, fcntl.LOCK_EX)
        directory = root / f"{PREFIX}{os.getpid()}-{making.name.rsplit('-', 1)[1]}"
        os.rename(making, directory)
        return directory, owner
    except BaseException:
        if owner is not None:
            os.close(owner)
        shutil.rmtree(making, ignore_errors=True)
        raise


def default_root() -> pathlib.Path:
    """Where this process's array files go: memory with :data:`MEMORY_FREE_BYTES` free
    (:func:`fedlab.core.scratch.memory_folder`), else the temporary directory."""
    memory = scratch.memory_folder(MEMORY_FREE_BYTES)
    return pathlib.Path(memory if memory is not None else tempfile.gettempdir())


class ArrayFiles:
    """Paths of files holding arrays as serialised ``TensorProto`` s, each written once per array object."""

    def __init__(self, root=None) -> None:
        """``root``: the directory whose sub-directory holds the files (default: :func:`default_root`, chosen
        when the first file is written, and left for the temporary directory when memory runs short)."""
        self._given_root = pathlib.Path(root) if root is not None else None
        self._root = None
        self._directory = None
        self._owner = None  # the open lock file of the directory (LOCK)
        self._left: list[tuple[pathlib.Path, int]] = []  # directories left when memory ran short, deleted at close
        self._paths: dict[int, tuple[weakref.ref, str]] = {}
        self._count = 0
        self._closing_registered = False
        forked = weakref.WeakMethod(self._forked)  # not kept alive by the fork hook
        os.register_at_fork(after_in_child=lambda: forked() and forked()())
        # re-entrant: a weakref callback (:meth:`_forget`) can run in the middle of :meth:`path`, on the same
        # thread, whenever an allocation there sets off the garbage collector; a plain Lock then deadlocks
        self._lock = threading.RLock()

    @property
    def directory(self) -> pathlib.Path:
        with held(self._lock, "the index of the array files"):
            if self._directory is None:
                if self._root is None:
                    self._root = self._given_root or default_root()
                memory = {pathlib.Path(scratch.MEMORY_FOLDER)} if self._given_root is None else set()
                for root in {self._root} | memory:  # a killed process's files in memory hold memory
                    _remove_abandoned(root)
                try:
                    self._directory, self._owner = _locked_directory(self._root)
                except OSError as err:
                    if not self._leave_memory(err):
                        raise
                    return self.directory
                if not self._closing_registered:
                    atexit.register(self.close)
                    self._closing_registered = True
            return self._directory

    def _forked(self) -> None:
        """In a child made by ``fork``: its own files from now on (its parent's stay its parent's, and so does their
        lock, which the child's copy of the lock file's descriptor does not hold apart from it)."""
        if self._owner is not None:
            with contextlib.suppress(OSError):
                os.close(self._owner)
        for _, owner in self._left:
            with contextlib.suppress(OSError):
                os.close(owner)
        self._lock = threading.RLock()
        self._paths, self._left, self._directory, self._owner = {}, [], None, None
        self._closing_registered = False

    def _in_memory(self) -> bool:
        return self._given_root is None and self._root == pathlib.Path(scratch.MEMORY_FOLDER)

    def _leave_memory(self, err: Optional[OSError] = None) -> bool:
        """Whether the files from now on go to the temporary directory: memory ran short (``err`` ENOSPC, or less
        than :data:`MEMORY_FREE_BYTES` free before a write) and they were in memory; the directory there stays
        until :meth:`close`."""
        with held(self._lock, "the index of the array files"):
            if not self._in_memory() or (err is not None and err.errno != errno.ENOSPC):
                return False
            if self._directory is not None:
                self._left.append((self._directory, self._owner))
            self._root, self._directory, self._owner = pathlib.Path(tempfile.gettempdir()), None, None
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
            if self._in_memory() and scratch.memory_folder(MEMORY_FREE_BYTES) is None:
                self._leave_memory()  # other processes may have filled it since: leave its last bytes to them
            self._count += 1
            directory = self.directory
            path = str(directory / f"{self._count}.pb")
        try:
            _write_whole(path, array)
        except OSError as err:
            with held(self._lock, "the index of the array files"):
                moved_on = self._directory != directory  # another thread left memory meanwhile
            if not (moved_on or self._leave_memory(err)):
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
        """Deletes every file and the directory (and those left when memory ran short)."""
        with held(self._lock, "the index of the array files"):
            self._paths.clear()
            directories = self._left + [(self._directory, self._owner)]
            self._left, self._directory, self._owner = [], None, None
        for directory, owner in directories:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            if owner is not None:
                os.close(owner)


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
