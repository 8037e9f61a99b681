"""Noise calibration, and the two convenience functions of the public API.

:func:`calibrate_noise_multiplier` finds the smallest noise multiplier whose
accountant-certified epsilon is at most a target, by geometric bracketing followed by
bisection in log space. It returns the *upper* end of the final bracket, so the
returned value always meets the target (for the accountant used).

:func:`epsilon` and :func:`noise_multiplier` are the Poisson-subsampled Gaussian
mechanism (DP-SGD, DP-FedAvg with Poisson client sampling) in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from privagg.dp.accountants import Accountant, make_accountant
from privagg.dp.events import Event, GaussianEvent, PoissonSampledEvent
from privagg.errors import ConfigurationError

__all__ = ["calibrate_noise_multiplier", "epsilon", "noise_multiplier"]

_SIGMA_MIN = 1e-3
_SIGMA_MAX = 1e4


def _num(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def calibrate_noise_multiplier(
    make_accountant: Callable[[], Accountant],
    make_event: Callable[[float], Event],
    target_epsilon: float,
    delta: float,
    *,
    count: int = 1,
    rtol: float = 1e-4,
    initial: float = 1.0,
    bounds: tuple[float, float] = (_SIGMA_MIN, _SIGMA_MAX),
) -> float:
    """Smallest noise multiplier ``z`` with ``epsilon(delta) <= target_epsilon``.

    For each candidate ``z`` a fresh accountant from ``make_accountant()`` composes
    ``make_event(z)`` ``count`` times. Epsilon must be non-increasing in ``z``.

    Args:
        make_accountant: factory of empty accountants.
        make_event: maps a noise multiplier to the event of one release.
        target_epsilon: the epsilon to reach, ``> 0``.
        delta: the delta, in ``(0, 1)``.
        count: how many times the event is composed.
        rtol: relative width of the final bracket.
        initial: first guess.
        bounds: the search interval for ``z``.

    Returns:
        ``z`` with certified epsilon ``<= target_epsilon``, and either epsilon at ``z``
        is ``>= target_epsilon * (1 - rtol)`` or epsilon at ``z / (1 + rtol)`` is
        above the target (or ``z == bounds[0]``). The search brackets the root with
        growing steps from ``initial``, then runs the Illinois variant of regula falsi
        on ``log(epsilon)`` against ``log(z)`` (probes clamped strictly
        inside the bracket), so it typically needs 5-8 accountant evaluations.

    Raises:
        ConfigurationError: bad arguments, or the target is unattainable within
            ``bounds`` (even ``z = bounds[1]`` gives a larger epsilon).
    """
    target = _num("target_epsilon", target_epsilon)
    if target <= 0:
        raise ConfigurationError(f"target_epsilon must be > 0, got {target_epsilon!r}")
    d = _num("delta", delta)
    if not 0 < d < 1:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    if not 0 < rtol < 1:
        raise ConfigurationError(f"rtol must be in (0, 1), got {rtol!r}")
    lo_bound, hi_bound = bounds
    if not 0 < lo_bound < hi_bound:
        raise ConfigurationError(f"bounds must satisfy 0 < lo < hi, got {bounds!r}")

    def eps_at(z: float) -> float:
        return make_accountant().compose(make_event(z), count).epsilon(d)

    cache: dict[float, float] = {}

    def eps_c(z: float) -> float:
        if z not in cache:
            cache[z] = eps_at(z)
        return cache[z]

    # 1. bracket: eps(lo) > target >= eps(hi), growing steps from the initial guess
    z = min(max(float(initial), lo_bound), hi_bound)
    factor = 1.12  # then 1.25, 1.57, 2.5, 6.2, ...
    if eps_c(z) <= target:
        hi = lo = z
        while True:
            if lo <= lo_bound:
                return hi  # even the smallest allowed noise meets the target
            lo = max(lo / factor, lo_bound)
            factor *= factor
            if eps_c(lo) > target:
                break
            hi = lo
    else:
        lo = hi = z
        while True:
            if hi >= hi_bound:
                raise ConfigurationError(
                    f"target_epsilon={target_epsilon!r} at delta={delta!r} is unattainable: "
                    f"even noise_multiplier={hi_bound:g} gives epsilon {eps_c(hi_bound):.6g}"
                )
            hi = min(hi * factor, hi_bound)
            factor *= factor
            if eps_c(hi) <= target:
                break
            lo = hi
    # 2. Illinois (regula falsi) on log(eps) against log(z), keeping the bracket;
    #    probes are clamped strictly inside the bracket (see below).
    log_t = math.log(target)

    def g(z: float) -> float:
        e = eps_c(z)
        return (math.log(e) if e > 0 else -745.0) - log_t if math.isfinite(e) else 745.0

    x_lo, x_hi = math.log(lo), math.log(hi)
    g_lo, g_hi = g(lo), g(hi)
    side = 0
    while math.exp(x_hi - x_lo) - 1.0 > rtol:
        if eps_c(math.exp(x_hi)) >= target * (1.0 - rtol):
            break  # the upper end already spends the budget to within rtol
        x = (
            x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
            if g_hi != g_lo
            else 0.5 * (x_lo + x_hi)
        )
        # keep the probe strictly inside, at least ~rtol/2 from either end, so that a
        # secant step landing next to an end still shrinks the bracket below rtol
        delta_x = min(0.4 * math.log1p(rtol), 0.25 * (x_hi - x_lo))
        x = min(max(x, x_lo + delta_x), x_hi - delta_x)
        gx = g(math.exp(x))
        if gx <= 0:
            x_hi, g_hi = x, gx
            if side == +1:
                g_lo /= 2.0
            side = +1
        else:
            x_lo, g_lo = x, gx
            if side == -1:
                g_hi /= 2.0
            side = -1
    return math.exp(x_hi)


def _check_common(
    sample_rate: float, steps: int, delta: float
) -> tuple[float, int, float]:
    q = _num("sample_rate", sample_rate)
    if not 0 < q <= 1:
        raise ConfigurationError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"steps must be an integer >= 1, got {steps!r}")
    d = _num("delta", delta)
    if not 0 < d < 1:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    return q, steps, d


def epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "pld",
) -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian releases (DP-SGD).

    Args:
        noise_multiplier: noise standard deviation over the L2 clip norm, ``> 0``.
        sample_rate: Poisson sampling probability, in ``(0, 1]``.
        steps: number of releases, ``>= 1``.
        delta: target delta, in ``(0, 1)``.
        accountant: ``"pld"`` (default, tightest) or ``"rdp"``.

    Returns:
        The certified epsilon.

    Raises:
        ConfigurationError: a parameter is out of range or the accountant unknown.
    """
    z = _num("noise_multiplier", noise_multiplier)
    if z <= 0:
        raise ConfigurationError(
            f"noise_multiplier must be > 0, got {noise_multiplier!r}"
        )
    q, n, d = _check_common(sample_rate, steps, delta)
    acct = make_accountant(accountant)
    return acct.compose(PoissonSampledEvent(q, GaussianEvent(z)), n).epsilon(d)


def noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
) -> float:
    """Smallest noise multiplier meeting ``(target_epsilon, delta)`` for DP-SGD.

    Args:
        target_epsilon: the epsilon budget, ``> 0``.
        delta: the delta, in ``(0, 1)``.
        sample_rate: Poisson sampling probability, in ``(0, 1]``.
        steps: number of releases, ``>= 1``.
        accountant: ``"pld"`` (default) or ``"rdp"``.

    Returns:
        The noise multiplier (relative precision 1e-4, rounded up).

    Raises:
        ConfigurationError: bad parameters, unknown accountant, or unattainable target.
    """
    q, n, d = _check_common(sample_rate, steps, delta)
    make_accountant(accountant)  # validates the name early
    initial = 1.0
    if accountant != "rdp":
        # RDP is cheap and slightly looser: its answer is an excellent starting point
        try:
            initial = calibrate_noise_multiplier(
                lambda: make_accountant("rdp"),
                lambda z: PoissonSampledEvent(q, GaussianEvent(z)),
                target_epsilon,
                d,
                count=n,
                rtol=1e-2,
            )
        except ConfigurationError:
            initial = 1.0
    return calibrate_noise_multiplier(
        lambda: make_accountant(accountant),
        lambda z: PoissonSampledEvent(q, GaussianEvent(z)),
        target_epsilon,
        d,
        count=n,
        initial=initial,
    )
