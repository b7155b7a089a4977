"""Where fedlab's short-lived files go: memory (``/dev/shm``) when it has room and the caller chose no temporary
folder, else the system's temporary folder. Files that live for a round or a process (CKKS's ciphertexts on
their way to bytes, clients' arrays for TFF's worker) are written and read again many times; on a disk's file
system each costs a third of a millisecond to a millisecond more."""

from __future__ import annotations

import os
from typing import Optional

MEMORY_FOLDER = "/dev/shm"


def memory_folder(room: int) -> Optional[str]:
    """:data:`MEMORY_FOLDER` when no variable chooses the temporary folder (``$TMPDIR``, ``$TEMP``, ``$TMP``), it is
    a folder this process can write in and ``room`` bytes are free there and in memory (:func:`memory_free`: a file
    in ``/dev/shm`` is memory that cannot be given back, whatever room its mount allows); else None (the system's
    temporary folder). Not ``tempfile.tempdir``: Python caches its default there as soon as any temporary file is
    made."""
    chosen = any(os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP"))
    if chosen or not os.path.isdir(MEMORY_FOLDER) or not os.access(MEMORY_FOLDER, os.W_OK | os.X_OK):
        return None
    try:
        stats = os.statvfs(MEMORY_FOLDER)
    except OSError:
        return None
    return MEMORY_FOLDER if min(stats.f_bavail * stats.f_frsize, memory_free()) >= room else None


def memory_free() -> float:
    """Bytes this process could still put in memory: the system's available memory (``MemAvailable`` in
    ``/proc/meminfo``) and, in a control group with a limit, what is left of it (cgroup v2 ``memory.max`` less
    ``memory.current``), the smaller; infinity where neither can be read."""
    free = float("inf")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/self/cgroup") as f:
            group = next((line.strip().split(":", 2)[2] for line in f if line.startswith("0::")), None)
        if group is not None:
            folder = os.path.join("/sys/fs/cgroup", group.lstrip("/"))
            with open(os.path.join(folder, "memory.max")) as f:
                limit = f.read().strip()
            if limit != "max":
                with open(os.path.join(folder, "memory.current")) as f:
                    free = min(free, int(limit) - int(f.read().strip()))
    except (OSError, ValueError, IndexError):
        pass
    return free
