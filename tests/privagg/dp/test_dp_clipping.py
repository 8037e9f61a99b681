from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from privagg._rng import DeterministicRng
from privagg.dp import (
    AdaptiveClipper,
    GaussianEvent,
    PoissonSampledEvent,
    clip_l2,
    clip_per_layer,
    global_l2_norm,
    per_layer_total_norm,
    split_budget,
    update_noise_multiplier,
)
from privagg.errors import ConfigurationError


def test_clip_l2_scales_long_vectors_only() -> None:
    v = np.array([3.0, 4.0])
    out, scale = clip_l2(v, 1.0)
    assert np.linalg.norm(out) <= 1.0
    assert scale == pytest.approx(0.2)
    out2, scale2 = clip_l2(v, 10.0)
    assert scale2 == 1.0 and np.array_equal(out2, v)
    assert out2 is not v


@settings(max_examples=30, deadline=None)
@given(
    v=arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)),
    c=st.floats(1e-3, 1e3),
)
def test_clip_l2_property(v: np.ndarray, c: float) -> None:
    out, scale = clip_l2(v, c)
    assert np.linalg.norm(out) <= c
    assert 0 < scale <= 1
    np.testing.assert_allclose(out, v * scale, rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan"), float("inf"), True])
def test_clip_l2_rejects_bad_norm(c: float) -> None:
    with pytest.raises(ConfigurationError, match="clip_norm"):
        clip_l2(np.ones(3), c)


def test_clip_l2_rejects_nan() -> None:
    with pytest.raises(ConfigurationError, match="NaN"):
        clip_l2(np.array([1.0, np.nan]), 1.0)


def test_per_layer() -> None:
    upd = {"a": np.full((2, 2), 10.0), "b": np.array([0.1, 0.1])}
    budgets = {"a": 1.0, "b": 2.0}
    out, scales = clip_per_layer(upd, budgets)
    assert np.linalg.norm(out["a"]) <= 1.0 and scales["a"] < 1
    assert scales["b"] == 1.0
    assert global_l2_norm(out) <= per_layer_total_norm(budgets)
    assert per_layer_total_norm(budgets) == pytest.approx(math.sqrt(5))
    with pytest.raises(ConfigurationError, match="keys"):
        clip_per_layer(upd, {"a": 1.0})
    out2, _ = clip_per_layer(upd, 0.5)
    assert all(np.linalg.norm(x) <= 0.5 for x in out2.values())


def test_split_budget() -> None:
    eq = split_budget(2.0, {"a": 10, "b": 30})
    assert per_layer_total_norm(eq) == pytest.approx(2.0)
    pr = split_budget(2.0, {"a": 10, "b": 30}, strategy="proportional")
    assert per_layer_total_norm(pr) == pytest.approx(2.0)
    assert pr["b"] > pr["a"]
    with pytest.raises(ConfigurationError, match="strategy"):
        split_budget(1.0, {"a": 1}, strategy="x")


def test_update_noise_multiplier_formula() -> None:
    z, sb = 1.0, 5.0
    zd = update_noise_multiplier(z, sb)
    assert zd == pytest.approx((z**-2 - (2 * sb) ** -2) ** -0.5)
    # composing the two Gaussians gives back z exactly
    assert (zd**-2 + (2 * sb) ** -2) ** -0.5 == pytest.approx(z)
    with pytest.raises(ConfigurationError, match="clipped_count_stddev"):
        update_noise_multiplier(1.0, 0.4)


def test_adaptive_clipper_tracks_quantile() -> None:
    rng = DeterministicRng(3)
    clipper = AdaptiveClipper(
        initial_clip_norm=0.1,
        target_quantile=0.5,
        learning_rate=0.2,
        noise_multiplier=1.0,
        expected_clients=1000,
        rng=rng,
    )
    norms = np.exp(np.linspace(-1, 1, 1000))  # median = 1.0
    for _ in range(200):
        bits = [clipper.clipped_bit(float(n)) for n in norms]
        clipper.update(bits)
    assert clipper.clip_norm == pytest.approx(1.0, rel=0.1)
    assert clipper.update_noise_stddev == pytest.approx(
        clipper.update_noise_multiplier * clipper.clip_norm
    )
    assert clipper.event() == GaussianEvent(1.0)
    assert clipper.event(0.01) == PoissonSampledEvent(0.01, GaussianEvent(1.0))


def test_adaptive_clipper_validation() -> None:
    with pytest.raises(ConfigurationError, match="target_quantile"):
        AdaptiveClipper(
            initial_clip_norm=1.0,
            target_quantile=1.0,
            noise_multiplier=1.0,
            expected_clients=10,
        )
    with pytest.raises(ConfigurationError, match="clipped_count_stddev"):
        # default sigma_b = m / 20 = 0.05 < z / 2
        AdaptiveClipper(initial_clip_norm=1.0, noise_multiplier=1.0, expected_clients=1)
    c = AdaptiveClipper(
        initial_clip_norm=1.0, noise_multiplier=1.0, expected_clients=100
    )
    with pytest.raises(ConfigurationError, match="bits"):
        c.update([0.3])
