"""Paillier keys: the public key every party holds, the holder's secret key, keygen
and the secret-key file reader."""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

import gmpy2
from phe import paillier as phe_paillier

from privagg._rng import Rng
from privagg.backends.paillier._fastexp import (
    _gil_free,
)
from privagg.envelope import PayloadReader, PayloadWriter
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    ParameterMismatchError,
)
from privagg.keys import NoProtection, Protection, SecretKey, fingerprint

#: the public key sizes (bits of n)
KEY_SIZES = (2048, 3072)
_SCHEME = "paillier"
# v2: the key carries h and every party derives h_s (v1 carried h_s, unverifiable).
_PK_TAG = "paillier-pk/v2"
_SK_TAG = "paillier-sk/v2"
_MIN_TEST_KEY_BITS = 256
# Largest canonical public-key encoding accepted (tag, size, n and h of the largest
# supported modulus, with room for length prefixes).
_MAX_PK_BYTES = 64 + 2 * (max(KEY_SIZES) // 8 + 16)


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
