"""Paillier backend: packed (BatchCrypt-style), DJN-randomised, CRT-decrypted, threaded.

Roles and keys
--------------
The *result holder* generates the key pair and keeps the secret key (the primes ``p``,
``q``, wrapped in :class:`privagg.SecretKey`); clients and the aggregator only ever see
the public key ``(n, h)``. Clients encrypt, the aggregator multiplies ciphertexts
(adds plaintexts) without any key material, the holder decrypts the single aggregate.
In :meth:`PaillierBackend.setup` one process plays the trusted dealer; across machines
use :meth:`PaillierBackend.keygen` on the holder and :meth:`PaillierBackend.session`
on every party (clients and aggregator without the secret key). Clients must check the
public key's fingerprint (or the session's ``params_id``) against the holder's, obtained
over an authenticated channel. The aggregator must be honest-but-curious: the holder
decrypts whatever it is given as "the aggregate" (``docs/backends/paillier.md``).

Scheme (g = n + 1, Damgard-Jurik-Nielsen randomness, s = 1)
----------------------------------------------------------
* keygen: ``p, q`` random ``key_bits/2``-bit primes ``= 3 (mod 4)`` from the injected
  Rng (top two bits set so ``n = pq`` has exactly ``key_bits`` bits; ``n`` a Blum
  integer, as ``h = -x**2`` assumes); ``x`` uniform in ``Z_n^*``, ``h = -x**2 mod n``.
  3072 bits by default (~128-bit security, NIST SP 800-57 Part 1 Table 2); 2048
  (~112-bit) by explicit choice. Public key ``(n, h)``; every party computes
  ``h_s = h**n mod n**2`` itself when it loads the key, so ``h_s`` is an n-th residue
  by construction (a supplied ``h_s`` such as ``1 + n`` would make ciphertexts
  readable: it cannot be expressed).
* encrypt ``m`` in ``[0, n)``: ``c = (1 + m*n) * h_s**a mod n**2`` with ``a`` uniform in
  ``[0, 2**ceil(key_bits/2))``. ``h_s**a = (h**a)**n``, so this is textbook Paillier with
  ``r = h**a mod n``, the DJN short-exponent variant. ``h_s**a`` uses a fixed-base
  table (8-bit windows): ``ceil(key_bits/16)`` modular multiplications, no squarings.
* decrypt: CRT, ``m_p = L_p(c**(p-1) mod p**2) * h_p mod p`` (likewise ``q``), combined
  with ``p**-1 mod q`` (Paillier 1999, sec. 7), as in phe's ``raw_decrypt``.

Values are quantised with the shared :class:`~privagg.encoding.FixedPointEncoder` at a
fixed public scale (no per-value exponent: phe's ``EncryptedNumber.exponent`` leaks
magnitude, nothing here does) and packed into slots; see
:mod:`privagg.backends._packing` for the slot-layout maths and ``docs/backends/paillier.md``.

Parallelism: gmpy2 releases the GIL inside multiplications and ``powmod`` when its
context sets ``allow_release_gil``; encryption and decryption run in a thread pool of
``workers`` threads (default ``os.cpu_count()``), so no key material ever leaves the
process.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, TypeVar

import gmpy2
import numpy as np
from phe import paillier as phe_paillier

from privagg._oneshot import OneShotSession
from privagg._rng import Rng, SystemRng
from privagg.backends._packing import MARGIN_BITS, SlotLayout
from privagg.encoding import FixedPointEncoder, noise_headroom
from privagg.envelope import PayloadReader, PayloadWriter, Scheme
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    MissingKeyError,
    ParameterMismatchError,
)
from privagg.keys import NoProtection, Protection, SecretKey, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, check_setup_args

__all__ = ["KEY_SIZES", "PaillierBackend", "PaillierPublicKey", "load_secret_key"]

#: the public key sizes (bits of n)
KEY_SIZES = (2048, 3072)
_SCHEME = "paillier"
# v2: the key carries h and every party derives h_s (v1 carried h_s, unverifiable).
_PK_TAG = "paillier-pk/v2"
_SK_TAG = "paillier-sk/v2"
_BODY_VERSION = 1
_WINDOW = 8  # fixed-base window (bits); rows are bytes of the exponent
_TABLE_MIN_CIPHERTEXTS = 32  # below this, plain powmod beats building a table
_MIN_TEST_KEY_BITS = 256
# Largest canonical public-key encoding accepted (tag, size, n and h of the largest
# supported modulus, with room for length prefixes).
_MAX_PK_BYTES = 64 + 2 * (max(KEY_SIZES) // 8 + 16)
_EPS = 2.0**-52

_T = TypeVar("_T")
_R = TypeVar("_R")


# -- small helpers ------------------------------------------------------------------------
def _rand_int(rng: Rng, bits: int) -> int:
    """Uniform integer in ``[0, 2**bits)`` from ``rng``."""
    nbytes = (bits + 7) // 8
    return int.from_bytes(rng.random_bytes(nbytes), "big") >> (8 * nbytes - bits)


def _gen_prime(bits: int, rng: Rng) -> int:
    """A uniformly chosen ``bits``-bit probable prime ``= 3 (mod 4)`` with its two top
    bits set.

    ``p = q = 3 (mod 4)`` makes ``n`` a Blum integer, the condition DJN's
    ``h = -x^2 mod n`` assumes (Damgard, Jurik, Nielsen, IJIS 2010, the short-exponent
    variant; review #11, finding 11): ``-1`` is then a non-residue modulo both primes with Jacobi symbol
    ``+1`` (see :func:`_check_blum`). Setting the two low bits draws uniformly among
    such candidates. Candidates are drawn independently (no ``next_prime`` walk, which
    favours primes after long gaps); each is tested with GMP's BPSW + Miller-Rabin
    (``is_prime(c, 64)``).
    """
    while True:
        cand = _rand_int(rng, bits) | (3 << (bits - 2)) | 3
        if gmpy2.is_prime(cand, 64):
            return cand


def _parallel_map(
    fn: Callable[[list[_T]], list[_R]], items: list[_T], workers: int
) -> list[_R]:
    """``fn`` over chunks of ``items`` in ``workers`` threads (gmpy2 releases the GIL)."""
    if workers <= 1 or len(items) < 2 * workers:
        return fn(items)
    n_chunks = min(len(items), 4 * workers)
    size = -(-len(items) // n_chunks)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="privagg-paillier"
    ) as ex:
        parts = list(ex.map(fn, chunks))
    return [x for part in parts for x in part]


def _gil_free() -> Any:
    """A gmpy2 context in which mpz arithmetic may release the GIL."""
    return gmpy2.context(allow_release_gil=True)


# -- public key ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PaillierPublicKey:
    """The public key ``(n, h)`` every party holds.

    Only ``n`` and ``h`` are published (and fingerprinted); the DJN randomiser base
    ``h_s = h**n mod n**2`` is derived here, once, when the key is built or loaded. So
    ``h_s`` is always an n-th residue: nobody can hand a party a base such as
    ``h_s = 1 + n`` (not an n-th residue), under which ``c = 1 + (m + a)*n`` would be
    readable without the secret key.

    Attributes:
        n: the modulus ``p*q``.
        h: the DJN generator, a unit modulo ``n`` other than ``1`` and ``n - 1``
            (honest keys use ``h = -x**2 mod n``).
        key_bits: bits of ``n``.
        hs: derived, ``h**n mod n**2`` (not an argument, not serialised).
    """

    n: int
    h: int
    key_bits: int
    hs: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, h = self.n, self.h
        for name, v in (("n", n), ("h", h), ("key_bits", self.key_bits)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigurationError(f"{name} must be an int")
        if n.bit_length() != self.key_bits or n % 2 == 0:
            raise ConfigurationError(f"n must be an odd {self.key_bits}-bit modulus")
        # h = 1 or h = -1 give h_s = +-1 (no randomness at all); other elements of small
        # order cannot be found without factoring n. An h >= n (for instance a v1-style
        # h_s, or 1 + n) is refused: the base is canonical in [2, n - 2].
        if not (1 < h < n - 1) or gmpy2.gcd(h, n) != 1:
            raise ConfigurationError("h must be a unit modulo n in [2, n - 2]")
        object.__setattr__(self, "hs", int(gmpy2.powmod(h, n, gmpy2.mpz(n) * n)))

    @property
    def phe(self) -> phe_paillier.PaillierPublicKey:
        """The same key as a ``phe`` public key (g = n + 1)."""
        return phe_paillier.PaillierPublicKey(self.n)

    @property
    def ciphertext_bytes(self) -> int:
        """Fixed width of one serialised ciphertext: ``ceil(2*key_bits / 8)``."""
        return (2 * self.key_bits + 7) // 8

    @property
    def exponent_bits(self) -> int:
        """Bits of the DJN exponent ``a``: ``ceil(key_bits / 2)``."""
        return (self.key_bits + 1) // 2

    def to_bytes(self) -> bytes:
        """Canonical public-key bytes ``(key_bits, n, h)``; what the fingerprints cover."""
        return (
            PayloadWriter()
            .text(_PK_TAG)
            .u32(self.key_bits)
            .int_big(self.n)
            .int_big(self.h)
            .getvalue()
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        expected_fingerprint: bytes | None = None,
        key_bits: int | None = None,
    ) -> PaillierPublicKey:
        """Decode :meth:`to_bytes`; any malformation raises DeserializationError.

        Every check that costs nothing runs before the one expensive step, deriving
        ``h_s = h**n mod n**2`` (security review #11, finding 8), in this order: the
        length of ``data`` (at most a 3072-bit key's encoding), ``expected_fingerprint``
        over the raw bytes, the declared size (``key_bits`` when given, else a
        supported size), ``n``'s exact bit length, and the canonical encoding. So an
        attacker-sized ``n`` (the reviewer's 4 KB key cost 11.7 s of CPU) or a key other
        than the trusted one is refused in microseconds.

        Args:
            data: the public-key bytes (from an untrusted channel, typically).
            expected_fingerprint: :attr:`fingerprint` obtained from a trusted source
                (the result holder). A fully substituted key (an attacker's own ``n``)
                is well formed and cannot be detected any other way.
            key_bits: the modulus size this party expects (the session's, e.g.
                :attr:`PaillierBackend.effective_key_bits`); ``None`` accepts any
                supported size.

        Raises:
            DeserializationError: malformed bytes, a size outside the supported range,
                a non-canonical encoding, an ``h`` that is not a unit in ``[2, n - 2]``,
                or the pre-v2 encoding (which carried ``h_s`` itself).
            ParameterMismatchError: the key does not match ``expected_fingerprint``,
                or its declared size is not ``key_bits``.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > (
            _MAX_PK_BYTES
        ):
            raise DeserializationError()
        raw = bytes(data)
        # The encoding is canonical (checked below), so the fingerprint of the raw
        # bytes is the key's fingerprint: a mismatch needs no parsing at all.
        if expected_fingerprint is not None and not hmac.compare_digest(
            fingerprint(b"paillier/public-key", raw), bytes(expected_fingerprint)
        ):
            raise ParameterMismatchError(
                "the Paillier public key does not match the trusted fingerprint"
            )
        try:
            r = PayloadReader(raw)
            if r.text() != _PK_TAG:
                raise DeserializationError()
            bits = r.u32()
            if bits not in KEY_SIZES and not (
                _MIN_TEST_KEY_BITS <= bits <= max(KEY_SIZES)
            ):
                raise DeserializationError()
            if key_bits is not None and bits != key_bits:
                raise ParameterMismatchError(
                    f"the Paillier public key has {bits} bits, expected {key_bits}"
                )
            n, h = r.int_big(), r.int_big()
            r.done()
            if n.bit_length() != bits or h.bit_length() > bits:
                raise DeserializationError()
            canonical = (
                PayloadWriter().text(_PK_TAG).u32(bits).int_big(n).int_big(h)
            ).getvalue()
            if canonical != raw:  # one encoding per key
                raise DeserializationError()
            return cls(n, h, bits)  # the only big-integer work: h**n mod n**2
        except (DeserializationError, ParameterMismatchError):
            raise
        except Exception:
            raise DeserializationError() from None

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 fingerprint of :meth:`to_bytes` (public)."""
        return fingerprint(b"paillier/public-key", self.to_bytes())

    def __repr__(self) -> str:
        return (
            f"PaillierPublicKey(bits={self.key_bits}, fp={self.fingerprint[:4].hex()})"
        )


# -- private key material -----------------------------------------------------------------
class _PrivateMaterial:
    """The primes and the CRT constants. Lives only inside a :class:`SecretKey`."""

    __slots__ = ("_hp", "_hq", "_p", "_p2", "_pinv", "_q", "_q2", "phe", "public")

    def __init__(self, public: PaillierPublicKey, p: int, q: int) -> None:
        if p == q or p * q != public.n:
            raise ConfigurationError("the primes do not match the public key")
        self.public = public
        # phe's key type; it orders p < q and precomputes h_p, h_q, p^-1 mod q.
        self.phe = phe_paillier.PaillierPrivateKey(public.phe, p, q)
        k = self.phe
        self._p, self._q = gmpy2.mpz(k.p), gmpy2.mpz(k.q)
        self._p2, self._q2 = gmpy2.mpz(k.psquare), gmpy2.mpz(k.qsquare)
        self._hp, self._hq = gmpy2.mpz(k.hp), gmpy2.mpz(k.hq)
        self._pinv = gmpy2.mpz(k.p_inverse)

    def decrypt_many(self, cts: list[Any]) -> list[Any]:
        """CRT decryption of each ciphertext (mpz) to its plaintext in ``[0, n)``."""
        p, q, p2, q2 = self._p, self._q, self._p2, self._q2
        hp, hq, pinv = self._hp, self._hq, self._pinv
        pm1, qm1 = p - 1, q - 1
        out = []
        with _gil_free():
            for c in cts:
                mp = (gmpy2.powmod(c % p2, pm1, p2) - 1) // p * hp % p
                mq = (gmpy2.powmod(c % q2, qm1, q2) - 1) // q * hq % q
                out.append(mp + ((mq - mp) * pinv % q) * p)
        return out

    def export(self) -> bytes:
        """The secret key as bytes (used only by :meth:`SecretKey.to_bytes`)."""
        return (
            PayloadWriter()
            .text(_SK_TAG)
            .blob(self.public.to_bytes())
            .int_big(int(self._p))
            .int_big(int(self._q))
            .getvalue()
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("Paillier private key material cannot be pickled")

    def __repr__(self) -> str:
        return f"<Paillier private key for {self.public!r}>"


def _check_blum(p: int, q: int) -> None:
    """Refuse primes that do not make a Blum integer (``p = q = 3 mod 4``).

    DJN's ``h = -x**2 mod n`` assumes it (review #11, finding 11): then ``-1`` is a
    non-residue modulo ``p`` and ``q`` with Jacobi symbol ``+1``, so ``h`` lies in the
    Jacobi-symbol-1 subgroup ``J_n`` and outside the squares, the setting in which DJN
    state their short-exponent variant.

    Raises:
        ConfigurationError: ``p`` or ``q`` is not ``3 mod 4``.
    """
    if p % 4 != 3 or q % 4 != 3:
        raise ConfigurationError(
            "not a Blum modulus (p = q = 3 mod 4 is required by DJN's h = -x^2); "
            "generate a new key"
        )


def _check_key_structure(public: PaillierPublicKey, p: int, q: int) -> None:
    """Every property of ``n = p*q`` and ``h`` that the secret key lets one verify.

    The primes multiply to ``n`` and are distinct, balanced (``key_bits/2`` bits
    each, as :func:`_keygen` makes them) and far apart (no Fermat factoring); both
    are probable primes (GMP's BPSW plus Miller-Rabin); ``n`` is a Blum integer
    (:func:`_check_blum`); ``gcd(n, phi(n)) = 1`` (``g = n + 1`` decryption); and ``h``
    is a non-residue modulo both primes, i.e. ``-h`` is a square: the shape of
    ``h = -x**2``. Costs a few milliseconds (four Legendre symbols, two primality
    tests); run when a secret key is loaded.

    Raises:
        ConfigurationError: any property fails (the message names which, never a
            value).
    """
    bits = public.key_bits
    half = bits // 2
    if sorted((p.bit_length(), q.bit_length())) != [half, bits - half]:
        raise ConfigurationError(f"the primes are not {half}-bit primes")
    if p == q or p * q != public.n:
        raise ConfigurationError("the primes do not match the public key")
    if abs(p - q) >> (half - 100 if half > 128 else half // 2) == 0:
        raise ConfigurationError("the primes are too close (Fermat factoring)")
    _check_blum(p, q)
    if not (gmpy2.is_prime(p, 32) and gmpy2.is_prime(q, 32)):
        raise ConfigurationError("a factor of n is not prime")
    if math.gcd(public.n, (p - 1) * (q - 1)) != 1:
        raise ConfigurationError("gcd(n, phi(n)) != 1")
    h = public.h
    if gmpy2.legendre(h % p, p) != -1 or gmpy2.legendre(h % q, q) != -1:
        raise ConfigurationError("h is not of the form -x^2 mod n")


def _secret_key(material: _PrivateMaterial) -> SecretKey[_PrivateMaterial]:
    return SecretKey(
        _SCHEME,
        material,
        public_fingerprint=material.public.fingerprint,
        export=_PrivateMaterial.export,
    )


def load_secret_key(
    data: bytes, protection: Protection | None = None
) -> SecretKey[Any]:
    """Import a key exported with ``secret_key.to_bytes(protection=...)``.

    Args:
        data: the exported bytes.
        protection: the protection it was exported under (``NoProtection()`` by default;
            pass ``PasswordProtection(password)`` for a password-protected export).

    Raises:
        DeserializationError: malformed, tampered, or not a Paillier key.
        ConfigurationError: a well-formed key whose structure is refused (review #11,
            finding 11): primes that are not ``3 mod 4`` (earlier versions drew
            odd primes, Blum one time in four: generate a new key), not prime,
            unbalanced or too close, ``gcd(n, phi(n)) != 1``, or an ``h`` not of the
            form ``-x**2``. See :func:`_check_key_structure`.
    """
    scheme, public_fp, secret = (protection or NoProtection()).unwrap(data)
    if scheme != _SCHEME:
        raise DeserializationError()
    try:
        r = PayloadReader(secret)
        if r.text() != _SK_TAG:
            raise DeserializationError()
        public = PaillierPublicKey.from_bytes(r.blob())
        p, q = r.int_big(), r.int_big()
        r.done()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if not hmac.compare_digest(public.fingerprint, public_fp):
        raise DeserializationError()
    _check_key_structure(public, p, q)  # review #11, finding 11
    return _secret_key(_PrivateMaterial(public, p, q))


def _keygen(key_bits: int, rng: Rng) -> tuple[PaillierPublicKey, SecretKey[Any]]:
    half = key_bits // 2
    while True:
        p = _gen_prime(half, rng)
        q = _gen_prime(key_bits - half, rng)
        n = p * q
        # |p - q| large (Fermat factoring), n exactly key_bits, gcd(n, phi(n)) = 1
        if abs(p - q) >> (half - 100 if half > 128 else half // 2) == 0:
            continue
        if n.bit_length() != key_bits or math.gcd(n, (p - 1) * (q - 1)) != 1:
            continue
        break
    while True:
        x = _rand_int(rng, key_bits + 64) % n
        if x > 1 and math.gcd(x, n) == 1:
            break
    h = (-x * x) % n
    public = PaillierPublicKey(n, h, key_bits)  # derives h_s = h**n mod n**2
    # true by construction (Blum primes from _gen_prime, h = -x^2): a guard, so every
    # key made here passes the checks load_secret_key applies
    _check_key_structure(public, p, q)
    return public, _secret_key(_PrivateMaterial(public, p, q))


# -- encryption primitives (also the known-answer hooks) --------------------------------------
def _encrypt_with(n: int, m: int, r: int) -> int:
    """Textbook Paillier with g = n + 1: ``(1 + m*n) * r**n mod n**2``. Test hook."""
    nn = gmpy2.mpz(n) * n
    return int((1 + gmpy2.mpz(m) * n) * gmpy2.powmod(r, n, nn) % nn)


def _encrypt_djn(n: int, hs: int, m: int, a: int) -> int:
    """DJN encryption ``(1 + m*n) * hs**a mod n**2`` with plain powmod. Test hook."""
    nn = gmpy2.mpz(n) * n
    return int((1 + gmpy2.mpz(m) * n) * gmpy2.powmod(hs, a, nn) % nn)


class _FixedBase:
    """``base**e mod modulus`` for ``e < 2**exp_bits`` by 8-bit fixed-base windows.

    Row ``i`` holds ``base**(d * 256**i)`` for ``d = 0..255``; an exponentiation is one
    multiplication per non-zero byte of ``e``.
    """

    __slots__ = ("_mod", "_nbytes", "_rows")

    def __init__(self, base: int, modulus: int, exp_bits: int, workers: int) -> None:
        self._mod = mod = gmpy2.mpz(modulus)
        self._nbytes = nbytes = (exp_bits + 7) // 8
        bases = [gmpy2.mpz(base) % mod]
        with _gil_free():
            for _ in range(nbytes - 1):
                b = bases[-1]
                for _ in range(_WINDOW):
                    b = b * b % mod
                bases.append(b)

        def fill(bs: list[Any]) -> list[list[Any]]:
            rows = []
            with _gil_free():
                for b in bs:
                    row = [gmpy2.mpz(1), b]
                    for _ in range(2, 1 << _WINDOW):
                        row.append(row[-1] * b % mod)
                    rows.append(row)
            return rows

        self._rows: list[list[Any]] = _parallel_map(fill, bases, workers)

    def pow(self, e: int) -> Any:
        """``base**e mod modulus``.

        Always one multiplication per exponent byte (zero bytes included), so the
        operation count does not depend on ``e``. Not constant-time at the cache level
        (neither is GMP's ``mpz_powm`` nor phe): keep clients in their own processes.
        """
        rows, mod = self._rows, self._mod
        digits = e.to_bytes(self._nbytes, "little")
        acc = rows[0][digits[0]]
        for i in range(1, self._nbytes):
            acc = acc * rows[i][digits[i]] % mod
        return acc


_TABLES: dict[tuple[int, int], _FixedBase] = {}
_TABLES_LOCK = threading.Lock()
_TABLES_MAX = 2  # public-key tables kept per process (17 MB each at 2048 bits)


def _fixed_base_for(public: PaillierPublicKey, workers: int) -> _FixedBase:
    """The process-wide fixed-base table of ``public.hs`` (public data only)."""
    key = (public.n, public.hs)
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = _FixedBase(
                public.hs, public.n * public.n, public.exponent_bits, workers
            )
            while len(_TABLES) >= _TABLES_MAX:
                _TABLES.pop(next(iter(_TABLES)))
            _TABLES[key] = table
        return table


# -- codecs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    """Public parameters shared by the three codecs."""

    public: PaillierPublicKey
    slots: SlotLayout
    encoder: FixedPointEncoder  # bound = value bound * max_weight (weighted values)
    bound: float
    clip: bool
    max_weight: float
    max_clients: int
    noise: NoiseShare | None
    workers: int

    @property
    def n_ciphertexts(self) -> int:
        return self.slots.n_plaintexts


def _write_body(params: _Params, cts: Sequence[Any]) -> bytes:
    width = params.public.ciphertext_bytes
    blob = b"".join(int(c).to_bytes(width, "big") for c in cts)
    return PayloadWriter().u8(_BODY_VERSION).u32(len(cts)).blob(blob).getvalue()


def _read_body(params: _Params, body: bytes) -> list[Any]:
    """Parse and range-check a body: ``n_ciphertexts`` integers in ``[1, n**2)``."""
    try:
        r = PayloadReader(body)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u32()
        blob = r.blob_view()
        r.done()
        width = params.public.ciphertext_bytes
        if count != params.n_ciphertexts or len(blob) != count * width:
            raise DeserializationError()
        nn = params.public.n * params.public.n
        out = []
        for i in range(count):
            c = int.from_bytes(blob[i * width : (i + 1) * width], "big")
            if not 0 < c < nn:
                raise DeserializationError()
            out.append(gmpy2.mpz(c))
        return out
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None


class _ClientCodec:
    """Client side: clip/check, weight, quantise, pack, encrypt. Public key only."""

    def __init__(self, params: _Params) -> None:
        self.params = params
        self._table: _FixedBase | None = None

    def _fixed_base(self) -> _FixedBase:
        if self._table is None:
            self._table = _fixed_base_for(self.params.public, self.params.workers)
        return self._table

    def encode(self, update: FloatVector, weight: float, rng: Rng) -> list[int]:
        """Everything before encryption: returns the packed plaintexts (mod n).

        Raises:
            ConfigurationError: NaN/Inf values or a negative/non-finite weight.
            EncodingOverflowError: a value beyond the bound (without ``clip``), a weight
                beyond ``max_weight``, or a (noisy) value that does not fit its slot.
        """
        p = self.params
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise ConfigurationError(f"weight must be finite and >= 0, got {weight!r}")
        if w > p.max_weight:
            raise EncodingOverflowError(
                f"weight {w} exceeds the session's max_weight {p.max_weight}; nothing was encrypted"
            )
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.size != p.slots.n_values:
            raise ConfigurationError(
                f"expected {p.slots.n_values} values, got {x.size}"
            )
        if not np.isfinite(x).all():
            raise ConfigurationError("cannot encode NaN or infinite values")
        if p.clip:
            x = np.clip(x, -p.bound, p.bound)
        elif x.size and float(np.max(np.abs(x))) > p.bound:
            raise EncodingOverflowError(
                f"a value exceeds the bound {p.bound}; clip the update first or use clip=True"
            )
        # |w*x| <= max_weight*bound exactly, and float rounding is monotone, so the
        # weighted encoder (bound = max_weight*bound) never rejects it.
        ints = p.encoder.encode(w * x, rng).values
        if p.noise is not None:
            noise = np.asarray(
                p.noise.sample_encoded(x.size, scale=p.encoder.scale, rng=rng),
                dtype=np.int64,
            )
            ints = ints + noise
        n = p.public.n
        return [m % n for m in p.slots.pack(ints)]

    def encrypt(self, plaintexts: list[int], rng: Rng) -> list[Any]:
        """DJN-encrypt packed plaintexts; the exponents ``a`` come from ``rng``."""
        pk = self.params.public
        ebits = pk.exponent_bits
        ebytes = (ebits + 7) // 8
        raw = rng.random_bytes(ebytes * len(plaintexts))
        shift = 8 * ebytes - ebits
        exps = [
            int.from_bytes(raw[i * ebytes : (i + 1) * ebytes], "big") >> shift
            for i in range(len(plaintexts))
        ]
        n = gmpy2.mpz(pk.n)
        nn = n * n
        hs = gmpy2.mpz(pk.hs)
        use_table = len(plaintexts) >= _TABLE_MIN_CIPHERTEXTS or self._table is not None
        table = self._fixed_base() if use_table else None

        def enc(items: list[tuple[int, int]]) -> list[Any]:
            out = []
            with _gil_free():
                for m, a in items:
                    rn = table.pow(a) if table is not None else gmpy2.powmod(hs, a, nn)
                    out.append((1 + m * n) * rn % nn)
            return out

        return _parallel_map(
            enc, list(zip(plaintexts, exps, strict=True)), self.params.workers
        )

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        """Encode then encrypt one weighted update (all checks happen before encryption)."""
        plaintexts = self.encode(update, weight, rng)
        return _write_body(self.params, self.encrypt(plaintexts, rng))

    def __repr__(self) -> str:
        return f"<Paillier client codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False)
class _CombineCodec:
    """Aggregator side: multiply ciphertexts mod n**2. Public key only."""

    params: _Params

    def combine(self, bodies: Sequence[bytes]) -> bytes:
        """Product of the contributions, position by position.

        Raises:
            EncodingOverflowError: more contributions than the slot headroom allows.
            DeserializationError: a malformed body, a ciphertext outside ``[1, n**2)``,
                or one sharing a factor with ``n`` (checked on the product: ``p`` divides
                the product mod ``n**2`` iff it divides one factor).
        """
        p = self.params
        if len(bodies) > p.max_clients:
            raise EncodingOverflowError(
                f"{len(bodies)} contributions exceed the slot headroom for {p.max_clients}"
            )
        if not bodies:
            raise DeserializationError()
        acc = _read_body(p, bodies[0])
        nn = gmpy2.mpz(p.public.n) ** 2
        for b in bodies[1:]:
            cts = _read_body(p, b)
            acc = [x * y % nn for x, y in zip(acc, cts, strict=True)]
        n = gmpy2.mpz(p.public.n)
        if any(gmpy2.gcd(c, n) != 1 for c in acc):
            raise DeserializationError()
        return _write_body(p, acc)

    def __repr__(self) -> str:
        return f"<Paillier combine codec {self.params.public!r}>"


@dataclass(frozen=True, repr=False)
class _RecoverCodec:
    """Holder side: CRT-decrypt, restore the offset, unpack, decode."""

    params: _Params
    secret_key: SecretKey[Any]

    def recover(self, body: bytes, n_contributions: int) -> FloatVector:
        """Decrypt the aggregate and return the float sum.

        Raises:
            EncodingOverflowError: more contributors than the headroom allows.
            DeserializationError: malformed body, or a plaintext outside the packed range
                (wrong key or tampered ciphertext; false accept <= 2**-64 per ciphertext).
        """
        p = self.params
        if not 1 <= n_contributions <= p.max_clients:
            raise EncodingOverflowError(
                f"{n_contributions} contributions; the slot headroom allows 1..{p.max_clients}"
            )
        cts = _read_body(p, body)
        n_mpz = gmpy2.mpz(p.public.n)
        if any(gmpy2.gcd(c, n_mpz) != 1 for c in cts):
            raise DeserializationError()
        material: _PrivateMaterial = self.secret_key.unsafe_material()
        plain = _parallel_map(material.decrypt_many, cts, p.workers)
        n, c = p.public.n, p.slots.offset_pattern
        try:
            sums = p.slots.unpack([(int(t) + c) % n for t in plain])
        except ValueError:
            raise DeserializationError() from None
        return p.encoder.decode_sum(sums, n_contributions)  # refuses a wrapped slot

    def __repr__(self) -> str:
        return f"<Paillier recover codec {self.params.public!r}>"


def _noise_descriptor(noise: NoiseShare | None) -> bytes:
    """What ``params_id`` binds of the DP noise share: its type and its ``stddev``."""
    w = PayloadWriter()
    if noise is None:
        return w.text("none").getvalue()
    t = type(noise)
    stddev = getattr(noise, "stddev", None)
    w.text(f"{t.__module__}.{t.__qualname__}")
    if isinstance(stddev, (int, float)) and not isinstance(stddev, bool):
        return w.u8(1).f64(float(stddev)).getvalue()
    return w.u8(0).getvalue()


def _no_holder() -> NoReturn:
    raise MissingKeyError(
        "this session has no Paillier secret key: only the result holder can recover"
    )


# -- backend ------------------------------------------------------------------------------
@dataclass
class PaillierBackend:
    """Packed Paillier secure summation (exact on the fixed-point grid).

    Args:
        key_bits: modulus size: 3072 (default, ~128-bit security, NIST SP 800-57) or
            2048 (~112-bit security, by explicit choice).
        bound: largest ``|x|`` a client may send before weighting (default 1.0).
        scale_bits: fixed-point fractional bits (resolution ``2**-scale_bits``, default 16).
        clip: clip values to ``[-bound, bound]`` instead of raising.
        workers: threads for encryption/decryption (default ``os.cpu_count()``).

    Raises:
        ConfigurationError: an invalid option (named in the message).
    """

    name: ClassVar[str] = "paillier"
    key_bits: int = 3072
    bound: float = 1.0
    scale_bits: int = 16
    clip: bool = False
    workers: int | None = None
    _insecure_key_bits: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.key_bits, bool) or self.key_bits not in KEY_SIZES:
            raise ConfigurationError(
                f"key_bits must be one of {KEY_SIZES}, got {self.key_bits!r}"
            )
        if (
            isinstance(self.bound, bool)
            or not isinstance(self.bound, (int, float))
            or not (math.isfinite(self.bound) and self.bound > 0)
        ):
            raise ConfigurationError(
                f"bound must be a finite number > 0, got {self.bound!r}"
            )
        if isinstance(self.scale_bits, bool) or not isinstance(self.scale_bits, int):
            raise ConfigurationError(
                f"scale_bits must be an int, got {self.scale_bits!r}"
            )
        FixedPointEncoder(float(self.bound), self.scale_bits)  # validates scale_bits
        if not isinstance(self.clip, bool):
            raise ConfigurationError(f"clip must be a bool, got {self.clip!r}")
        if self.workers is not None and (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or self.workers < 1
        ):
            raise ConfigurationError(
                f"workers must be an int >= 1 or None, got {self.workers!r}"
            )
        self.bound = float(self.bound)

    @classmethod
    def _insecure_for_tests(
        cls, key_bits: int = 512, **options: Any
    ) -> PaillierBackend:
        """HAZMAT, tests only: a backend with a tiny, **insecure** modulus for speed."""
        if (
            not isinstance(key_bits, int)
            or key_bits < _MIN_TEST_KEY_BITS
            or key_bits % 2
        ):
            raise ConfigurationError(
                f"test key_bits must be an even int >= {_MIN_TEST_KEY_BITS}"
            )
        be = cls(**options)
        be._insecure_key_bits = key_bits
        return be

    @property
    def effective_key_bits(self) -> int:
        """Bits of the modulus this backend generates."""
        return self._insecure_key_bits or self.key_bits

    @property
    def n_workers(self) -> int:
        """Threads used for encryption and decryption."""
        return self.workers or os.cpu_count() or 1

    @property
    def value_bound(self) -> float:
        """Largest ``|x|`` per coordinate before weighting."""
        return self.bound

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Max abs error of a recovered sum of ``n_clients`` (weighted) values.

        Each contribution is rounded stochastically to the grid ``2**-scale_bits``, an
        error strictly below one unit; the integer sum is exact (no carries, no modular
        wrap). Added: float64 rounding of the weight product and of the final division,
        ``4 * n_clients * max_abs * 2**-52``. So ``n*2**-s + 4*n*max_abs*2**-52``.
        """
        return (
            n_clients * 2.0**-self.scale_bits
            + 4.0 * n_clients * max(max_abs, 0.0) * _EPS
        )

    # -- keys and sessions ------------------------------------------------------------------
    def keygen(
        self, rng: Rng | None = None
    ) -> tuple[PaillierPublicKey, SecretKey[Any]]:
        """A fresh key pair for the result holder (primes drawn from ``rng``)."""
        return _keygen(self.effective_key_bits, rng or SystemRng())

    def load_public_key(
        self, data: bytes, *, expected_fingerprint: bytes | None = None
    ) -> PaillierPublicKey:
        """Decode a public key of this backend's size (:attr:`effective_key_bits`).

        The size and ``expected_fingerprint`` are checked before any big-integer work
        (see :meth:`PaillierPublicKey.from_bytes`).

        Raises:
            DeserializationError: malformed bytes.
            ParameterMismatchError: another size, or not the trusted key.
        """
        return PaillierPublicKey.from_bytes(
            data,
            expected_fingerprint=expected_fingerprint,
            key_bits=self.effective_key_bits,
        )

    def session(
        self,
        layout: Layout,
        public_key: PaillierPublicKey,
        secret_key: SecretKey[Any] | None = None,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> OneShotSession:
        """A session from existing keys (a party without ``secret_key`` cannot recover).

        Every party must use the same options, layout, ``max_clients``, ``max_weight``
        and noise: all of them enter ``params_id``.

        Raises:
            ConfigurationError: bad ``max_clients``/``max_weight`` or mismatched keys.
            EncodingOverflowError: one slot does not fit the plaintext.
        """
        if not isinstance(public_key, PaillierPublicKey):
            raise ConfigurationError("public_key must be a PaillierPublicKey")
        if public_key.key_bits != self.effective_key_bits:
            raise ConfigurationError(
                f"public key has {public_key.key_bits} bits, backend uses {self.effective_key_bits}"
            )
        if secret_key is not None and (
            not isinstance(secret_key, SecretKey)
            or secret_key.scheme != _SCHEME
            or secret_key.public_fingerprint != public_key.fingerprint
        ):
            raise ConfigurationError("secret_key does not belong to public_key")
        slots = self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        slot_bits = slots.slot_bits
        max_weight = float(max_weight)
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        params = _Params(
            public=public_key,
            slots=slots,
            encoder=FixedPointEncoder(
                self.bound * max_weight, self.scale_bits, noise_allowance=extra
            ),
            bound=self.bound,
            clip=self.clip,
            max_weight=max_weight,
            max_clients=max_clients,
            noise=noise,
            workers=self.n_workers,
        )
        encoding = (
            PayloadWriter()
            .u32(self.scale_bits)
            .f64(self.bound)
            .int_big(max_clients)
            .f64(max_weight)
            .u32(slot_bits)
            .u32(slots.slots)
            .u32(MARGIN_BITS)
            .f64(extra)
            .u8(int(self.clip))
            .blob(_noise_descriptor(noise))
            .getvalue()
        )
        # v2: the public key is (n, h) (h_s derived), and the noise share's type and
        # scale are bound too, not only its headroom.
        params_id = fingerprint(
            b"paillier/v2", public_key.to_bytes(), encoding, layout.fingerprint
        )
        recover: Callable[[], Any]
        if secret_key is None:
            recover = _no_holder
        else:
            codec = _RecoverCodec(params, secret_key)

            def recover() -> _RecoverCodec:
                return codec

        return OneShotSession(
            "paillier",
            Scheme.PAILLIER,
            layout,
            params_id,
            _ClientCodec(params),
            _CombineCodec(params),
            recover,
            max_weight=max_weight,
        )

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """Generate a key pair and a session (one process plays every role).

        Raises:
            ConfigurationError: bad ``max_clients`` or ``max_weight``.
            EncodingOverflowError: a slot for ``max_clients`` x ``max_weight`` x ``bound``
                (plus noise headroom) does not fit the plaintext.
        """
        if not isinstance(layout, Layout):
            raise ConfigurationError("layout must be a privagg.Layout")
        # validate the cheap things before generating a key
        self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        public, secret = self.keygen(rng)
        return self.session(
            layout,
            public,
            secret,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
        )

    def session_check(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> SlotLayout:
        """The slot layout a session would use, without generating keys.

        Raises:
            ConfigurationError, EncodingOverflowError: as :meth:`session`.
        """
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        base = FixedPointEncoder(self.bound, self.scale_bits)
        slot_bits = base.sum_bits(
            max_clients, max_weight=float(max_weight), extra=extra
        )
        return SlotLayout.for_key(
            key_bits=self.effective_key_bits, slot_bits=slot_bits, n_values=layout.size
        )

    def __repr__(self) -> str:
        insecure = (
            f", INSECURE_TEST_KEY={self._insecure_key_bits}"
            if self._insecure_key_bits
            else ""
        )
        return (
            f"PaillierBackend(key_bits={self.key_bits}, bound={self.bound}, "
            f"scale_bits={self.scale_bits}, clip={self.clip}, workers={self.workers}{insecure})"
        )
