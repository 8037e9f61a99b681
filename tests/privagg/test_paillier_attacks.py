"""Security review (issue #11), Paillier findings.

Finding 8: public-key parsing computed ``h^n mod n^2`` on an attacker-sized ``n`` before
the fingerprint check (the reviewer's 4 KB blob cost 11.7 s of CPU). The size bound, the
trusted fingerprint, the expected size and the canonical encoding are now all checked
before that exponentiation.

Finding 11: 3072-bit default (~128-bit security), 2048 (~112-bit) only by explicit
choice; generated moduli are Blum integers and loaded secret keys must have the
structure DJN's ``h = -x^2`` assumes.
"""

from __future__ import annotations

import math
import random
import secrets
import time

import gmpy2
import pytest

from privagg import (
    ConfigurationError,
    DeserializationError,
    NoProtection,
    ParameterMismatchError,
    SecretKey,
)
from privagg.backends.paillier import (
    PaillierBackend,
    PaillierPublicKey,
    load_secret_key,
)
from privagg.backends.paillier.keys import (
    _PK_TAG,
    _SK_TAG,
    _check_blum,
    _check_key_structure,
)
from privagg.envelope import PayloadWriter
from privagg.hazmat import DeterministicRng

# Wall-clock allowance for a refusal. The old path spent 11.7 s of CPU on the 4 KB
# key, a successful 3072-bit load ~0.05 s (the h^n mod n^2); a refusal does neither.
FAST_S = 0.1


def _rand_modulus(bits: int) -> int:
    """An odd ``bits``-bit number without small factors (cheap: no primality test)."""
    while True:
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if math.gcd(n, 3 * 5 * 7 * 11 * 13) == 1:
            return n


def _blob(bits: int, declared: int | None = None, *, n: int | None = None) -> bytes:
    """A public-key encoding, laid out exactly as :meth:`PaillierPublicKey.to_bytes`."""
    n = _rand_modulus(bits) if n is None else n
    h = 4  # a unit modulo any odd n, in [2, n - 2]
    return (
        PayloadWriter()
        .text(_PK_TAG)
        .u32(declared if declared is not None else bits)
        .int_big(n)
        .int_big(h)
        .getvalue()
    )


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every PaillierPublicKey built (each derives h_s = h**n mod n**2)."""
    seen: list[int] = []
    original = PaillierPublicKey.__post_init__

    def spy(self: PaillierPublicKey) -> None:
        seen.append(self.key_bits)
        original(self)

    monkeypatch.setattr(PaillierPublicKey, "__post_init__", spy)
    return seen


def _timed_refusal(
    exc: type[Exception], fn: object, *args: object, **kw: object
) -> float:
    t0 = time.perf_counter()
    with pytest.raises(exc):
        fn(*args, **kw)  # type: ignore[operator]
    return time.perf_counter() - t0


# -- finding 8: the old cost path ---------------------------------------------------------------
def test_reviewers_4kb_key_is_refused_before_any_big_integer_work(
    builds: list[int],
) -> None:
    """The reviewer's blob: a 32768-bit n (4 KB). It used to cost h^n mod n^2."""
    blob = _blob(32768)
    assert len(blob) > 4096
    assert (
        _timed_refusal(DeserializationError, PaillierPublicKey.from_bytes, blob)
        < FAST_S
    )
    # with a trusted fingerprint, and through the backend's size-checked loader
    dt = _timed_refusal(
        DeserializationError,
        PaillierBackend().load_public_key,
        blob,
        expected_fingerprint=bytes(32),
    )
    assert dt < FAST_S
    assert builds == []


@pytest.mark.parametrize("declared", [3072, 2048, 256])
def test_mislabelled_oversized_key_is_refused(declared: int, builds: list[int]) -> None:
    """An 8192-bit n declared as a supported size: refused on n's bit length."""
    blob = _blob(8192, declared=declared)
    assert (
        _timed_refusal(DeserializationError, PaillierPublicKey.from_bytes, blob)
        < FAST_S
    )
    assert builds == []


@pytest.mark.parametrize("declared", [4096, 8192, 1 << 31, 255, 0])
def test_unsupported_declared_size_is_refused(declared: int) -> None:
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(_blob(2048, declared=declared))


def test_fingerprint_is_checked_before_the_key_is_built(builds: list[int]) -> None:
    blob = _blob(3072)  # well formed, but not the trusted key
    dt = _timed_refusal(
        ParameterMismatchError,
        PaillierPublicKey.from_bytes,
        blob,
        expected_fingerprint=bytes(32),
    )
    assert dt < FAST_S
    assert builds == []  # no h**n mod n**2 was computed
    PaillierPublicKey.from_bytes(blob)  # without the fingerprint: built once
    assert builds == [3072]


def test_size_other_than_the_sessions_is_refused_before_parsing_n(
    builds: list[int],
) -> None:
    blob = _blob(3072)
    with pytest.raises(ParameterMismatchError, match="expected 2048"):
        PaillierPublicKey.from_bytes(blob, key_bits=2048)
    with pytest.raises(ParameterMismatchError):
        PaillierBackend(key_bits=2048).load_public_key(blob)
    assert builds == []
    key = PaillierBackend().load_public_key(blob)  # the default size: accepted
    assert key.key_bits == 3072 and key.to_bytes() == blob


def test_trusted_key_still_loads() -> None:
    be = PaillierBackend._insecure_for_tests(512)
    pk, _ = be.keygen(DeterministicRng(1))
    again = be.load_public_key(pk.to_bytes(), expected_fingerprint=pk.fingerprint)
    assert again == pk and again.hs == pk.hs


def test_non_canonical_encoding_is_refused(builds: list[int]) -> None:
    blob = _blob(2048)
    key = PaillierPublicKey.from_bytes(blob)
    assert key.to_bytes() == blob
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(blob + b"\x00")
    # n with a leading zero byte: same integer, another encoding
    n_bytes = key.n.to_bytes(256, "big")
    padded = (
        PayloadWriter()
        .text(_PK_TAG)
        .u32(2048)
        .blob(b"\x00" + n_bytes)
        .int_big(key.h)
        .getvalue()
    )
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(padded)
    assert builds == [2048]  # the refusals built nothing


def test_oversized_public_key_inside_a_secret_key_export_is_refused_quickly() -> None:
    secret = (
        PayloadWriter().text(_SK_TAG).blob(_blob(32768)).int_big(3).int_big(5)
    ).getvalue()
    blob = NoProtection().wrap("paillier", bytes(32), secret)
    assert _timed_refusal(DeserializationError, load_secret_key, blob) < FAST_S


# -- finding 11: security level ------------------------------------------------------------------
def test_default_modulus_is_3072_bits() -> None:
    assert PaillierBackend().key_bits == 3072
    assert PaillierBackend().effective_key_bits == 3072
    assert PaillierBackend(key_bits=2048).key_bits == 2048  # by explicit choice
    with pytest.raises(ConfigurationError):
        PaillierBackend(key_bits=1024)


# -- finding 11: Blum modulus and the structure of (n, h) ---------------------------------------
def _prime(bits: int, residue: int, seed: int) -> int:
    """A ``bits``-bit prime ``= residue (mod 4)`` with its two top bits set (tests only)."""
    start = random.Random(seed).getrandbits(bits - 2) | (3 << (bits - 2))
    c = int(gmpy2.next_prime(start))
    while c % 4 != residue:
        c = int(gmpy2.next_prime(c))
    return c


def _export(n: int, h: int, p: int, q: int, bits: int = 512) -> bytes:
    """A secret-key export of arbitrary (p, q, h), laid out as the backend exports."""
    public = PaillierPublicKey(n, h, bits)
    secret = (
        PayloadWriter()
        .text(_SK_TAG)
        .blob(public.to_bytes())
        .int_big(p)
        .int_big(q)
        .getvalue()
    )
    return NoProtection().wrap("paillier", public.fingerprint, secret)


def test_generated_primes_make_a_blum_modulus() -> None:
    be = PaillierBackend._insecure_for_tests(key_bits=512)
    for seed in range(4):
        pk, sk = be.keygen(DeterministicRng(seed))
        m = sk.unsafe_material()
        assert m.phe.p % 4 == 3 and m.phe.q % 4 == 3
        assert gmpy2.jacobi(pk.h, pk.n) == 1  # h = -x^2 on a Blum n
        _check_key_structure(pk, m.phe.p, m.phe.q)
        # what was generated loads again (the structure checks pass)
        again = load_secret_key(sk.to_bytes(protection=NoProtection()))
        assert isinstance(again, SecretKey) and again == sk


def test_non_blum_primes_are_refused() -> None:
    p1, q3 = _prime(256, 1, 1), _prime(256, 3, 2)
    with pytest.raises(ConfigurationError, match="Blum"):
        _check_blum(p1, q3)
    with pytest.raises(ConfigurationError, match="Blum"):
        _check_blum(q3, p1)
    _check_blum(q3, _prime(256, 3, 3))  # both 3 mod 4: accepted


@pytest.mark.parametrize("residues", [(1, 3), (3, 1), (1, 1)])
def test_secret_key_on_a_non_blum_modulus_is_refused(residues: tuple[int, int]) -> None:
    p, q = _prime(256, residues[0], 5), _prime(256, residues[1], 6)
    n = p * q
    h = (-(12345**2)) % n
    with pytest.raises(ConfigurationError, match="Blum"):
        load_secret_key(_export(n, h, p, q))


def test_secret_key_with_an_h_not_of_the_form_minus_x_squared_is_refused() -> None:
    p, q = _prime(256, 3, 7), _prime(256, 3, 8)
    n = p * q
    good = (-(987654321**2)) % n
    load_secret_key(_export(n, good, p, q))  # the honest shape loads
    square = (987654321**2) % n  # +x^2: a residue modulo p and q
    with pytest.raises(ConfigurationError, match="-x\\^2"):
        load_secret_key(_export(n, square, p, q))


def test_secret_key_with_a_composite_factor_is_refused() -> None:
    """n = p * (r*s) with p, r*s = 3 mod 4: well formed, but not an RSA modulus."""
    p = _prime(256, 3, 9)
    r, s = _prime(128, 1, 10), _prime(128, 3, 11)
    q = r * s  # 1 * 3 = 3 mod 4
    if q.bit_length() != 256:
        pytest.skip("constructed factor has the wrong size")  # not for these seeds
    n = p * q
    with pytest.raises(ConfigurationError, match="not prime"):
        _check_key_structure(PaillierPublicKey(n, (-4) % n, n.bit_length()), p, q)


def test_secret_key_with_unbalanced_or_foreign_primes_is_refused() -> None:
    p, q = _prime(256, 3, 12), _prime(256, 3, 13)
    n = p * q
    pub = PaillierPublicKey(n, (-4) % n, 512)
    with pytest.raises(ConfigurationError, match="do not match"):
        _check_key_structure(pub, p, _prime(256, 3, 14))
    small, big = _prime(200, 3, 15), _prime(312, 3, 16)
    n2 = small * big
    if n2.bit_length() == 512:
        with pytest.raises(ConfigurationError, match="256-bit"):
            _check_key_structure(PaillierPublicKey(n2, (-4) % n2, 512), small, big)
