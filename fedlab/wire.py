"""Messages between a driver and its sites: a JSON header and named arrays in one ``.npz`` byte string.

Read with ``allow_pickle=False``: a message carries numbers and text only,
never code, whoever sent it. Byte strings (SecAgg's keys and ciphertexts)
travel as uint8 arrays (:func:`pack_bytes`).
"""

from __future__ import annotations

import io
import json
from typing import Mapping

import numpy as np

HEADER = "__header__"


class MessageError(ValueError):
    """A message that is not one fedlab wrote (one line: what is wrong)."""


def encode(header: Mapping, arrays: Mapping[str, np.ndarray] = ()) -> bytes:
    """``header`` (JSON-serialisable) and ``arrays`` (name -> array) as one byte string."""
    buffer = io.BytesIO()
    named = {HEADER: np.frombuffer(json.dumps(dict(header)).encode(), np.uint8)}
    for name, array in dict(arrays).items():
        if name == HEADER:
            raise ValueError(f"array name {HEADER!r} is the header's")
        named[name] = np.asarray(array)
    np.savez(buffer, **named)
    return buffer.getvalue()


def decode(message: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of :func:`encode`'s byte string; :class:`MessageError` if it is not one."""
    try:
        with np.load(io.BytesIO(message), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        header = json.loads(arrays.pop(HEADER).tobytes().decode())
    except Exception as err:  # noqa: BLE001 - any damage is one line
        raise MessageError(f"not a fedlab message ({type(err).__name__}: {err})") from None
    if not isinstance(header, dict):
        raise MessageError("not a fedlab message (its header is not a JSON object)")
    return header, arrays


def pack_bytes(items: Mapping[int, bytes], prefix: str) -> dict[str, np.ndarray]:
    """``{id: bytes}`` as arrays named ``prefix/id``."""
    return {f"{prefix}/{int(k)}": np.frombuffer(v, np.uint8) for k, v in items.items()}


def unpack_bytes(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[int, bytes]:
    """The ``{id: bytes}`` that :func:`pack_bytes` wrote under ``prefix``."""
    start = prefix + "/"
    return {int(name[len(start):]): arrays[name].tobytes() for name in arrays if name.startswith(start)}


def pack_list(arrays, prefix: str) -> dict[str, np.ndarray]:
    """A sequence of arrays as ``prefix/0``, ``prefix/1``, ..."""
    return {f"{prefix}/{i}": np.asarray(a) for i, a in enumerate(arrays)}


def unpack_list(arrays: Mapping[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """The sequence :func:`pack_list` wrote under ``prefix``, in order."""
    out = []
    while f"{prefix}/{len(out)}" in arrays:
        out.append(arrays[f"{prefix}/{len(out)}"])
    return out
