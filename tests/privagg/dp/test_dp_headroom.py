"""DP noise headroom over every coordinate of every round (security review #11, finding 7).

Before the fix ``headroom(max_clients)`` used ``dim=1``: its ``2^-40`` held per value, so
about ``2^-13`` per round at ``10^8`` values, and an overflow wrapped silently (SecAgg+,
additive) or carried into the next Paillier slot. Now the bound is a union bound over
``dim * rounds`` coordinates, the backends size it for ``layout.size`` and
``HEADROOM_ROUNDS``, and the integer holders refuse a sum outside the sized range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import special

import privagg
from privagg.backends.additive import AdditiveBackend
from privagg.backends.paillier import PaillierBackend
from privagg.dp import DiscreteGaussianShare, SkellamShare
from privagg.dp.noise import sample_discrete_gaussian
from privagg.encoding import (
    HEADROOM_ROUNDS,
    FixedPointEncoder,
    from_ring,
    noise_headroom,
    to_ring,
)
from privagg.errors import ConfigurationError, EncodingOverflowError
from privagg.hazmat import DeterministicRng

P40 = 2.0**-40


def _ln_tail(coords: int, failure_log2: float = 40.0) -> float:
    return math.log(2 * coords) + failure_log2 * math.log(2)


def _skellam_rate(x: float, v: float) -> float:
    """Chernoff exponent of Sk with variance v at x: v h(x/v)."""
    r = x / v  # sqrt(1 + r^2) - 1 without cancellation
    return v * (r * math.asinh(r) - r * r / (math.sqrt(1 + r * r) + 1))


# -- (1) the bound grows with dim and rounds exactly as stated ----------------------------


@pytest.mark.parametrize("n", [1, 7, 100])
@pytest.mark.parametrize("dim", [1, 1000, 10**8])
@pytest.mark.parametrize("rounds", [1, 1000])
def test_discrete_gaussian_headroom_is_the_stated_union_bound(
    n: int, dim: int, rounds: int
) -> None:
    share = DiscreteGaussianShare(0.3)
    h = share.headroom(n, dim=dim, rounds=rounds)
    exact = math.sqrt(2 * n * 0.3**2 * _ln_tail(dim * rounds))
    assert exact <= h <= exact * (1 + 1e-11)  # rounded up, never down
    # only the number of coordinates D = dim * rounds matters
    assert share.headroom(n, dim=dim * rounds) == pytest.approx(h, rel=1e-15)
    # the integer-unit bound is the float bound times the scale
    assert share.headroom(n, dim=dim, rounds=rounds, scale=2.0**16) == h


def test_headroom_grows_with_dim_and_rounds() -> None:
    for share in (DiscreteGaussianShare(0.01), SkellamShare(0.01)):
        hs = [share.headroom(10, dim=d, scale=2.0**16) for d in (1, 10**4, 10**8)]
        assert hs[0] < hs[1] < hs[2]
        hr = [
            share.headroom(10, dim=10**6, rounds=r, scale=2.0**16)
            for r in (1, 100, HEADROOM_ROUNDS)
        ]
        assert hr[0] < hr[1] < hr[2]
        # the finding: at 1e8 values the per-value bound is ~1.4x too small (in std
        # units sqrt(2 ln(2/p)) = 7.5 vs sqrt(2 ln(2e8/p)) = 9.6 for the Gaussian)
        assert hs[2] / hs[0] > 1.25
        # 2^20 rounds on top of 1e6 values cost well under a bit (factor < 2)
        assert hr[2] / hr[0] < 1.2


@pytest.mark.parametrize("v", [0.5, 3.0, 50.0, 1e4, 1e12])
@pytest.mark.parametrize("coords", [1, 10**8 * HEADROOM_ROUNDS])
def test_skellam_headroom_is_the_chernoff_root(v: float, coords: int) -> None:
    # n = 1 share of variance v in integer units (scale 1)
    share = SkellamShare(math.sqrt(v))
    x = share.headroom(1, dim=coords)
    big_l = _ln_tail(coords)
    # the root of v h(x/v) = L, kept on the safe side
    assert _skellam_rate(x, v) >= big_l
    assert _skellam_rate(x * (1 - 1e-9), v) < big_l
    # between the Gaussian bound and Bernstein's (which it replaces)
    bernstein = big_l / 3 + math.sqrt(big_l**2 / 9 + 2 * v * big_l)
    assert math.sqrt(2 * v * big_l) <= x <= bernstein * (1 + 1e-11)


def test_skellam_sum_of_shares_and_scale() -> None:
    share = SkellamShare(0.02)
    s = 2.0**10
    # n shares of variance (stddev s)^2 sum to one of variance n (stddev s)^2
    assert share.headroom(9, dim=5000, scale=s) == pytest.approx(
        SkellamShare(0.06).headroom(1, dim=5000, scale=s), rel=1e-12
    )
    # decreasing in scale: the default scale=1 is conservative
    assert share.headroom(9, dim=5000) >= share.headroom(9, dim=5000, scale=s)
    # and it covers the float (Gaussian) path at every scale
    gauss = math.sqrt(2 * 9 * 0.02**2 * _ln_tail(5000))
    assert share.headroom(9, dim=5000, scale=s) >= gauss


@pytest.mark.parametrize("cls", [DiscreteGaussianShare, SkellamShare])
def test_omitting_dim_is_deprecated_and_keeps_the_old_value(cls: type) -> None:
    share = cls(0.1)
    with pytest.warns(DeprecationWarning, match="dim="):
        legacy = share.headroom(5)
    assert legacy == share.headroom(5, dim=1)
    for bad in ({"dim": 0}, {"rounds": 0}, {"dim": 2.5}, {"failure_log2": -1.0}):
        with pytest.raises(ConfigurationError):
            share.headroom(5, **{"dim": 1, **bad})


# -- noise_headroom: what the backends call ------------------------------------------------


class _Recorder:
    """A NoiseShare whose headroom takes dim and rounds, and records them."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.calls: list[tuple[int, int, int]] = []

    def sample_encoded(self, n: int, *, scale: float, rng: Any) -> np.ndarray:
        return np.zeros(n, dtype=np.int64)

    def sample_real(self, n: int, *, rng: Any) -> np.ndarray:
        return np.zeros(n)

    def headroom(self, n_clients: int, *, dim: int, rounds: int = 1) -> float:
        self.calls.append((n_clients, dim, rounds))
        return self.value


class _DimOnly(_Recorder):
    def headroom(self, n_clients: int, *, dim: int = 1) -> float:  # type: ignore[override]
        self.calls.append((n_clients, dim, 0))
        return self.value


class _Legacy(_Recorder):
    def headroom(self, n_clients: int) -> float:  # type: ignore[override]
        self.calls.append((n_clients, 0, 0))
        return self.value


def test_noise_headroom_passes_dim_and_rounds() -> None:
    assert noise_headroom(None, 5, dim=10) == 0.0
    rec = _Recorder()
    assert noise_headroom(rec, 5, dim=10) == 0.5
    assert rec.calls == [(5, 10, HEADROOM_ROUNDS)]
    dim_only = _DimOnly()
    noise_headroom(dim_only, 5, dim=10, rounds=3)  # type: ignore[arg-type]
    assert dim_only.calls == [(5, 30, 0)]  # the union bound only needs dim * rounds
    legacy = _Legacy()
    with pytest.warns(DeprecationWarning, match="per coordinate"):
        noise_headroom(legacy, 5, dim=10)  # type: ignore[arg-type]
    assert legacy.calls == [(5, 0, 0)]
    share = DiscreteGaussianShare(0.2)
    assert noise_headroom(share, 5, dim=10) == share.headroom(
        5, dim=10, rounds=HEADROOM_ROUNDS
    )
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError, match="finite"):
            noise_headroom(_Recorder(bad), 5, dim=10)
    with pytest.raises(ConfigurationError, match="dim"):
        noise_headroom(share, 5, dim=-1)
    assert noise_headroom(share, 5, dim=0) == 0.0  # an empty layout: nothing to bound


_SETUPS: dict[str, Any] = {
    "additive": lambda: AdditiveBackend(),
    "paillier": lambda: PaillierBackend._insecure_for_tests(512),
    "ckks": lambda: privagg.get_backend("ckks", preset="test-fast"),
    "secagg": lambda: privagg.get_backend("secagg", active=False, full_graph=True),
}


@pytest.mark.parametrize("name", ["additive", "paillier", "ckks", "secagg"])
def test_backends_size_the_headroom_for_the_layout(name: str) -> None:
    layout = privagg.Layout.from_arrays({"a": np.zeros(37), "b": np.zeros((3, 5))})
    rec = _Recorder()
    _SETUPS[name]().setup(layout, max_clients=4, noise=rec)
    assert rec.calls
    assert set(rec.calls) == {(4, layout.size, HEADROOM_ROUNDS)}


# -- (2) the bound holds: exact tails and Monte Carlo --------------------------------------


@pytest.mark.parametrize("n", [1, 10, 1000])
@pytest.mark.parametrize("coords", [1, 3000, 10**8, 10**8 * HEADROOM_ROUNDS])
def test_gaussian_exact_tail_is_below_the_target(n: int, coords: int) -> None:
    # the sum of n N(0, s^2) shares is N(0, n s^2): exact two-sided tail erfc(B / sqrt(2 n s^2))
    s = 0.37
    b = DiscreteGaussianShare(s).headroom(n, dim=coords)
    per_coordinate = math.erfc(b / math.sqrt(2 * n * s * s))
    assert coords * per_coordinate <= P40
    # and not absurdly loose: within a factor 2^6 of the target
    assert coords * per_coordinate > P40 * 2.0**-6


@pytest.mark.parametrize("v", [2.0, 40.0, 1000.0])
@pytest.mark.parametrize("coords", [1, 10**6])
def test_skellam_exact_tail_is_below_the_target(v: float, coords: int) -> None:
    # n = 4 shares of variance v/4 sum to Sk(v), P[S = k] = exp(-v) I_k(v), so
    # P[|S| > B] = 2 sum_{k > B} ive(k, v) (the terms decay faster than geometrically)
    b = SkellamShare(math.sqrt(v / 4)).headroom(4, dim=coords)
    ks = np.arange(math.floor(b) + 1, math.floor(b) + 5000)
    tail = 2 * float(np.sum(special.ive(ks, v)))
    assert 0 < coords * tail <= P40
    assert coords * tail > P40 * 2.0**-10


def test_monte_carlo_per_value_bound_is_exceeded_union_bound_is_not() -> None:
    """The finding, scaled down to run in a test (p = 2^-8 instead of 2^-40).

    4 shares of N_Z(0, 2^2) per coordinate over 2^16 coordinates: the per-value bound
    (dim=1, the old behaviour) is exceeded by several coordinates, the union bound over
    the 2^16 coordinates by none.
    """
    n, sigma, dim, f = 4, 2.0, 1 << 16, 8.0
    share = DiscreteGaussianShare(sigma)
    rng = DeterministicRng(7)
    total = sum(sample_discrete_gaussian(sigma, dim, rng=rng) for _ in range(n))
    peak = int(np.max(np.abs(total)))
    old = share.headroom(n, dim=1, failure_log2=f)
    new = share.headroom(n, dim=dim, failure_log2=f)
    assert int(np.count_nonzero(np.abs(total) > old)) >= 5
    assert peak <= new


# -- (3) a wrap is refused, not returned as a wrong aggregate ------------------------------


def test_sum_limit_and_capacity_include_the_noise_allowance() -> None:
    enc = FixedPointEncoder(1.5, 12, noise_allowance=8.25)
    per = math.ceil(1.5 * 4096) + 1
    assert enc.sum_limit(7) == 7 * per + math.ceil(8.25 * 4096)
    assert enc.sum_limit(7, extra=0.0) == 7 * per
    assert enc.sum_bits(7) == enc.sum_bits(7, extra=8.25)
    assert 2 ** (enc.sum_bits(7) - 1) > enc.sum_limit(7)
    enc.check_capacity(enc.sum_bits(7), 7)
    with pytest.raises(EncodingOverflowError):
        enc.check_capacity(enc.sum_bits(7) - 1, 7)
    # without the allowance the same ring looks big enough: the allowance matters
    assert FixedPointEncoder(1.5, 12).sum_bits(7) < enc.sum_bits(7)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ConfigurationError, match="noise_allowance"):
            FixedPointEncoder(1.0, 8, noise_allowance=bad)


def test_decode_sum_accepts_the_limit_and_refuses_beyond() -> None:
    enc = FixedPointEncoder(1.0, 8, noise_allowance=0.5)
    limit = enc.sum_limit(3)
    ok = np.array([limit, -limit, 0, 17], dtype=np.int64)
    assert np.array_equal(enc.decode_sum(ok, 3), enc.decode(ok))
    for v in (limit + 1, -limit - 1):
        with pytest.raises(EncodingOverflowError) as info:
            enc.decode_sum(np.array([0, v], dtype=np.int64), 3)
        assert str(v) not in str(info.value)  # no plaintext in messages
    # Python ints (Paillier slots wider than 64 bits)
    assert enc.decode_sum([limit, -limit], 3).tolist() == [limit / 256, -limit / 256]
    with pytest.raises(EncodingOverflowError):
        enc.decode_sum([2**80], 3)
    # narrow dtypes whose range the limit exceeds: no spurious refusal
    wide = FixedPointEncoder(1.0, 30)
    assert wide.sum_limit(3) > np.iinfo(np.int32).max
    i32 = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], dtype=np.int32)
    assert wide.decode_sum(i32, 3).shape == (2,)
    with pytest.raises(ConfigurationError):
        enc.decode_sum(np.array([0.5]), 3)
    with pytest.raises(ConfigurationError):
        enc.decode_sum([1.5], 3)  # type: ignore[list-item]


def test_ring_wrap_old_decode_is_wrong_decode_sum_refuses() -> None:
    """Integer path, step by step: noise beyond its headroom wraps the ring."""
    n, allowance = 3, 0.25
    enc = FixedPointEncoder(1.0, 8, noise_allowance=allowance)
    bits = enc.sum_bits(n)
    data = [enc.encode(np.full(4, 0.9), DeterministicRng(i)).values for i in range(n)]
    noise = np.zeros(4, dtype=np.int64)
    noise[2] = (
        (1 << (bits - 1)) - int(sum(d[2] for d in data)) + 5
    )  # just past the ring
    words = sum(to_ring(d, bits) for d in data) + to_ring(noise, bits)
    centred = from_ring(np.asarray(words, dtype=np.uint64), bits)
    # old behaviour: a silently wrong aggregate (a *negative* sum of positive values)
    old = enc.decode(centred)
    assert old[2] < -3
    with pytest.raises(EncodingOverflowError, match="refused"):
        enc.decode_sum(centred, n)
    # noise beyond the allowance that does not wrap is refused too (|s| > limit)
    noise[2] = enc.sum_limit(n) - int(sum(d[2] for d in data)) + 1
    assert enc.sum_limit(n) + 1 < 1 << (bits - 1)
    words = sum(to_ring(d, bits) for d in data) + to_ring(noise, bits)
    with pytest.raises(EncodingOverflowError):
        enc.decode_sum(from_ring(np.asarray(words, dtype=np.uint64), bits), n)
    # noise within the allowance: exact
    noise[2] = math.floor(allowance * 256)
    words = sum(to_ring(d, bits) for d in data) + to_ring(noise, bits)
    got = enc.decode_sum(from_ring(np.asarray(words, dtype=np.uint64), bits), n)
    assert np.allclose(got, 2.7 + noise / 256, atol=n / 256)


class _SpikeNoise:
    """Claims a small headroom; its first share carries a spike in coordinate 0.

    Stands for a tail event of real noise (or a per-value headroom at large dim): the
    noise of the sum exceeds the headroom the ring was sized for.
    """

    def __init__(self, *spikes: int) -> None:
        # the i-th share's spike, as int64 (two's complement: 2^63 is -2^63)
        self.spikes = [((s + 2**63) % 2**64) - 2**63 for s in spikes]
        self.calls = 0

    def sample_encoded(self, n: int, *, scale: float, rng: Any) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        if self.calls < len(self.spikes):
            out[0] = self.spikes[self.calls]
        self.calls += 1
        return out

    def sample_real(self, n: int, *, rng: Any) -> np.ndarray:
        return np.zeros(n)

    def headroom(self, n_clients: int, *, dim: int, rounds: int = 1) -> float:
        return 1.0


def _ups(n: int, size: int) -> dict[str, dict[str, np.ndarray]]:
    g = np.random.default_rng(3)  # test data only
    return {f"c{i}": {"w": g.uniform(0.1, 0.5, size)} for i in range(n)}


@pytest.mark.parametrize("name", ["additive", "secagg"])
@pytest.mark.parametrize("ring_bits", [32, 64])
def test_ring_wrap_is_refused_not_returned(name: str, ring_bits: int) -> None:
    ups = _ups(3, 50)
    layout = privagg.Layout.from_arrays(ups["c0"])
    # bound 2^20 makes the sums need more than 32 bits: the 64-bit ring
    bound = 1.0 if ring_bits == 32 else 2.0**20
    backend: Any = (
        AdditiveBackend(bound=bound)
        if name == "additive"
        else privagg.get_backend("secagg", active=False, full_graph=True, bound=bound)
    )
    honest = privagg.run_round(
        backend.setup(layout, max_clients=3, noise=_SpikeNoise()), ups
    )
    assert np.allclose(honest.vector, sum(u["w"] for u in ups.values()), atol=1e-3)
    # a spike that wraps the ring (to a negative sum of positive values)
    half = 1 << (ring_bits - 1)
    for spike in (half, half + 12345, half // 2):  # the last one: beyond, no wrap
        session = backend.setup(layout, max_clients=3, noise=_SpikeNoise(spike))
        with pytest.raises(EncodingOverflowError, match="refused"):
            privagg.run_round(session, ups)


def test_paillier_slot_overflow_is_refused_not_carried() -> None:
    backend = PaillierBackend._insecure_for_tests(512)
    ups = _ups(3, 20)
    layout = privagg.Layout.from_arrays(ups["c0"])
    w = backend.session_check(layout, max_clients=3, noise=_SpikeNoise()).slot_bits
    honest = privagg.run_round(
        backend.setup(layout, max_clients=3, noise=_SpikeNoise()), ups
    )
    assert np.allclose(honest.vector, sum(u["w"] for u in ups.values()), atol=1e-3)
    # each client's value fits its slot (clients check that), but the sum of slot 0
    # does not: 2^(w-3) + 2^(w-3) + 2^(w-2) = 2^(w-1) plus the data carries into the
    # neighbouring slot (the old silent corruption); now the holder refuses it
    spikes = _SpikeNoise(1 << (w - 3), 1 << (w - 3), 1 << (w - 2))
    session = backend.setup(layout, max_clients=3, noise=spikes)
    with pytest.raises(EncodingOverflowError, match="refused"):
        privagg.run_round(session, ups)


def test_honest_rounds_with_real_noise_at_large_dim_are_not_refused() -> None:
    """No false alarms: a DDG round over 2e5 values decodes."""
    n, dim = 3, 200_000
    share = DiscreteGaussianShare.for_target(
        noise_multiplier=1.0, clip_norm=0.01, n_clients=n
    )
    g = np.random.default_rng(5)  # test data only
    ups = {f"c{i}": {"w": g.uniform(-0.01, 0.01, dim)} for i in range(n)}
    layout = privagg.Layout.from_arrays(ups["c0"])
    session = AdditiveBackend().setup(layout, max_clients=n, noise=share)
    res = privagg.run_round(session, ups)
    noise = res.vector - sum(u["w"] for u in ups.values())
    assert np.std(noise) == pytest.approx(0.01, rel=0.05)
