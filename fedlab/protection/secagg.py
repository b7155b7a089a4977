"""Secure aggregation, simulated in-process with real cryptography: SecAgg and SecAgg+.

**SecAgg** (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS, doi:10.1145/3133956.3133982; the
semi-honest protocol of its Figure 4): every client u masks its integer vector
x_u over the ring Z_R, R = 2**modulus_bits, as

    y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod R)

where s_uv is agreed with v by X25519 and b_u is a fresh self-mask seed. The
pairwise masks cancel in the sum; b_u and the mask key s_u^SK are Shamir
t-out-of-n shared among the clients beforehand, so the server can remove the
self masks of clients whose y_u arrived and the pairwise masks of clients that
dropped out after sharing. It learns sum_u x_u and, for any one client, nothing
more. Four rounds: 0 AdvertiseKeys, 1 ShareKeys, 2 MaskedInputCollection,
3 Unmasking.

**SecAgg+** (Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS, doi:10.1145/3372297.3417885): the same
rounds on a sparse random graph. Each client agrees keys with, masks with and
shares its secrets to only its k neighbours, k = O(log n); here the graph is
the random Harary graph of their practical instantiation (as in Google's
``fcp/secagg``): the clients in a random order (public randomness from
``graph_seed``) on a ring, each linked to the k/2 before and after it.

What runs: X25519 key agreement, HKDF-SHA256 key derivation, AES-256-GCM for
the shares that travel client to client through the server, AES-256-CTR as
the PRG, Shamir sharing over GF(2**31 - 1). Keys, seeds and Shamir
coefficients come from the operating system's randomness; the recovered sum
is exact all the same. The server object (:class:`_Server`) only ever
receives messages: public keys, ciphertexts it cannot open, masked vectors
and unmasking shares; the client objects (:class:`_Client`) hold the inputs.

What does not: no network (every party is an object in this process, called
in turn), no signatures or PKI (the semi-honest version: the server is
trusted to forward keys faithfully), no consistency-check round (that belongs
to the version secure against an active server).

Cost, per client, counted from the messages (``bytes_per_client``): bytes sent
plus bytes received over the four rounds: the two 32-byte public keys sent and
the neighbours' keys received (each with a 4-byte client id), the encrypted
shares sent and received (12-byte nonce + 80-byte plaintext + 16-byte tag,
plus a 4-byte id), the masked vector bit-packed at ``modulus_bits`` bits a
value, the list of surviving neighbours (4 bytes an id) and the unmasking
shares (36 bytes + a 4-byte id each). A client that drops out neither sends
nor receives anything after it dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import struct
import time
from typing import Callable, Collection, Iterable, Mapping, Optional, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..core.quiet_periods import measures_time

PROTOCOLS = ("secagg", "secagg+")

PRIME = 2 ** 31 - 1          # Shamir field GF(p); products of two elements stay below 2**62 in int64
_CHUNK_BITS = 30             # a 32-byte secret is cut into 30-bit chunks, each < p
_CHUNKS = math.ceil(256 / _CHUNK_BITS)   # 9
_SHARE_BYTES = 4 * _CHUNKS   # one share of one secret: 9 field elements as uint32
_ID_BYTES = 4                # a client id in a message
_KEY_BYTES = 32              # X25519 public key, seeds
_NONCE_BYTES, _TAG_BYTES = 12, 16
_PLAIN_BYTES = 2 * _ID_BYTES + 2 * _SHARE_BYTES   # (u, v, share of b_u, share of s_u^SK)
_MAX_CLIENTS = 2 ** 20       # keeps Shamir's exact float64 matrix products below 2**53 (see _matmul_mod)

# SecAgg+'s neighbourhood size is chosen so that, with the strict-majority threshold, the protocol
# survives this fraction of clients dropping out with at least 1 - _DESIGN_FAILURE probability.
_DESIGN_DROPOUT = 0.3
_DESIGN_FAILURE = 2.0 ** -10


class SecAggAborted(RuntimeError):
    """Too few clients remain for the protocol to go on; the message names the stage, the count and t."""


@dataclasses.dataclass(frozen=True)
class SecAggResult:
    """The sum the server recovered and what it cost.

    ``total``: uint64, sum mod R of the inputs whose masked vector reached the
    server; ``included``: their client ids, sorted; ``threshold``: t (SecAgg+:
    per neighbourhood); ``neighbours``: k (n - 1 for SecAgg);
    ``bytes_per_client``: mean over participants of bytes sent + received
    (see the module docstring); ``client_seconds``: mean over the timed
    participants (all of them but where :func:`measure_cost` computes some
    together; NaN if none is timed) of the wall seconds of the client's own
    computation, all rounds;
    ``server_seconds``: wall seconds of the server's computation.
    """

    total: np.ndarray
    included: tuple[int, ...]
    threshold: int
    neighbours: int
    bytes_per_client: float
    client_seconds: float
    server_seconds: float


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def threshold_for(group: int) -> int:
    """t for ``group`` clients holding shares of a secret (n for SecAgg, k + 1 for SecAgg+).

    A strict majority, floor(group / 2) + 1, and at least 2 (t = 1 would hand
    every holder the secret itself). A majority keeps any minority of
    colluding clients from reconstructing a survivor's mask key and b_u at once
    and tolerates just under half the group dropping out.
    """
    group = _integer("group", group, 2)
    return max(2, group // 2 + 1)


def neighbours_for(n: int) -> int:
    """SecAgg+'s k for n clients: the smallest even k that survives 30 % dropouts with probability >= 1 - 2**-10.

    Bell et al. 2020 prove k = O(log n) suffices and leave the constant to the
    dropout rate delta and the failure probability; Google's ``fcp/secagg``
    (``graph_parameter_finder.cc``) picks, as here, the smallest even degree of
    a random Harary graph that meets such bounds; Flower's ``SecAggPlusWorkflow``
    has no default (``num_shares`` and ``reconstruction_threshold`` are
    required). Here: with t = :func:`threshold_for` (k + 1) and round(0.3 n)
    clients dropped at random, the union bound over clients of the
    hypergeometric probability that fewer than t of a client's k + 1 group
    survive is <= 2**-10. The bound needs (k + 1) * KL(1/2 || 0.7) ~ ln n + 7,
    so k grows like log n: 12 at n = 20, 48 at 100, 114 at 1000, 152 at 10**4,
    206 at 10**6. n - 1 (the complete graph, SecAgg) when no smaller k does.
    """
    n = _integer("n", n, 2)
    return _neighbours_for(n)


@functools.lru_cache(maxsize=256)
def _neighbours_for(n: int) -> int:
    dropped = round(_DESIGN_DROPOUT * n)
    for k in range(2, n - 1, 2):
        if _failure_bound(n, dropped, k) <= _DESIGN_FAILURE:
            return k
    return n - 1


def _failure_bound(n: int, dropped: int, k: int) -> float:
    """Union bound over clients of P[a needed secret has fewer than t holders left] (random dropouts)."""
    t = threshold_for(k + 1)
    alive = n - dropped
    # A dropped client's secret needs t of its k neighbours; a survivor holds one share itself.
    p_dropped = _hypergeometric_below(n - 1, alive, k, t)
    p_alive = _hypergeometric_below(n - 1, alive - 1, k, t - 1)
    return dropped * p_dropped + alive * p_alive


def _hypergeometric_below(population: int, good: int, draws: int, below: int) -> float:
    """P[X < below], X the good items among ``draws`` drawn without replacement."""
    def log_choose(a: int, b: int) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1) if 0 <= b <= a else -math.inf

    total = log_choose(population, draws)
    terms = (log_choose(good, x) + log_choose(population - good, draws - x) - total for x in range(max(0, below)))
    return sum(math.exp(term) for term in terms if term > -math.inf)


# ---------------------------------------------------------------------------------------------------------------
# Cryptographic building blocks


def _derive(shared: bytes, purpose: bytes) -> bytes:
    """32 bytes from an X25519 shared secret; ``purpose`` separates channel keys from mask seeds."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedlab secagg " + purpose).derive(shared)


def _prg(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """``length`` uniform words from a 32-byte seed: AES-256-CTR keystream (zero nonce: each seed keys one stream)."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(length * np.dtype(dtype).itemsize)), dtype=dtype)


def _add_signed(y: np.ndarray, mask: np.ndarray, positive: bool) -> None:
    """``y += mask`` if ``positive``, else ``y -= mask``, in place (mod the word size): a pairwise mask's sign is
    + on the side of the smaller id, - on the other, so the pair's masks cancel in the sum."""
    if positive:
        y += mask
    else:
        y -= mask


def _encrypt(key: bytes, plaintext: bytes) -> bytes:
    """AES-256-GCM with a random nonce (both directions of a pair use the same key), nonce prepended."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, None)


def _decrypt(key: bytes, message: bytes) -> bytes:
    return AESGCM(key).decrypt(message[:_NONCE_BYTES], message[_NONCE_BYTES:], None)


# Shamir sharing over GF(p), p = 2**31 - 1, of 32-byte secrets cut into nine 30-bit chunks.


def _to_chunks(secret: bytes) -> np.ndarray:
    value = int.from_bytes(secret, "little")
    mask = (1 << _CHUNK_BITS) - 1
    return np.array([(value >> (_CHUNK_BITS * i)) & mask for i in range(_CHUNKS)], dtype=np.int64)


def _from_chunks(chunks: np.ndarray) -> bytes:
    """The 32-byte secret; ValueError when a chunk is not a 30-bit value (shares that do not belong together)."""
    if np.any(chunks >= 1 << _CHUNK_BITS):
        raise ValueError("shares: they do not reconstruct a 32-byte secret")
    value = sum(int(c) << (_CHUNK_BITS * i) for i, c in enumerate(chunks))
    if value >= 1 << 256:
        raise ValueError("shares: they do not reconstruct a 32-byte secret")
    return value.to_bytes(32, "little")


def _field_random(shape: tuple[int, ...]) -> np.ndarray:
    """Uniform elements of GF(p) from os.urandom: 31 random bits, redrawn in the rare case they equal p."""
    values = (np.frombuffer(os.urandom(4 * math.prod(shape)), dtype=np.uint32) & PRIME).astype(np.int64)
    while np.any(values == PRIME):
        bad = np.flatnonzero(values == PRIME)
        values[bad] = np.frombuffer(os.urandom(4 * bad.size), dtype=np.uint32) & PRIME
    return values.reshape(shape)


def _matmul_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b mod p, exactly, for int64 matrices of field elements.

    ``b`` is split into w-bit limbs so that every float64 product sum stays an
    integer below 2**53 (31 + w + bit_length(inner) <= 53): BLAS speed, exact.
    """
    inner = a.shape[1]
    width = 53 - 31 - inner.bit_length()
    if width < 1:
        raise ValueError(f"shares: {inner} terms are more than the exact product supports")
    left = a.astype(np.float64)
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
    for shift in range(0, 31, width):
        limb = ((b >> shift) & ((1 << width) - 1)).astype(np.float64)
        part = (left @ limb).astype(np.int64) % PRIME
        out = (out + part * (1 << shift) % PRIME) % PRIME   # 2**shift < p: each product < 2**62
    return out


def _powers(xs: np.ndarray, count: int) -> np.ndarray:
    """(len(xs), count) matrix of x**j mod p, j = 0..count-1 (the Vandermonde matrix)."""
    rows = np.empty((count, xs.size), dtype=np.int64)
    rows[0] = 1
    for j in range(1, count):
        rows[j] = rows[j - 1] * xs % PRIME
    return rows.T


def _shamir_split(secrets: Sequence[bytes], xs: Sequence[int], threshold: int) -> np.ndarray:
    """Shares of each 32-byte secret at the points ``xs`` (distinct, 1..p-1): int64 (len(xs), 9 * len(secrets)).

    One random polynomial of degree t - 1 per chunk, its constant term the
    chunk; evaluated at every x at once as a Vandermonde product.
    """
    coefficients = _field_random((threshold, _CHUNKS * len(secrets)))
    coefficients[0] = np.concatenate([_to_chunks(s) for s in secrets])
    return _matmul_mod(_powers(np.asarray(xs, dtype=np.int64), threshold), coefficients)


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> np.ndarray:
    """Lagrange weights l_i = prod_{j != i} x_j / (x_j - x_i) mod p, so that f(0) = sum_i l_i f(x_i)."""
    x = np.asarray(xs, dtype=np.int64)
    differences = (x[None, :] - x[:, None]) % PRIME
    np.fill_diagonal(differences, 1)
    denominators = x.copy()                     # l_i = prod_j x_j / (x_i prod_{j != i} (x_j - x_i))
    for column in differences.T:
        denominators = denominators * column % PRIME
    numerator = functools.reduce(lambda acc, v: acc * v % PRIME, (int(v) for v in xs), 1)
    return np.array([numerator * pow(int(d), -1, PRIME) % PRIME for d in denominators], dtype=np.int64)


def _shamir_combine(xs: Sequence[int], shares: np.ndarray) -> np.ndarray:
    """The chunks at 0 of the polynomials through (xs[i], shares[i]); ``shares``: (len(xs), columns) field elements."""
    weights = _lagrange_at_zero(tuple(int(x) for x in xs))
    return _matmul_mod(weights[None, :], np.asarray(shares, dtype=np.int64))[0]


def _share_bytes(share: np.ndarray) -> bytes:
    return share.astype("<u4").tobytes()


def _share_array(message: bytes) -> np.ndarray:
    return np.frombuffer(message, dtype="<u4").astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Parties


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every party knows before round 0: ring, vector length, t, the graph and Shamir points."""

    modulus_bits: int
    length: int
    threshold: int
    graph: Mapping[int, frozenset]      # client -> its neighbours (not itself)
    points: Mapping[int, int]           # client -> its Shamir x, 1..n

    @property
    def dtype(self) -> np.dtype:
        # uint32 words halve the PRG's work when the ring fits; wrapping mod 2**32 or 2**64 is exact mod R
        return np.dtype(np.uint32 if self.modulus_bits <= 32 else np.uint64)

    @property
    def mask(self) -> int:
        return (1 << self.modulus_bits) - 1

    def group(self, client: int) -> frozenset:
        """The holders of ``client``'s shares: its neighbours and itself."""
        return self.graph[client] | {client}


def _timed(method: Callable) -> Callable:
    """Adds the method's wall time to ``self.seconds``: a party's own computation."""
    @functools.wraps(method)
    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
    return timed


class _Client:
    """One client: holds its input and its secrets, answers the server's four rounds."""

    timed = True  # its seconds are a client's (see :class:`_TogetherClient`)

    def __init__(self, client_id: int, value: Optional[np.ndarray], setup: _Setup) -> None:
        self.id = client_id
        self.seconds = 0.0
        self._value = value                  # None for a client that drops out before sending it
        self._setup = setup
        self._channel_sk = self._mask_sk = None
        self._channel_keys: dict[int, bytes] = {}
        self._mask_pks: dict[int, bytes] = {}
        self._b = b""
        self._own_share = np.empty(0)
        self._inbox: dict[int, bytes] = {}

    @_timed
    def advertise_keys(self) -> tuple[bytes, bytes]:
        """Round 0: public keys c (channel) and s (masks), 32 bytes each."""
        self._channel_sk, self._mask_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        return self._channel_sk.public_key().public_bytes_raw(), self._mask_sk.public_key().public_bytes_raw()

    @_timed
    def share_keys(self, keys: Mapping[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Round 1: draws b_u, Shamir-shares b_u and s_u^SK among itself and ``keys``' clients; one ciphertext each."""
        setup = self._setup
        self._b = os.urandom(_KEY_BYTES)
        holders = [self.id] + sorted(keys)
        shares = _shamir_split([self._b, self._mask_sk.private_bytes_raw()],
                               [setup.points[v] for v in holders], setup.threshold)
        self._own_share = shares[0]
        out = {}
        for v, share in zip(holders[1:], shares[1:]):
            channel_pk, self._mask_pks[v] = keys[v]
            key = self._channel_key(v, channel_pk)
            self._channel_keys[v] = key
            out[v] = _encrypt(key, struct.pack("<II", self.id, v) + _share_bytes(share))
        return out

    def _channel_key(self, v: int, channel_pk: bytes) -> bytes:
        """The AES key of the channel to ``v``, agreed from its public key."""
        return _derive(self._channel_sk.exchange(X25519PublicKey.from_public_bytes(channel_pk)), b"channel")

    def _pairwise_mask(self, v: int) -> np.ndarray:
        """PRG(s_uv): the mask this client and ``v`` agree on (the same from both sides)."""
        shared = self._mask_sk.exchange(X25519PublicKey.from_public_bytes(self._mask_pks[v]))
        return _prg(_derive(shared, b"mask"), self._setup.length, self._setup.dtype)

    @_timed
    def masked_input(self, inbox: Mapping[int, bytes]) -> np.ndarray:
        """Round 2: y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod R.

        ``inbox``: the ciphertexts addressed to this client; their senders are
        the neighbours that completed round 1, the ones it masks with.
        """
        setup = self._setup
        self._inbox = dict(inbox)
        y = self._value.astype(setup.dtype)          # a copy: the input itself never leaves the client
        y += _prg(self._b, setup.length, setup.dtype)
        self._add_pairwise_masks(y)
        y &= setup.dtype.type(setup.mask)
        return y

    def _add_pairwise_masks(self, y: np.ndarray) -> None:
        """y += PRG(s_uv) for every inbox neighbour v > u, -= for v < u (mod the word size)."""
        for v in sorted(self._inbox):
            _add_signed(y, self._pairwise_mask(v), v > self.id)

    @_timed
    def unmask(self, survivors: Collection[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Round 3: (b shares, s-key shares), owner id -> 36 bytes.

        ``survivors``: the neighbours whose masked input reached the server.
        For each neighbour, exactly one of its shares goes back: b if it
        survived (its self mask must go), its mask key if not (its pairwise
        masks must go). Never both, which would unmask its input.
        """
        b_shares = {self.id: _share_bytes(self._own_share[:_CHUNKS])}
        s_shares = {}
        survivors = set(survivors)
        for v, message in self._inbox.items():
            plaintext = _decrypt(self._channel_keys[v], message)
            sender, receiver = struct.unpack("<II", plaintext[:2 * _ID_BYTES])
            if (sender, receiver) != (v, self.id):
                raise SecAggAborted(f"secure aggregation stopped at unmasking: client {self.id} received a share "
                                    f"addressed from {sender} to {receiver}")
            body = plaintext[2 * _ID_BYTES:]
            if v in survivors:
                b_shares[v] = body[:_SHARE_BYTES]
            else:
                s_shares[v] = body[_SHARE_BYTES:]
        return b_shares, s_shares


class _Server:
    """The server: routes messages, checks the thresholds, reconstructs and removes the masks.

    It receives only messages (public keys, opaque ciphertexts, masked
    vectors, unmasking shares), never a client's input.
    """

    def __init__(self, setup: _Setup) -> None:
        self.seconds = 0.0
        self._setup = setup
        self.public_keys: dict[int, tuple[bytes, bytes]] = {}      # U1
        self._mail: dict[int, dict[int, bytes]] = {}               # receiver -> sender -> ciphertext
        self.shared: set[int] = set()                              # U2
        self.masked: dict[int, np.ndarray] = {}                    # U3 -> y_u
        self.b_shares: dict[int, dict[int, bytes]] = {}            # owner -> holder -> share
        self.s_shares: dict[int, dict[int, bytes]] = {}
        self.responded: set[int] = set()                           # U5

    # round 0
    @_timed
    def receive_keys(self, client: int, channel_pk: bytes, mask_pk: bytes) -> None:
        self.public_keys[client] = (channel_pk, mask_pk)

    @_timed
    def close_advertise_keys(self) -> None:
        self._require("advertising keys", set(self.public_keys), ())

    @_timed
    def keys_for(self, client: int) -> dict[int, tuple[bytes, bytes]]:
        return {v: self.public_keys[v] for v in self._setup.graph[client] if v in self.public_keys}

    # round 1
    @_timed
    def receive_shares(self, client: int, ciphertexts: Mapping[int, bytes]) -> None:
        self.shared.add(client)
        for receiver, message in ciphertexts.items():
            self._mail.setdefault(receiver, {})[client] = message

    @_timed
    def mail_for(self, client: int) -> dict[int, bytes]:
        return {sender: m for sender, m in self._mail.pop(client, {}).items() if sender in self.shared}

    @_timed
    def close_share_keys(self) -> None:
        self._require("sharing keys", self.shared, ())

    # round 2
    @_timed
    def receive_masked(self, client: int, y: np.ndarray) -> None:
        self.masked[client] = y

    @_timed
    def survivors_for(self, client: int) -> set[int]:
        return set(self._setup.graph[client]) & set(self.masked)

    @_timed
    def close_masked_input(self) -> None:
        self._require("masked input collection", set(self.masked), self._needed())

    # round 3
    @_timed
    def receive_unmasking(self, client: int, b_shares: Mapping[int, bytes], s_shares: Mapping[int, bytes]) -> None:
        if set(b_shares) & set(s_shares):
            raise SecAggAborted(f"secure aggregation stopped at unmasking: client {client} sent both shares "
                                f"for clients {sorted(set(b_shares) & set(s_shares))}")
        self.responded.add(client)
        for owner, share in b_shares.items():
            self.b_shares.setdefault(owner, {})[client] = share
        for owner, share in s_shares.items():
            self.s_shares.setdefault(owner, {})[client] = share

    @_timed
    def aggregate(self) -> np.ndarray:
        """The sum mod R of the masked inputs that arrived, masks removed: uint64."""
        setup = self._setup
        self._require("unmasking", self.responded, self._needed())
        total = np.zeros(setup.length, dtype=setup.dtype)
        for y in self.masked.values():
            total += y
        for seed in self._reconstruct(self.b_shares, sorted(self.masked)).values():
            total -= _prg(seed, setup.length, setup.dtype)
        dropped = [u for u in sorted(self.shared - set(self.masked)) if setup.graph[u] & set(self.masked)]
        for u, secret in self._reconstruct(self.s_shares, dropped).items():
            mask_sk = X25519PrivateKey.from_private_bytes(secret)
            if mask_sk.public_key().public_bytes_raw() != self.public_keys[u][1]:
                raise RuntimeError(f"secure aggregation: the mask key of client {u} did not reconstruct")
            for v in sorted(setup.graph[u] & set(self.masked)):
                shared = mask_sk.exchange(X25519PublicKey.from_public_bytes(self.public_keys[v][1]))
                pairwise = _prg(_derive(shared, b"mask"), setup.length, setup.dtype)
                if u > v:      # v added PRG(s_vu) for u > v and subtracted it for u < v
                    total -= pairwise
                else:
                    total += pairwise
        return (total & setup.dtype.type(setup.mask)).astype(np.uint64)

    def _needed(self) -> list[int]:
        """Clients whose secret the server will need: b_u of survivors, s_u^SK of dropouts with surviving neighbours."""
        arrived = set(self.masked)
        return sorted(arrived) + [u for u in sorted(self.shared - arrived) if self._setup.graph[u] & arrived]

    def _require(self, stage: str, remaining: set[int], needed: Iterable[int]) -> None:
        """SecAggAborted unless t clients remain and t holders of every needed secret remain."""
        t = self._setup.threshold
        if len(remaining) < t:
            raise SecAggAborted(f"secure aggregation stopped at {stage}: {len(remaining)} of "
                                f"{len(self._setup.graph)} clients remain, the threshold is {t}")
        for owner in needed:
            group = self._setup.group(owner)
            left = len(group & remaining)
            if left < t:
                raise SecAggAborted(f"secure aggregation stopped at {stage}: {left} of {len(group)} clients remain "
                                    f"in the neighbourhood of client {owner}, the threshold is {t}")

    def _reconstruct(self, shares: Mapping[int, Mapping[int, bytes]], owners: Sequence[int]) -> dict[int, bytes]:
        """owner -> its 32-byte secret from the first t holders' shares; owners with the same holders in one product."""
        points, t = self._setup.points, self._setup.threshold
        batches: dict[tuple[int, ...], list[int]] = {}
        for owner in owners:
            holders = tuple(sorted(shares[owner], key=points.__getitem__)[:t])
            batches.setdefault(holders, []).append(owner)
        secrets = {}
        for holders, batch in batches.items():
            stacked = np.stack([np.concatenate([_share_array(shares[o][h]) for o in batch]) for h in holders])
            chunks = _shamir_combine([points[h] for h in holders], stacked).reshape(len(batch), _CHUNKS)
            secrets.update({owner: _from_chunks(c) for owner, c in zip(batch, chunks)})
        return secrets


# ---------------------------------------------------------------------------------------------------------------
# The protocol


def _graph(ids: Sequence[int], k: int, seed: int) -> dict[int, frozenset]:
    """Client -> neighbours: complete for k = n - 1, else the random Harary graph H(n, k) (k even)."""
    n = len(ids)
    if k >= n - 1:
        return {u: frozenset(ids) - {u} for u in ids}
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    half = k // 2
    return {u: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d) for i, u in enumerate(order)}


def run_protocol(inputs: Mapping[int, np.ndarray], *, modulus_bits: int, protocol: str = "secagg",
                 participants: Optional[Sequence[int]] = None, dropped_after_input: Collection[int] = (),
                 graph_seed: int = 0, threshold: Optional[int] = None,
                 neighbours: Optional[int] = None) -> SecAggResult:
    """Runs SecAgg or SecAgg+ among the clients and returns the sum the server recovers.

    ``inputs``: client id -> 1-D integer vector with values in [0, 2**modulus_bits),
    all the same length; ``participants``: every client that took part in
    rounds 0-1 (default: the keys of ``inputs``), those not in ``inputs``
    drop out before sending their masked input; ``dropped_after_input``:
    clients whose masked input arrived but that do not answer the unmasking
    round; ``graph_seed``: SecAgg+'s public neighbour graph; ``threshold``,
    ``neighbours``: t and k instead of :func:`threshold_for` and
    :func:`neighbours_for` (k only for SecAgg+: even, or n - 1).

    Raises SecAggAborted when fewer than t clients remain at a stage that needs
    them (SecAgg+: when a needed secret's neighbourhood has fewer than t left),
    ValueError naming the argument for bad arguments.
    """
    return _simulate(inputs, modulus_bits=modulus_bits, protocol=protocol, participants=participants,
                     dropped_after_input=dropped_after_input, graph_seed=graph_seed, threshold=threshold,
                     neighbours=neighbours)[0]


def _simulate(inputs: Mapping[int, np.ndarray], *, modulus_bits: int, protocol: str,
              participants: Optional[Sequence[int]], dropped_after_input: Collection[int], graph_seed: int,
              threshold: Optional[int], neighbours: Optional[int]) -> tuple[SecAggResult, _Server]:
    """run_protocol, also returning the server object (tests look inside it)."""
    setup, values, late = _validate(inputs, modulus_bits, protocol, participants, dropped_after_input,
                                    graph_seed, threshold, neighbours)
    return run_parties(setup, _parties(setup, values, late))


def _parties(setup: _Setup, values: Mapping[int, np.ndarray], late: Collection[int],
             together: Optional["_Together"] = None) -> dict[int, object]:
    """Every client of ``setup``: those without a value drop out before their input, those in ``late`` before
    unmasking; the members of ``together`` are computed together (:class:`_TogetherClient`)."""
    parties = {}
    for u in sorted(setup.graph):
        client = (_TogetherClient(u, values.get(u), setup, together) if together and u in together.members
                  else _Client(u, values.get(u), setup))
        parties[u] = client if u in values and u not in late else _DropsOut(client, before_input=u not in values)
    return parties


class PartyLost(Exception):
    """A client that did not answer a stage of the protocol: from then on it has dropped out."""


class _DropsOut:
    """A simulated client that drops out before sending its masked input, or before unmasking."""

    def __init__(self, client: _Client, before_input: bool) -> None:
        self._client, self._before_input = client, before_input
        self.advertise_keys, self.share_keys = client.advertise_keys, client.share_keys
        self.timed = client.timed

    @property
    def seconds(self) -> float:
        return self._client.seconds

    def masked_input(self, inbox):
        if self._before_input:
            raise PartyLost("dropped out before sending its masked input")
        return self._client.masked_input(inbox)

    def unmask(self, survivors):
        raise PartyLost("dropped out before unmasking")


class _Together:
    """What the untimed clients of a cost measurement (:class:`_TogetherClient`) share. The server's work and every
    message's size are those of the protocol, but any two members skip what only they read or what cancels: their
    channel's AES key is drawn once for the pair instead of agreed by X25519 on each side (only the two of them ever
    decrypt what it encrypts), and two members that both send their masked input leave out the pairwise mask they
    share, which the protocol adds on one side and subtracts on the other so that it cancels in the server's sum. A
    mask a member shares with a timed client, or with a member that drops out before its input (which the server
    must recompute and remove), is the protocol's own."""

    def __init__(self, members: Collection[int]) -> None:
        self.members = frozenset(members)
        self.senders: set[int] = set()                        # members that will send their masked input
        self.channel_keys: dict[tuple[int, int], bytes] = {}  # (low, high) -> key, until the second side takes it
        self.left_out: dict[int, set[int]] = {}               # member -> senders that left out their mask with it


class _TogetherClient(_Client):
    """A client computed with the other members of its :class:`_Together` (see there): not timed, its messages the
    size of :class:`_Client`'s. Only for measuring the timed clients' and the server's cost faster."""

    timed = False

    def __init__(self, client_id: int, value: Optional[np.ndarray], setup: _Setup, together: _Together) -> None:
        super().__init__(client_id, value, setup)
        self._together = together
        if value is not None:
            together.senders.add(client_id)

    def _channel_key(self, v: int, channel_pk: bytes) -> bytes:
        if v not in self._together.members:
            return super()._channel_key(v, channel_pk)
        pair = (min(self.id, v), max(self.id, v))
        key = self._together.channel_keys.pop(pair, None)
        if key is None:  # the first of the two: the other takes it from here
            key = self._together.channel_keys[pair] = os.urandom(_KEY_BYTES)
        return key

    def _add_pairwise_masks(self, y: np.ndarray) -> None:
        """:meth:`_Client._add_pairwise_masks` without the masks shared with other senders among the members."""
        together = self._together
        left_out = together.left_out.pop(self.id, set())
        if not left_out <= set(self._inbox):  # a member left out a mask with it that it does not mask with
            raise RuntimeError(f"secure aggregation: clients {sorted(left_out - set(self._inbox))[:5]} left out the "
                               f"mask they share with client {self.id}, which did not receive their shares")
        for v in sorted(self._inbox):
            if v in together.senders:  # both add the pair's mask to the sum, with opposite signs: left out
                if v not in left_out:
                    together.left_out.setdefault(v, set()).add(self.id)
                continue
            _add_signed(y, self._pairwise_mask(v), v > self.id)


def run_parties(setup: _Setup, parties: Mapping[int, object]) -> tuple[SecAggResult, _Server]:
    """The server's side of the four stages with every client in ``setup``: ``parties[u]`` answers as
    :class:`_Client` does (here, or a site process's stub, :mod:`fedlab.experiment.site_rounds`); a party that raises
    :class:`PartyLost` at a stage has dropped out there. Returns the result and the server object."""
    ids = sorted(setup.graph)
    server = _Server(setup)
    traffic = dict.fromkeys(ids, 0)            # bytes sent + received, per client
    key_message = _ID_BYTES + 2 * _KEY_BYTES
    cipher_message = _ID_BYTES + _NONCE_BYTES + _PLAIN_BYTES + _TAG_BYTES
    packed = math.ceil(setup.length * setup.modulus_bits / 8)

    def answer(u: int, stage: Callable):
        try:
            return stage()
        except PartyLost:
            return None

    for u in ids:                                                         # round 0: AdvertiseKeys
        keys = answer(u, parties[u].advertise_keys)
        if keys is not None:
            server.receive_keys(u, *keys)
            traffic[u] += 2 * _KEY_BYTES
    server.close_advertise_keys()
    for u in sorted(server.public_keys):                                  # round 1: ShareKeys
        keys = server.keys_for(u)
        ciphertexts = answer(u, lambda: parties[u].share_keys(keys))
        if ciphertexts is not None:
            server.receive_shares(u, ciphertexts)
            traffic[u] += key_message * len(keys) + cipher_message * len(ciphertexts)
    server.close_share_keys()
    for u in sorted(server.shared):                                       # round 2: MaskedInputCollection
        inbox = server.mail_for(u)
        y = answer(u, lambda: parties[u].masked_input(inbox))
        if y is not None:
            server.receive_masked(u, y)
            traffic[u] += cipher_message * len(inbox) + packed
    server.close_masked_input()
    for u in sorted(server.masked):                                       # round 3: Unmasking
        survivors = server.survivors_for(u)
        shares = answer(u, lambda: parties[u].unmask(survivors))
        if shares is not None:
            server.receive_unmasking(u, *shares)
            traffic[u] += _ID_BYTES * len(survivors) + (_ID_BYTES + _SHARE_BYTES) * (len(shares[0]) + len(shares[1]))
    total = server.aggregate()

    timed = [parties[u].seconds for u in ids if getattr(parties[u], "timed", True)]
    k = len(next(iter(setup.graph.values())))
    result = SecAggResult(total=total, included=tuple(sorted(server.masked)), threshold=setup.threshold,
                          neighbours=k, bytes_per_client=float(np.mean(list(traffic.values()))),
                          client_seconds=float(np.mean(timed)) if timed else math.nan,
                          server_seconds=server.seconds)
    return result, server


def _integer(name: str, value, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: must be {bounds}, got {value}")
    return value


def make_setup(participants: Sequence[int], length: int, modulus_bits: int, protocol: str, graph_seed: int,
               threshold: Optional[int] = None, neighbours: Optional[int] = None) -> _Setup:
    """What every party knows before round 0, the same wherever it is computed: t, the graph (SecAgg+: drawn
    from the public ``graph_seed``) and the Shamir points of the sorted ``participants``."""
    n = len(participants)
    if protocol == "secagg":
        if neighbours is not None and neighbours != n - 1:
            raise ValueError(f"neighbours: SecAgg links every client to all n - 1 = {n - 1} others, "
                             f"got {neighbours}")
        k = n - 1
    elif neighbours is None:
        k = neighbours_for(n)
    else:
        k = _integer("neighbours", neighbours, 1, n - 1)
        if k % 2 and k != n - 1:
            raise ValueError(f"neighbours: must be even or n - 1 = {n - 1} (a Harary ring), got {k}")
    t = threshold_for(k + 1) if threshold is None else _integer("threshold", threshold, 2, k + 1)
    ids = sorted(int(u) for u in participants)
    return _Setup(modulus_bits=modulus_bits, length=int(length), threshold=t, graph=_graph(ids, k, graph_seed),
                  points={u: i + 1 for i, u in enumerate(ids)})


def new_client(client_id: int, value: np.ndarray, setup: _Setup) -> _Client:
    """One client's role, holding ``value`` (its ring vector; None: it will send no input): what a site runs."""
    return _Client(int(client_id), None if value is None else np.asarray(value, np.uint64), setup)


def _validate(inputs, modulus_bits, protocol, participants, dropped_after_input, graph_seed, threshold,
              neighbours) -> tuple[_Setup, dict[int, np.ndarray], set[int]]:
    """The public setup, the input vectors (uint64) and the late dropouts; ValueError naming the argument."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    modulus_bits = _integer("modulus_bits", modulus_bits, 1, 62)
    graph_seed = _integer("graph_seed", graph_seed, 0)
    id_max = 2 ** (8 * _ID_BYTES) - 1
    values = {_integer("inputs", u, 0, id_max): v for u, v in dict(inputs).items()}
    everyone = list(values) if participants is None else [_integer("participants", u, 0, id_max)
                                                          for u in participants]
    if len(set(everyone)) != len(everyone):
        raise ValueError("participants: ids must be distinct")
    if not 2 <= len(everyone) <= _MAX_CLIENTS:
        raise ValueError(f"participants: must be 2..{_MAX_CLIENTS} clients, got {len(everyone)}")
    stray = sorted(set(values) - set(everyone))
    if stray:
        raise ValueError(f"inputs: clients {stray[:5]} are not in participants")
    late = {_integer("dropped_after_input", u) for u in dropped_after_input}
    if late - set(values):
        raise ValueError(f"dropped_after_input: clients {sorted(late - set(values))[:5]} have no input")

    lengths = set()
    for u, v in values.items():
        array = np.asarray(v)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(f"inputs: client {u}'s vector must be 1-D integers, got {array.dtype} of shape "
                             f"{array.shape}")
        if array.size and (array.min() < 0 or array.max() >= 2 ** modulus_bits):
            raise ValueError(f"inputs: client {u}'s values must be in [0, 2**{modulus_bits}), got "
                             f"{array.min()}..{array.max()}")
        lengths.add(array.size)
        values[u] = array.astype(np.uint64)
    if len(lengths) > 1:
        raise ValueError(f"inputs: vectors must have the same length, got lengths {sorted(lengths)}")

    setup = make_setup(everyone, lengths.pop() if lengths else 0, modulus_bits, protocol, graph_seed, threshold,
                       neighbours)
    return setup, values, late


# ---------------------------------------------------------------------------------------------------------------
# Cost


@measures_time("SecAgg's cost (fedlab.secagg_cost)")
def measure_cost(*, protocols: Sequence[str] = PROTOCOLS, clients: Sequence[int] = (10, 100, 1000),
                 dropout_rates: Sequence[float] = (0.0, 0.1, 0.3), vector_length: int = 7850,
                 modulus_bits: int = 24, seed: int = 0, seeds: Optional[Sequence[int]] = None,
                 processes: Optional[int] = 1, timed_clients: Optional[int] = 10) -> "pandas.DataFrame":
    """One protocol run on random inputs per (protocol, clients, dropout rate): a table of what it cost.

    round(rate * n) clients, drawn with ``seed``, drop out after round 1
    (before sending their masked input): the costly case for the server, which
    must reconstruct their mask keys and recompute their pairwise masks. Inputs
    are uniform in [0, 2**modulus_bits), also drawn with ``seed`` (the same for
    every protocol). Every recovered sum is checked against the plain modular
    sum (RuntimeError if it differs). Columns: protocol, clients, dropout_rate,
    vector_length, modulus_bits, threshold, neighbours, bytes_per_client,
    client_seconds, server_seconds (seconds of wall time).

    ``seeds``: every seed's measurements, one after the other, with a last column ``seed`` (instead of the one
    ``seed``).
    ``processes``: the runs, one per (seed, clients, dropout rate, protocol), spread over that many worker
    processes (None: one per core), the costliest first (:func:`_pairs`: at 1,000 clients a SecAgg run took 16 s
    without dropouts and 37 s with 30 % here, ten clients of each group timed; a SecAgg+ run seconds); every protocol
    of a setting gets the same inputs wherever it runs, and the rows come in the same order. Each process times its
    own runs; spread, the other cores are busy too, which slows a run (shared caches and memory; by 4 % to a fifth
    in the client seconds of two measurements here): the seconds are comparable between protocols within a table,
    not with a table measured in one process.
    ``timed_clients``: how many of the clients that send their input, and how many of those that drop out, are
    timed (drawn with the run's seed; a smaller group: all of it); ``client_seconds`` is the mean over all clients
    with each group's timed mean standing for its group. Every client does the same work as the others of its
    group, so a few stand for all; the untimed ones are computed together (:class:`_Together`: any two of them draw
    their channel key instead of agreeing it and, when both send their input, leave out the mask they share, which
    cancels in the sum; key agreements and masks are most of a run). The timed clients and the server do all of
    their work with every neighbour and every message has the protocol's size, so the bytes counted, the sum
    recovered and checked and the server's work are the same. The server is always timed whole. None: every client
    timed on its own (the slowest).
    """
    import pandas as pd

    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocols: must be among {', '.join(PROTOCOLS)}, got {protocol!r}")
    vector_length = _integer("vector_length", vector_length, 1)
    modulus_bits = _integer("modulus_bits", modulus_bits, 1, 62)
    for rate in dropout_rates:
        if not 0 <= rate < 1:
            raise ValueError(f"dropout_rates: must be in [0, 1), got {rate}")
    clients = [_integer("clients", n, 2) for n in clients]
    each = [_integer("seeds", s, 0) for s in seeds] if seeds is not None else [_integer("seed", seed, 0)]
    if not each:
        raise ValueError("seeds: must name at least one seed, got none")
    if processes is None:
        from ..core.runtime import usable_cores

        processes = usable_cores()
    processes = _integer("processes", processes, 1)
    runs = [(s, n, float(rate), protocol) for s in each for n in clients for rate in dropout_rates
            for protocol in protocols]
    timed = None if timed_clients is None else _integer("timed_clients", timed_clients, 1)
    args = (vector_length, modulus_bits, timed)
    if processes == 1 or len(runs) < 2:
        rows = [_cost_row(*run, *args) for run in runs]
    else:
        rows = _spread_cost(runs, args, processes)
    return pd.DataFrame([dict(row, seed=run[0]) if seeds is not None else row for run, row in zip(runs, rows)])


def _pairs(n: int, protocol: str) -> int:
    """The pairs of neighbours of a run of ``protocol`` with ``n`` clients, n k: what its time grows with. Each pair
    costs the clients X25519 key agreements (a channel key and a mask seed) and a mask expanded, and the server the
    mask again when one of the two drops out; two untimed clients agree no channel key, and no mask when both send
    their input (:class:`_Together`), so with few clients timed the dropped clients' pairs are most of a run."""
    return n * (n - 1 if protocol == "secagg" else _neighbours_for(n))


def _cost_row(seed: int, n: int, rate: float, protocol: str, vector_length: int, modulus_bits: int,
              timed_clients: Optional[int]) -> dict:
    """:func:`measure_cost`'s row of one protocol in one (seed, clients, dropout rate) setting; the inputs, who
    drops out and who is timed are drawn from the setting alone, so every protocol gets the same."""
    rng = np.random.default_rng([seed, n, round(rate * 10 ** 6)])
    vectors = rng.integers(0, 2 ** modulus_bits, size=(n, vector_length), dtype=np.uint64)
    dropped = set(rng.choice(n, size=round(rate * n), replace=False).tolist())
    inputs = {u: vectors[u] for u in range(n) if u not in dropped}
    expected = vectors[sorted(inputs)].sum(axis=0, dtype=np.uint64) & np.uint64(2 ** modulus_bits - 1)
    groups = [sorted(inputs), sorted(dropped)]  # each group's clients do the same work
    if timed_clients is None:
        timed = [set(g) for g in groups]
    else:
        timed = [set(rng.choice(g, size=min(timed_clients, len(g)), replace=False).tolist()) if g else set()
                 for g in groups]
    setup, values, late = _validate(inputs, modulus_bits, protocol, range(n), (), 0, None, None)
    parties = _parties(setup, values, late, _Together(set(range(n)) - timed[0] - timed[1]))
    result, _ = run_parties(setup, parties)
    if not np.array_equal(result.total, expected):
        raise RuntimeError(f"{protocol} with {n} clients, dropout {rate}, seed {seed}: the recovered sum "
                           "differs from the plain modular sum")
    # the mean over all clients, each group's timed clients standing for the group
    client_seconds = sum(len(g) * float(np.mean([parties[u].seconds for u in t]))
                         for g, t in zip(groups, timed) if g) / n
    return dict(protocol=protocol, clients=n, dropout_rate=float(rate), vector_length=vector_length,
                modulus_bits=modulus_bits, threshold=result.threshold, neighbours=result.neighbours,
                bytes_per_client=result.bytes_per_client, client_seconds=client_seconds,
                server_seconds=result.server_seconds)


def _spread_cost(runs: list, args: tuple, processes: int) -> list:
    """:func:`_cost_row` of every run in ``processes`` worker processes, the costliest first
    (:func:`_pairs`: the last to start are short, so no core waits long at the end); in order. A run's
    error is raised as soon as it comes; the wait ends when no run finishes within the wait limit."""
    import concurrent.futures

    from ..core.runtime import wait_limit
    from ..core.spawning import WITHOUT_MAIN, quiet_worker, stop_pool

    # the most pairs first, then the higher dropout rate (the server recomputes more masks)
    order = sorted(range(len(runs)), key=lambda i: (-_pairs(runs[i][1], runs[i][3]), -runs[i][2]))
    pool = concurrent.futures.ProcessPoolExecutor(min(processes, len(runs)), mp_context=WITHOUT_MAIN,
                                                  initializer=quiet_worker)
    limit, results, pending = wait_limit(), {}, set()
    try:
        futures = {pool.submit(_cost_row, *runs[i], *args): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=limit,
                                                    return_when=concurrent.futures.FIRST_EXCEPTION)
            if not done:
                raise TimeoutError(f"secagg_cost: no run (seed, clients, dropout rate, protocol) finished within "
                                   f"{limit:g} s (FEDLAB_WAIT_LIMIT_S) in the worker processes; stopped them")
            for future in done:
                results[futures[future]] = future.result()  # a worker's error, raised here
        return [results[i] for i in range(len(runs))]
    finally:
        stop_pool(pool, kill=bool(pending), limit=limit)  # an error or an interrupt: the rest abandoned
