"""Review r5 (outside reviewer) of #14, fedtrain side: the Flower ClientApp's holder
cache (:func:`fedtrain.flower.client_app._holder_for`) and the noise share it binds.

The cache key holds ``repr(noise)``: the built-in shares' repr is their exact
``stddev`` (a float's repr round-trips), so two of them never share a holder; a
third-party share whose repr omits its parameters gets the holder built (and bound) for
another share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from tests.privagg.test_masking_noise_binding import _CustomShare

import privagg
from fedtrain.flower import client_app
from fedtrain.flower.material import SessionSpec
from privagg.dp import DiscreteGaussianShare

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(8)})
SPEC = SessionSpec("secagg", {"active": False}, max_clients=3, setup_seed="11" * 32)
SECAGG = "secagg" in privagg.available_backends()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    client_app._HOLDERS.clear()
    yield
    client_app._HOLDERS.clear()


class _Opaque(_CustomShare):
    """A third-party share (headroom ``bound``) whose repr does not show it."""

    def __repr__(self) -> str:
        return "_Opaque()"


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_r5_builtin_shares_never_share_a_cached_holder() -> None:
    """Refused: the nearest double gets its own holder (repr round-trips)."""
    a = DiscreteGaussianShare(0.05)
    b = DiscreteGaussianShare(math.nextafter(0.05, 1.0))
    assert client_app._holder_for(SPEC, LAYOUT, None, noise=a) is not (
        client_app._holder_for(SPEC, LAYOUT, None, noise=b)
    )
    assert client_app._holder_for(SPEC, LAYOUT, None, noise=a) is (
        client_app._holder_for(SPEC, LAYOUT, None, noise=DiscreteGaussianShare(0.05))
    )


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_r5_opaque_repr_share_gets_its_own_holder() -> None:
    first = client_app._holder_for(SPEC, LAYOUT, None, noise=_Opaque(1.0))
    second = client_app._holder_for(SPEC, LAYOUT, None, noise=_Opaque(1e6))
    assert first is not second
