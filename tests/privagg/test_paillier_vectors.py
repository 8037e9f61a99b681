"""Known-answer vectors for the Paillier backend.

``tests/vectors/paillier/known_answers.json`` is produced by :func:`generate` below,
which uses only Python built-ins (``pow``, integer arithmetic): no gmpy2, no phe, no
privagg. Regenerate with ``python -m tests.privagg.test_paillier_vectors``. The tests
check the stored file against a fresh :func:`generate`, then check privagg's gmpy2 code
paths and phe's ``raw_encrypt``/``raw_decrypt`` against the stored numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import pytest
from phe import paillier as phe_paillier

from privagg.backends.paillier import PaillierPublicKey
from privagg.backends.paillier._fastexp import _encrypt_djn, _encrypt_with, _FixedBase
from privagg.backends.paillier._slots import MARGIN_BITS, SlotLayout
from privagg.backends.paillier.keys import _PrivateMaterial

VECTORS = (
    Path(__file__).resolve().parents[1] / "vectors" / "paillier" / "known_answers.json"
)

SOURCE = (
    "Paillier, 'Public-Key Cryptosystems Based on Composite Degree Residuosity Classes', "
    "EUROCRYPT 1999 (g = n + 1; c = g^m r^n mod n^2; m = L(c^lambda mod n^2) mu mod n); "
    "Damgard, Jurik, Nielsen, 'A generalization of Paillier's public-key system with "
    "applications to electronic voting', IJIS 2010 (h = -x^2 mod n, h_s = h^n mod n^2, "
    "c = (1+n)^m h_s^a mod n^2, a < 2^ceil(k/2)); BatchCrypt (Zhang et al., USENIX ATC "
    "2020) style packing, slot j at bits [w*j, w*(j+1)), offset 2^(w-1) per slot."
)
GENERATED_BY = (
    "tests/privagg/test_paillier_vectors.py::generate, Python 3.11 built-in pow() and "
    "integer arithmetic only (no gmpy2, no phe, no privagg); primes are the next primes "
    "after fixed constants (deterministic Miller-Rabin, bases 2..41)."
)


# -- independent reference (built-ins only) ----------------------------------------------------
def _ref_encrypt(n: int, m: int, r: int) -> int:
    nn = n * n
    return (1 + m * n) * pow(r, n, nn) % nn


def _ref_decrypt(p: int, q: int, c: int) -> int:
    n = p * q
    nn = n * n
    lam = (p - 1) * (q - 1)
    mu = pow((pow(n + 1, lam, nn) - 1) // n, -1, n)
    return (pow(c, lam, nn) - 1) // n * mu % n


def _is_prime(x: int) -> bool:
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if x < 2:
        return False
    for sp in small:
        if x % sp == 0:
            return x == sp
    d, s = x - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        y = pow(a, d, x)
        if y in (1, x - 1):
            continue
        for _ in range(s - 1):
            y = y * y % x
            if y == x - 1:
                break
        else:
            return False
    return True


def _next_prime(x: int) -> int:
    x |= 1
    while not _is_prime(x):
        x += 2
    return x


def generate() -> dict[str, Any]:
    """The known-answer vectors, from built-ins only."""
    out: dict[str, Any] = {
        "source": SOURCE,
        "generated_by": GENERATED_BY,
        "vectors": [],
    }
    # 1. textbook Paillier, tiny
    p, q, m, r = 17, 19, 42, 23
    n = p * q
    c = _ref_encrypt(n, m, r)
    assert _ref_decrypt(p, q, c) == m
    out["vectors"].append(
        {
            "name": "textbook-tiny",
            "kind": "textbook",
            "p": p,
            "q": q,
            "n": n,
            "m": m,
            "r": r,
            "c": c,
        }
    )
    # 2. DJN randomness, 256-bit modulus
    p = _next_prime((3 << 126) + 0x1234567890ABCDEF1234567890ABCDEF)
    q = _next_prime((3 << 126) + 0x0FEDCBA0987654321FEDCBA098765432)
    n = p * q
    assert n.bit_length() == 256
    nn = n * n
    x = 0x0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF % n
    h = (-x * x) % n
    hs = pow(h, n, nn)
    a = 0xDEADBEEFCAFEBABE0011223344556677  # < 2**128 = 2**ceil(256/2)
    m = 123456789123456789
    c = (1 + m * n) * pow(hs, a, nn) % nn
    assert c == _ref_encrypt(n, m, pow(h, a, n))
    assert _ref_decrypt(p, q, c) == m
    out["vectors"].append(
        {
            "name": "djn-256",
            "kind": "djn",
            "key_bits": 256,
            "p": p,
            "q": q,
            "n": n,
            "x": x,
            "h": h,
            "hs": hs,
            "a": a,
            "m": m,
            "c": c,
            "r_equiv": pow(h, a, n),
        }
    )
    # 3. slot packing for that modulus: w = 20, k = floor((256 - 1 - 64) / 20) = 9
    w = 20
    k = (256 - 1 - 64) // w
    vals = [-(1 << 19), (1 << 19) - 1, 0, -1, 1, 12345, -54321, 7, -7, 99, -99]
    packed = [
        sum(v << (w * j) for j, v in enumerate(vals[i : i + k]))
        for i in range(0, len(vals), k)
    ]
    offset = sum((1 << (w - 1)) << (w * j) for j in range(k))
    out["vectors"].append(
        {
            "name": "packing-w20",
            "kind": "packing",
            "key_bits": 256,
            "n": n,
            "slot_bits": w,
            "slots": k,
            "values": vals,
            "packed_signed": packed,
            "packed_mod_n": [v % n for v in packed],
            "offset_pattern": offset,
            "restored": [(v % n + offset) % n for v in packed],
        }
    )
    return out


# -- tests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _by_kind(vectors: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(v for v in vectors["vectors"] if v["kind"] == kind)


def test_file_matches_independent_generator(vectors: dict[str, Any]) -> None:
    assert vectors["source"] and vectors["generated_by"]
    assert vectors == generate()


def test_textbook_vector(vectors: dict[str, Any]) -> None:
    v = _by_kind(vectors, "textbook")
    assert _encrypt_with(v["n"], v["m"], v["r"]) == v["c"]
    pub = phe_paillier.PaillierPublicKey(v["n"])
    assert pub.raw_encrypt(v["m"], r_value=v["r"]) == v["c"]
    priv = phe_paillier.PaillierPrivateKey(pub, v["p"], v["q"])
    assert priv.raw_decrypt(v["c"]) == v["m"]


def test_djn_vector_encrypt_and_crt_decrypt(vectors: dict[str, Any]) -> None:
    v = _by_kind(vectors, "djn")
    n, hs, a, m = v["n"], v["hs"], v["a"], v["m"]
    assert _encrypt_djn(n, hs, m, a) == v["c"]
    # DJN == textbook Paillier with r = h**a mod n (phe's raw_encrypt)
    assert (
        phe_paillier.PaillierPublicKey(n).raw_encrypt(m, r_value=v["r_equiv"]) == v["c"]
    )
    # the fixed-base table path gives the same h_s**a
    table = _FixedBase(hs, n * n, (v["key_bits"] + 1) // 2, workers=1)
    assert int(table.pow(a)) == pow(hs, a, n * n)
    assert int((1 + gmpy2.mpz(m) * n) * table.pow(a) % (n * n)) == v["c"]
    # the public key is (n, h) since paillier-pk/v2; it derives h_s = h**n mod n**2
    pk = PaillierPublicKey(n, v["h"], v["key_bits"])
    assert pk.hs == hs
    material = _PrivateMaterial(pk, v["p"], v["q"])
    assert [int(x) for x in material.decrypt_many([gmpy2.mpz(v["c"])])] == [m]
    assert material.phe.raw_decrypt(v["c"]) == m


def test_packing_vector(vectors: dict[str, Any]) -> None:
    v = _by_kind(vectors, "packing")
    layout = SlotLayout.for_key(
        key_bits=v["key_bits"], slot_bits=v["slot_bits"], n_values=len(v["values"])
    )
    assert (
        layout.slots
        == v["slots"]
        == (v["key_bits"] - 1 - MARGIN_BITS) // v["slot_bits"]
    )
    assert layout.offset_pattern == v["offset_pattern"]
    packed = layout.pack(np.asarray(v["values"], dtype=np.int64))
    assert packed == v["packed_signed"]
    assert [p % v["n"] for p in packed] == v["packed_mod_n"]
    assert [int(s) for s in layout.unpack(v["restored"])] == v["values"]


if __name__ == "__main__":
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(generate(), indent=1) + "\n")
    print(f"wrote {VECTORS}")
