"""Fixed-point encoding into ring words, and cache-blocked mask accumulation.

:func:`encode_to_ring` uses the shared :class:`~privagg.encoding.FixedPointEncoder`'s
parameters as they are (its ``bound``, ``scale``, capacity check ``sum_bits`` and
``decode``), with a vectorised form of its unbiased stochastic rounding:
``R(y) = floor(y) + [u < frac(y)]``, ``frac(y) = y - floor(y)`` (computed exactly: no
float addition of ``u`` to a large ``y``), ``u = k / 2**32`` with ``k`` a uniform 32-bit
word from the injected :class:`~privagg._rng.Rng`. Then ``P[R(y) = floor(y) + 1] =
ceil(frac(y) * 2**32) / 2**32``, so ``E[R(y)] = y`` up to ``2**-32`` of one unit (the grid
of ``u``) for every ``|y| < 2**53`` and ``|R(y) - y| < 1`` unit always, as with the shared
encoder. (An earlier ``floor(y + u)`` form was biased once ``|y| > 2**21``, where the ulp
of ``y`` exceeds ``2**-32`` and ``y + u`` rounds.)

Both functions work in blocks of :data:`BLOCK` values so that every temporary stays in
the CPU cache: a SecAgg+ client adds ``k + 1`` masks to its vector, and blocking turns
``k + 1`` passes over main memory into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from privagg._rng import Rng
from privagg.encoding import FixedPointEncoder
from privagg.errors import ConfigurationError, EncodingOverflowError
from privagg.protocols import NoiseShare

__all__ = ["BLOCK", "add_masks", "encode_to_ring"]

BLOCK = 1 << 15
_COUNTER0 = bytes(16)


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
) -> npt.NDArray[np.unsignedinteger]:
    """``weight * update`` as fixed-point residues modulo ``2**32`` or ``2**64``.

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

    Raises:
        ConfigurationError: NaN or infinite values.
        EncodingOverflowError: a value exceeds ``value_bound`` and ``clip`` is False.
    """
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    n = x.size
    ws = float(weight) * encoder.scale
    words = np.frombuffer(rng.random_bytes(4 * n), dtype="<u4")
    out = np.empty(n, dtype=np.int64 if noise is not None else dtype)
    t1 = np.empty(min(n, BLOCK), dtype=np.float64)
    t2 = np.empty_like(t1)
    t3 = np.empty_like(t1)
    up = np.empty(t1.shape, dtype=bool)
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
        f, m = t3[: e - s], up[: e - s]
        np.multiply(xs, ws, out=a)  # y
        np.floor(a, out=f)
        np.subtract(a, f, out=a)  # frac(y), exact (Sterbenz) for |y| >= 1 and y >= 0
        np.multiply(words[s:e], 2.0**-32, out=b)  # u
        np.less(b, a, out=m)
        np.add(f, m, out=a)
        if noise is not None:
            np.copyto(out[s:e], a, casting="unsafe")
        else:  # float -> int64 -> ring word (two's complement, reduced mod 2**bits)
            np.copyto(out[s:e], a.astype(np.int64).view(np.uint64), casting="unsafe")
    if noise is None:
        return out
    out += noise.sample_encoded(n, scale=encoder.scale, rng=rng)
    u = out.view(np.uint64)
    return u.astype(np.uint32) if dtype is np.uint32 else u


def add_masks(
    acc: npt.NDArray[np.unsignedinteger], seeds: Sequence[tuple[bytes, int]]
) -> None:
    """``acc += sum(sign * mask(seed))`` in place, block by block.

    ``mask(seed)`` is the AES-256-CTR keystream of ``seed`` (zero counter block) read as
    little-endian words of ``acc``'s dtype: the same words as
    :meth:`privagg.backends._secagg_crypto.MaskExpander.mask`.
    """
    if not seeds or acc.size == 0:
        return
    dt = acc.dtype.newbyteorder("<")
    m = min(acc.size, BLOCK)
    zeros = memoryview(bytes(m * dt.itemsize))
    buf = bytearray(m * dt.itemsize + 15)
    view = np.frombuffer(buf, dtype=dt, count=m)
    encs = [
        (Cipher(algorithms.AES(seed), modes.CTR(_COUNTER0)).encryptor(), sign)
        for seed, sign in seeds
    ]
    for s in range(0, acc.size, BLOCK):
        e = min(acc.size, s + BLOCK)
        k = e - s
        a, v = acc[s:e], view[:k]
        for enc, sign in encs:
            enc.update_into(zeros[: k * dt.itemsize], buf)
            if sign >= 0:
                np.add(a, v, out=a)
            else:
                np.subtract(a, v, out=a)
