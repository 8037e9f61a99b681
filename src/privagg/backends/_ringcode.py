"""Fixed-point encoding into ring words, and cache-blocked mask accumulation.

:func:`encode_to_ring` uses the shared :class:`~privagg.encoding.FixedPointEncoder`'s
parameters as they are (its ``bound``, ``scale``, capacity check ``sum_bits`` and
``decode``), with a vectorised form of its unbiased stochastic rounding:
``R(y) = floor(y) + [u < frac(y)]``, ``frac(y) = y - floor(y)`` (computed exactly: no
float addition of ``u`` to a large ``y``), ``u = k / 2**32`` with ``k`` a uniform 32-bit
word (AES-256-CTR keystream under a fresh key from the injected :class:`~privagg._rng.Rng`). Then ``P[R(y) = floor(y) + 1] =
ceil(frac(y) * 2**32) / 2**32``, so ``E[R(y)] = y`` up to ``2**-32`` of one unit (the grid
of ``u``) for every ``|y| < 2**53`` and ``|R(y) - y| < 1`` unit always, as with the shared
encoder. (An earlier ``floor(y + u)`` form was biased once ``|y| > 2**21``, where the ulp
of ``y`` exceeds ``2**-32`` and ``y + u`` rounds.)

Both functions work in blocks of :data:`BLOCK` values so that every temporary stays in
the CPU cache: a SecAgg+ client adds ``k + 1`` masks to its vector, and blocking turns
``k + 1`` passes over main memory into one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privagg._rng import Rng
from privagg.backends._primitives import mask_cipher
from privagg.encoding import FixedPointEncoder
from privagg.errors import ConfigurationError, EncodingOverflowError
from privagg.protocols import NoiseShare

__all__ = ["BLOCK", "add_masks", "centred", "encode_to_ring"]

BLOCK = 1 << 15
_COUNTER0 = bytes(16)
# the CTR input of every keystream block (immutable, shared by all maskers)
_ZEROS = memoryview(bytes(BLOCK * 8))


def encode_to_ring(
    encoder: FixedPointEncoder,
    update: npt.ArrayLike,
    weight: float,
    *,
    value_bound: float,
    clip: bool,
    rng: Rng,
    dtype: type[np.unsignedinteger],
    noise: NoiseShare | None = None,
    who: str = "client",
    masks: Sequence[tuple[bytes, int]] = (),
) -> npt.NDArray[np.unsignedinteger]:
    """``weight * update`` as fixed-point residues modulo ``2**32`` or ``2**64``, plus
    ``sum(sign * mask(seed))`` for each ``(seed, sign)`` of ``masks`` (see :func:`add_masks`).

    Encoding and masking are fused: each block of :data:`BLOCK` values is encoded, then
    every mask's keystream for that block is added while the block is still in cache. The
    rounding words are the AES-256-CTR keystream (zero counter block) of a fresh 32-byte
    key drawn from ``rng`` (the construction :class:`~privagg._rng.SystemRng` itself uses
    for bulk draws), produced block by block into a reusable buffer, never held in full.

    Args:
        encoder: the session's encoder (bound ``value_bound * max_weight``).
        update: the client's float values (each ``|v| <= value_bound`` unless ``clip``).
        weight: the client's weight, ``0 <= weight <= max_weight``.
        value_bound: the bound before weighting.
        clip: clip out-of-range values instead of raising.
        rng: randomness for the rounding.
        dtype: ``np.uint32`` or ``np.uint64`` (the ring).
        noise: distributed-DP noise share, added in fixed-point units.
        who: names the party in error messages.
        masks: mask seeds (32 bytes) and signs of the masks to add.

    Raises:
        ConfigurationError: NaN or infinite values.
        EncodingOverflowError: a value exceeds ``value_bound`` and ``clip`` is False.
    """
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    n = x.size
    ws = float(weight) * encoder.scale
    ring = np.dtype(dtype)
    # After the bound check (or clipping) every rounded value is an exact integer of
    # magnitude <= ceil(|ws| * value_bound) + 1: the values go straight into the ring's
    # signed width when that fits it (two's complement is the residue mod 2**bits), else
    # through int64 (reduced mod 2**bits on the copy).
    out = np.empty(n, dtype=np.int64 if noise is not None else ring)
    widest = math.ceil(abs(ws) * value_bound) + 1
    direct = noise is not None or widest < 1 << (8 * ring.itemsize - 1)
    if noise is not None:
        ints = out
    elif direct:
        ints = out.view(np.int32 if ring.itemsize == 4 else np.int64)
    else:
        ints = np.empty(min(n, BLOCK), dtype=np.int64)
    blk = min(n, BLOCK)
    t1 = np.empty(blk, dtype=np.float64)
    t2 = np.empty_like(t1)
    t3 = np.empty_like(t1)
    up = np.empty(t1.shape, dtype=bool)
    mk = (
        _Masker(ring, blk, _mask_streams(masks))
        if (masks and noise is None and n)
        else None
    )
    coins = (
        _Masker(
            np.dtype(np.uint32),
            blk,
            [
                (
                    Cipher(
                        algorithms.AES256(rng.random_bytes(32)), modes.CTR(_COUNTER0)
                    ),
                    1,
                )
            ],
        )
        if n
        else None
    )
    for s in range(0, n, BLOCK):
        e = min(n, s + BLOCK)
        xs, a, b = x[s:e], t1[: e - s], t2[: e - s]
        hi, lo = float(xs.max()), float(xs.min())
        if not (np.isfinite(hi) and np.isfinite(lo)):
            raise ConfigurationError(f"{who}: cannot encode NaN or infinite values")
        if hi > value_bound or -lo > value_bound:
            if not clip:
                raise EncodingOverflowError(
                    f"{who}: values exceed the bound {value_bound}; clip first or use clip=True"
                )
            xs = np.clip(xs, -value_bound, value_bound, out=a)
        assert coins is not None
        words = coins.keystream(e - s)
        f, m = t3[: e - s], up[: e - s]
        np.multiply(xs, ws, out=a)  # y
        np.floor(a, out=f)
        np.subtract(a, f, out=a)  # frac(y), exact (Sterbenz) for |y| >= 1 and y >= 0
        np.multiply(words, 2.0**-32, out=b)  # u
        np.less(b, a, out=m)
        # floor(y) + [u < frac(y)]: the exact integer floor(y) cast once, then the bit
        # added in integers (one float -> int conversion, no mixed-type float sum)
        if direct:  # written straight into the ring words
            i = ints[s:e]
            np.copyto(i, f, casting="unsafe")
            np.add(i, m, out=i)
        else:  # float -> int64 -> ring word (two's complement, reduced mod 2**bits)
            i = ints[: e - s]
            np.copyto(i, f, casting="unsafe")
            np.add(i, m, out=i)
            np.copyto(out[s:e], i.view(np.uint64), casting="unsafe")
        if mk is not None:
            mk.apply(out[s:e])
    if noise is None:
        return out
    out += noise.sample_encoded(n, scale=encoder.scale, rng=rng)
    u = out.view(np.uint64)
    res = u.astype(np.uint32) if ring.itemsize == 4 else u
    add_masks(res, masks)
    return res


class _Masker:
    """AES-CTR keystreams of several ciphers, consumed block by block into a reusable
    buffer (``update_into``) and added to or subtracted from consecutive blocks."""

    __slots__ = ("_buf", "_dt", "_encs", "_view", "_zeros")

    def __init__(
        self,
        dtype: np.dtype[Any],
        block: int,
        streams: Sequence[tuple[Cipher[modes.CTR], int]],
    ) -> None:
        self._dt = dtype.newbyteorder("<")
        nbytes = block * self._dt.itemsize
        self._zeros = (
            _ZEROS[:nbytes] if nbytes <= len(_ZEROS) else memoryview(bytes(nbytes))
        )
        self._buf = bytearray(block * self._dt.itemsize + 15)
        self._view = np.frombuffer(self._buf, dtype=self._dt, count=block)
        self._encs = [(c.encryptor(), sign >= 0) for c, sign in streams]

    def keystream(self, k: int) -> npt.NDArray[np.unsignedinteger]:
        """The next ``k`` words of the (first) keystream, in the reusable buffer."""
        self._encs[0][0].update_into(self._zeros[: k * self._dt.itemsize], self._buf)
        return self._view[:k]

    def apply(self, a: npt.NDArray[np.unsignedinteger]) -> None:
        """Add the next ``a.size`` words of every keystream to ``a`` (with its sign)."""
        k = a.size
        zeros, buf, v = self._zeros[: k * self._dt.itemsize], self._buf, self._view[:k]
        for enc, plus in self._encs:
            enc.update_into(zeros, buf)
            if plus:
                np.add(a, v, out=a)
            else:
                np.subtract(a, v, out=a)


def add_masks(
    acc: npt.NDArray[np.unsignedinteger], seeds: Sequence[tuple[bytes, int]]
) -> None:
    """``acc += sum(sign * mask(seed))`` in place, block by block.

    ``mask(seed)`` is the AES-128-CTR keystream (zero counter block) under
    :func:`~privagg.backends._primitives.mask_key` of ``seed``, read as little-endian
    words of ``acc``'s dtype: the same words as
    :meth:`privagg.backends._primitives.MaskExpander.mask`.
    """
    if not seeds or acc.size == 0:
        return
    mk = _Masker(acc.dtype, min(acc.size, BLOCK), _mask_streams(seeds))
    for s in range(0, acc.size, BLOCK):
        mk.apply(acc[s : s + BLOCK])


def _mask_streams(
    seeds: Sequence[tuple[bytes, int]],
) -> list[tuple[Cipher[modes.CTR], int]]:
    return [(mask_cipher(seed), sign) for seed, sign in seeds]


def centred(words: npt.NDArray[np.unsignedinteger]) -> npt.NDArray[np.signedinteger]:
    """Ring words (uint32 or uint64) as centred signed integers, without a copy.

    The same values as :func:`privagg.encoding.from_ring` with ``bits`` the word size:
    the two's-complement reading of a ``b``-bit word is its representative in
    ``[-2**(b-1), 2**(b-1))``.
    """
    if words.dtype == np.dtype(np.uint32):
        return words.view(np.int32)
    if words.dtype == np.dtype(np.uint64):
        return words.view(np.int64)
    raise ConfigurationError(f"ring words must be uint32 or uint64, got {words.dtype}")
