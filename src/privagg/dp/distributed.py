"""Distributed DP under secure aggregation, and central DP-FedAvg.

Distributed DP (no trusted server)
----------------------------------
Each client clips its update to L2 norm ``C``, encodes it to integers
(``round_stochastic(x * scale)``, ``scale = 2**scale_bits``), then adds its *share* of
discrete noise, then masks/encrypts. The server only ever sees the masked values and
their sum, which already contains every surviving client's noise: nobody sees the
un-noised aggregate.

* :class:`DiscreteGaussianShare` -- each client adds ``N_Z(0, sigma_i^2)`` per
  coordinate, ``sigma_i = stddev * scale``. The sum of ``m`` such shares is *not* a
  discrete Gaussian; Kairouz, Liu & Steinke (ICML 2021, Prop. 14) bound its Renyi DP,
  with an extra term ``tau`` that is negligible once ``sigma_i >= 1``
  (:class:`~privagg.dp.events.DiscreteGaussianEvent`).
* :class:`SkellamShare` -- each client adds ``Sk(variance_i)``; Skellam is closed
  under sums, so the total is exactly Skellam with the summed variance (Agarwal,
  Kairouz & Liu, NeurIPS 2021; :class:`~privagg.dp.events.SkellamEvent`).

Discretisation: stochastic rounding moves every coordinate by less than one integer
unit, so a client's encoded vector has L2 norm ``< C * scale + sqrt(d)``; this
inflated sensitivity (and ``L1 <= min(sqrt(d) L2, L2^2)``) is what :meth:`event`
accounts. Modular wrap-around of the ring is post-processing of the noisy sum and
costs no privacy, but it destroys utility: :meth:`headroom` bounds ``|sum of noise|``
so the encoder can reserve ring bits for it.

Headroom (security review #11, finding 7): ``share.headroom(n, dim=d, rounds=R)``
returns ``B`` (float units) with

    P[ max over the d * R coordinates of |sum of n shares| > B ] <= p = 2^-failure_log2,

a union bound over ``D = d * R`` coordinates, i.e. a two-sided tail of ``p / D`` per
coordinate. (Until this release ``dim`` defaulted to 1, so the ``2^-40`` held per
*value*: about ``2^-13`` per round at ``10^8`` values.) Per share type, with
``L = ln(2 D / p)``:

* discrete Gaussian: ``N_Z(0, sigma^2)`` is ``sigma``-subgaussian (Canonne, Kamath &
  Steinke 2020, Cor. 9), so the sum of ``n`` shares is ``sqrt(n) sigma``-subgaussian
  and ``B = sqrt(2 n sigma^2 L)``. The float path's ``N(0, sigma^2)`` shares sum to
  ``N(0, n sigma^2)``, whose exact tail ``erfc(B / sqrt(2 n sigma^2))`` is below the same
  sub-Gaussian bound.
* Skellam: the sum is ``Sk`` with variance ``V = n (stddev * scale)^2``, log-MGF
  ``V (cosh t - 1)``; the exact Chernoff bound ``P[|S| >= x] <= 2 exp(-V h(x / V))``,
  ``h(r) = r asinh(r) - sqrt(1 + r^2) + 1``, is solved for ``V h(x / V) = L``. It is
  never larger than Bernstein's ``L/3 + sqrt(L^2/9 + 2 V L)`` and never smaller than the
  Gaussian bound (``cosh t - 1 >= t^2 / 2``), so it covers the float path too.

API change (backward compatible): ``headroom`` takes ``dim`` and ``rounds`` keywords;
omitting ``dim`` still returns the per-coordinate bound (``dim=1``) but emits a
``DeprecationWarning`` (``dim`` becomes required after the deprecation period). The
secure-aggregation backends call it through :func:`privagg.encoding.noise_headroom`
with ``dim=layout.size`` and ``rounds=privagg.encoding.HEADROOM_ROUNDS``, and the
integer backends refuse (``EncodingOverflowError``) a decoded sum outside the range the
ring was sized for instead of returning a wrapped value.

Dropouts: shares are sized for the survivors. With ``n`` clients of which at most a
fraction ``f`` drop, ``m = n - floor(f n)`` survive, and each client adds
``1/m`` of the target variance, so the survivors' total still reaches the target.
Account each round with :meth:`event` and the *actual* number of survivors (fewer
survivors than planned means less noise and a larger epsilon, which the accountant
then reports).

Central DP-FedAvg (trusted server, McMahan et al. 2018)
--------------------------------------------------------
:func:`dp_fedavg_aggregate` clips each update to ``S``, sums, adds ``N(0, (z S)^2)``
per coordinate and divides by the (expected) number of clients, i.e. it adds
``N(0, (z S / n)^2)`` to the average; :func:`dp_fedavg_event` is the event to
account per round.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.dp.accountants import RdpAccountant
from privagg.dp.calibrate import calibrate_noise_multiplier
from privagg.dp.clipping import clip_l2
from privagg.dp.events import (
    DiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
    SkellamEvent,
)
from privagg.dp.noise import sample_discrete_gaussian, sample_gaussian, sample_skellam
from privagg.errors import ConfigurationError
from privagg.protocols import NoiseShare as _BackendNoiseShare

__all__ = [
    "DiscreteGaussianShare",
    "AccountedNoiseShare",
    "SkellamShare",
    "dp_fedavg_aggregate",
    "dp_fedavg_event",
    "encoded_l2_sensitivity",
    "survivors",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def _pos(name: str, v: float) -> float:
    try:  # float() first: math.isfinite(10**400) raises OverflowError
        ok = not isinstance(v, bool) and isinstance(v, (int, float))
        f = float(v) if ok else math.nan
    except OverflowError:
        f = math.nan
    if not math.isfinite(f) or f <= 0:
        shown = f"{v!r}" if len(repr(v)) <= 40 else f"{repr(v)[:40]}..."
        raise ConfigurationError(f"{name} must be finite and > 0, got {shown}")
    return f


def _int(name: str, v: int, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def survivors(n_clients: int, dropout_fraction: float) -> int:
    """Clients guaranteed to remain when at most ``dropout_fraction`` of them drop.

    Args:
        n_clients: clients that start the round.
        dropout_fraction: in ``[0, 1)``.

    Returns:
        ``n - floor(f n)`` (at least 1).

    Raises:
        ConfigurationError: out-of-range arguments.
    """
    _int("n_clients", n_clients)
    f = dropout_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
        raise ConfigurationError(f"dropout_fraction must be in [0, 1), got {f!r}")
    return max(1, n_clients - math.floor(f * n_clients))


def share_stddev(
    noise_multiplier: float, clip_norm: float, n_clients: int, dropout_fraction: float
) -> float:
    """Per-client std ``z C / sqrt(m)`` so that the survivors' sum has std ``z C``.

    ``m`` = :func:`survivors`: sized for the worst-case dropout.

    Raises:
        ConfigurationError: non-positive ``z``/``C`` or out-of-range counts.
    """
    m = survivors(n_clients, dropout_fraction)
    return (
        _pos("noise_multiplier", noise_multiplier)
        * _pos("clip_norm", clip_norm)
        / math.sqrt(m)
    )


def encoded_l2_sensitivity(clip_norm: float, scale: float, dimension: int) -> float:
    """L2 sensitivity, in integer units, of a clipped, stochastically rounded update.

    ``||round(x * scale)||_2 <= C * scale + sqrt(d)`` since each coordinate moves by
    less than 1.

    Args:
        clip_norm: L2 clip ``C`` (float units).
        scale: encoder scale (``2**scale_bits``).
        dimension: number of coordinates ``d``.

    Returns:
        The bound.
    """
    return _pos("clip_norm", clip_norm) * _pos("scale", scale) + math.sqrt(
        _int("dimension", dimension)
    )


# Computed bounds are multiplied by this, so that float rounding (relative error of a
# few ulps, ~1e-15) can only make a bound larger than the exact one, never smaller.
_ROUND_UP = 1.0 + 2.0**-40


def _coordinates(dim: int | None, rounds: int) -> int:
    """``D = dim * rounds``, the coordinates the union bound runs over."""
    if dim is None:
        warnings.warn(
            "headroom() without dim= bounds each coordinate separately (dim=1); pass "
            "dim=<values per round> (and rounds=) so that the bound holds for every "
            "coordinate at once. Omitting dim is deprecated.",
            DeprecationWarning,
            stacklevel=3,
        )
        dim = 1
    return _int("dim", dim) * _int("rounds", rounds)


def _log_tail(coordinates: int, failure_log2: float) -> float:
    """``L = ln(2 D / p)``, ``p = 2^-failure_log2``: two-sided, union over ``D``."""
    _pos("failure_log2", failure_log2)
    return math.log(2) + math.log(coordinates) + failure_log2 * math.log(2.0)


def _skellam_tail_root(variance: float, big_l: float) -> float:
    """Smallest ``x`` (rounded up) with ``variance * h(x / variance) >= big_l``.

    ``h(r) = r asinh(r) - sqrt(1 + r^2) + 1`` is the Chernoff rate of the Skellam
    distribution: ``P[S >= x] <= exp(-V h(x / V))`` for ``S ~ Sk`` with variance ``V``
    (log-MGF ``V (cosh t - 1)``, optimal ``t = asinh(x / V)``). ``h`` is increasing and
    convex on ``r >= 0``; Bernstein's ``r_B = (L/3 + sqrt(L^2/9 + 2 V L)) / V`` satisfies
    ``V h(r_B) >= L`` (``cosh t - 1 <= e^t - 1 - t <= t^2 / (2 (1 - t/3))``), so the root
    is bracketed by ``[0, r_B]`` and found by bisection, keeping the upper end.
    """
    v = variance

    def rate(r: float) -> float:
        # sqrt(1 + r^2) - 1 written without cancellation
        return v * (r * math.asinh(r) - r * r / (math.sqrt(1.0 + r * r) + 1.0))

    hi = (big_l / 3.0 + math.sqrt(big_l * big_l / 9.0 + 2.0 * v * big_l)) / v
    while rate(hi) < big_l:  # guard float rounding of the Bernstein bracket
        hi *= _ROUND_UP
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if rate(mid) >= big_l:
            hi = mid
        else:
            lo = mid
    return hi * v


@runtime_checkable
class AccountedNoiseShare(_BackendNoiseShare, Protocol):
    """A :class:`privagg.NoiseShare` (the one protocol the backends take) that also
    states its scale and accounts for itself: what the shares of :mod:`privagg.dp` are.
    """

    stddev: float

    def sample_encoded(
        self, n: int, *, scale: float, rng: Rng | None = None
    ) -> IntArray:
        """``n`` integer noise values in encoder units (to add after quantisation)."""
        ...

    def sample_real(self, n: int, *, rng: Rng | None = None) -> FloatArray:
        """``n`` float noise values (CKKS path)."""
        ...

    def headroom(
        self,
        n_clients: int,
        *,
        scale: float = 1.0,
        dim: int | None = None,
        rounds: int = 1,
        failure_log2: float = 40.0,
    ) -> float:
        """``B`` (float units) with ``P[max |sum of n_clients shares| > B] <= 2^-failure_log2``,
        the max over all ``dim * rounds`` coordinates."""
        ...

    def event(
        self, *, n_survivors: int, clip_norm: float, scale: float, dimension: int
    ) -> Event:
        """The accounting event of one aggregation with ``n_survivors`` shares."""
        ...


@dataclass(frozen=True, slots=True)
class DiscreteGaussianShare:
    """Per-client discrete Gaussian share, ``stddev`` in float (pre-scale) units.

    Attributes:
        stddev: each client's noise scale in float units; in integer units it is
            ``stddev * scale`` (the discrete Gaussian's sigma parameter).
    """

    stddev: float

    def __post_init__(self) -> None:
        _pos("stddev", self.stddev)

    @classmethod
    def for_target(
        cls,
        *,
        noise_multiplier: float,
        clip_norm: float,
        n_clients: int,
        dropout_fraction: float = 0.0,
    ) -> DiscreteGaussianShare:
        """Shares whose survivors' sum has std ``noise_multiplier * clip_norm``.

        Args:
            noise_multiplier: target ``z`` for the aggregate.
            clip_norm: L2 clip ``C``.
            n_clients: clients starting the round.
            dropout_fraction: expected worst-case dropout fraction.

        Returns:
            The share, ``stddev = z C / sqrt(m)`` with ``m`` = :func:`survivors`.
        """
        return cls(
            share_stddev(noise_multiplier, clip_norm, n_clients, dropout_fraction)
        )

    @classmethod
    def calibrate(
        cls,
        *,
        target_epsilon: float,
        delta: float,
        clip_norm: float,
        n_clients: int,
        scale: float,
        dimension: int,
        rounds: int = 1,
        dropout_fraction: float = 0.0,
    ) -> DiscreteGaussianShare:
        """Smallest share meeting ``(target_epsilon, delta)`` over ``rounds`` rounds.

        Accounting is the DDG RDP bound with the discretisation-inflated sensitivity,
        for the ``m`` = :func:`survivors` clients expected to remain.

        Args:
            target_epsilon: epsilon budget over all rounds.
            delta: delta.
            clip_norm: L2 clip ``C`` (float units).
            n_clients: clients per round.
            scale: encoder scale.
            dimension: coordinates per update.
            rounds: number of aggregations (composed, no subsampling amplification).
            dropout_fraction: worst-case fraction of clients dropping.

        Returns:
            The calibrated share.

        Raises:
            ConfigurationError: bad arguments or unattainable target.
        """
        m = survivors(n_clients, dropout_fraction)
        _int("rounds", rounds)

        def make_event(z: float) -> Event:
            share = cls.for_target(noise_multiplier=z, clip_norm=clip_norm, n_clients=m)
            return share.event(
                n_survivors=m, clip_norm=clip_norm, scale=scale, dimension=dimension
            )

        lo_z = 0.5 * math.sqrt(m) / (clip_norm * scale)  # sigma_int >= 1/2
        z = calibrate_noise_multiplier(
            RdpAccountant,
            make_event,
            target_epsilon,
            delta,
            count=rounds,
            initial=max(1.0, 2 * lo_z),
            bounds=(lo_z, 1e6),
        )
        return cls.for_target(noise_multiplier=z, clip_norm=clip_norm, n_clients=m)

    def sample_encoded(
        self, n: int, *, scale: float, rng: Rng | None = None
    ) -> IntArray:
        """Exact discrete Gaussian noise ``N_Z(0, (stddev * scale)^2)``, int64.

        Args:
            n: number of coordinates.
            scale: encoder scale (``2**scale_bits``).
            rng: randomness (default SystemRng).

        Returns:
            int64 noise to add to the encoded update before masking.
        """
        return sample_discrete_gaussian(self.stddev * _pos("scale", scale), n, rng=rng)

    def sample_real(self, n: int, *, rng: Rng | None = None) -> FloatArray:
        """Float Gaussian noise ``N(0, stddev^2)`` for the CKKS path."""
        return sample_gaussian(self.stddev, n, rng=rng)

    def headroom(
        self,
        n_clients: int,
        *,
        scale: float = 1.0,
        dim: int | None = None,
        rounds: int = 1,
        failure_log2: float = 40.0,
    ) -> float:
        """``B`` (float units) bounding the noise of every coordinate of every round.

        Let ``S_j`` be the sum of ``n_clients`` independent shares in coordinate ``j``,
        over the ``D = dim * rounds`` coordinates of ``rounds`` aggregations of
        ``dim`` values, and ``p = 2^-failure_log2``. Then

            P[ max_j |S_j| > B ] <= p,   B = sqrt(2 n sigma^2 ln(2 D / p)),

        ``sigma = stddev`` (float units; the same in integer units after ``* scale``):
        ``N_Z(0, s^2)`` is ``s``-subgaussian (Canonne, Kamath & Steinke 2020, Cor. 9),
        so ``S_j`` is ``sqrt(n) sigma``-subgaussian and ``P[|S_j| > B] <= 2 exp(-B^2 /
        (2 n sigma^2)) = p / D``; a union bound over the ``D`` coordinates gives ``p``.
        The float path (``sample_real``, ``N(0, sigma^2)``) satisfies the same bound.
        ``B`` is rounded up by a relative ``2^-40`` to absorb float rounding.

        Args:
            n_clients: the most shares a sum can contain (``max_clients``).
            scale: encoder scale (the bound does not depend on it).
            dim: values per aggregation (``layout.size``). Omitting it is deprecated:
                it warns and bounds a single coordinate (``dim=1``).
            rounds: aggregations the bound must cover at once.
            failure_log2: ``-log2 p``.

        Raises:
            ConfigurationError: non-positive or non-integer arguments, or a headroom
                that is not a finite float.
        """
        _int("n_clients", n_clients)
        _pos("scale", scale)
        big_l = _log_tail(_coordinates(dim, rounds), failure_log2)
        try:
            b = _ROUND_UP * math.sqrt(2.0 * n_clients * self.stddev**2 * big_l)
        except OverflowError:  # stddev^2 above the float range (review of #14)
            b = math.inf
        if not math.isfinite(b):
            raise ConfigurationError(
                f"the headroom of {n_clients} shares of stddev {self.stddev!r} is not "
                "finite"
            )
        return b

    def event(
        self, *, n_survivors: int, clip_norm: float, scale: float, dimension: int
    ) -> DiscreteGaussianEvent:
        """DDG event for one aggregation of ``n_survivors`` shares (integer units)."""
        return DiscreteGaussianEvent(
            noise_stddev=self.stddev * _pos("scale", scale),
            l2_sensitivity=encoded_l2_sensitivity(clip_norm, scale, dimension),
            num_shares=_int("n_survivors", n_survivors),
            dimension=dimension,
        )


@dataclass(frozen=True, slots=True)
class SkellamShare:
    """Per-client Skellam share with std ``stddev`` in float units.

    In integer units the client adds ``Sk(variance = (stddev * scale)^2)``.
    """

    stddev: float

    def __post_init__(self) -> None:
        _pos("stddev", self.stddev)

    @classmethod
    def for_target(
        cls,
        *,
        noise_multiplier: float,
        clip_norm: float,
        n_clients: int,
        dropout_fraction: float = 0.0,
    ) -> SkellamShare:
        """Shares whose survivors' sum has std ``noise_multiplier * clip_norm``."""
        return cls(
            share_stddev(noise_multiplier, clip_norm, n_clients, dropout_fraction)
        )

    @classmethod
    def calibrate(
        cls,
        *,
        target_epsilon: float,
        delta: float,
        clip_norm: float,
        n_clients: int,
        scale: float,
        dimension: int,
        rounds: int = 1,
        dropout_fraction: float = 0.0,
    ) -> SkellamShare:
        """Smallest share meeting ``(target_epsilon, delta)`` (Skellam RDP bound).

        Same arguments as :meth:`DiscreteGaussianShare.calibrate`.
        """
        m = survivors(n_clients, dropout_fraction)
        _int("rounds", rounds)

        def make_event(z: float) -> Event:
            share = cls.for_target(noise_multiplier=z, clip_norm=clip_norm, n_clients=m)
            return share.event(
                n_survivors=m, clip_norm=clip_norm, scale=scale, dimension=dimension
            )

        z = calibrate_noise_multiplier(
            RdpAccountant,
            make_event,
            target_epsilon,
            delta,
            count=rounds,
            bounds=(1e-3, 1e6),
        )
        return cls.for_target(noise_multiplier=z, clip_norm=clip_norm, n_clients=m)

    def sample_encoded(
        self, n: int, *, scale: float, rng: Rng | None = None
    ) -> IntArray:
        """Skellam noise with variance ``(stddev * scale)^2``, int64."""
        return sample_skellam((self.stddev * _pos("scale", scale)) ** 2, n, rng=rng)

    def sample_real(self, n: int, *, rng: Rng | None = None) -> FloatArray:
        """Float Gaussian noise ``N(0, stddev^2)`` for the CKKS path."""
        return sample_gaussian(self.stddev, n, rng=rng)

    def headroom(
        self,
        n_clients: int,
        *,
        scale: float = 1.0,
        dim: int | None = None,
        rounds: int = 1,
        failure_log2: float = 40.0,
    ) -> float:
        """``B`` (float units) bounding the noise of every coordinate of every round.

        With ``D = dim * rounds`` coordinates, ``p = 2^-failure_log2`` and ``L = ln(2 D /
        p)``: the sum ``S_j`` of ``n`` shares is exactly Skellam with variance ``V = n
        (stddev * scale)^2`` (integer units), log-MGF ``V (cosh t - 1)``, so Chernoff
        gives ``P[|S_j| >= x] <= 2 exp(-V h(x / V))``, ``h(r) = r asinh(r) - sqrt(1 +
        r^2) + 1``. ``B = x / scale`` for the root ``x`` of ``V h(x / V) = L``, so

            P[ max_j |S_j| > B * scale ] <= D * (p / D) = p.

        ``x`` lies below Bernstein's ``L/3 + sqrt(L^2/9 + 2 V L)`` and above the
        Gaussian ``sqrt(2 V L)`` (``cosh t - 1 >= t^2/2``), so ``B`` also bounds the
        float path (``sample_real``, ``N(0, stddev^2)`` shares). ``B`` decreases with
        ``scale`` (``h(r) / r^2`` is decreasing), so the default ``scale = 1`` is safe
        for any ``scale >= 1``. Rounded up by a relative ``2^-40``.

        Args:
            n_clients: the most shares a sum can contain (``max_clients``).
            scale: encoder scale (``>= 1`` for the default to be conservative).
            dim: values per aggregation (``layout.size``). Omitting it is deprecated:
                it warns and bounds a single coordinate (``dim=1``).
            rounds: aggregations the bound must cover at once.
            failure_log2: ``-log2 p``.

        Raises:
            ConfigurationError: non-positive or non-integer arguments.
        """
        _int("n_clients", n_clients)
        s = _pos("scale", scale)
        big_l = _log_tail(_coordinates(dim, rounds), failure_log2)
        try:
            v = n_clients * (self.stddev * s) ** 2
        except OverflowError:  # above the float range (review of #14)
            v = math.inf
        if not math.isfinite(v):
            raise ConfigurationError("n_clients * (stddev * scale)^2 is not finite")
        return _ROUND_UP * _skellam_tail_root(v, big_l) / s

    def event(
        self, *, n_survivors: int, clip_norm: float, scale: float, dimension: int
    ) -> SkellamEvent:
        """Skellam event for one aggregation of ``n_survivors`` shares (integer units)."""
        return SkellamEvent(
            variance=_int("n_survivors", n_survivors)
            * (self.stddev * _pos("scale", scale)) ** 2,
            l2_sensitivity=encoded_l2_sensitivity(clip_norm, scale, dimension),
            dimension=dimension,
        )


# ----------------------------------------------------------------------------------
# Central DP-FedAvg
# ----------------------------------------------------------------------------------


def dp_fedavg_aggregate(
    updates: Sequence[npt.ArrayLike],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int | None = None,
    rng: Rng | None = None,
) -> FloatArray:
    """DP-FedAvg on a trusted server: clip, sum, add ``N(0, (z S)^2)``, divide by n.

    With Poisson client sampling pass ``expected_clients`` (fixed denominator, so the
    sensitivity of the average is ``S / expected_clients``); otherwise the number of
    updates is used.

    Args:
        updates: client updates, all the same shape.
        clip_norm: ``S``.
        noise_multiplier: ``z``.
        expected_clients: fixed denominator (default ``len(updates)``).
        rng: randomness (default SystemRng).

    Returns:
        The noisy average update.

    Raises:
        ConfigurationError: no updates, shape mismatch, or bad parameters.
    """
    s = _pos("clip_norm", clip_norm)
    z = _pos("noise_multiplier", noise_multiplier)
    if not updates and expected_clients is None:
        raise ConfigurationError("updates must not be empty without expected_clients")
    arrays = [np.asarray(u, dtype=np.float64) for u in updates]
    shape = arrays[0].shape if arrays else None
    if any(a.shape != shape for a in arrays):
        raise ConfigurationError("all updates must have the same shape")
    n = (
        len(arrays)
        if expected_clients is None
        else _int("expected_clients", expected_clients)
    )
    if shape is None:
        raise ConfigurationError("cannot infer the update shape from zero updates")
    total = np.zeros(shape, dtype=np.float64)
    for a in arrays:
        total += clip_l2(a, s)[0]
    r = SystemRng() if rng is None else rng
    noise = sample_gaussian(z * s, int(np.prod(shape)) if shape else 1, rng=r).reshape(
        shape
    )
    return np.asarray((total + noise) / n, dtype=np.float64)


def dp_fedavg_event(
    noise_multiplier: float,
    *,
    sampling_probability: float | None = None,
    rounds: int = 1,
) -> Event:
    """The event of ``rounds`` DP-FedAvg rounds (client-level DP).

    Args:
        noise_multiplier: ``z``.
        sampling_probability: Poisson client sampling rate, or None (all clients every
            round, no amplification).
        rounds: number of rounds.

    Returns:
        ``Gaussian(z)`` (Poisson-sampled if a rate is given), self-composed ``rounds``
        times.
    """
    inner: Event = GaussianEvent(_pos("noise_multiplier", noise_multiplier))
    if sampling_probability is not None:
        inner = PoissonSampledEvent(sampling_probability, inner)
    _int("rounds", rounds)
    return inner if rounds == 1 else SelfComposedEvent(inner, rounds)


def _deprecated_noise_share() -> type[AccountedNoiseShare]:
    # ``privagg.dp.NoiseShare`` was a second protocol of that name: it is
    # ``AccountedNoiseShare`` now, a sub-protocol of ``privagg.NoiseShare`` (issue #16).
    warnings.warn(
        "privagg.dp.NoiseShare is deprecated: use privagg.NoiseShare (what backends "
        "take) or privagg.dp.AccountedNoiseShare (with stddev and event)",
        DeprecationWarning,
        stacklevel=3,
    )
    return AccountedNoiseShare


def __getattr__(name: str) -> object:
    if name == "NoiseShare":
        return _deprecated_noise_share()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
