"""Distributed DP end to end: each client's noise share goes in after quantisation and
before protection, so the recovered aggregate carries the calibrated total noise and
nobody ever sees the un-noised sum."""

from __future__ import annotations

import numpy as np
import pytest

import privagg
from privagg.backends.paillier import PaillierBackend
from privagg.dp import DiscreteGaussianShare, SkellamShare

N_CLIENTS = 4
DIM = 3000
Z, CLIP = 1.0, 0.5  # target total noise std = Z * CLIP = 0.5


_BACKENDS = {
    "plain": lambda: privagg.get_backend("plain"),
    "paillier": lambda: PaillierBackend._insecure_for_tests(512),
    "secagg": lambda: privagg.get_backend("secagg", active=False, full_graph=True),
    "additive": lambda: privagg.get_backend("additive"),
    "ckks": lambda: privagg.get_backend("ckks", preset="test-fast"),
}
_CASES = [(name, DiscreteGaussianShare) for name in _BACKENDS] + [
    ("secagg", SkellamShare),
    ("paillier", SkellamShare),
]


@pytest.mark.parametrize(
    ("name", "share_cls"), _CASES, ids=lambda v: getattr(v, "__name__", v)
)
def test_aggregate_carries_calibrated_noise(name: str, share_cls: type) -> None:
    backend = _BACKENDS[name]()
    share = share_cls.for_target(
        noise_multiplier=Z, clip_norm=CLIP, n_clients=N_CLIENTS, dropout_fraction=0.0
    )
    rng = np.random.default_rng(0)  # test data only
    ups = {f"c{i}": {"w": rng.uniform(-0.1, 0.1, DIM)} for i in range(N_CLIENTS)}
    layout = privagg.Layout.from_arrays(ups["c0"])
    session = backend.setup(layout, max_clients=N_CLIENTS, noise=share)  # type: ignore[attr-defined]
    res = privagg.run_round(session, ups)
    noise = res.vector - sum(u["w"] for u in ups.values())
    # the total of N_CLIENTS shares has std Z * CLIP; 3000 coordinates -> ~1.3% sd of the std
    assert np.std(noise) == pytest.approx(Z * CLIP, rel=0.06)
    assert abs(np.mean(noise)) < 4 * Z * CLIP / np.sqrt(DIM)
    # every client contributed noise: no coordinate came back noiseless
    assert np.count_nonzero(np.abs(noise) < 1e-9) < DIM // 100
