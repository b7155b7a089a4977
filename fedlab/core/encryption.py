"""Encryption at rest: AES-256-GCM over a run's stored results, under one key file, opt-in and process-wide.

``fl.use_encryption(key_file=PATH)`` (``--encryption-key PATH``) turns it on;
``python -m fedlab keys new PATH`` makes a key. While it is on, these are
written encrypted: the result cache, checkpoints, TensorBoard events (with
their run's ``config.json``) and the files ``run --out`` writes
(``OUT/*.enc``); a site's data files are read from their encrypted copies
(``python -m fedlab keys seal-data DIR``), and client arrays are kept off disk
(:mod:`fedlab.core.array_files`).

Not encrypted, by design or on request: the tables and figures
``save_table``/``save_figure`` write into ``results/`` and ``figures/`` (they
are for publication), ``python -m fedlab reproduce``'s cache and
``numerics.json``, the certificates and keys of ``python -m fedlab certs``,
the CKKS key files of ``python -m fedlab keys ckks`` (the sites' secret
context is mode 0600, nothing more), the manifests of the result cache and of
checkpoints (checksums of the encrypted bytes), and what ``show --to PLAIN``
exports (plain TensorBoard events, where the user asks for them).

A key file is two text lines, written whole with mode 0600 (never over an
existing file)::

    fedlab-aes256gcm-key v1 id=<16 hex digits>
    <the key: 64 hex digits>

The key id is the first 8 bytes of SHA-256 of the 32 key bytes: it names the
key in files and messages without revealing it, and checks the key file.
:func:`load_key` warns (:class:`KeyFileWarning`) when the file can be read by
its group or by everyone.

An encrypted file is ``b"FLENC1"``, the key id (8 bytes), a random 12-byte
nonce, then the ciphertext and GCM's 16-byte tag. The authenticated data is
the magic, the key id and a ``label`` naming what the file is: its path in its
store, and the run it belongs to (e.g.
``checkpoint/run-<digest>/program_state_3/state.npz``, the digest being that
of the checkpoint's ``config.json``; a result-cache entry's folder and a TensorBoard
run folder are named by the run's result-cache key; ``run --out``'s files name
the digest of the ``config.json`` beside them). A file moved to another name,
or from another run's folder, fails its check like a tampered one. Every
failure (another key, a changed byte, a truncated file, an encrypted file read
with encryption off or a plain one read with it on) is one line naming the
file, and nothing is read as data after it.

What it does not protect: a key on the same disk as the files protects nothing
from someone holding both; the process's memory (and its swap) is in the clear;
the files' names, sizes and times, and the manifests, are readable; a whole
store replaced by another one written with the same key (every file of a run,
its ``config.json`` included) is not detected, nor a file moved between two
runs of the same config.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
import tempfile
import warnings
from typing import Optional

from .validation import ConfigError, FedlabWarning

MAGIC = b"FLENC1"
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
FORMAT_LINE = "fedlab-aes256gcm-key v1"


class EncryptionError(ValueError):
    """An encrypted file (or a key) that cannot be used, in one line naming the file.

    ``damaged``: the file failed its authentication (changed, truncated or
    moved to another name): damage, like a wrong checksum. Otherwise the key in
    use does not fit the file (another key, encryption on or off): a setting
    to fix, not damage.
    """

    def __init__(self, message: str, *, damaged: bool):
        super().__init__(message)
        self.damaged = damaged


class KeyFileWarning(FedlabWarning):
    """A key file others can read (group or world permissions): ``chmod 600 FILE``."""


class Key:
    """An AES-256 key read from a key file; ``id`` is its 8-byte name (SHA-256 of the key, first 8 bytes)."""

    __slots__ = ("_secret", "id", "path")

    def __init__(self, secret: bytes, path: Optional[pathlib.Path] = None):
        if len(secret) != KEY_BYTES:
            raise ValueError(f"an AES-256 key has {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)
        self.id = key_id(secret)
        self.path = path

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def __repr__(self) -> str:  # never the secret
        return f"Key(id={self.id_hex}, path={str(self.path) if self.path else None!r})"

    def _aead(self):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM(self._secret)


def key_id(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()[:KEY_ID_BYTES]


def new_key(path, *, force: bool = False) -> Key:
    """Writes a new random key to ``path`` (mode 0600, written whole; never over an existing file unless ``force``).

    The key is written to a temporary file in the same folder, then linked to ``path`` (``os.link`` fails if
    ``path`` exists, at that instant: no check-then-replace race); with ``force``, renamed over it.
    """
    path = pathlib.Path(path)
    if path.exists() and not force:  # the early, friendly refusal; the link below is the one that counts
        raise FileExistsError(f"{path} exists; a key file is never replaced (delete it, or pass force=True)")
    secret = os.urandom(KEY_BYTES)
    text = f"{FORMAT_LINE} id={key_id(secret).hex()}\n{secret.hex()}\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; a key file is never replaced (delete it, or pass "
                                      "force=True)") from None
            except OSError:  # a file system without hard links: create it exclusively, then fill it
                _write_exclusive(path, text)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Key(secret, path)


def _write_exclusive(path: pathlib.Path, data: bytes) -> None:
    """Creates ``path`` (mode 0600; FileExistsError if it exists) and writes ``data``; removed again on failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; a key file is never replaced (delete it, or pass force=True)") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def is_key_file(path) -> bool:
    """Whether ``path`` is a file that begins with a key file's format line (never encrypted as data)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(FORMAT_LINE)) == FORMAT_LINE.encode()
    except OSError:
        return False


def load_key(path) -> Key:
    """The key in ``path``; ``ConfigError('encryption_key', ...)`` in one line if it is not a fedlab key file."""
    path = pathlib.Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise ConfigError("encryption_key", f"cannot read {path} ({err.strerror or err})") from None
    lines = text.decode("ascii", "replace").split("\n")
    head = lines[0].split(" id=")
    if len(lines) < 2 or len(head) != 2 or head[0] != FORMAT_LINE:
        raise ConfigError("encryption_key", f"{path} is not a fedlab key file (python -m fedlab keys new FILE "
                                            "makes one)")
    try:
        secret = bytes.fromhex(lines[1].strip())
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES or key_id(secret).hex() != head[1].strip():
        raise ConfigError("encryption_key", f"{path} is damaged: its key does not match its id {head[1].strip()}")
    _warn_if_readable(path)
    return Key(secret, path)


def _warn_if_readable(path: pathlib.Path) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o044:
        who = " and ".join(w for w, bit in (("its group", 0o040), ("everyone", 0o004)) if mode & bit)
        warnings.warn(f"{path}: the key file can be read by {who} (mode {mode:04o}); chmod 600 {path}",
                      KeyFileWarning, stacklevel=3)


_CURRENT: Optional[Key] = None


def use_encryption(key_file=None) -> Optional[Key]:
    """Turns encryption at rest on for this process with the key in ``key_file`` (None: off); returns the key.

    Same numbers with it on or off: only what reaches the disk changes. Key
    files are made with ``python -m fedlab keys new FILE`` (:func:`new_key`).
    """
    global _CURRENT
    _CURRENT = None if key_file is None else (key_file if isinstance(key_file, Key) else load_key(key_file))
    return _CURRENT


def current() -> Optional[Key]:
    """The key in use, None when encryption is off."""
    return _CURRENT


def is_encrypted(blob: bytes) -> bool:
    return bytes(blob[:len(MAGIC)]) == MAGIC


def _aad(kid: bytes, label: str) -> bytes:
    return MAGIC + kid + label.encode()


def encrypt(data: bytes, *, label: str, key: Optional[Key] = None) -> bytes:
    """``data`` encrypted under ``key`` (default: the key in use) for the file ``label`` names."""
    key = key or _CURRENT
    if key is None:
        raise EncryptionError(f"{label}: cannot encrypt, encryption is off (fl.use_encryption(key_file=...))",
                              damaged=False)
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + key.id + nonce + key._aead().encrypt(nonce, bytes(data), _aad(key.id, label))


def decrypt(blob: bytes, *, label: str, key: Optional[Key] = None, where: Optional[str] = None) -> bytes:
    """The plaintext of ``blob`` written for ``label``; :class:`EncryptionError` in one line naming ``where``
    (default: the label) if the key or the file is wrong."""
    key = key or _CURRENT
    where = where or label
    if key is None:
        if is_encrypted(blob):
            kid = bytes(blob[len(MAGIC):len(MAGIC) + KEY_ID_BYTES]).hex()
            raise EncryptionError(f"{where} is encrypted (key id {kid}) and encryption is off; give its key "
                                  "(--encryption-key FILE, fl.use_encryption(key_file=...))", damaged=False)
        raise EncryptionError(f"{where}: cannot decrypt, encryption is off", damaged=False)
    blob = bytes(blob)
    if not is_encrypted(blob):
        raise EncryptionError(f"{where} is not encrypted, and encryption is on (key id {key.id_hex}): refused; "
                              "turn encryption off to read it, or use another folder", damaged=False)
    if len(blob) < HEADER_BYTES + TAG_BYTES:
        raise EncryptionError(f"{where} is damaged: truncated to {len(blob)} bytes, shorter than an encrypted "
                              f"file's {HEADER_BYTES + TAG_BYTES}-byte header and tag", damaged=True)
    kid = blob[len(MAGIC):len(MAGIC) + KEY_ID_BYTES]
    if kid != key.id:
        raise EncryptionError(f"{where} was encrypted with another key (key id {kid.hex()}, the key in use is "
                              f"{key.id_hex}): wrong key", damaged=False)
    from cryptography.exceptions import InvalidTag

    nonce = blob[len(MAGIC) + KEY_ID_BYTES:HEADER_BYTES]
    try:
        return key._aead().decrypt(nonce, blob[HEADER_BYTES:], _aad(kid, label))
    except InvalidTag:
        raise EncryptionError(f"{where} is damaged: it fails its authentication check (changed, truncated, or "
                              f"moved from another name or another run's folder: it is not {label})",
                              damaged=True) from None


def seal(data: str | bytes, *, label: str) -> bytes:
    """What to write for ``data``: encrypted when encryption is on, the bytes themselves when it is off."""
    data = data.encode() if isinstance(data, str) else bytes(data)
    return encrypt(data, label=label) if _CURRENT is not None else data


def unseal(blob: bytes, *, label: str, where: Optional[str] = None) -> bytes:
    """The data in ``blob`` as :func:`seal` wrote it: decrypted when encryption is on; with it off, an encrypted
    file is refused (never read as data)."""
    if _CURRENT is not None or is_encrypted(blob):
        return decrypt(blob, label=label, where=where)
    return bytes(blob)
