"""Fixed-point encoding shared by the integer backends (Paillier, SecAgg+, additive).

A float ``x`` with ``|x| <= bound`` becomes the integer ``R(x * 2**scale_bits)`` where
``R`` is *unbiased stochastic rounding*: ``floor(y) + [u < y - floor(y)]`` with ``u``
uniform on [0, 1) from an injected CSPRNG, so ``E[R(y)] = y`` and rounding errors of
many clients average out instead of adding a systematic bias.

Headroom: a sum of ``n`` encoded values each at most ``max_abs_int`` in magnitude, plus
an optional noise allowance, must fit a signed two's-complement ring of ``bits`` bits.
:meth:`FixedPointEncoder.sum_bits` computes the bits needed and
:meth:`FixedPointEncoder.check_capacity` refuses a configuration that could wrap, before
any value is encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng, uniform01
from privagg.errors import ConfigurationError, EncodingOverflowError

__all__ = ["EncodedVector", "FixedPointEncoder", "from_ring", "to_ring"]

IntVector = npt.NDArray[np.int64]
_MAX_SCALE_BITS = 52


@dataclass(frozen=True, slots=True)
class EncodedVector:
    """Result of :meth:`FixedPointEncoder.encode`.

    Attributes:
        values: signed fixed-point integers (int64).
        n_clipped: how many inputs were clipped to the bound (0 unless clipping asked).
    """

    values: IntVector
    n_clipped: int


@dataclass(frozen=True, slots=True)
class FixedPointEncoder:
    """Float <-> signed integer fixed-point codec with stochastic rounding.

    Args:
        bound: the largest magnitude accepted, ``|x| <= bound``.
        scale_bits: fractional bits; resolution is ``2**-scale_bits``.
        clip: if True, out-of-range values are clipped (and counted) instead of raising.
    """

    bound: float
    scale_bits: int = 16
    clip: bool = False

    def __post_init__(self) -> None:
        if not (
            isinstance(self.bound, (int, float))
            and math.isfinite(self.bound)
            and self.bound > 0
        ):
            raise ConfigurationError(
                f"bound must be a finite number > 0, got {self.bound!r}"
            )
        if (
            not isinstance(self.scale_bits, int)
            or not 0 <= self.scale_bits <= _MAX_SCALE_BITS
        ):
            raise ConfigurationError(
                f"scale_bits must be an int in [0, {_MAX_SCALE_BITS}], got {self.scale_bits!r}"
            )
        if self.max_abs_int >= 1 << 62:
            raise ConfigurationError(
                f"bound * 2**scale_bits must be < 2**62, got bound={self.bound}, "
                f"scale_bits={self.scale_bits}"
            )

    @property
    def scale(self) -> float:
        """``2**scale_bits``: integer units per 1.0."""
        return float(1 << self.scale_bits)

    @property
    def max_abs_int(self) -> int:
        """Largest magnitude an encoded value can take: ``ceil(bound * scale)``."""
        return math.ceil(self.bound * (1 << self.scale_bits))

    def encode(self, x: npt.ArrayLike, rng: Rng | None = None) -> EncodedVector:
        """Encode floats to signed fixed-point integers with unbiased stochastic rounding.

        Raises:
            ConfigurationError: NaN or infinite input.
            EncodingOverflowError: a value exceeds ``bound`` and ``clip`` is False.
        """
        arr = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(arr).all():
            raise ConfigurationError("cannot encode NaN or infinite values")
        over = np.abs(arr) > self.bound
        n_over = int(np.count_nonzero(over))
        if n_over:
            if not self.clip:
                raise EncodingOverflowError(
                    f"{n_over} value(s) exceed the encoder bound {self.bound}; "
                    "clip the update first or construct the encoder with clip=True"
                )
            arr = np.clip(arr, -self.bound, self.bound)
        y = arr * self.scale
        fl = np.floor(y)
        frac = y - fl
        u = uniform01(rng if rng is not None else SystemRng(), arr.size)
        out = fl.astype(np.int64) + (u < frac).astype(np.int64)
        return EncodedVector(out, n_over)

    def decode(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map fixed-point integers (or their sums) back to floats."""
        return np.asarray(values).astype(np.float64) / self.scale

    def sum_error_bound(self, n_summands: int, max_abs: float) -> float:
        """Max abs error of a decoded sum of ``n_summands`` encoded values.

        Each value is stochastically rounded to the grid ``2**-scale_bits`` (an error
        strictly below one unit); the integer sum itself is exact when the capacity
        check holds. Added: float64 rounding of the weight product and of the final
        division, ``8 * n * max(max_abs, 1) * 2**-52``.
        """
        return float(
            n_summands * 2.0**-self.scale_bits
            + 8 * n_summands * max(max_abs, 1.0) * 2.0**-52
        )

    def sum_bits(
        self, n_summands: int, *, max_weight: float = 1.0, extra: float = 0.0
    ) -> int:
        """Bits of a signed ring that hold any sum without wrap-around.

        Args:
            n_summands: the most contributions a sum can have.
            max_weight: the largest weight a contribution is multiplied by (>= 0).
            extra: an additional magnitude allowance in float units (for DP noise).

        Returns:
            ``b`` such that every sum lies in ``[-2**(b-1), 2**(b-1))``.
        """
        if not isinstance(n_summands, int) or n_summands < 1:
            raise ConfigurationError(
                f"n_summands must be an int >= 1, got {n_summands!r}"
            )
        if not (math.isfinite(max_weight) and max_weight >= 0):
            raise ConfigurationError(
                f"max_weight must be finite and >= 0, got {max_weight!r}"
            )
        if not (math.isfinite(extra) and extra >= 0):
            raise ConfigurationError(f"extra must be finite and >= 0, got {extra!r}")
        per = math.ceil(max_weight * self.bound * self.scale) + 1
        total = n_summands * per + math.ceil(extra * self.scale)
        return total.bit_length() + 1

    def check_capacity(
        self, bits: int, n_summands: int, *, max_weight: float = 1.0, extra: float = 0.0
    ) -> None:
        """Raise :class:`EncodingOverflowError` if a ``bits``-bit ring could wrap."""
        need = self.sum_bits(n_summands, max_weight=max_weight, extra=extra)
        if need > bits:
            raise EncodingOverflowError(
                f"sums of {n_summands} values (bound {self.bound}, weight <= {max_weight}, "
                f"scale_bits {self.scale_bits}) need {need} bits but the ring has {bits}"
            )


def to_ring(values: IntVector, bits: int) -> npt.NDArray[np.uint64]:
    """Signed int64 -> residues mod ``2**bits`` (two's complement), ``1 <= bits <= 64``."""
    if not 1 <= bits <= 64:
        raise ConfigurationError(f"ring bits must be in [1, 64], got {bits}")
    u = np.asarray(values, dtype=np.int64).view(np.uint64)
    if bits == 64:
        return u.copy()
    return u & np.uint64((1 << bits) - 1)


def from_ring(residues: npt.NDArray[np.uint64], bits: int) -> IntVector:
    """Residues mod ``2**bits`` -> centred signed integers in ``[-2**(bits-1), 2**(bits-1))``."""
    if not 1 <= bits <= 64:
        raise ConfigurationError(f"ring bits must be in [1, 64], got {bits}")
    r = np.asarray(residues, dtype=np.uint64)
    if bits == 64:
        return r.view(np.int64).copy()
    r = r & np.uint64((1 << bits) - 1)
    neg = r >= np.uint64(1 << (bits - 1))
    # r - 2**bits, computed modulo 2**64, is the two's-complement int64 of the negative.
    r[neg] -= np.uint64(1 << bits)
    return r.view(np.int64)
