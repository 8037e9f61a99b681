"""Security review (issue #11), finding 8: Paillier public-key parsing computed
``h^n mod n^2`` on an attacker-sized ``n`` before the fingerprint check (a 4 KB blob cost
11.7 s of CPU). Sizes and the trusted fingerprint are now checked first."""

from __future__ import annotations

import secrets
import time

import pytest

from privagg.backends.paillier import _PK_TAG, PaillierPublicKey
from privagg.envelope import PayloadWriter
from privagg.errors import DeserializationError, ParameterMismatchError


def _blob(bits: int, declared: int | None = None) -> bytes:
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    h = secrets.randbits(bits - 2) | 2
    return (
        PayloadWriter()
        .text(_PK_TAG)
        .u32(declared if declared is not None else bits)
        .int_big(n)
        .int_big(h)
        .getvalue()
    )


def test_oversized_key_is_refused_before_any_big_integer_work() -> None:
    blob = _blob(32768)  # the reviewer's 4 KB key
    t0 = time.process_time()
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(blob)
    assert time.process_time() - t0 < 0.05


def test_mislabelled_size_is_refused() -> None:
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(_blob(8192, declared=3072))


def test_fingerprint_is_checked_before_the_key_is_built() -> None:
    blob = _blob(3072)  # well formed, but not the trusted key
    t0 = time.process_time()
    with pytest.raises(ParameterMismatchError):
        PaillierPublicKey.from_bytes(blob, expected_fingerprint=bytes(32))
    assert time.process_time() - t0 < 0.01  # no h^n mod n^2 was computed


def test_non_canonical_encoding_is_refused() -> None:
    blob = _blob(2048)
    try:
        key = PaillierPublicKey.from_bytes(blob)
    except DeserializationError:
        pytest.skip("random h was not a unit (astronomically unlikely)")
    assert key.to_bytes() == blob
    with pytest.raises(DeserializationError):
        PaillierPublicKey.from_bytes(blob + b"\x00")
