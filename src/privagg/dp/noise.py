"""Noise samplers. Every draw comes from an injected :class:`~privagg._rng.Rng`.

* :func:`sample_gaussian` -- continuous Gaussian in float64 (Box-Muller on 53-bit
  uniforms). Floating-point Gaussian noise is *not* an exact implementation of the
  Gaussian mechanism: the set of representable outputs and their rounding leak
  information (Mironov 2012 showed this breaks the Laplace mechanism; the same
  style of attack applies to naive Gaussian samplers). Use it for the central float
  path (DP-SGD, DP-FedAvg on a trusted server) and for CKKS; prefer the integer
  samplers below when the noise is added in the integer domain.
* :func:`sample_discrete_gaussian` -- *exact* discrete Gaussian ``N_Z(0, sigma^2)``
  (Canonne, Kamath, Steinke 2020, Algorithms 1-3): rejection from a discrete Laplace
  with integer scale ``t = floor(sigma) + 1``, Bernoulli(exp(-gamma)) acceptance.
  ``sigma^2`` is taken as the exact rational value of the float ``sigma`` squared, so
  no rational approximation of sigma is made.
* :func:`sample_discrete_laplace` -- exact, CKS Algorithm 2.
* :func:`sample_poisson`, :func:`sample_skellam` -- inverse-CDF Poisson; Skellam is the
  difference of two independent Poissons.

How the exact samplers are both exact and vectorised: every Bernoulli(exp(-gamma))
is decided by comparing a uniform ``U`` (whose first 64 bits are drawn) with
``p = exp(-gamma)``. numpy computes ``p`` in float64 with an absolute error far
below ``2^-40`` for every gamma that can occur (analysis in
:func:`_bernoulli_exp_neg`); when ``U`` is more than ``2^-30`` away from the float
``p`` the comparison is decided exactly. Otherwise (probability ``< 2^-28`` per
draw) the element falls back to a pure-Python comparison that draws more bits of
``U`` and evaluates ``exp(-gamma)`` from the exact rational ``gamma`` with
:mod:`decimal` at increasing precision until the comparison is decided. The outcome
is therefore exactly ``[U < exp(-gamma)]``, i.e. exactly Bernoulli(exp(-gamma)).

The Poisson sampler uses the same "decide in float unless within a margin" scheme
against scipy's Poisson CDF; the ambiguous cases are resolved with exact
:mod:`decimal` arithmetic when ``lam <= 2^16``; for larger ``lam`` they are decided
with the float64 CDF (absolute error ~1e-15), so the Skellam sampler is exact for
``variance <= 2^17`` and within total-variation distance ~1e-13 per draw above.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import numpy.typing as npt
from scipy import special

from privagg._rng import Rng, SystemRng, randbelow, uniform01, uniform_u64
from privagg.errors import ConfigurationError

__all__ = [
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_gaussian",
    "sample_poisson",
    "sample_skellam",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_MARGIN = 2.0**-30
_TWO64 = 2.0**-64
_MAX_SIGMA = 2.0**40
_EXACT_POISSON_MAX = 2.0**16
_MAX_POISSON = 2.0**52
_TABLE_MAX = 4096.0


def _rng(rng: Rng | None) -> Rng:
    return SystemRng() if rng is None else rng


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigurationError(f"n must be an integer >= 0, got {n!r}")


def _check_pos(name: str, v: float, upper: float | None = None) -> None:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or v <= 0
    ):
        raise ConfigurationError(f"{name} must be finite and > 0, got {v!r}")
    if upper is not None and v > upper:
        raise ConfigurationError(f"{name} must be <= {upper:g}, got {v!r}")


# ----------------------------------------------------------------------------------
# Bernoulli(exp(-gamma)), exact and vectorised
# ----------------------------------------------------------------------------------


def _exact_compare(gamma: Fraction, u: int, nbits: int, rng: Rng) -> bool:
    """Decide ``U < exp(-gamma)`` exactly, U's first ``nbits`` bits being ``u``."""
    prec = 30
    while True:
        u = (u << 64) | int.from_bytes(rng.random_bytes(8), "big")
        nbits += 64
        prec += 30
        ctx = decimal.Context(prec=prec + 10, Emin=-(10**9), Emax=10**9)
        g = ctx.divide(
            decimal.Decimal(gamma.numerator), decimal.Decimal(gamma.denominator)
        )
        p = Fraction(ctx.exp(-g))
        # g carries relative error <= 10^-(prec+9); exp is correctly rounded; so the
        # relative error of p is <= (1 + gamma) * 10^-(prec+8) < err below.
        err = p * (1 + gamma) / 10**prec
        u_lo = Fraction(u, 1 << nbits)
        u_hi = Fraction(u + 1, 1 << nbits)
        if u_hi <= p - err:
            return True
        if u_lo >= p + err:
            return False


def _bernoulli_exp_neg(
    gamma: FloatArray, exact_gamma: Callable[[int], Fraction], rng: Rng
) -> BoolArray:
    """Exact Bernoulli(exp(-gamma_i)) for each i.

    ``gamma`` is a float64 approximation with absolute error < 2^-40 wherever
    ``exp(-gamma) > 2^-40`` (callers guarantee this: their gammas are a few float
    operations on integers below 2^53, with relative error ~2^-50 and magnitude
    < 745 where exp(-gamma) is not negligible). ``exact_gamma(i)`` returns the exact
    rational gamma of element ``i``; it is only called on the rare ambiguous elements.
    """
    n = gamma.size
    u = uniform_u64(rng, n)
    uf = u.astype(np.float64) * _TWO64  # |U - uf| <= 2^-52
    p = np.exp(-gamma)
    out = uf < p
    ambiguous = np.abs(uf - p) <= _MARGIN
    for i in np.flatnonzero(ambiguous):
        out[i] = _exact_compare(exact_gamma(int(i)), int(u[i]), 64, rng)
    return out


def _geometric_exp_neg1(n: int, rng: Rng) -> IntArray:
    """Number of successes before the first failure of Bernoulli(exp(-1)) trials."""
    v = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    one = Fraction(1)
    while active.size:
        ok = _bernoulli_exp_neg(np.ones(active.size), lambda _i: one, rng)
        v[active[ok]] += 1
        active = active[ok]
    return v


def _discrete_laplace_int(t: int, n: int, rng: Rng) -> IntArray:
    """Exact discrete Laplace with integer scale ``t`` (CKS 2020, Algorithm 2, s = 1).

    ``P[Y = y] proportional to exp(-|y| / t)``.
    """
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = need + need // 2 + 16
        uu = randbelow(rng, t, m).astype(np.int64)
        gam = uu.astype(np.float64) / float(t)

        def exact(i: int, uu: IntArray = uu) -> Fraction:
            return Fraction(int(uu[i]), t)

        d = _bernoulli_exp_neg(gam, exact, rng)
        uu = uu[d]
        v = _geometric_exp_neg1(uu.size, rng)
        x = uu + t * v
        b = (np.frombuffer(rng.random_bytes(uu.size), dtype=np.uint8) & 1).astype(
            np.int64
        )
        keep = ~((b == 1) & (x == 0))
        y = ((1 - 2 * b) * x)[keep][:need]
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def sample_discrete_laplace(scale: int, n: int, *, rng: Rng | None = None) -> IntArray:
    """Exact discrete Laplace samples, ``P[y] proportional to exp(-|y| / scale)``.

    Args:
        scale: positive integer scale.
        n: number of samples.
        rng: randomness source (default :class:`~privagg._rng.SystemRng`).

    Returns:
        int64 array of ``n`` samples.

    Raises:
        ConfigurationError: bad ``scale`` or ``n``.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 2**40:
        raise ConfigurationError(
            f"scale must be an integer in [1, 2**40], got {scale!r}"
        )
    _check_n(n)
    return _discrete_laplace_int(scale, n, _rng(rng))


def sample_discrete_gaussian(
    sigma: float, n: int, *, rng: Rng | None = None
) -> IntArray:
    """Exact discrete Gaussian samples: ``P[y] proportional to exp(-y^2 / (2 sigma^2))``.

    Canonne-Kamath-Steinke 2020, Algorithm 3, with ``sigma^2`` the exact rational
    square of the float ``sigma``. About one second per few million samples.

    Args:
        sigma: the scale parameter (close to, but not exactly, the std for small sigma).
        n: number of samples.
        rng: randomness source (default :class:`~privagg._rng.SystemRng`).

    Returns:
        int64 array of ``n`` samples.

    Raises:
        ConfigurationError: ``sigma`` not in ``(0, 2**40]`` or bad ``n``.
    """
    _check_pos("sigma", sigma, _MAX_SIGMA)
    _check_n(n)
    r = _rng(rng)
    s2 = Fraction(sigma) ** 2
    s2f = float(sigma) * float(sigma)
    t = math.floor(Fraction(sigma)) + 1
    s2_over_t = s2 / t
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        need = n - filled
        m = need + need // 2 + 16
        y = _discrete_laplace_int(t, m, r)
        ay = np.abs(y).astype(np.float64)
        dif = ay - s2f / t
        gam = dif * dif / (2.0 * s2f)

        def exact(i: int, y: IntArray = y) -> Fraction:
            return (abs(int(y[i])) - s2_over_t) ** 2 / (2 * s2)

        c = _bernoulli_exp_neg(gam, exact, r)
        acc = y[c][:need]
        out[filled : filled + acc.size] = acc
        filled += acc.size
    return out


def sample_gaussian(sigma: float, n: int, *, rng: Rng | None = None) -> FloatArray:
    """Float64 Gaussian ``N(0, sigma^2)`` samples (Box-Muller on 53-bit uniforms).

    Not an exact implementation of the Gaussian mechanism (see module docstring).

    Args:
        sigma: standard deviation, ``> 0``.
        n: number of samples.
        rng: randomness source (default :class:`~privagg._rng.SystemRng`).

    Returns:
        float64 array of ``n`` samples.

    Raises:
        ConfigurationError: bad ``sigma`` or ``n``.
    """
    _check_pos("sigma", sigma)
    _check_n(n)
    r = _rng(rng)
    half = (n + 1) // 2
    u = uniform01(r, 2 * half)
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u in (0, 1]
    angle = 2.0 * math.pi * u[half:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]
    return np.asarray(sigma * z, dtype=np.float64)


# ----------------------------------------------------------------------------------
# Poisson / Skellam
# ----------------------------------------------------------------------------------


def _poisson_exact_one(lam: Fraction, u: int, rng: Rng) -> int:
    """Inverse-CDF Poisson with exact decimal CDF; U's first 64 bits are ``u``."""
    nbits = 64
    prec = 50
    while True:
        u = (u << 64) | int.from_bytes(rng.random_bytes(8), "big")
        nbits += 64
        prec += 30
        ctx = decimal.Context(prec=prec, Emin=-(10**9), Emax=10**9)
        lam_d = ctx.divide(
            decimal.Decimal(lam.numerator), decimal.Decimal(lam.denominator)
        )
        u_lo = Fraction(u, 1 << nbits)
        u_hi = Fraction(u + 1, 1 << nbits)
        term = ctx.exp(-lam_d)
        cdf = term
        k = 0
        # cumulated relative error of the running sum stays below (k + 10) 10^-(prec-2)
        while True:
            err = Fraction(cdf) * (k + 10 + int(lam)) / 10 ** (prec - 5)
            if u_hi <= Fraction(cdf) - err:
                return k
            if u_lo < Fraction(cdf) + err:
                break  # undecided at this precision: more bits, more digits
            k += 1
            term = ctx.multiply(term, ctx.divide(lam_d, decimal.Decimal(k)))
            cdf = ctx.add(cdf, term)


def sample_poisson(lam: float, n: int, *, rng: Rng | None = None) -> IntArray:
    """Poisson(``lam``) samples by inverse CDF (see module docstring for exactness).

    Args:
        lam: mean, in ``(0, 2**52]``.
        n: number of samples.
        rng: randomness source (default :class:`~privagg._rng.SystemRng`).

    Returns:
        int64 array of ``n`` samples.

    Raises:
        ConfigurationError: bad ``lam`` or ``n``.
    """
    _check_pos("lam", lam, _MAX_POISSON)
    _check_n(n)
    r = _rng(rng)
    lam = float(lam)
    u = uniform_u64(r, n)
    uf = u.astype(np.float64) * _TWO64
    if lam <= _TABLE_MAX:
        # CDF table + binary search: k = #{j : F(j) <= U} = min{k : U < F(k)}
        top = int(lam + 40.0 * math.sqrt(lam) + 64.0)
        table = special.pdtr(np.arange(top + 1, dtype=np.float64), lam)
        k = np.searchsorted(table, uf, side="right").astype(np.float64)
    else:
        # Cornish-Fisher start, then exact-in-float correction steps
        z = special.ndtri(np.clip(uf, 2.0**-60, 1.0 - 2.0**-53))
        k = np.maximum(
            0.0, np.floor(lam + math.sqrt(lam) * z + (z * z - 1.0) / 6.0 + 0.5)
        )
    # ensure F(k-1) <= U < F(k) against the float CDF
    idx = np.arange(n)
    for _ in range(256):
        kk = k[idx]
        uu = uf[idx]
        f_k = special.pdtr(kk, lam)
        f_km1 = np.where(kk > 0, special.pdtr(kk - 1, lam), 0.0)
        up = uu >= f_k
        down = (kk > 0) & (uu < f_km1)
        moving = up | down
        if not moving.any():
            break
        k[idx] = kk + up - down
        idx = idx[moving]
    f_k = special.pdtr(k, lam)
    f_km1 = np.where(k > 0, special.pdtr(k - 1, lam), -1.0)
    ambiguous = (np.abs(uf - f_k) <= _MARGIN) | (np.abs(uf - f_km1) <= _MARGIN)
    out = k.astype(np.int64)
    if lam <= _EXACT_POISSON_MAX:
        lam_q = Fraction(lam)
        for i in np.flatnonzero(ambiguous):
            out[i] = _poisson_exact_one(lam_q, int(u[i]), r)
    return out


def sample_skellam(variance: float, n: int, *, rng: Rng | None = None) -> IntArray:
    """Symmetric Skellam samples: ``Poisson(variance/2) - Poisson(variance/2)``.

    Args:
        variance: the variance of each sample, ``> 0``.
        n: number of samples.
        rng: randomness source (default :class:`~privagg._rng.SystemRng`).

    Returns:
        int64 array of ``n`` samples.

    Raises:
        ConfigurationError: bad ``variance`` or ``n``.
    """
    _check_pos("variance", variance, 2 * _MAX_POISSON)
    _check_n(n)
    r = _rng(rng)
    a = sample_poisson(variance / 2.0, n, rng=r)
    b = sample_poisson(variance / 2.0, n, rng=r)
    return np.asarray(a - b, dtype=np.int64)
