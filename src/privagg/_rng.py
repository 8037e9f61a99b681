"""Randomness for privagg: injected, cryptographically secure, never numpy's global RNG.

Every function that needs randomness takes an :class:`Rng`. Production code passes
:class:`SystemRng` (the default everywhere), which draws from the operating system's
CSPRNG; bulk requests are expanded with AES-256-CTR under a fresh 256-bit key from the
OS, a standard CSPRNG construction (as in NIST SP 800-90A CTR_DRBG, without reseeding
inside a single call).

:class:`DeterministicRng` is an AES-256-CTR keystream under a caller-chosen seed. It is
for known-answer tests and reproducible simulations only; it lives in
:mod:`privagg.hazmat`.
"""

from __future__ import annotations

import os
from typing import NoReturn, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privagg.errors import ConfigurationError

__all__ = [
    "DeterministicRng",
    "Rng",
    "SystemRng",
    "aes_ctr_keystream",
    "randbelow",
    "uniform01",
    "uniform_u64",
]

_BULK_THRESHOLD = 1 << 16
_ZERO_BLOCK = bytes(1 << 20)


@runtime_checkable
class Rng(Protocol):
    """A source of uniformly random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` uniformly random bytes."""
        ...


def aes_ctr_keystream(key: bytes, nbytes: int, nonce: bytes = bytes(16)) -> bytes:
    """Expand ``key`` (16 or 32 bytes) into ``nbytes`` of AES-CTR keystream.

    This is the project's only PRG. It is the keystream of AES in counter mode with a
    128-bit big-endian counter starting at ``nonce``.
    """
    if len(key) not in (16, 32):
        raise ConfigurationError(f"AES-CTR key must be 16 or 32 bytes, got {len(key)}")
    if nbytes < 0:
        raise ConfigurationError(f"nbytes must be >= 0, got {nbytes}")
    enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return _encrypt_zeros(enc, nbytes)


def _encrypt_zeros(enc: object, nbytes: int) -> bytes:
    update = enc.update  # type: ignore[attr-defined]
    if nbytes <= len(_ZERO_BLOCK):
        return bytes(update(_ZERO_BLOCK[:nbytes]))
    out = bytearray(nbytes)
    view = memoryview(out)
    pos = 0
    while pos < nbytes:
        step = min(len(_ZERO_BLOCK), nbytes - pos)
        view[pos : pos + step] = update(_ZERO_BLOCK[:step])
        pos += step
    return bytes(out)


class SystemRng:
    """The operating system's CSPRNG (``os.urandom``), AES-CTR-expanded for bulk draws."""

    __slots__ = ()

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes from the OS CSPRNG."""
        if n < 0:
            raise ConfigurationError(f"n must be >= 0, got {n}")
        if n <= _BULK_THRESHOLD:
            return os.urandom(n)
        return aes_ctr_keystream(os.urandom(32), n, os.urandom(16))

    def __repr__(self) -> str:
        return "SystemRng()"


class DeterministicRng:
    """AES-256-CTR keystream under a fixed seed. For tests and known answers only.

    Never use it to protect real data: anyone who knows the seed knows every output.
    """

    __slots__ = ("_enc",)

    def __init__(self, seed: bytes | int) -> None:
        if isinstance(seed, int):
            if seed < 0:
                raise ConfigurationError(f"seed must be >= 0, got {seed}")
            seed = seed.to_bytes(32, "big")
        if len(seed) != 32:
            raise ConfigurationError(f"seed must be 32 bytes, got {len(seed)}")
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the keystream."""
        if n < 0:
            raise ConfigurationError(f"n must be >= 0, got {n}")
        return _encrypt_zeros(self._enc, n)

    def __repr__(self) -> str:
        return "DeterministicRng(<seed hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError("DeterministicRng cannot be pickled")


def uniform_u64(rng: Rng, n: int) -> npt.NDArray[np.uint64]:
    """``n`` independent uniform 64-bit unsigned integers."""
    return np.frombuffer(rng.random_bytes(8 * n), dtype="<u8").astype(
        np.uint64, copy=True
    )


def uniform01(rng: Rng, n: int) -> npt.NDArray[np.float64]:
    """``n`` independent uniform floats on [0, 1) with 53 random bits each."""
    return (uniform_u64(rng, n) >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def randbelow(rng: Rng, bound: int, n: int) -> npt.NDArray[np.uint64]:
    """``n`` independent uniform integers in ``[0, bound)``, ``1 <= bound <= 2**64``.

    Uses rejection sampling, so the result is exactly uniform (no modulo bias).
    """
    if not 1 <= bound <= 1 << 64:
        raise ConfigurationError(f"bound must be in [1, 2**64], got {bound}")
    if bound == 1 << 64:
        return uniform_u64(rng, n)
    if bound & (bound - 1) == 0:
        return uniform_u64(rng, n) & np.uint64(bound - 1)
    bits = bound.bit_length()
    mask = np.uint64((1 << bits) - 1)
    out = np.empty(n, dtype=np.uint64)
    filled = 0
    while filled < n:
        need = n - filled
        draw = uniform_u64(rng, need + need // 2 + 16) & mask
        good = draw[draw < np.uint64(bound)][:need]
        out[filled : filled + good.size] = good
        filled += good.size
    return out
