"""CKKS flooding noise drawn block by block (issue #13, bounded resources).

The holder used to draw all ``n_ct x N`` flooding coefficients of a release at once
(about 4 GB of float64 temporaries at 1e8 values). It now draws one block of
ciphertexts at a time: the noise has the same distribution and shape (each
ciphertext's row is the same rounded Box-Muller Gaussian of std
``flood_coeff_std(count)``, one 64-bit uniform per coefficient), does not depend on how
the release is cut into blocks or worker spans, and the flooding step's memory is
bounded by one block, whatever the update's size.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("tenseal")

from scipy import stats

from privagg._rng import uniform01
from privagg.backends._ckks_params import PRESETS
from privagg.backends.ckks import keygen
from privagg.backends.ckks._release import _FloodSampler
from privagg.backends.ckks._sealwrap import _BLOCK
from privagg.errors import ConfigurationError
from privagg.hazmat import DeterministicRng

PARAMS = PRESETS["secure"]
N = PARAMS.poly_modulus_degree
COUNT = 4


def _old_gaussian(rng: DeterministicRng, n: int) -> np.ndarray:
    """The pre-issue-#16 sampler (one call for the whole release), for comparison."""
    half = (n + 1) // 2
    u = uniform01(rng, 2 * half)
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))
    angle = 2.0 * math.pi * u[half:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]


def test_each_ciphertext_row_is_the_rounded_box_muller_gaussian() -> None:
    sigma = PARAMS.flood_coeff_std(COUNT)
    rows = _FloodSampler(PARAMS, COUNT, 3, DeterministicRng(7)).draw(3)
    assert rows is not None and rows.shape == (3, N) and rows.dtype == np.int64
    ref = DeterministicRng(7)
    want = np.stack([np.rint(sigma * _old_gaussian(ref, N)) for _ in range(3)])
    assert np.array_equal(rows, want.astype(np.int64))


def test_noise_does_not_depend_on_blocking() -> None:
    whole = _FloodSampler(PARAMS, COUNT, 11, DeterministicRng(1)).draw(11)
    s = _FloodSampler(PARAMS, COUNT, 11, DeterministicRng(1))
    parts = [s.draw(k) for k in (1, 5, 3, 2)]
    assert whole is not None and all(p is not None for p in parts)
    assert np.array_equal(whole, np.concatenate(parts))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        s.draw(1)  # past the release's end


def test_noise_distribution_is_unchanged() -> None:
    """Mean 0, std ``flood_coeff_std(count)``, Gaussian shape (KS), like the old
    whole-release sampler on the same number of coefficients."""
    sigma = PARAMS.flood_coeff_std(COUNT)
    n_ct = 64
    new = _FloodSampler(PARAMS, COUNT, n_ct, DeterministicRng(2)).draw(n_ct)
    assert new is not None
    old = np.rint(sigma * _old_gaussian(DeterministicRng(3), n_ct * N))
    for z in (new.reshape(-1).astype(np.float64), old):
        assert abs(float(np.mean(z))) < 5 * sigma / math.sqrt(z.size)
        assert float(np.std(z)) == pytest.approx(sigma, rel=0.01)
        assert stats.kstest(z / sigma, "norm").pvalue > 1e-4
    # the two samplers agree with each other too (two-sample KS)
    assert stats.ks_2samp(new.reshape(-1), old).pvalue > 1e-4


def test_flooding_memory_is_bounded_by_one_block() -> None:
    """Drawing the flooding noise of a 1e7-value release (2,442 ciphertexts, 78 MB of
    int64 noise in all) peaks at one block's temporaries: below 8 MiB."""
    n_ct = -(-10_000_000 // N)
    sampler = _FloodSampler(PARAMS, COUNT, n_ct, DeterministicRng(4))
    tracemalloc.start()
    try:
        for a in range(0, n_ct, _BLOCK):
            rows = sampler.draw(min(_BLOCK, n_ct - a))
            assert rows is not None
            del rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = n_ct * N * 8
    assert peak < 8 << 20, f"flooding peak {peak / 2**20:.1f} MiB"
    assert total > 9 * peak  # far below the all-at-once draw


@pytest.mark.parametrize("n_ct", [40, 160])
def test_release_memory_does_not_grow_with_the_update(n_ct: int) -> None:
    """The holder's release (flood, decrypt, round) allocates the released vector
    plus a bounded amount per block: below 2.5x the output + 16 MiB for 40 and 160
    ciphertexts alike (the old whole-release flooding needed ~6 float64 copies of
    ``n_ct x N`` on top)."""
    keys = keygen("secure")
    x = np.linspace(-0.5, 0.5, n_ct * N)
    upd = keys.public.encrypt(x)
    tracemalloc.start()
    try:
        out = keys.release(upd, DeterministicRng(5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == x.shape
    assert np.max(np.abs(out - x)) <= keys.params.tolerance(1, 0.5)
    assert peak < 2.5 * out.nbytes + (16 << 20), f"peak {peak / 2**20:.1f} MiB"
