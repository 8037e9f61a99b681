"""Goodness-of-fit and exactness tests of the samplers (fixed seeds: not flaky)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from privagg._rng import DeterministicRng, SystemRng
from privagg.dp import noise
from privagg.dp.noise import (
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_gaussian,
    sample_poisson,
    sample_skellam,
)
from privagg.errors import ConfigurationError


def _dg_pmf(sigma: float, support: np.ndarray) -> np.ndarray:
    k = np.arange(-int(60 * sigma) - 60, int(60 * sigma) + 61)
    w = np.exp(-(k.astype(float) ** 2) / (2 * sigma * sigma))
    z = w.sum()
    return np.exp(-(support.astype(float) ** 2) / (2 * sigma * sigma)) / z


def _chi2_pvalue(x: np.ndarray, pmf: callable, min_expected: float = 20.0) -> float:  # type: ignore[valid-type]
    """Chi-square GOF with tail bins merged until every bin expects >= min_expected."""
    n = x.size
    lo, hi = int(x.min()), int(x.max())
    support = np.arange(lo, hi + 1)
    p = pmf(support)
    counts = np.bincount(x - lo, minlength=support.size).astype(float)
    # mass outside the observed range goes half into the first, half into the last bin
    p_total = p.sum()
    left_tail_mass = max(0.0, 1.0 - p_total) / 2
    bins_obs, bins_exp = [], []
    acc_o, acc_e = 0.0, left_tail_mass * n
    for o, e in zip(counts, p * n, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= min_expected:
            bins_obs.append(acc_o)
            bins_exp.append(acc_e)
            acc_o = acc_e = 0.0
    bins_obs[-1] += acc_o
    bins_exp[-1] += acc_e + left_tail_mass * n
    obs, exp = np.array(bins_obs), np.array(bins_exp)
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


@pytest.mark.parametrize(
    "sigma, seed", [(0.6, 1), (1.0, 2), (2.5, 3), (7.3, 4), (40.0, 5)]
)
def test_discrete_gaussian_goodness_of_fit(sigma: float, seed: int) -> None:
    x = sample_discrete_gaussian(sigma, 200_000, rng=DeterministicRng(seed))
    assert x.dtype == np.int64
    assert _chi2_pvalue(x, lambda k: _dg_pmf(sigma, k)) > 1e-3
    # symmetric, variance close to sigma^2 (slightly below for small sigma)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(x.size)


def test_discrete_gaussian_large_sigma_moments() -> None:
    sigma = 1.0e6
    x = sample_discrete_gaussian(sigma, 200_000, rng=DeterministicRng(6))
    assert abs(x.mean()) < 5 * sigma / math.sqrt(x.size)
    assert x.std() == pytest.approx(sigma, rel=0.01)
    assert stats.kstest(x / sigma, "norm").pvalue > 1e-3


@pytest.mark.parametrize("scale, seed", [(1, 7), (3, 8), (20, 9)])
def test_discrete_laplace_goodness_of_fit(scale: int, seed: int) -> None:
    x = sample_discrete_laplace(scale, 200_000, rng=DeterministicRng(seed))
    r = math.exp(-1 / scale)

    def pmf(k: np.ndarray) -> np.ndarray:
        return (1 - r) / (1 + r) * r ** np.abs(k)

    assert _chi2_pvalue(x, pmf) > 1e-3


@pytest.mark.parametrize(
    "lam, seed", [(0.3, 10), (3.5, 11), (50.0, 12), (5000.0, 13), (1e6, 14)]
)
def test_poisson_goodness_of_fit(lam: float, seed: int) -> None:
    x = sample_poisson(lam, 200_000, rng=DeterministicRng(seed))
    assert _chi2_pvalue(x, lambda k: stats.poisson.pmf(k, lam)) > 1e-3


@pytest.mark.parametrize("var, seed", [(0.5, 15), (10.0, 16), (1e4, 17)])
def test_skellam_goodness_of_fit(var: float, seed: int) -> None:
    x = sample_skellam(var, 200_000, rng=DeterministicRng(seed))
    assert _chi2_pvalue(x, lambda k: stats.skellam.pmf(k, var / 2, var / 2)) > 1e-3


def test_skellam_huge_variance_moments() -> None:
    x = sample_skellam(1e10, 100_000, rng=DeterministicRng(18))
    assert x.var() == pytest.approx(1e10, rel=0.02)
    assert abs(x.mean()) < 5e5 / math.sqrt(x.size) * 5


def test_gaussian_ks() -> None:
    x = sample_gaussian(3.0, 200_001, rng=DeterministicRng(19))
    assert x.size == 200_001
    assert stats.kstest(x / 3.0, "norm").pvalue > 1e-3


def test_deterministic_rng_reproducible_and_system_rng_default() -> None:
    a = sample_discrete_gaussian(3.0, 1000, rng=DeterministicRng(42))
    b = sample_discrete_gaussian(3.0, 1000, rng=DeterministicRng(42))
    assert np.array_equal(a, b)
    c = sample_discrete_gaussian(3.0, 1000)  # SystemRng
    assert c.shape == (1000,)
    assert sample_skellam(4.0, 10, rng=SystemRng()).shape == (10,)
    assert sample_gaussian(1.0, 0).shape == (0,)


def test_no_numpy_global_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("numpy's global RNG must not be used")

    for name in (
        "random",
        "rand",
        "randn",
        "randint",
        "normal",
        "uniform",
        "poisson",
        "default_rng",
    ):
        monkeypatch.setattr(np.random, name, boom)
    sample_discrete_gaussian(2.0, 100, rng=DeterministicRng(1))
    sample_skellam(100.0, 100, rng=DeterministicRng(1))
    sample_gaussian(1.0, 100, rng=DeterministicRng(1))


def test_exact_bernoulli_fallback_matches_probability() -> None:
    # Force the exact (decimal) comparison path and check it against exp(-gamma).
    rng = DeterministicRng(20)
    gamma = Fraction(7, 5)
    p = math.exp(-1.4)
    hits = 0
    n = 4000
    for _ in range(n):
        u = int.from_bytes(rng.random_bytes(8), "big")
        hits += noise._exact_compare(gamma, u, 64, rng)
    assert abs(hits / n - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_exact_bernoulli_decides_boundary_correctly() -> None:
    # U's first 64 bits straddle exp(-1) to within 2^-64: the exact path must decide it
    p = Fraction(math.exp(-1))
    u = int(p * 2**64)
    rng = DeterministicRng(21)
    res = {noise._exact_compare(Fraction(1), u, 64, rng) for _ in range(50)}
    assert res <= {True, False}
    # a prefix clearly below / above
    assert noise._exact_compare(Fraction(1), u - 2**20, 64, rng) is True
    assert noise._exact_compare(Fraction(1), u + 2**20, 64, rng) is False


def test_poisson_exact_fallback() -> None:
    rng = DeterministicRng(22)
    lam = Fraction(3)
    xs = [
        noise._poisson_exact_one(lam, int.from_bytes(rng.random_bytes(8), "big"), rng)
        for _ in range(3000)
    ]
    assert abs(np.mean(xs) - 3.0) < 5 * math.sqrt(3.0 / 3000)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sample_discrete_gaussian(0.0, 10), "sigma"),
        (lambda: sample_discrete_gaussian(1.0, -1), "n"),
        (lambda: sample_discrete_laplace(0, 10), "scale"),
        (lambda: sample_poisson(float("inf"), 10), "lam"),
        (lambda: sample_skellam(-2.0, 10), "variance"),
        (lambda: sample_gaussian(float("nan"), 10), "sigma"),
    ],
)
def test_validation(call: callable, name: str) -> None:  # type: ignore[valid-type]
    with pytest.raises(ConfigurationError, match=name):
        call()  # type: ignore[misc]


@pytest.mark.slow
def test_million_discrete_gaussians_in_seconds() -> None:
    import time

    t = time.perf_counter()
    x = sample_discrete_gaussian(1000.0, 1_000_000, rng=DeterministicRng(23))
    assert time.perf_counter() - t < 10.0
    assert x.std() == pytest.approx(1000.0, rel=0.01)
