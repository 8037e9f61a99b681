"""The DP event algebra: a closed set of immutable descriptions of private releases.

An *event* says which randomised mechanism touched the data, with which parameters.
Accountants (:mod:`privagg.dp.accountants`) turn a sequence of events into an
``(epsilon, delta)`` guarantee. Events carry no data and no randomness; they are
frozen, slotted dataclasses, so they hash, compare and serialise cleanly.

Every event has :meth:`to_dict` (JSON-ready, tagged with ``"type"``) and the module
function :func:`event_from_dict` reverses it against a closed registry
(:data:`EVENT_TYPES`); a tag that is not in the registry is rejected, nothing is ever
imported by name.

Compatibility with Google's ``dp_accounting`` (:func:`to_dp_accounting`):

* :class:`GaussianEvent` -> ``GaussianDpEvent``; :class:`LaplaceEvent` ->
  ``LaplaceDpEvent``; :class:`ComposedEvent` -> ``ComposedDpEvent``;
  :class:`SelfComposedEvent` -> ``SelfComposedDpEvent``.
* :class:`PoissonSampledEvent` -> ``PoissonSampledDpEvent``. dp_accounting (and
  privagg) only analyse it under the *add-or-remove-one* neighbouring relation, and
  only when the inner event is a Gaussian (or, for PLD, a Laplace); the RDP
  accountants also accept an inner composition of Gaussians (it is one Gaussian with
  ``sigma_eff = (sum_i sigma_i**-2) ** -0.5``).
* :class:`SampledWithoutReplacementEvent` ->
  ``SampledWithoutReplacementDpEvent``; analysed only under *replace-one* and only by
  RDP (Wang, Balle, Kasiviswanathan 2019), with a Gaussian inner event.
* :class:`DiscreteGaussianEvent` and :class:`SkellamEvent` have no dp_accounting
  counterpart; privagg's RDP accountant analyses them directly (Kairouz, Liu, Steinke
  2021, Proposition 14; Agarwal, Kairouz, Liu 2021, Theorem 3.5).

All noise parameters are *noise multipliers* (standard deviation divided by the
sensitivity), except for the two integer-domain events, which take the noise standard
deviation and the sensitivities in the same integer units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    UnsupportedEventError,
)

__all__ = [
    "EVENT_TYPES",
    "ComposedEvent",
    "DiscreteGaussianEvent",
    "Event",
    "GaussianEvent",
    "LaplaceEvent",
    "PoissonSampledEvent",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "SkellamEvent",
    "event_from_dict",
    "to_dp_accounting",
]

_MAX_DEPTH = 32


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be finite and > 0, got {value!r}")


def _count(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{name} must be an integer >= {minimum}, got {value!r}"
        )


def _is_event(value: object) -> bool:
    return isinstance(value, _EVENT_CLASSES)


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """The Gaussian mechanism ``f(D) + N(0, (noise_multiplier * Delta_2)**2 I)``.

    ``Delta_2`` is the L2 sensitivity of ``f``; only the ratio matters, so the event
    carries the noise multiplier ``sigma / Delta_2``.
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "gaussian"}``."""
        return {"type": "gaussian", "noise_multiplier": float(self.noise_multiplier)}


@dataclass(frozen=True, slots=True)
class LaplaceEvent:
    """The Laplace mechanism ``f(D) + Lap(noise_multiplier * Delta_1)`` per coordinate.

    ``Delta_1`` is the L1 sensitivity; the mechanism is ``1/noise_multiplier``-DP.
    """

    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "laplace"}``."""
        return {"type": "laplace", "noise_multiplier": float(self.noise_multiplier)}


@dataclass(frozen=True, slots=True)
class PoissonSampledEvent:
    """Run ``event`` on a Poisson subsample: each record kept independently w.p. ``q``.

    Add-or-remove-one neighbouring relation (as in Abadi et al. 2016, Mironov et al.
    2019). ``sampling_probability`` is in ``(0, 1]``.
    """

    sampling_probability: float
    event: Event

    def __post_init__(self) -> None:
        q = self.sampling_probability
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ConfigurationError(
                f"sampling_probability must be in (0, 1], got {q!r}"
            )
        if not _is_event(self.event):
            raise ConfigurationError(
                f"event must be a privagg event, got {self.event!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "poisson_sampled"}``."""
        return {
            "type": "poisson_sampled",
            "sampling_probability": float(self.sampling_probability),
            "event": self.event.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class SampledWithoutReplacementEvent:
    """Run ``event`` on a uniformly random subset of ``sample_size`` of ``source_size``.

    Replace-one neighbouring relation (the dataset size is public).
    """

    source_size: int
    sample_size: int
    event: Event

    def __post_init__(self) -> None:
        _count("source_size", self.source_size)
        _count("sample_size", self.sample_size)
        if self.sample_size > self.source_size:
            raise ConfigurationError(
                f"sample_size must be <= source_size ({self.source_size}), "
                f"got {self.sample_size}"
            )
        if not _is_event(self.event):
            raise ConfigurationError(
                f"event must be a privagg event, got {self.event!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "sampled_without_replacement"}``."""
        return {
            "type": "sampled_without_replacement",
            "source_size": int(self.source_size),
            "sample_size": int(self.sample_size),
            "event": self.event.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ComposedEvent:
    """Adaptive composition of ``events`` (run one after another on the same data)."""

    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.events, tuple):
            object.__setattr__(self, "events", tuple(self.events))
        for e in self.events:
            if not _is_event(e):
                raise ConfigurationError(f"events must hold privagg events, got {e!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "composed"}``."""
        return {"type": "composed", "events": [e.to_dict() for e in self.events]}


@dataclass(frozen=True, slots=True)
class SelfComposedEvent:
    """``event`` run ``count`` times (adaptive composition with itself)."""

    event: Event
    count: int

    def __post_init__(self) -> None:
        if not _is_event(self.event):
            raise ConfigurationError(
                f"event must be a privagg event, got {self.event!r}"
            )
        _count("count", self.count)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "self_composed"}``."""
        return {
            "type": "self_composed",
            "event": self.event.to_dict(),
            "count": int(self.count),
        }


@dataclass(frozen=True, slots=True)
class DiscreteGaussianEvent:
    """Sum of ``num_shares`` independent discrete Gaussians added to an integer vector.

    Exactly: the release is ``f(D) + sum_{i=1..n} X_i`` with ``f(D)`` in ``Z^d`` and each
    ``X_i`` having iid coordinates ``N_Z(0, sigma**2)`` (``sigma = noise_stddev``), the
    distributed discrete Gaussian of Kairouz, Liu & Steinke (ICML 2021). Neighbouring
    datasets change ``f(D)`` by an integer vector of L2 norm <= ``l2_sensitivity`` and
    L1 norm <= ``l1_sensitivity`` (default ``min(sqrt(d) * l2, l2**2)``, valid for
    integer vectors). ``num_shares = 1`` is the central discrete Gaussian of
    Canonne, Kamath & Steinke (2020). All quantities are in the integer units of the
    encoded vector (float value times the encoder's scale).
    """

    noise_stddev: float
    l2_sensitivity: float
    num_shares: int = 1
    dimension: int = 1
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        _positive("noise_stddev", self.noise_stddev)
        if self.noise_stddev < 0.5:
            raise ConfigurationError(
                f"noise_stddev must be >= 0.5 for the DDG bound, got {self.noise_stddev!r}"
            )
        _positive("l2_sensitivity", self.l2_sensitivity)
        _count("num_shares", self.num_shares)
        _count("dimension", self.dimension)
        if self.l1_sensitivity is not None:
            _positive("l1_sensitivity", self.l1_sensitivity)

    @property
    def effective_l1_sensitivity(self) -> float:
        """The L1 sensitivity used by the bound (given, or derived from L2 and d)."""
        derived = min(
            math.sqrt(self.dimension) * self.l2_sensitivity, self.l2_sensitivity**2
        )
        if self.l1_sensitivity is None:
            return derived
        return min(float(self.l1_sensitivity), derived)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "discrete_gaussian"}``."""
        return {
            "type": "discrete_gaussian",
            "noise_stddev": float(self.noise_stddev),
            "l2_sensitivity": float(self.l2_sensitivity),
            "num_shares": int(self.num_shares),
            "dimension": int(self.dimension),
            "l1_sensitivity": None
            if self.l1_sensitivity is None
            else float(self.l1_sensitivity),
        }


@dataclass(frozen=True, slots=True)
class SkellamEvent:
    """The (distributed) Skellam mechanism of Agarwal, Kairouz & Liu (NeurIPS 2021).

    Exactly: ``f(D) + Z`` with ``f(D)`` in ``Z^d`` and iid coordinates
    ``Z_j = P_j - P'_j``, ``P_j, P'_j ~ Poisson(variance / 2)``, so each coordinate of
    the noise has variance ``variance``. Skellam is closed under summation, so ``n``
    clients each adding ``Sk(variance / n)`` give exactly this event. Sensitivities are
    in integer units (default L1: ``min(sqrt(d) * l2, l2**2)``).
    """

    variance: float
    l2_sensitivity: float
    dimension: int = 1
    l1_sensitivity: float | None = None

    def __post_init__(self) -> None:
        _positive("variance", self.variance)
        _positive("l2_sensitivity", self.l2_sensitivity)
        _count("dimension", self.dimension)
        if self.l1_sensitivity is not None:
            _positive("l1_sensitivity", self.l1_sensitivity)

    @property
    def effective_l1_sensitivity(self) -> float:
        """The L1 sensitivity used by the bound (given, or derived from L2 and d)."""
        derived = min(
            math.sqrt(self.dimension) * self.l2_sensitivity, self.l2_sensitivity**2
        )
        if self.l1_sensitivity is None:
            return derived
        return min(float(self.l1_sensitivity), derived)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, tagged ``{"type": "skellam"}``."""
        return {
            "type": "skellam",
            "variance": float(self.variance),
            "l2_sensitivity": float(self.l2_sensitivity),
            "dimension": int(self.dimension),
            "l1_sensitivity": None
            if self.l1_sensitivity is None
            else float(self.l1_sensitivity),
        }


Event = (
    GaussianEvent
    | LaplaceEvent
    | PoissonSampledEvent
    | SampledWithoutReplacementEvent
    | ComposedEvent
    | SelfComposedEvent
    | DiscreteGaussianEvent
    | SkellamEvent
)

_EVENT_CLASSES: tuple[type, ...] = (
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
    ComposedEvent,
    SelfComposedEvent,
    DiscreteGaussianEvent,
    SkellamEvent,
)


# --- deserialisation -------------------------------------------------------------


def _fields(
    d: Mapping[str, Any],
    required: frozenset[str] | set[str],
    optional: frozenset[str] | set[str] = frozenset(),
) -> None:
    keys = set(d) - {"type"}
    missing = required - keys
    extra = keys - required - optional
    if missing or extra:
        raise DeserializationError(
            f"event {d.get('type')!r}: missing fields {sorted(missing)}, "
            f"unexpected fields {sorted(extra)}"
        )


def _num(d: Mapping[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DeserializationError(f"field {key!r} must be a number")
    return float(v)


def _int(d: Mapping[str, Any], key: str) -> int:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise DeserializationError(f"field {key!r} must be an integer")
    return v


def _opt_num(d: Mapping[str, Any], key: str) -> float | None:
    if d.get(key) is None:
        return None
    return _num(d, key)


def _gaussian(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"noise_multiplier"})
    return GaussianEvent(_num(d, "noise_multiplier"))


def _laplace(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"noise_multiplier"})
    return LaplaceEvent(_num(d, "noise_multiplier"))


def _poisson(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"sampling_probability", "event"})
    return PoissonSampledEvent(
        _num(d, "sampling_probability"), _parse(d["event"], depth + 1)
    )


def _swor(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"source_size", "sample_size", "event"})
    return SampledWithoutReplacementEvent(
        _int(d, "source_size"), _int(d, "sample_size"), _parse(d["event"], depth + 1)
    )


def _composed(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"events"})
    events = d["events"]
    if not isinstance(events, list):
        raise DeserializationError("field 'events' must be a list")
    return ComposedEvent(tuple(_parse(e, depth + 1) for e in events))


def _self_composed(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"event", "count"})
    return SelfComposedEvent(_parse(d["event"], depth + 1), _int(d, "count"))


def _dgauss(d: Mapping[str, Any], depth: int) -> Event:
    _fields(
        d,
        {"noise_stddev", "l2_sensitivity", "num_shares", "dimension"},
        {"l1_sensitivity"},
    )
    return DiscreteGaussianEvent(
        _num(d, "noise_stddev"),
        _num(d, "l2_sensitivity"),
        _int(d, "num_shares"),
        _int(d, "dimension"),
        _opt_num(d, "l1_sensitivity"),
    )


def _skellam(d: Mapping[str, Any], depth: int) -> Event:
    _fields(d, {"variance", "l2_sensitivity", "dimension"}, {"l1_sensitivity"})
    return SkellamEvent(
        _num(d, "variance"),
        _num(d, "l2_sensitivity"),
        _int(d, "dimension"),
        _opt_num(d, "l1_sensitivity"),
    )


EVENT_TYPES: Mapping[str, Callable[[Mapping[str, Any], int], Event]] = {
    "gaussian": _gaussian,
    "laplace": _laplace,
    "poisson_sampled": _poisson,
    "sampled_without_replacement": _swor,
    "composed": _composed,
    "self_composed": _self_composed,
    "discrete_gaussian": _dgauss,
    "skellam": _skellam,
}
"""The closed registry of event tags accepted by :func:`event_from_dict`."""


def _parse(d: object, depth: int) -> Event:
    if depth > _MAX_DEPTH:
        raise DeserializationError("event nesting too deep")
    if not isinstance(d, Mapping):
        raise DeserializationError("an event must be a JSON object")
    tag = d.get("type")
    if not isinstance(tag, str) or tag not in EVENT_TYPES:
        raise DeserializationError(f"unknown event type {tag!r}")
    try:
        return EVENT_TYPES[tag](d, depth)
    except ConfigurationError as exc:
        raise DeserializationError(f"invalid {tag} event: {exc}") from exc


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Rebuild an event from :meth:`to_dict` output, against the closed registry.

    Args:
        d: a mapping with a ``"type"`` tag from :data:`EVENT_TYPES`.

    Returns:
        The event.

    Raises:
        DeserializationError: unknown tag, missing/extra fields, bad values, or
            nesting deeper than 32.
    """
    return _parse(d, 0)


# --- dp_accounting translation -----------------------------------------------------


def to_dp_accounting(event: Event) -> Any:
    """Translate an event into the equivalent ``dp_accounting.dp_event`` object.

    Args:
        event: a privagg event.

    Returns:
        A ``dp_accounting.dp_event.DpEvent``.

    Raises:
        UnsupportedEventError: for events without a dp_accounting counterpart
            (:class:`DiscreteGaussianEvent`, :class:`SkellamEvent`).
    """
    from dp_accounting import dp_event as de

    match event:
        case GaussianEvent(noise_multiplier=s):
            return de.GaussianDpEvent(float(s))
        case LaplaceEvent(noise_multiplier=s):
            return de.LaplaceDpEvent(float(s))
        case PoissonSampledEvent(sampling_probability=q, event=inner):
            return de.PoissonSampledDpEvent(float(q), to_dp_accounting(inner))
        case SampledWithoutReplacementEvent(source_size=n, sample_size=m, event=inner):
            return de.SampledWithoutReplacementDpEvent(
                int(n), int(m), to_dp_accounting(inner)
            )
        case ComposedEvent(events=events):
            return de.ComposedDpEvent([to_dp_accounting(e) for e in events])
        case SelfComposedEvent(event=inner, count=c):
            return de.SelfComposedDpEvent(to_dp_accounting(inner), int(c))
    raise UnsupportedEventError(
        f"{type(event).__name__} has no dp_accounting counterpart", event
    )
