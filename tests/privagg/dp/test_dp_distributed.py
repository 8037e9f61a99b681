from __future__ import annotations

import math

import numpy as np
import pytest

from privagg import NoiseShare
from privagg._rng import DeterministicRng
from privagg.dp import (
    AccountedNoiseShare,
    DiscreteGaussianEvent,
    DiscreteGaussianShare,
    GaussianEvent,
    PoissonSampledEvent,
    RdpAccountant,
    SelfComposedEvent,
    SkellamEvent,
    SkellamShare,
    dp_fedavg_aggregate,
    dp_fedavg_event,
    encoded_l2_sensitivity,
    survivors,
)
from privagg.errors import ConfigurationError

SCALE = 2.0**16


@pytest.mark.parametrize("cls", [DiscreteGaussianShare, SkellamShare])
def test_share_protocol_and_sizes(cls: type) -> None:
    share = cls.for_target(
        noise_multiplier=1.0, clip_norm=0.5, n_clients=100, dropout_fraction=0.2
    )
    assert isinstance(share, NoiseShare)  # the one protocol backends take
    assert isinstance(share, AccountedNoiseShare)  # ... with stddev and event
    assert share.stddev == pytest.approx(0.5 / math.sqrt(80))
    enc = share.sample_encoded(1000, scale=SCALE, rng=DeterministicRng(1))
    assert enc.dtype == np.int64 and enc.shape == (1000,)
    real = share.sample_real(10, rng=DeterministicRng(2))
    assert real.dtype == np.float64


@pytest.mark.parametrize("cls", [DiscreteGaussianShare, SkellamShare])
def test_survivors_total_reaches_target_std(cls: type) -> None:
    n, f, z, c = 50, 0.1, 1.2, 1.0
    share = cls.for_target(
        noise_multiplier=z, clip_norm=c, n_clients=n, dropout_fraction=f
    )
    m = survivors(n, f)
    rng = DeterministicRng(3)
    total = sum(share.sample_encoded(20_000, scale=SCALE, rng=rng) for _ in range(m))
    assert np.std(total / SCALE) == pytest.approx(z * c, rel=0.03)
    # headroom bounds the empirical maximum (per coordinate) with room to spare
    h = share.headroom(m, scale=SCALE, dim=20_000)
    assert np.max(np.abs(total)) / SCALE < h
    assert h < 10 * z * c


def test_survivors() -> None:
    assert survivors(100, 0.0) == 100
    assert survivors(100, 0.25) == 75
    assert survivors(10, 0.99) == 1
    with pytest.raises(ConfigurationError, match="dropout_fraction"):
        survivors(10, 1.0)


def test_events_use_discretised_sensitivity() -> None:
    share = DiscreteGaussianShare(0.01)
    ev = share.event(n_survivors=10, clip_norm=1.0, scale=SCALE, dimension=1000)
    assert isinstance(ev, DiscreteGaussianEvent)
    assert ev.l2_sensitivity == pytest.approx(SCALE + math.sqrt(1000))
    assert ev.noise_stddev == pytest.approx(0.01 * SCALE)
    assert ev.num_shares == 10
    sk = SkellamShare(0.01).event(
        n_survivors=10, clip_norm=1.0, scale=SCALE, dimension=1000
    )
    assert isinstance(sk, SkellamEvent)
    assert sk.variance == pytest.approx(10 * (0.01 * SCALE) ** 2)
    assert encoded_l2_sensitivity(1.0, SCALE, 1000) == ev.l2_sensitivity


def test_fewer_survivors_costs_more_privacy() -> None:
    share = DiscreteGaussianShare.for_target(
        noise_multiplier=1.0, clip_norm=1.0, n_clients=100
    )
    full = share.event(n_survivors=100, clip_norm=1.0, scale=SCALE, dimension=100)
    half = share.event(n_survivors=50, clip_norm=1.0, scale=SCALE, dimension=100)
    e_full = RdpAccountant().compose(full).epsilon(1e-5)
    e_half = RdpAccountant().compose(half).epsilon(1e-5)
    assert e_half > e_full
    # with fine quantisation, DDG accounting is close to the continuous Gaussian
    e_gauss = RdpAccountant().compose(GaussianEvent(1.0)).epsilon(1e-5)
    assert e_gauss <= e_full <= e_gauss * 1.01


def test_coarse_quantisation_is_penalised() -> None:
    share = DiscreteGaussianShare.for_target(
        noise_multiplier=1.0, clip_norm=1.0, n_clients=10
    )
    coarse = share.event(n_survivors=10, clip_norm=1.0, scale=2.0**4, dimension=10_000)
    fine = share.event(n_survivors=10, clip_norm=1.0, scale=2.0**16, dimension=10_000)
    assert RdpAccountant().compose(coarse).epsilon(1e-5) > 2 * RdpAccountant().compose(
        fine
    ).epsilon(1e-5)


@pytest.mark.parametrize("cls", [DiscreteGaussianShare, SkellamShare])
def test_calibrate_meets_target(cls: type) -> None:
    share = cls.calibrate(
        target_epsilon=3.0,
        delta=1e-5,
        clip_norm=1.0,
        n_clients=20,
        scale=2.0**12,
        dimension=1000,
        rounds=10,
        dropout_fraction=0.1,
    )
    m = survivors(20, 0.1)
    ev = share.event(n_survivors=m, clip_norm=1.0, scale=2.0**12, dimension=1000)
    eps = RdpAccountant().compose(ev, 10).epsilon(1e-5)
    assert 2.9 < eps <= 3.0


def test_dp_fedavg() -> None:
    rng = DeterministicRng(5)
    ups = [np.full(4, 10.0), np.zeros(4), np.full(4, -0.1)]
    avg = dp_fedavg_aggregate(ups, clip_norm=1.0, noise_multiplier=1e-9, rng=rng)
    clipped_sum = np.full(4, 0.5) + np.full(4, -0.1)
    np.testing.assert_allclose(avg, clipped_sum / 3, atol=1e-6)
    # noise std on the average is z S / n
    many = np.stack(
        [
            dp_fedavg_aggregate(
                ups, clip_norm=1.0, noise_multiplier=2.0, expected_clients=10, rng=rng
            )
            for _ in range(2000)
        ]
    )
    assert many.std(axis=0).mean() == pytest.approx(2.0 * 1.0 / 10, rel=0.05)
    assert dp_fedavg_event(2.0) == GaussianEvent(2.0)
    assert dp_fedavg_event(
        2.0, sampling_probability=0.1, rounds=5
    ) == SelfComposedEvent(PoissonSampledEvent(0.1, GaussianEvent(2.0)), 5)
    with pytest.raises(ConfigurationError, match="shape"):
        dp_fedavg_aggregate(
            [np.zeros(2), np.zeros(3)], clip_norm=1.0, noise_multiplier=1.0
        )


def test_dp_noise_share_is_one_protocol_with_a_deprecated_alias() -> None:
    """``privagg.dp.NoiseShare`` was a second protocol with the backends' name."""
    import privagg.dp
    import privagg.dp.distributed

    assert issubclass(AccountedNoiseShare, NoiseShare)
    for mod in (privagg.dp, privagg.dp.distributed):
        with pytest.warns(DeprecationWarning, match="AccountedNoiseShare"):
            assert mod.NoiseShare is AccountedNoiseShare
    with pytest.raises(AttributeError):
        _ = privagg.dp.NoSuchName  # type: ignore[attr-defined]
