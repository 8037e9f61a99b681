"""The plaintext reference backend. **Insecure**: the aggregator sees every update.

It exists to define correct behaviour (every secure backend must agree with it within
its tolerance) and as a fast baseline in benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from privagg._oneshot import OneShotSession
from privagg._rng import Rng
from privagg.distribution import Dealing, DealtMaterial
from privagg.envelope import PayloadReader, PayloadWriter, Scheme
from privagg.errors import DeserializationError
from privagg.keys import fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, check_noise_share, check_setup_args

__all__ = ["PlainBackend"]

_EPS = 2.0**-52


def _vector_body(v: FloatVector) -> bytes:
    return PayloadWriter().array(np.ascontiguousarray(v, dtype=np.float64)).getvalue()


def _read_vector(body: bytes | memoryview, size: int) -> FloatVector:
    r = PayloadReader(body)
    v = r.array()
    r.done()
    if v.dtype != np.float64 or v.shape != (size,):
        raise DeserializationError()
    return v


@dataclass(frozen=True)
class _Codec:
    size: int
    noise: NoiseShare | None

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        v = weight * update
        if self.noise is not None:
            v = v + self.noise.sample_real(v.size, rng=rng)
        return _vector_body(v)

    def combine(self, bodies: Sequence[bytes | memoryview]) -> bytes:
        acc = np.zeros(self.size, dtype=np.float64)
        for b in bodies:
            acc += _read_vector(b, self.size)
        return _vector_body(acc)

    def recover(self, body: bytes | memoryview, n_contributions: int) -> FloatVector:
        return _read_vector(body, self.size)


class PlainBackend:
    """Float64 sums in the clear. The reference every secure backend is tested against."""

    name: ClassVar[str] = "plain"
    protects_inputs: ClassVar[bool] = False
    """The aggregator sees every update (see :func:`privagg.protects_inputs`)."""

    def __init__(self) -> None:
        pass

    @property
    def value_bound(self) -> float | None:
        """No bound: any finite float is accepted."""
        return None

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Float64 summation error bound: about ``n * max_abs * 2**-52`` with margin."""
        return 4.0 * n_clients * max(max_abs, 1e-300) * _EPS

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """A session for ``layout`` (no keys to generate).

        Raises:
            ConfigurationError: bad ``max_clients``/``max_weight``, or a ``noise`` that
                is not a :class:`~privagg.NoiseShare`.
        """
        check_setup_args(max_clients, max_weight)
        check_noise_share(noise)
        params_id = fingerprint(b"plain/v1", layout.fingerprint)
        codec = _Codec(layout.size, noise)
        return OneShotSession(
            "plain", Scheme.PLAIN, layout, params_id, codec, codec, lambda: codec
        )

    # -- deployment: one role per process -----------------------------------------------
    def dealing(self) -> Dealing:
        """``NONE``: no keys; every process runs :meth:`setup` with the same options."""
        return Dealing.NONE

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
    ) -> DealtMaterial:
        """Nothing to deal: empty material for every role."""
        check_setup_args(max_clients, max_weight)
        return DealtMaterial(b"", b"", dict.fromkeys(party_ids, b""))

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> OneShotSession:
        """The same session :meth:`setup` makes (the material is empty)."""
        if material:
            raise DeserializationError("the plain backend has no key material")
        return self.setup(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )

    def __repr__(self) -> str:
        return "PlainBackend()"
