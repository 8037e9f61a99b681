"""Bit packing of SEAL coefficient words at each prime's width."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# -- bit packing ----------------------------------------------------------------------
_U64 = np.dtype("<u8")


def _pack(words: npt.NDArray[np.uint64], bits: int) -> npt.NDArray[np.uint8]:
    """Pack rows of uint64 words (< 2**bits; row length a multiple of 8) at ``bits``.

    Returns a uint8 array of shape ``rows.shape[:-1] + (row_len * bits // 8,)``;
    word ``i`` occupies bits ``[i*bits, (i+1)*bits)`` of its row, little-endian.
    """
    lead = words.shape[:-1]
    n = words.shape[-1]
    if bits % 4 == 0 and bits > 48:
        # Fast path (60-bit primes): two words -> one 128-bit pair -> 2*bits/8 bytes.
        w = np.ascontiguousarray(words, dtype=_U64).reshape(-1, 2)
        pair = np.empty((w.shape[0], 2), dtype=_U64)
        pair[:, 0] = w[:, 0] | (w[:, 1] << np.uint64(bits))
        pair[:, 1] = w[:, 1] >> np.uint64(64 - bits)
        out = pair.view(np.uint8)[:, : bits // 4]
        return np.ascontiguousarray(out).reshape(*lead, n * bits // 8)
    # Groups of 8 words -> ``bits`` bytes, assembled in ceil(bits/8) 64-bit lanes.
    w = np.ascontiguousarray(words, dtype=_U64).reshape(-1, 8)
    g = w.shape[0]
    lanes = np.zeros((g, -(-bits // 8)), dtype=_U64)
    for k in range(8):
        li, sh = (k * bits) >> 6, (k * bits) & 63
        v = w[:, k]
        lanes[:, li] |= v << np.uint64(sh)
        if sh + bits > 64:
            lanes[:, li + 1] |= v >> np.uint64(64 - sh)
    out = lanes.view(np.uint8)[:, :bits]
    return np.ascontiguousarray(out).reshape(*lead, n * bits // 8)


def _unpack(data: npt.NDArray[np.uint8], bits: int, n: int) -> npt.NDArray[np.uint64]:
    """Inverse of :func:`_pack` for rows of ``n`` words: shape ``lead + (n,)``."""
    lead = data.shape[:-1]
    mask = np.uint64((1 << bits) - 1)
    if bits % 4 == 0 and bits > 32:
        # Pairs of words in rows of 2*bits/8 bytes: read two overlapping unaligned
        # 8-byte windows per row (first word at byte 0, second at bit ``bits``).
        width = bits // 4
        g = data.size // width
        flat = np.zeros(data.size + 8, dtype=np.uint8)
        flat[: data.size] = data.reshape(-1)
        buf = flat.data
        first = np.ndarray((g,), dtype=_U64, buffer=buf, offset=0, strides=(width,))
        second = np.ndarray(
            (g,), dtype=_U64, buffer=buf, offset=bits // 8, strides=(width,)
        )
        out = np.empty((g, 2), dtype=_U64)
        np.bitwise_and(first, mask, out=out[:, 0])
        np.bitwise_and(second >> np.uint64(bits % 8), mask, out=out[:, 1])
        return out.reshape(*lead, n)
    g = data.size // bits
    nl = -(-bits // 8)
    src = np.zeros((g, 8 * nl), dtype=np.uint8)
    src[:, :bits] = data.reshape(g, bits)
    lanes = src.view(_U64)
    res = np.empty((g, 8), dtype=_U64)
    for k in range(8):
        li, sh = (k * bits) >> 6, (k * bits) & 63
        v = lanes[:, li] >> np.uint64(sh)
        if sh + bits > 64:
            v |= lanes[:, li + 1] << np.uint64(64 - sh)
        np.bitwise_and(v, mask, out=res[:, k])
    return res.reshape(*lead, n)
