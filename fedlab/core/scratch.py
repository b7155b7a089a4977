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
    a folder this process can write in and it has ``room`` bytes free; else None (the system's temporary folder). Not
    ``tempfile.tempdir``: Python caches its default there as soon as any temporary file is made."""
    chosen = any(os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP"))
    if chosen or not os.path.isdir(MEMORY_FOLDER) or not os.access(MEMORY_FOLDER, os.W_OK | os.X_OK):
        return None
    try:
        stats = os.statvfs(MEMORY_FOLDER)
    except OSError:
        return None
    return MEMORY_FOLDER if stats.f_bavail * stats.f_frsize >= room else None
