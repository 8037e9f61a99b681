"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**256 + 297).

``2**256 + 297`` is the smallest prime above ``2**256``, so every 32-byte secret is a
field element and a share is one 33-byte field element. A secret is the constant term of
a random polynomial of degree ``t - 1``; the share of the holder with x-coordinate
``x`` (``1 <= x < PRIME``) is the polynomial's value at ``x``. Any ``t`` shares
reconstruct the secret by Lagrange interpolation at 0; any ``t - 1`` shares are
independent uniform field elements (perfect secrecy).

Shares travel inside AES-GCM (see :mod:`privagg.backends._primitives`), so a share
altered in transit is rejected by the tag before it reaches :func:`reconstruct`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from privagg._rng import Rng
from privagg.errors import ConfigurationError, DeserializationError

__all__ = [
    "PRIME",
    "SHARE_SIZE",
    "decode_share",
    "encode_share",
    "random_element",
    "reconstruct",
    "share",
]

PRIME = (1 << 256) + 297
SHARE_SIZE = 33
_SECRET_SIZE = 32


def random_element(rng: Rng) -> int:
    """A uniform field element (rejection sampling on 257-bit strings)."""
    while True:
        v = int.from_bytes(rng.random_bytes(SHARE_SIZE), "big") & ((1 << 257) - 1)
        if v < PRIME:
            return v


def share(secret: bytes, xs: Sequence[int], threshold: int, rng: Rng) -> dict[int, int]:
    """Split a 32-byte ``secret`` into one share per x-coordinate in ``xs``.

    Args:
        secret: exactly 32 bytes.
        xs: distinct x-coordinates in ``[1, PRIME)`` (one per holder).
        threshold: shares needed to reconstruct, ``1 <= threshold <= len(xs)``.
        rng: randomness for the polynomial's coefficients.

    Returns:
        x -> share value.
    """
    if len(secret) != _SECRET_SIZE:
        raise ConfigurationError(
            f"secrets must be {_SECRET_SIZE} bytes, got {len(secret)}"
        )
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ConfigurationError(
            "share x-coordinates must be distinct and in [1, PRIME)"
        )
    if not 1 <= threshold <= len(xs):
        raise ConfigurationError(
            f"threshold must be in [1, {len(xs)}], got {threshold}"
        )
    coeffs = [int.from_bytes(secret, "big")] + [
        random_element(rng) for _ in range(threshold - 1)
    ]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def reconstruct(points: Mapping[int, int], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares (x -> value).

    Uses the ``threshold`` shares with the smallest x. Shares that are not from one
    polynomial give a wrong value (or one that is not a 32-byte secret, which raises
    :class:`DeserializationError`); callers that can check the result (SecAgg+ checks a
    recovered key against its advertised public key) do so.

    Raises:
        ConfigurationError: fewer than ``threshold`` shares.
        DeserializationError: the interpolated value is not a 32-byte secret.
    """
    if threshold < 1 or len(points) < threshold:
        raise ConfigurationError(f"need {threshold} shares, got {len(points)}")
    xs = sorted(points)[:threshold]
    secret = 0
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + points[xi] * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * _SECRET_SIZE):
        raise DeserializationError()
    return secret.to_bytes(_SECRET_SIZE, "big")


def encode_share(v: int) -> bytes:
    """A field element as 33 big-endian bytes."""
    return v.to_bytes(SHARE_SIZE, "big")


def decode_share(b: bytes) -> int:
    """Inverse of :func:`encode_share`; rejects non-canonical encodings."""
    if len(b) != SHARE_SIZE:
        raise DeserializationError()
    v = int.from_bytes(b, "big")
    if v >= PRIME:
        raise DeserializationError()
    return v
