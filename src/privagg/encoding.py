"""Fixed-point encoding shared by the integer backends (Paillier, SecAgg+, additive).

A float ``x`` with ``|x| <= bound`` becomes the integer ``R(x * 2**scale_bits)`` where
``R`` is *unbiased stochastic rounding*: ``floor(y) + [u < y - floor(y)]`` with ``u``
uniform on [0, 1) from an injected CSPRNG, so ``E[R(y)] = y`` and rounding errors of
many clients average out instead of adding a systematic bias.

Headroom: a sum of ``n`` encoded values each at most ``max_abs_int`` in magnitude, plus
an optional noise allowance, must fit a signed two's-complement ring of ``bits`` bits.
:meth:`FixedPointEncoder.sum_limit` is the largest magnitude such a sum can have,
:meth:`FixedPointEncoder.sum_bits` the bits needed and
:meth:`FixedPointEncoder.check_capacity` refuses a configuration that could wrap, before
any value is encoded.

DP noise (security review #11, finding 7): the allowance for distributed-DP noise is
:func:`noise_headroom`, a bound that holds for *every* coordinate of every round at once
(union bound over ``dim * rounds`` coordinates, failure ``<= 2^-40``), not per value.
Since it is still a probabilistic bound, a holder decodes with
:meth:`FixedPointEncoder.decode_sum`, which refuses (``EncodingOverflowError``) a sum
outside ``[-sum_limit, sum_limit]``: the ring has ``2^(bits-1) > sum_limit``, so a sum
that wrapped lands outside that range unless it overshot by nearly a whole ring, and a
wrong aggregate is returned only with probability
``P[max_j |noise_j| >= 2^bits - sum_limit - n * per_value]``, at most the headroom's
failure probability and in practice far below it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng, uniform01
from privagg._signature import accepts_keyword
from privagg.errors import ConfigurationError, EncodingOverflowError

if TYPE_CHECKING:
    from privagg.protocols import NoiseShare

__all__ = [
    "HEADROOM_ROUNDS",
    "EncodedVector",
    "FixedPointEncoder",
    "from_ring",
    "noise_headroom",
    "to_ring",
]

IntVector = npt.NDArray[np.int64]
_MAX_SCALE_BITS = 52

HEADROOM_ROUNDS: Final = 1 << 20
"""Rounds a session's noise headroom covers by default: the union bound runs over
``dim * HEADROOM_ROUNDS`` coordinates: ``B`` grows by ``sqrt(1 + 20 ln 2 / ln(2 dim / p))``,
at most 0.3 bits (``dim = 1``), 0.19 bits at ``dim = 10^8``."""


def noise_headroom(
    noise: NoiseShare | None,
    n_clients: int,
    *,
    dim: int,
    rounds: int = HEADROOM_ROUNDS,
) -> float:
    """The allowance (float units) to reserve for the DP noise of ``n_clients`` shares.

    Asks ``noise.headroom(n_clients, dim=dim, rounds=rounds)``: a ``B`` with
    ``P[max |sum of n_clients shares| > B] <= 2^-40``, the max over all ``dim * rounds``
    coordinates (:mod:`privagg.dp.distributed` states the bound of each share type). A
    share whose ``headroom`` takes ``dim`` but not ``rounds`` is asked for ``dim=dim *
    rounds`` (the union bound depends only on the product). A legacy share whose
    ``headroom`` takes neither is asked for ``headroom(n_clients)``, whose bound may hold
    only per coordinate: that emits a ``DeprecationWarning`` (holders still detect a
    wrap with :meth:`FixedPointEncoder.decode_sum`).

    Args:
        noise: the session's noise share, or None (no noise: 0.0).
        n_clients: the most shares a sum can contain (``max_clients``).
        dim: values per aggregation (``layout.size``).
        rounds: aggregations the bound must cover.

    Returns:
        The allowance, finite and ``>= 0``.

    Raises:
        ConfigurationError: ``noise`` is not a :class:`~privagg.NoiseShare`, bad
            ``dim``/``rounds``, or a share returned a negative or non-finite headroom.
    """
    from privagg.protocols import check_noise_share  # no import cycle at load time

    check_noise_share(noise)
    for name, v in (("dim", dim), ("rounds", rounds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigurationError(f"{name} must be an integer >= 0, got {v!r}")
    if noise is None or dim == 0 or rounds == 0:
        return 0.0  # nothing to bound (an empty layout has no coordinate to overflow)
    fn: Callable[..., float] = noise.headroom
    if accepts_keyword(fn, "dim") and accepts_keyword(fn, "rounds"):
        h = fn(n_clients, dim=dim, rounds=rounds)
    elif accepts_keyword(fn, "dim"):
        h = fn(n_clients, dim=dim * rounds)
    else:
        warnings.warn(
            f"{type(noise).__name__}.headroom() takes no dim=/rounds=: its bound may "
            "hold only per coordinate, not for all of them at once; accept dim= and "
            "rounds= keywords (legacy headroom(n_clients) is deprecated)",
            DeprecationWarning,
            stacklevel=2,
        )
        h = fn(n_clients)
    out = float(h)
    if not (math.isfinite(out) and out >= 0):
        raise ConfigurationError(f"noise headroom must be finite and >= 0, got {out!r}")
    return out


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
        noise_allowance: float-unit allowance for the DP noise in a sum (see
            :func:`noise_headroom`), used by :meth:`sum_limit`, :meth:`sum_bits`,
            :meth:`check_capacity` and :meth:`decode_sum` when ``extra`` is not given.
    """

    bound: float
    scale_bits: int = 16
    clip: bool = False
    noise_allowance: float = 0.0

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
        a = self.noise_allowance
        if (
            isinstance(a, bool)
            or not isinstance(a, (int, float))
            or not math.isfinite(a)
            or a < 0
        ):
            raise ConfigurationError(
                f"noise_allowance must be finite and >= 0, got {a!r}"
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

    def sum_limit(
        self, n_summands: int, *, max_weight: float = 1.0, extra: float | None = None
    ) -> int:
        """The largest magnitude (integer units) a sum can have without wrapping.

        ``n * (ceil(max_weight * bound * scale) + 1) + ceil(extra * scale)``: each of the
        ``n`` stochastically rounded, weighted values has ``|v| <= ceil(max_weight *
        bound * scale)`` (the ``+ 1`` absorbs float rounding of the product), and the
        noise of the sum is ``<= extra`` (float units) except with the probability its
        headroom states.

        Args:
            n_summands: the most contributions a sum can have.
            max_weight: the largest weight a contribution is multiplied by (>= 0).
            extra: allowance in float units for DP noise (default
                :attr:`noise_allowance`).

        Raises:
            ConfigurationError: bad arguments.
        """
        if (
            isinstance(n_summands, bool)
            or not isinstance(n_summands, int)
            or n_summands < 1
        ):
            raise ConfigurationError(
                f"n_summands must be an int >= 1, got {n_summands!r}"
            )
        if not (math.isfinite(max_weight) and max_weight >= 0):
            raise ConfigurationError(
                f"max_weight must be finite and >= 0, got {max_weight!r}"
            )
        if extra is None:
            extra = self.noise_allowance
        if not (math.isfinite(extra) and extra >= 0):
            raise ConfigurationError(f"extra must be finite and >= 0, got {extra!r}")
        per = math.ceil(max_weight * self.bound * self.scale) + 1
        return n_summands * per + math.ceil(extra * self.scale)

    def sum_bits(
        self, n_summands: int, *, max_weight: float = 1.0, extra: float | None = None
    ) -> int:
        """Bits of a signed ring that hold any sum without wrap-around.

        Args:
            n_summands: the most contributions a sum can have.
            max_weight: the largest weight a contribution is multiplied by (>= 0).
            extra: an additional magnitude allowance in float units for DP noise
                (default :attr:`noise_allowance`).

        Returns:
            ``b`` such that every sum ``|s| <= sum_limit`` lies in
            ``[-2**(b-1), 2**(b-1))`` (indeed ``2**(b-1) > sum_limit``).
        """
        total = self.sum_limit(n_summands, max_weight=max_weight, extra=extra)
        return total.bit_length() + 1

    def check_capacity(
        self,
        bits: int,
        n_summands: int,
        *,
        max_weight: float = 1.0,
        extra: float | None = None,
    ) -> None:
        """Raise :class:`EncodingOverflowError` if a ``bits``-bit ring could wrap."""
        need = self.sum_bits(n_summands, max_weight=max_weight, extra=extra)
        if need > bits:
            raise EncodingOverflowError(
                f"sums of {n_summands} values (bound {self.bound}, weight <= {max_weight}, "
                f"scale_bits {self.scale_bits}) need {need} bits but the ring has {bits}"
            )

    def decode_sum(
        self,
        values: npt.NDArray[np.signedinteger] | Sequence[int],
        n_summands: int,
        *,
        max_weight: float = 1.0,
    ) -> npt.NDArray[np.float64]:
        """Decode a (centred) sum of ``n_summands`` contributions, refusing a wrapped one.

        Every honest sum has ``|s| <= L = sum_limit(n_summands, max_weight=max_weight)``
        unless the DP noise exceeded :attr:`noise_allowance` (probability ``<= 2^-40``
        with :func:`noise_headroom`), and the ring was sized with ``2^(b-1) >`` the limit
        for ``max_clients >= n_summands``. A centred value ``v = s mod 2^b`` with ``|v| >
        L`` therefore means the sum overflowed its headroom (and usually wrapped): it is
        refused rather than returned as a wrong aggregate. A wrap goes undetected only
        if ``|s| >= 2^b - L``.

        Args:
            values: signed centred sums (an integer array, or Python ints for sums wider
                than 64 bits).
            n_summands: contributions in this sum (``len(contributors)``).
            max_weight: as in :meth:`sum_limit` (1.0 when ``bound`` already includes
                the weight).

        Returns:
            The float sums.

        Raises:
            EncodingOverflowError: a value outside ``[-L, L]``.
            ConfigurationError: bad arguments or non-integer values.
        """
        limit = self.sum_limit(n_summands, max_weight=max_weight)
        if isinstance(values, np.ndarray):
            if values.dtype.kind not in "iu":
                raise ConfigurationError(
                    f"decode_sum needs integer sums, got dtype {values.dtype}"
                )
            info = np.iinfo(values.dtype)
            over = False
            if limit < info.max:
                over = bool((values > values.dtype.type(limit)).any())
            if -limit > info.min:
                over = over or bool((values < values.dtype.type(-limit)).any())
            ok = not over
            out = values.astype(np.float64) / self.scale
        else:
            if not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                for v in values
            ):
                raise ConfigurationError("decode_sum needs integer sums")
            ints = [int(v) for v in values]
            ok = all(-limit <= v <= limit for v in ints)
            out = np.asarray([v / self.scale for v in ints], dtype=np.float64)
        if not ok:
            raise EncodingOverflowError(
                f"a decoded sum of {n_summands} contribution(s) lies outside the range "
                f"the ring was sized for (|sum| <= {limit} units): it overflowed "
                "(DP noise beyond its headroom, or a malformed contribution) and is "
                "refused rather than returned wrapped"
            )
        return out


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
