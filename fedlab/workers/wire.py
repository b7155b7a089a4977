"""Messages between a driver and its sites: a JSON header and named arrays in one byte string.

``FLW1``, the header's length (4 bytes, little-endian), the header as JSON (with each array's name, dtype, shape
and byte count), then the arrays' bytes. Numbers and text only, never code, whoever sent it: a dtype must be a
plain number type. Not ``.npz``: NumPy parses an ``.npy`` header with ``ast.literal_eval``, and CPython 3.11's
AST construction, run from several threads at once (a driver reading its sites' answers), fails now and then
with "AST constructor recursion depth mismatch" (python/cpython#106905). Byte strings (SecAgg's keys and
ciphertexts) travel as uint8 arrays (:func:`pack_bytes`).
"""

from __future__ import annotations

import json
import struct
from typing import Mapping

import numpy as np

MAGIC = b"FLW1"
ARRAYS = "__arrays__"
KINDS = "biuf"  # bool, signed and unsigned integers, floats


class MessageError(ValueError):
    """A message that is not one fedlab wrote (one line: what is wrong)."""


def encode(header: Mapping, arrays: Mapping[str, np.ndarray] = ()) -> bytes:
    """``header`` (JSON-serialisable) and ``arrays`` (name -> array of numbers) as one byte string."""
    header = dict(header)
    if ARRAYS in header:
        raise ValueError(f"header key {ARRAYS!r} is the message's own")
    described, blobs = [], []
    for name, array in dict(arrays).items():
        array = np.asarray(array)  # 0-d arrays stay 0-d (np.ascontiguousarray would make them 1-d)
        if array.dtype.kind not in KINDS:
            raise ValueError(f"array {name!r}: dtype {array.dtype} is not a number type")
        described.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                          "bytes": array.nbytes})
        blobs.append(array.tobytes())
    text = json.dumps({**header, ARRAYS: described}).encode()
    return b"".join([MAGIC, struct.pack("<I", len(text)), text, *blobs])


def decode(message: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of :func:`encode`'s byte string; :class:`MessageError` if it is not one."""
    try:
        if message[:4] != MAGIC:
            raise ValueError("no FLW1 mark")
        (length,) = struct.unpack("<I", message[4:8])
        header = json.loads(message[8:8 + length].decode())
        described = header.pop(ARRAYS)
        arrays, at = {}, 8 + length
        for item in described:
            dtype = np.dtype(item["dtype"])
            shape = tuple(int(n) for n in item["shape"])
            size = int(item["bytes"])
            if dtype.kind not in KINDS or size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
                raise ValueError(f"array {item['name']!r}: {dtype} of shape {shape} is not {size} bytes of numbers")
            if at + size > len(message):
                raise ValueError("cut short")
            arrays[str(item["name"])] = np.frombuffer(message, dtype, count=int(np.prod(shape, dtype=np.int64)),
                                                      offset=at).reshape(shape).copy()
            at += size
        if at != len(message):
            raise ValueError(f"{len(message) - at} bytes after the last array")
    except Exception as err:  # noqa: BLE001 - any damage is one line
        raise MessageError(f"not a fedlab message ({type(err).__name__}: {err})") from None
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
