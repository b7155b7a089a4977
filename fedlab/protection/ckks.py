"""CKKS homomorphic aggregation: the server sums encrypted updates it cannot read (TenSEAL / Microsoft SEAL).

CKKS (Cheon, Kim, Kim and Song 2017, "Homomorphic Encryption for Arithmetic of
Approximate Numbers", ASIACRYPT, doi:10.1007/978-3-319-70694-8_15) encrypts
vectors of reals; a ciphertext can be added to another and multiplied by a
plain number without the secret key. As in NVIDIA FLARE's homomorphic
aggregation (``nvflare/app_opt/he``), the sites share one secret key
(symmetric encryption: no public key exists) and the server holds a context
without it:

* a site encrypts its update, cut into ciphertexts of 4,096 values (the slot
  count; TenSEAL prints a warning from C++ for longer vectors, so fedlab cuts);
* the server (:class:`CkksServer`) multiplies each client's ciphertexts by the
  client's plain weight w_i = n_i / sum n and adds them: the weighted mean,
  encrypted; it holds no secret key (``context.is_private()`` is False; a
  decrypt attempt raises ``ValueError``) and never a plaintext;
* the key holders decrypt the mean (:func:`decrypt`).

What stays hidden, exactly: the aggregating object (:class:`CkksServer`)
never holds a key or a plaintext. In this simulation the driver then decrypts
the mean and the server step (TFF's finalizer, a SERVER-placed computation)
runs on it in the clear, so the model is held in the clear by the
simulation's server state; keeping the model encrypted (FedAvg's step at the
sites) is not built. Decrypted results that reach the server can leak about
the secret key (CKKS is not IND-CPA-D secure: Li and Micciancio 2021, "On the
Security of Homomorphic Encryption on Approximate Numbers", EUROCRYPT,
doi:10.1007/978-3-030-77870-5_23), and this simulation does hand the decrypted
mean to the server step. With exactly two included clients each key holder
can compute the other's update from the mean and its own; the rule of two or
more updates (:mod:`fedlab.rounds.homomorphic_rounds`) only keeps the server from
reading one client's update.

Parameters (NVFlare's, and the issue's measurements): poly_modulus_degree
N = 8192, coefficient moduli of 60, 40, 40 bits (log Q = 140 <= 218: 128-bit
security by the HE standard; SEAL checks it), scale 2^40. The server's
product is not rescaled: it stays at scale 2^80 within the data level's
100-bit modulus, so no rounding of a rescale enters, and the decrypted value
is sum_i round(w_i 2^40) (m_i + e_i) / 2^80 exactly, where m_i is the
encoding of client i's values and e_i its encryption noise. Without a
rescale one plain multiplication is all a ciphertext can take (depth 1), and
a value must stay below |x| < 2^16 (:data:`MAX_MAGNITUDE`; 2^99 / 2^80 with
a margin), checked at the site.

**The error bound** (:func:`error_bound`): each decrypted coordinate of the
weighted mean is within ``2^-24 (1 + M)`` of the exact weighted mean in float64
(about 6e-8 (1 + M), M = the largest |value| of any client's update), for at
most 2^16 clients (:data:`MAX_CLIENTS`; more are refused): the encoding rounds
each value to 2^-40, the weight to 2^-40 (a relative 2^-40 / w_i on the
product), and the fresh noise adds about 3.2 sqrt(N) / 2^40 = 3e-10 a slot.
SEAL's noise is random and Gaussian-like (sigma 3.2: a centred binomial by
default, a clipped Gaussian in some builds), and the noise term is its typical
size, not its worst case: the bound holds with high probability, not always. Measured
(``tests/test_ckks.py``): 4e-10 to 6e-10 on updates up to 0.25 in magnitude,
100 times below the bound and below float32's rounding of the mean (2^-24
relative); a training round's weights differ from plain FedAvg's by at most
one float32 step.

**Reproducible from a seed: simulation only.** SEAL draws its encryption
randomness from the operating system unless the encryption parameters carry a
seeded generator (``Blake2xbPRNGFactory``). A seeded generator gives every
encryption under one SEAL context the same mask, which would let the server
subtract two ciphertexts into the difference of their plaintexts; so each
ciphertext is encrypted under a context of its own, seeded by (seed, client,
chunk) (:func:`encrypt`'s ``seed``). :mod:`fedlab.rounds.homomorphic_rounds` puts the
round's noise seed and the run's config digest (``config.fingerprint()``) in
the seed, so two configs never encrypt with the same randomness. Since the
decryption of a sum that was never rescaled does not depend on the secret key,
the decrypted mean is then a function of the updates, the weights and the seed
alone: bit for bit the same in two runs of one config, whatever keys each
generated.

**Seeded CKKS gives no confidentiality against anyone who knows the config**:
from the config they know each ciphertext's mask and noise, hence the
plaintext, and with the known zero padding of the last ciphertext, the secret
key. It is for reproducible simulation only, like fedlab's seeded DP noise.
The 128-bit security of the parameters applies to ``seed=None``
(``noise_source="unseeded"``) only: SEAL's own randomness, as a deployment
would use.

Bytes are counted from the parameters (:func:`ciphertext_bytes`): SEAL's
serialisation of a ciphertext without compression, the same in every process.
The bytes fedlab passes around are SEAL's zstd-compressed ones, about 10%
fewer and varying with the ciphertext.

CKKS gives no integrity: a tampered ciphertext decrypts to garbage, so
transport security (TLS) stays. Any holder of the shared key can read any
site's intercepted update.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import math
import os
import pathlib
import tempfile
import threading
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from ..core import scratch
from ..core.quiet_periods import measures_time

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 40, 40)
SCALE_BITS = 40
SLOTS = POLY_MODULUS_DEGREE // 2      # values a ciphertext holds
MAX_MAGNITUDE = 2.0 ** 16             # |value| a site may encrypt: products at scale 2^80 stay below 2^99
MAX_CLIENTS = 2 ** 16                 # clients a weighted sum may add: what error_bound assumes
SECRET_FILE, PUBLIC_FILE = "ckks-secret.context", "ckks-public.context"


def error_bound(magnitude: float) -> float:
    """Bound on |decrypted weighted mean - exact weighted mean| per coordinate, for updates with |x| <= magnitude.

    2^-24 (1 + magnitude), for up to :data:`MAX_CLIENTS` = 2^16 clients (a weighted sum of more is refused):
    each client's weight is encoded to 2^-40 (K x magnitude x 2^-41 in all), its values to 2^-40 and its noise
    adds about 3e-10, both scaled by weights that sum to 1. A high-probability bound: SEAL's noise is random,
    Gaussian-like (sigma 3.2), and the noise term is its typical size 3.2 sqrt(N) / 2^40, not its worst case.
    """
    return 2.0 ** -24 * (1.0 + float(magnitude))


# ---------------------------------------------------------------------------------------------------------------
# Keys


def make_keys() -> tuple[bytes, bytes]:
    """(secret context for the sites, public context for the server), serialised by TenSEAL.

    The sites' context holds the shared secret key (symmetric CKKS: there is
    no public key); the server's holds the parameters only, no key of any kind.
    """
    import tenseal as ts

    context = ts.context(ts.SCHEME_TYPE.CKKS, POLY_MODULUS_DEGREE, coeff_mod_bit_sizes=list(COEFF_MOD_BIT_SIZES),
                         encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC, n_threads=1)
    context.global_scale = 2.0 ** SCALE_BITS
    secret = context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False,
                               save_relin_keys=False)
    public = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                               save_relin_keys=False)
    return secret, public


def write_keys(directory, *, force: bool = False) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes a new key pair into ``directory``: (the sites' secret context, mode 0600; the server's public one).

    Refuses (``FileExistsError``, one line naming the file) to replace a secret context already there, unless
    ``force=True``: what the old key encrypted could no longer be decrypted. Each file is written whole (a
    temporary file in the same folder, then linked without replacing, or ``os.replace`` with ``force``).
    """
    directory = pathlib.Path(directory)
    paths = directory / SECRET_FILE, directory / PUBLIC_FILE

    def refuse():
        raise FileExistsError(errno.EEXIST, "a CKKS secret context is already there; write_keys(..., force=True) "
                                            "replaces it", str(paths[0]))

    if not force and os.path.lexists(paths[0]):
        refuse()
    directory.mkdir(parents=True, exist_ok=True)
    secret, public = make_keys()
    for path, data, mode in ((paths[0], secret, 0o600), (paths[1], public, 0o644)):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            if force or path != paths[0]:
                os.replace(tmp, path)
            else:  # no replacing a secret context that appeared meanwhile
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    refuse()
                os.unlink(tmp)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
    return paths


def public_context_of(secret_context: bytes) -> bytes:
    """The server's public context (parameters only, no key) of the sites' secret one: what a site tells a
    driver."""
    return _context(secret_context, private=True).serialize(save_public_key=False, save_secret_key=False,
                                                             save_galois_keys=False, save_relin_keys=False)


def read_secret_context(path) -> bytes:
    """The sites' secret context from its file (``python -m fedlab keys ckks DIR``); ValueError in one line if
    the file cannot be read or holds no secret key."""
    path = pathlib.Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"ckks secret context: cannot read {path}: {err.strerror or err}") from None
    try:
        _context(data, private=True)
    except ValueError:
        raise ValueError(f"ckks secret context: {path} holds no secret key (the sites need "
                         f"{SECRET_FILE}, not {PUBLIC_FILE})") from None
    except Exception as err:  # noqa: BLE001 - TenSEAL's parse errors, in one line
        raise ValueError(f"ckks secret context: {path} is not a TenSEAL context ({type(err).__name__})") from None
    return data


def _context(serialized: bytes, *, private: bool):
    import tenseal as ts

    context = ts.context_from(serialized)
    if private and not context.is_private():
        raise ValueError("ckks: this context holds no secret key (the server's); the sites' context is needed")
    if not private and context.is_private():
        raise ValueError("ckks: the server must get the public context, and this one holds the secret key")
    return context


# ---------------------------------------------------------------------------------------------------------------
# SEAL objects to bytes: sealapi saves only to files


class _Files:
    """A private temporary folder (mode 0700) through which SEAL ciphertexts become bytes: a file per thread,
    removed as soon as it is read. In memory (:func:`_memory_folder`) where the system has room: a ciphertext's
    quarter megabyte is written and read back twice a round per client, and a disk's file system costs a third of
    a millisecond more each time."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fedlab-ckks-", dir=_memory_folder())

    @property
    def _path(self) -> str:
        return os.path.join(self._dir.name, f"ciphertext-{threading.get_ident()}")

    def dump(self, ciphertext) -> bytes:
        path = self._path
        try:
            ciphertext.save(path)
            with open(path, "rb") as handle:
                return handle.read()
        finally:
            pathlib.Path(path).unlink(missing_ok=True)

    def load(self, seal_context, data: bytes):
        import tenseal.sealapi as seal

        path = self._path
        try:
            with open(path, "wb") as handle:
                handle.write(data)
            ciphertext = seal.Ciphertext()
            ciphertext.load(seal_context, path)
            return ciphertext
        finally:
            pathlib.Path(path).unlink(missing_ok=True)


MEMORY_ROOM = 64 * 2 ** 20


def _memory_folder() -> Optional[str]:
    """``/dev/shm`` when it has :data:`MEMORY_ROOM` free and no variable chooses the temporary folder, else None
    (:func:`fedlab.core.scratch.memory_folder`)."""
    return scratch.memory_folder(MEMORY_ROOM)


@functools.lru_cache(maxsize=1)
def _files() -> _Files:
    return _Files()


@functools.lru_cache(maxsize=1)
def _coeff_modulus():
    import tenseal.sealapi as seal

    return seal.CoeffModulus.Create(POLY_MODULUS_DEGREE, list(COEFF_MOD_BIT_SIZES))


@functools.lru_cache(maxsize=1)
def _unseeded_context():
    """A context with SEAL's own randomness: encoding (which draws nothing) for every ciphertext, and unseeded
    encryption."""
    return _seal_context()


def _seal_context(seed: Optional[Sequence[int]] = None):
    """An encrypting context: seeded, a context per ciphertext (SEAL's seeded PRNG factory gives every
    encryption of one context the same randomness). Without the modulus-switching chain, which only a server
    switching levels needs: about 40 % of the context's build (12 -> 7 ms here), which is most of a seeded
    encryption's time; its ciphertexts are the same bytes (their parms_id is the hash of the same parameters)."""
    import tenseal.sealapi as seal

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(POLY_MODULUS_DEGREE)
    parms.set_coeff_modulus(_coeff_modulus())
    if seed is not None:
        parms.set_random_generator(seal.Blake2xbPRNGFactory([int(s) for s in seed]))
    return seal.SEALContext(parms, False, seal.SEC_LEVEL_TYPE.TC128)


def _chunk_seed(seed: Sequence[int], chunk: int) -> list[int]:
    return [int(v) for v in np.random.SeedSequence([*map(int, seed), chunk, 0xCC]).generate_state(8, np.uint64)]


# ---------------------------------------------------------------------------------------------------------------
# Sites and server


def in_range(vector) -> bool:
    """Whether every value is finite with |value| < :data:`MAX_MAGNITUDE`: what :func:`encrypt` accepts."""
    values = np.asarray(vector, dtype=np.float64)
    return bool(values.size) and bool(np.all(np.abs(values) < MAX_MAGNITUDE))  # NaN compares False


def encrypt(vector, secret_context: bytes, *, seed: Optional[Sequence[int]] = None) -> list[bytes]:
    """A site's vector as ciphertexts of :data:`SLOTS` values each (the last one padded with zeros).

    ``seed``: integers (e.g. round seed, run digest, client) from which each
    ciphertext's encryption randomness is drawn, with a SEAL context of its own
    (see the module docstring: simulation only, no confidentiality against
    whoever knows the seed); None: SEAL's randomness from the OS.
    Raises ValueError if a value is not finite or |value| >= :data:`MAX_MAGNITUDE` (:func:`in_range`).
    """
    import tenseal.sealapi as seal

    values = np.asarray(vector, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("ckks: nothing to encrypt (an empty vector)")
    largest = float(np.max(np.abs(values)))
    if not in_range(values):
        raise ValueError(f"ckks: a value of {largest:.3g} is out of CKKS's range here (|x| < 2^16); lower client_lr "
                         "or the update's size")
    key = _context(secret_context, private=True).secret_key().data
    shared = _unseeded_context()
    encoder = seal.CKKSEncoder(shared)  # a plaintext belongs to every context of the same parameters (parms_id)
    files, scale, out = _files(), 2.0 ** SCALE_BITS, []
    for chunk, start in enumerate(range(0, values.size, SLOTS)):
        context = shared if seed is None else _seal_context(_chunk_seed(seed, chunk))
        plain, cipher = seal.Plaintext(), seal.Ciphertext()
        encoder.encode(values[start:start + SLOTS].tolist(), scale, plain)
        seal.Encryptor(context, key).encrypt_symmetric(plain, cipher)
        out.append(files.dump(cipher))
    return out


class CkksServer:
    """The aggregating server: it holds the public context (parameters, no secret key) and adds ciphertexts.

    ``context``: TenSEAL's context object, ``context.is_private()`` False;
    constructing one from the sites' secret context is refused. It never holds
    a key or a plaintext (what happens to the decrypted mean: the module docstring).
    """

    def __init__(self, public_context: bytes) -> None:
        self.context = _context(public_context, private=False)
        self.seconds = 0.0

    def weighted_sum(self, ciphertexts_per_client: Sequence[Sequence[bytes]], weights: Sequence[float]) -> list[bytes]:
        """sum_i weights[i] x ciphertexts_per_client[i], ciphertext by ciphertext (one plain multiply each)."""
        import tenseal.sealapi as seal

        start = time.perf_counter()
        if len(ciphertexts_per_client) != len(weights) or not weights:
            raise ValueError(f"ckks: {len(ciphertexts_per_client)} clients' ciphertexts and {len(weights)} weights")
        if len(weights) > MAX_CLIENTS:
            raise ValueError(f"ckks: {len(weights)} clients, more than the {MAX_CLIENTS} error_bound holds for")
        lengths = {len(c) for c in ciphertexts_per_client}
        if len(lengths) != 1:
            raise ValueError(f"ckks: the clients sent different numbers of ciphertexts ({sorted(lengths)})")
        context = self.context.seal_context().data
        evaluator, encoder, files = seal.Evaluator(context), seal.CKKSEncoder(context), _files()
        total = []
        for chunk in range(lengths.pop()):
            acc = None
            for client, weight in zip(ciphertexts_per_client, weights):
                cipher, factor = files.load(context, client[chunk]), seal.Plaintext()
                encoder.encode(float(weight), cipher.parms_id(), 2.0 ** SCALE_BITS, factor)
                evaluator.multiply_plain_inplace(cipher, factor)
                if acc is None:
                    acc = cipher
                else:
                    evaluator.add_inplace(acc, cipher)
            total.append(files.dump(acc))
        self.seconds += time.perf_counter() - start
        return total


def weighted_sum(ciphertexts_per_client: Sequence[Sequence[bytes]], weights: Sequence[float],
                 public_context: bytes) -> list[bytes]:
    """The weighted sum of the clients' ciphertexts, computed by a :class:`CkksServer` (no secret key)."""
    return CkksServer(public_context).weighted_sum(ciphertexts_per_client, weights)


def decrypt(ciphertexts: Sequence[bytes], length: int, secret_context: bytes) -> np.ndarray:
    """The first ``length`` values of the ciphertexts, float64; needs the sites' secret context."""
    import tenseal.sealapi as seal

    context = _context(secret_context, private=True)
    seal_context = context.seal_context().data
    decryptor = seal.Decryptor(seal_context, context.secret_key().data)
    encoder, files = seal.CKKSEncoder(seal_context), _files()
    out = []
    for data in ciphertexts:
        plain = seal.Plaintext()
        decryptor.decrypt(files.load(seal_context, data), plain)
        out.append(np.asarray(encoder.decode_double(plain), dtype=np.float64))
    return np.concatenate(out)[:length]


# ---------------------------------------------------------------------------------------------------------------
# A round


@dataclasses.dataclass(frozen=True)
class CkksResult:
    """What a round of homomorphic aggregation gave and cost.

    ``mean``: float64, the decrypted weighted mean of the included clients'
    vectors (zeros when no client has a positive weight, as TFF's mean
    divides no-NaN); ``included``: their ids (positive weight), sorted;
    ``bytes_per_client``: ciphertext bytes only, counted from the parameters
    (:func:`ciphertext_bytes`): the ciphertexts an included client sent plus
    the encrypted mean it received as a key holder (0 when none was included);
    ``client_seconds``: mean wall seconds a client spent encrypting plus
    decrypting; ``server_seconds``: the server's weighted sum.
    """

    mean: np.ndarray
    included: tuple[int, ...]
    bytes_per_client: float
    client_seconds: float
    server_seconds: float


def run_round(updates: Mapping[int, np.ndarray], weights: Mapping[int, float], *, secret_context: bytes,
              public_context: bytes, seed: Optional[Sequence[int]] = None) -> CkksResult:
    """Sites encrypt, the server takes the weighted mean (weights renormalised over the clients of ``updates``
    with a positive weight; the others send nothing), a site decrypts. ``weights``: client id -> n_i (e.g.
    examples); ``seed``: integers, extended by each client's id. No positive weight: a zero mean, nothing sent."""
    if not updates:
        raise ValueError("ckks: no client sent an update")
    raw = {int(c): float(weights[c]) for c in updates}
    if not all(w >= 0 for w in raw.values()):  # NaN fails too
        raise ValueError(f"ckks: the weights must be >= 0, got {list(raw.values())}")
    length = int(np.size(next(iter(updates.values()))))
    ids = sorted(c for c, w in raw.items() if w > 0)
    if not ids:
        return CkksResult(mean=np.zeros(length), included=(), bytes_per_client=0.0, client_seconds=0.0,
                          server_seconds=0.0)
    raw = np.array([raw[c] for c in ids])
    sent, seconds = {}, {}
    for c in ids:
        start = time.perf_counter()
        sent[c] = encrypt(updates[c], secret_context, seed=None if seed is None else [*seed, c])
        seconds[c] = time.perf_counter() - start
    server = CkksServer(public_context)
    total = server.weighted_sum([sent[c] for c in ids], (raw / raw.sum()).tolist())
    start = time.perf_counter()
    mean = decrypt(total, length, secret_context)
    decrypt_seconds = time.perf_counter() - start
    return CkksResult(mean=mean, included=tuple(ids),
                      bytes_per_client=float(np.mean([(len(sent[c]) + len(total)) * ciphertext_bytes() for c in ids])),
                      client_seconds=float(np.mean(list(seconds.values()))) + decrypt_seconds,
                      server_seconds=server.seconds)


SEAL_HEADER_BYTES = 16  # SEAL's Serialization::SEALHeader: magic, sizes, version, compression mode, total size


def ciphertext_bytes() -> int:
    """Bytes of one ciphertext as SEAL serialises it without compression, from the parameters: 262,257.

    A fresh ciphertext, and the server's unrescaled weighted sum, is 2 polynomials at the first data level
    (the moduli but the special prime: 2 of 3), N = 8192 coefficients of 8 bytes each: 262,144 bytes, plus SEAL's
    header (16) and ``Ciphertext::save_members``' fields: parms_id (32), is_ntt_form (1), size, N, moduli count,
    scale, correction factor (8 each), and the coefficient array's own header (16) and length (8).
    ``tests/test_ckks.py`` checks it against an uncompressed serialisation that SEAL loads and decrypts.
    SEAL's default (zstd) compression, what fedlab passes around, makes it about 10% smaller, varying with the key
    and the ciphertext: not what is counted.
    """
    polynomials, moduli = 2, len(COEFF_MOD_BIT_SIZES) - 1
    data = polynomials * moduli * POLY_MODULUS_DEGREE * 8
    members = 32 + 1 + 8 + 8 + 8 + 8 + 8 + (SEAL_HEADER_BYTES + 8 + data)
    return SEAL_HEADER_BYTES + members


def upload_bytes(length: int) -> int:
    """Bytes a client sends for a vector of ``length`` values: whole ciphertexts of 4,096 slots, uncompressed."""
    return math.ceil(length / SLOTS) * ciphertext_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Cost


@measures_time("CKKS's cost (fedlab.he_cost)")
def measure_cost(*, clients: Sequence[int] = (10, 100, 1000), sizes: Sequence[int] = (7850, 199_210),
                 timed_clients: int = 3, seed: int = 0) -> "pandas.DataFrame":
    """What CKKS aggregation costs per (clients, vector size): a table like :func:`fedlab.protection.secagg.measure_cost`.

    Per-client costs do not depend on the number of clients; the server's grows
    linearly in it (one plain multiply and one add per client and ciphertext).
    So each size is measured once with ``timed_clients`` real clients (OS
    randomness, as deployed: the seconds), and once more with encryption seeded
    by ``seed`` (the ``max_error`` reported, so that two runs write the same
    table); both are checked against the exact weighted mean
    (RuntimeError beyond :func:`error_bound`), and the server's seconds for n
    clients are n times the measured seconds per client: the column says so
    (``server_seconds_extrapolated``). Bytes are counted from the parameters
    (:func:`ciphertext_bytes`). Columns: protocol,
    clients, vector_length, ciphertexts, bytes_per_value, bytes_per_client
    (ciphertexts sent + the encrypted mean received), client_seconds (encrypt + decrypt, one client),
    server_seconds_extrapolated, server_seconds_per_client, max_error.
    """
    import pandas as pd

    secret, public = make_keys()
    rows = []
    for length in sizes:
        rng = np.random.default_rng([seed, int(length)])
        vectors = {c: rng.normal(0.0, 0.05, int(length)).astype(np.float32) for c in range(timed_clients)}
        examples = {c: float(rng.integers(10, 100)) for c in vectors}
        result = run_round(vectors, examples, secret_context=secret, public_context=public)
        seeded = run_round(vectors, examples, secret_context=secret, public_context=public, seed=[seed, int(length)])
        w = np.array([examples[c] for c in sorted(vectors)])
        exact = (w / w.sum()) @ np.stack([vectors[c].astype(np.float64) for c in sorted(vectors)])
        bound = error_bound(max(float(np.max(np.abs(v))) for v in vectors.values()))
        for mean in (result.mean, seeded.mean):
            gap = float(np.max(np.abs(mean - exact)))
            if gap > bound:
                raise RuntimeError(f"ckks: the decrypted mean is {gap:.3g} from the exact one, above the bound "
                                   f"{bound:.3g}")
        error = float(np.max(np.abs(seeded.mean - exact)))  # the seeded round's: the same in every run
        per_client_server = result.server_seconds / timed_clients
        chunks = math.ceil(int(length) / SLOTS)
        for n in clients:
            rows.append(dict(protocol="ckks", clients=int(n), vector_length=int(length), ciphertexts=chunks,
                             bytes_per_value=result.bytes_per_client / 2 / int(length),
                             bytes_per_client=result.bytes_per_client, client_seconds=result.client_seconds,
                             server_seconds_extrapolated=per_client_server * int(n),
                             server_seconds_per_client=per_client_server, max_error=error))
    return pd.DataFrame(rows)
