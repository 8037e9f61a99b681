"""The typed protocols every backend implements.

A round has three roles that exchange *bytes* (privagg envelopes), never objects:

* **client** (:class:`ClientRole`): holds one update; answers each request with a reply.
* **aggregator** (:class:`AggregatorRole`): untrusted; drives the stages. ``start()``
  returns the first requests, addressed by party id; ``receive(replies)`` takes the
  replies that arrived (a missing reply *is* a dropout) and returns the next requests,
  until ``done``; then ``result()`` is the protected aggregate for the holder.
* **result holder** (:class:`HolderRole`): recovers the float sum from ``result()``.

Some protocols have extra responders (the servers of multi-server additive sharing);
the aggregator addresses them by id like clients, and :meth:`Session.servers` makes them.

One-shot schemes (plain, CKKS, Paillier) use a single request/reply stage; SecAgg+ uses
several. The in-process driver :func:`privagg.run_round` only routes bytes between role
objects, and a network runtime (Flower) routes the same bytes across machines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng
from privagg.errors import ConfigurationError
from privagg.layout import FloatVector, Layout

__all__ = [
    "AGGREGATOR",
    "check_noise_share",
    "check_round_id",
    "check_setup_args",
    "AggregatorRole",
    "Backend",
    "ClientRole",
    "FixedPointBackend",
    "HolderRole",
    "NoiseShare",
    "Recovered",
    "Responder",
    "Session",
    "BoundOption",
    "fixed_point_scale",
    "protects_inputs",
    "value_bound_option",
]

AGGREGATOR = "aggregator"


def check_round_id(round_id: object) -> None:
    """Raise :class:`~privagg.errors.ConfigurationError` unless ``round_id`` is an int
    in ``[0, 2**64)`` (every message binds it as a u64)."""
    if (
        isinstance(round_id, bool)
        or not isinstance(round_id, int)
        or not 0 <= round_id < 1 << 64
    ):
        raise ConfigurationError(
            f"round_id must be an int in [0, 2**64), got {round_id!r}"
        )


def check_setup_args(max_clients: object, max_weight: object) -> tuple[int, float]:
    """Validate :meth:`Backend.setup`'s ``max_clients`` and ``max_weight``.

    Returns:
        ``(max_clients, float(max_weight))``.

    Raises:
        ConfigurationError: ``max_clients`` is not an int >= 1, or ``max_weight`` is not
            a finite number > 0.
    """
    if (
        isinstance(max_clients, bool)
        or not isinstance(max_clients, int)
        or max_clients < 1
    ):
        raise ConfigurationError(
            f"max_clients must be an int >= 1, got {max_clients!r}"
        )
    if (
        isinstance(max_weight, bool)
        or not isinstance(max_weight, (int, float, np.integer, np.floating))
        or not (math.isfinite(max_weight) and max_weight > 0)
    ):
        raise ConfigurationError(
            f"max_weight must be finite and > 0, got {max_weight!r}"
        )
    return max_clients, float(max_weight)


@runtime_checkable
class Responder(Protocol):
    """A party that answers the aggregator's requests (a client, or an extra server)."""

    @property
    def party_id(self) -> str:
        """The id the aggregator addresses this party by."""
        ...

    def handle(self, request: bytes) -> bytes:
        """Answer one request."""
        ...


@runtime_checkable
class ClientRole(Responder, Protocol):
    """A client holding one (already weighted) update for one round."""


@runtime_checkable
class AggregatorRole(Protocol):
    """The untrusted aggregator's state machine for one round."""

    def start(self) -> dict[str, bytes]:
        """The first requests, by party id."""
        ...

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Process the replies that arrived; return the next requests ({} when done)."""
        ...

    @property
    def done(self) -> bool:
        """True once :meth:`result` is available."""
        ...

    def result(self) -> bytes:
        """The protected aggregate, for the result holder."""
        ...


@dataclass(frozen=True, slots=True)
class Recovered:
    """A recovered aggregate: the float sum and the clients it includes."""

    vector: FloatVector
    contributors: tuple[str, ...]


@runtime_checkable
class HolderRole(Protocol):
    """The result holder: turns the protected aggregate into floats."""

    def recover(self, result: bytes) -> Recovered:
        """Recover the weighted sum from the aggregator's result."""
        ...


@runtime_checkable
class NoiseShare(Protocol):
    """A client's share of distributed DP noise, added after encoding, before protection.

    Implemented in :mod:`privagg.dp`.
    """

    def sample_encoded(
        self, n: int, *, scale: float, rng: Rng
    ) -> npt.NDArray[np.int64]:
        """Integer noise in fixed-point units (``scale`` units per 1.0)."""
        ...

    def sample_real(self, n: int, *, rng: Rng) -> npt.NDArray[np.float64]:
        """Real-valued noise, for float backends (CKKS, plain)."""
        ...

    def headroom(self, n_clients: int, *, dim: int, rounds: int) -> float:
        """``B`` (float units) with ``P[max |sum of n_clients shares| > B] <= 2**-40``,
        the max over all ``dim * rounds`` coordinates (union bound), not per value.

        Backends call it through :func:`privagg.encoding.noise_headroom` with
        ``dim=layout.size``; a legacy ``headroom(n_clients)`` still works there but
        warns (``DeprecationWarning``): its bound may hold only per coordinate.
        """
        ...


def check_noise_share(noise: object) -> None:
    """Raise :class:`~privagg.errors.ConfigurationError` unless ``noise`` is None or a
    :class:`NoiseShare` instance (a class such as ``DiscreteGaussianShare`` itself
    passes the runtime protocol check, its methods being attributes, and is refused
    too: review of #14)."""
    if noise is not None and (
        isinstance(noise, type) or not isinstance(noise, NoiseShare)
    ):
        raise ConfigurationError(
            "noise must be a privagg NoiseShare (sample_encoded, sample_real, "
            f"headroom), got {type(noise).__name__}"
        )


@runtime_checkable
class Session(Protocol):
    """The set-up of one backend for one layout: makes the roles of each round.

    In one process a session is a trusted dealer (simulation). Across machines each
    backend documents how each role is built from its own key material.
    """

    backend_name: str
    layout: Layout

    def aggregator(self, round_id: int, client_ids: Sequence[str]) -> AggregatorRole:
        """The aggregator for a round with these clients."""
        ...

    def client(
        self,
        client_id: str,
        round_id: int,
        update: FloatVector,
        *,
        weight: float = 1.0,
        rng: Rng | None = None,
    ) -> ClientRole:
        """A client for one round, holding ``weight * update``."""
        ...

    def servers(self, round_id: int) -> dict[str, Responder]:
        """Extra responders of the protocol ({} for most backends)."""
        ...

    def holder(self) -> HolderRole:
        """The result holder."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A configured secure-aggregation backend (see :func:`privagg.get_backend`)."""

    name: ClassVar[str]

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> Session:
        """Generate keys/parameters for ``layout`` and up to ``max_clients`` clients."""
        ...

    @property
    def value_bound(self) -> float | None:
        """Largest |value| a client may contribute (before weighting); None: unbounded."""
        ...

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Declared max absolute error of a recovered sum of ``n_clients`` values of
        magnitude <= ``max_abs`` (0.0 for exact backends at their resolution)."""
        ...


@runtime_checkable
class FixedPointBackend(Protocol):
    """Capability: a backend that computes on fixed-point integers.

    It encodes every value as an integer of :attr:`fixed_point_scale` units per 1.0
    (stochastic rounding) and adds a :class:`NoiseShare` as integer noise
    (:meth:`NoiseShare.sample_encoded`: the distributed discrete Gaussian, which
    :mod:`privagg.dp` accounts with ``scale`` and the layout's dimension). Backends
    without it compute on reals and add :meth:`NoiseShare.sample_real` (CKKS, plain).
    Ask through :func:`fixed_point_scale`, never by backend name.
    """

    @property
    def fixed_point_scale(self) -> float:
        """Integer units per 1.0 (``2**scale_bits``)."""
        ...


def fixed_point_scale(backend: Backend) -> float | None:
    """``backend``'s fixed-point scale, or None for a backend that computes on reals.

    A DP layer uses it to pick the noise and its accounting: on a fixed-point backend
    the clients' shares are discrete (``sample_encoded`` at this scale), elsewhere real.
    """
    if isinstance(backend, FixedPointBackend):
        return float(backend.fixed_point_scale)
    return None


@runtime_checkable
class BoundOption(Protocol):
    """Capability: a backend whose per-coordinate bound (:attr:`Backend.value_bound`)
    is set by a constructor option of :func:`privagg.get_backend`.

    A training layer that clips updates to L2 norm ``C`` knows every coordinate is
    at most ``C`` and sets this option to ``C``. Ask through
    :func:`value_bound_option`, never by backend name.
    """

    @property
    def value_bound_option(self) -> str:
        """Name of the option (``get_backend(name, **{option: bound})``)."""
        ...


def value_bound_option(backend: Backend) -> str | None:
    """The option that sets ``backend``'s per-coordinate bound, or None for a backend
    without one (``plain`` accepts any finite float)."""
    if isinstance(backend, BoundOption):
        return str(backend.value_bound_option)
    return None


def protects_inputs(backend: Backend) -> bool:
    """False only for a backend that declares ``protects_inputs = False``: one that
    shows the aggregator every client's update (``plain``, the reference). A backend
    that does not declare it is assumed to protect them."""
    return getattr(backend, "protects_inputs", True) is not False
