"""Privacy accountants: turn a sequence of DP events into ``(epsilon, delta)``.

Two accountants share one protocol (:class:`Accountant`):

* :class:`PldAccountant` -- privacy loss distributions, a thin wrapper over
  ``dp_accounting.pld.PLDAccountant`` (pessimistic discretisation, so the reported
  epsilon is an upper bound up to the discretisation interval). Tightest for
  Gaussian / subsampled Gaussian / Laplace.
* :class:`RdpAccountant` -- Renyi DP on a dense order grid. The Poisson-subsampled
  Gaussian is computed by :mod:`privagg.dp._rdp_math` (exact integer orders, signed
  series for fractional orders, both rounded *up*); the other RDP curves come from
  dp_accounting; RDP -> (epsilon, delta) uses the improved conversion of
  Canonne-Kamath-Steinke 2020 / Balle et al. 2020 (``dp_accounting``'s
  ``compute_epsilon``). The only accountant for the integer-domain events
  (:class:`~privagg.dp.events.DiscreteGaussianEvent`,
  :class:`~privagg.dp.events.SkellamEvent`) and for sampling without replacement.

Dispatch is table-driven: each accountant holds a ``dict[type[Event], rule]``;
:meth:`Accountant.supports` and :meth:`Accountant.compose` read the same table.
:meth:`compose` validates the whole event first and only then changes state, so a
rejected event leaves the accountant untouched.

State is saved as the list of composed ``(event, count)`` pairs (plain JSON, no
pickle) with a ``format_version`` and the accountant's configuration; loading replays
the list, which reproduces the epsilon bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from privagg.dp import _rdp_math
from privagg.dp.events import (
    ComposedEvent,
    DiscreteGaussianEvent,
    Event,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    SkellamEvent,
    event_from_dict,
    to_dp_accounting,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    UnsupportedEventError,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "NeighboringRelation",
    "PldAccountant",
    "RdpAccountant",
    "make_accountant",
]

FORMAT_VERSION = 1
_SWOR_MAX_ORDER = 64.0
NeighboringRelation = Literal["add_or_remove_one", "replace_one"]
FloatArray = npt.NDArray[np.float64]


@runtime_checkable
class Accountant(Protocol):
    """What every privagg accountant provides."""

    mechanism: ClassVar[str]

    def supports(self, event: Event) -> bool:
        """Whether :meth:`compose` would accept ``event``."""
        ...

    def compose(self, event: Event, count: int = 1) -> Self:
        """Add ``count`` adaptive repetitions of ``event``; returns ``self``."""
        ...

    def epsilon(self, delta: float) -> float:
        """Smallest epsilon this accountant certifies at ``delta``."""
        ...

    def delta(self, epsilon: float) -> float:
        """Smallest delta this accountant certifies at ``epsilon``."""
        ...

    @property
    def ledger(self) -> tuple[tuple[Event, int], ...]:
        """Every ``(event, count)`` composed so far, in order."""
        ...

    def copy(self) -> Self:
        """An independent accountant with the same state."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the state with ``state`` (from :meth:`state_dict`)."""
        ...


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigurationError(f"count must be an integer >= 1, got {count!r}")


def _check_delta(delta: float) -> None:
    if (
        isinstance(delta, bool)
        or not isinstance(delta, (int, float))
        or not 0 < delta < 1
    ):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")


def _check_epsilon(epsilon: float) -> None:
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, (int, float))
        or not epsilon >= 0
        or not math.isfinite(epsilon)
    ):
        raise ConfigurationError(f"epsilon must be finite and >= 0, got {epsilon!r}")


# What dp_accounting raises for parameters outside its numeric range (a noise
# multiplier of 1e-300, 10**22 steps, a PLD grid of 10**11 points): reported as a
# ConfigurationError, never as the raw exception (found by fuzzing the CLI, issue #13).
_NUMERIC_FAILURES = (
    OverflowError,
    ZeroDivisionError,
    FloatingPointError,
    ValueError,
    MemoryError,
)


# dp_accounting composes a PLD ``count`` times by repeated squaring: a count beyond
# this runs for hours or asks for terabytes (10**9 already asks for 488 GB).
_PLD_MAX_COUNT = 2**31 - 1


@contextlib.contextmanager
def _numeric_range(what: str) -> Iterator[None]:
    try:
        yield
    except ConfigurationError:
        raise
    except _NUMERIC_FAILURES as exc:
        raise ConfigurationError(
            f"{what}: the parameters are outside the accountant's numeric range "
            f"({type(exc).__name__})"
        ) from None


class _BaseAccountant:
    """History keeping, validation and serialisation shared by the accountants."""

    mechanism: ClassVar[str] = ""

    def __init__(self) -> None:
        self._history: list[tuple[Event, int]] = []

    # -- to be provided by subclasses ------------------------------------------------
    def _unsupported(self, event: Event) -> tuple[Event, str] | None:
        raise NotImplementedError  # pragma: no cover

    def _apply(self, event: Event, count: int) -> None:
        raise NotImplementedError  # pragma: no cover

    def _reset(self) -> None:
        raise NotImplementedError  # pragma: no cover

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    # -- public API ------------------------------------------------------------------
    def supports(self, event: Event) -> bool:
        """Whether :meth:`compose` would accept ``event`` (and all its sub-events).

        Args:
            event: any privagg event.

        Returns:
            True if this accountant can analyse it.
        """
        return self._unsupported(event) is None

    def compose(self, event: Event, count: int = 1) -> Self:
        """Compose ``count`` adaptive repetitions of ``event``.

        Everything is validated before any state changes.

        Args:
            event: the event.
            count: number of repetitions, ``>= 1``.

        Returns:
            ``self``, for chaining.

        Raises:
            ConfigurationError: ``count`` is not a positive integer, or the composition
                is outside the accountant's numeric range (the accountant is then
                unchanged).
            UnsupportedEventError: the event (its ``event`` attribute names the
                offending sub-event) cannot be analysed by this accountant.
        """
        _check_count(count)
        bad = self._unsupported(event)
        if bad is not None:
            sub, why = bad
            raise UnsupportedEventError(
                f"{type(self).__name__} does not support {type(sub).__name__}: {why}",
                sub,
            )
        with _numeric_range(f"{type(self).__name__}: {count} x {type(event).__name__}"):
            self._apply(event, count)  # computes, then rebinds: atomic
        self._history.append((event, count))
        return self

    @property
    def ledger(self) -> tuple[tuple[Event, int], ...]:
        """Every ``(event, count)`` composed so far, in order."""
        return tuple(self._history)

    def copy(self) -> Self:
        """An independent accountant with the same configuration and history.

        O(1) in the history length: accumulated state is immutable (every compose
        rebinds a fresh array / PLD object), so a shallow copy plus a copied history
        list is independent.
        """
        new = copy.copy(self)
        new._history = list(self._history)
        self._copy_into(new)
        return new

    def _copy_into(self, new: Any) -> None:
        """Detach mutable members of ``new`` (a shallow copy of ``self``)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: format version, mechanism, configuration, history.

        Returns:
            A dict that :func:`json.dumps` accepts.
        """
        return {
            "format_version": FORMAT_VERSION,
            "mechanism": self.mechanism,
            "config": self._config(),
            "history": [{"event": e.to_dict(), "count": c} for e, c in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this accountant's state with ``state`` (replaying its history).

        Args:
            state: output of :meth:`state_dict`.

        Raises:
            DeserializationError: wrong format version, a different mechanism or
                configuration, or a malformed history. The accountant is unchanged.
        """
        if not isinstance(state, Mapping):
            raise DeserializationError("accountant state must be a mapping")
        if state.get("format_version") != FORMAT_VERSION:
            raise DeserializationError(
                f"unsupported accountant format_version {state.get('format_version')!r}, "
                f"expected {FORMAT_VERSION}"
            )
        if state.get("mechanism") != self.mechanism:
            raise DeserializationError(
                f"state is for accountant {state.get('mechanism')!r}, not {self.mechanism!r}"
            )
        if state.get("config") != self._config():
            raise DeserializationError(
                f"state was saved with configuration {state.get('config')!r}, "
                f"this accountant has {self._config()!r}"
            )
        history = state.get("history")
        if not isinstance(history, list):
            raise DeserializationError("accountant state has no history list")
        parsed: list[tuple[Event, int]] = []
        for item in history:
            if not isinstance(item, Mapping) or set(item) != {"event", "count"}:
                raise DeserializationError("malformed history entry")
            count = item["count"]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise DeserializationError("history count must be a positive integer")
            parsed.append((event_from_dict(item["event"]), count))
        fresh = type(self)(**self._config())
        try:
            for event, count in parsed:
                fresh.compose(event, count)
        except UnsupportedEventError as exc:
            raise DeserializationError(
                f"state holds an unsupported event: {exc}"
            ) from exc
        self.__dict__.update(fresh.__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(events={len(self._history)})"


# ----------------------------------------------------------------------------------
# RDP
# ----------------------------------------------------------------------------------


class _Rule(NamedTuple):
    """How an accountant handles one event type."""

    check: Callable[[Any, Any], tuple[Event, str] | None]
    compute: Callable[[Any, Any], Any]


def _effective_sigma(event: Event) -> float | None:
    """Noise multiplier of the single Gaussian equivalent to ``event``, if any.

    A composition of Gaussian queries on the same data is one Gaussian with
    ``sigma_eff = (sum_i count_i / sigma_i^2) ** -0.5`` (Mironov et al. 2019, Sec. 3).
    """
    inv = _INV_SQ.get(type(event))
    value = None if inv is None else inv(event)
    return None if value is None or value <= 0 else float(value) ** -0.5


def _inv_sq_gauss(e: GaussianEvent) -> float | None:
    z = float(e.noise_multiplier)
    try:
        inv = z**-2
    except OverflowError:  # z = 1e-300 (found by fuzzing the CLI, issue #13)
        inv = math.inf
    if not 0.0 < inv < math.inf:  # z = 1e300 underflowed to 0: not "not a Gaussian"
        raise ConfigurationError(
            f"noise_multiplier={z!r} is outside the RDP accountant's numeric range"
        )
    return inv


def _inv_sq_composed(e: ComposedEvent) -> float | None:
    total = 0.0
    for sub in e.events:
        f = _INV_SQ.get(type(sub))
        v = None if f is None else f(sub)
        if v is None:
            return None
        total += v
    return total if e.events else None


def _inv_sq_self(e: SelfComposedEvent) -> float | None:
    f = _INV_SQ.get(type(e.event))
    v = None if f is None else f(e.event)
    return None if v is None else v * e.count


_INV_SQ: dict[type, Callable[[Any], float | None]] = {
    GaussianEvent: _inv_sq_gauss,
    ComposedEvent: _inv_sq_composed,
    SelfComposedEvent: _inv_sq_self,
}


class RdpAccountant(_BaseAccountant):
    """Renyi-DP accountant on a dense order grid (see module docstring).

    Args:
        orders: RDP orders (each > 1); default :data:`privagg.dp._rdp_math.DEFAULT_ORDERS`.
        neighboring_relation: ``"add_or_remove_one"`` (default; needed for Poisson
            sampling) or ``"replace_one"`` (needed for sampling without replacement).

    Raises:
        ConfigurationError: bad orders or relation.
    """

    mechanism: ClassVar[str] = "rdp"

    def __init__(
        self,
        orders: tuple[float, ...] | list[float] | None = None,
        neighboring_relation: NeighboringRelation = "add_or_remove_one",
    ) -> None:
        super().__init__()
        chosen = (
            _rdp_math.DEFAULT_ORDERS
            if orders is None
            else tuple(float(a) for a in orders)
        )
        if not chosen or any(not (a > 1 and math.isfinite(a)) for a in chosen):
            raise ConfigurationError(f"orders must be finite and > 1, got {orders!r}")
        if neighboring_relation not in ("add_or_remove_one", "replace_one"):
            raise ConfigurationError(
                "neighboring_relation must be 'add_or_remove_one' or 'replace_one', "
                f"got {neighboring_relation!r}"
            )
        self._orders_tuple = chosen
        self._custom_orders = orders is not None
        self._orders = np.asarray(chosen, dtype=np.float64)
        self._relation: NeighboringRelation = neighboring_relation
        self._rdp = np.zeros_like(self._orders)

    @property
    def orders(self) -> FloatArray:
        """The RDP orders (a copy)."""
        return self._orders.copy()

    @property
    def rdp(self) -> FloatArray:
        """Accumulated RDP at each order (a copy)."""
        return self._rdp.copy()

    def _config(self) -> dict[str, Any]:
        return {
            "orders": list(self._orders_tuple) if self._custom_orders else None,
            "neighboring_relation": self._relation,
        }

    def _reset(self) -> None:
        self._rdp = np.zeros_like(self._orders)
        self._history = []

    # -- rules -------------------------------------------------------------------
    def _unsupported(self, event: Event) -> tuple[Event, str] | None:
        rule = self._RULES.get(type(event))
        if rule is None:
            return event, "no RDP analysis for this event type"
        return rule.check(self, event)

    def _rdp_of(self, event: Event) -> FloatArray:
        return np.asarray(
            self._RULES[type(event)].compute(self, event), dtype=np.float64
        )

    def _apply(self, event: Event, count: int) -> None:
        self._rdp = self._rdp + count * self._rdp_of(event)

    def _ok(self, event: Event) -> tuple[Event, str] | None:
        return None

    def _check_poisson(self, e: PoissonSampledEvent) -> tuple[Event, str] | None:
        if self._relation != "add_or_remove_one":
            return e, "Poisson sampling needs neighboring_relation='add_or_remove_one'"
        if _effective_sigma(e.event) is None:
            return e.event, "the sampled event must be a (composition of) Gaussian(s)"
        return None

    def _check_swor(
        self, e: SampledWithoutReplacementEvent
    ) -> tuple[Event, str] | None:
        if self._relation != "replace_one":
            return (
                e,
                "sampling without replacement needs neighboring_relation='replace_one'",
            )
        if _effective_sigma(e.event) is None:
            return e.event, "the sampled event must be a (composition of) Gaussian(s)"
        return None

    def _check_composed(self, e: ComposedEvent) -> tuple[Event, str] | None:
        for sub in e.events:
            bad = self._unsupported(sub)
            if bad is not None:
                return bad
        return None

    def _check_self(self, e: SelfComposedEvent) -> tuple[Event, str] | None:
        return self._unsupported(e.event)

    def _gauss(self, e: GaussianEvent) -> FloatArray:
        return _rdp_math.gaussian_rdp(e.noise_multiplier, self._orders)

    def _laplace(self, e: LaplaceEvent) -> FloatArray:
        from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

        eps = 1.0 / e.noise_multiplier
        return np.array([dpa_rdp._laplace_rdp(eps, a) for a in self._orders])

    def _poisson(self, e: PoissonSampledEvent) -> FloatArray:
        sigma = _effective_sigma(e.event)
        assert sigma is not None
        return _rdp_math.poisson_gaussian_rdp(
            e.sampling_probability, sigma, self._orders
        )

    def _swor(self, e: SampledWithoutReplacementEvent) -> FloatArray:
        from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

        sigma = _effective_sigma(e.event)
        assert sigma is not None
        q = e.sample_size / e.source_size
        # dp_accounting's bound costs O(alpha) pure-Python work per order; orders above
        # _SWOR_MAX_ORDER are dropped (+inf), which is always valid.
        out = np.full_like(self._orders, np.inf)
        keep = self._orders <= _SWOR_MAX_ORDER
        out[keep] = dpa_rdp._compute_rdp_sample_wor_gaussian(
            q, sigma, self._orders[keep]
        )
        return out

    def _composed(self, e: ComposedEvent) -> FloatArray:
        total = np.zeros_like(self._orders)
        for sub in e.events:
            total = total + self._rdp_of(sub)
        return total

    def _self(self, e: SelfComposedEvent) -> FloatArray:
        return e.count * self._rdp_of(e.event)

    def _ddg(self, e: DiscreteGaussianEvent) -> FloatArray:
        return _rdp_math.ddg_rdp(
            e.noise_stddev,
            e.l2_sensitivity,
            e.effective_l1_sensitivity,
            e.num_shares,
            e.dimension,
            self._orders,
        )

    def _skellam(self, e: SkellamEvent) -> FloatArray:
        return _rdp_math.skellam_rdp(
            e.variance, e.l2_sensitivity, e.effective_l1_sensitivity, self._orders
        )

    _RULES: ClassVar[dict[type, _Rule]] = {
        GaussianEvent: _Rule(_ok, _gauss),
        LaplaceEvent: _Rule(_ok, _laplace),
        PoissonSampledEvent: _Rule(_check_poisson, _poisson),
        SampledWithoutReplacementEvent: _Rule(_check_swor, _swor),
        ComposedEvent: _Rule(_check_composed, _composed),
        SelfComposedEvent: _Rule(_check_self, _self),
        DiscreteGaussianEvent: _Rule(_ok, _ddg),
        SkellamEvent: _Rule(_ok, _skellam),
    }

    # -- conversion --------------------------------------------------------------
    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta``: min over orders of the improved RDP conversion.

        Args:
            delta: target delta in ``(0, 1)``.

        Returns:
            Epsilon (``0`` before any composition, ``inf`` if unbounded).

        Raises:
            ConfigurationError: ``delta`` out of range, or the parameters are outside
                the accountant's numeric range.
        """
        _check_delta(delta)
        from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

        with _numeric_range("RdpAccountant.epsilon"):
            return float(dpa_rdp.compute_epsilon(self._orders, self._rdp, delta)[0])

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """Like :meth:`epsilon`, also returning the optimal order."""
        _check_delta(delta)
        from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

        with _numeric_range("RdpAccountant.epsilon"):
            eps, order = dpa_rdp.compute_epsilon(self._orders, self._rdp, delta)
        return float(eps), float(order)

    def delta(self, epsilon: float) -> float:
        """Delta at ``epsilon`` (improved RDP conversion, min over orders).

        Args:
            epsilon: target epsilon, finite and ``>= 0``.

        Returns:
            Delta in ``[0, 1]``.

        Raises:
            ConfigurationError: ``epsilon`` out of range, or the parameters are
                outside the accountant's numeric range.
        """
        _check_epsilon(epsilon)
        from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp

        if not self._history:
            return 0.0
        with _numeric_range("RdpAccountant.delta"):
            return float(dpa_rdp.compute_delta(self._orders, self._rdp, epsilon)[0])


# ----------------------------------------------------------------------------------
# PLD
# ----------------------------------------------------------------------------------


class PldAccountant(_BaseAccountant):
    """Privacy-loss-distribution accountant wrapping ``dp_accounting``'s PLD.

    Add-or-remove-one neighbouring relation. Supports Gaussian, Laplace,
    Poisson-sampled Gaussian or Laplace, and (self-)compositions of those.

    Args:
        value_discretization_interval: PLD grid step (dp_accounting's default,
            ``1e-4``); smaller is tighter and slower.

    Raises:
        ConfigurationError: non-positive interval.
    """

    mechanism: ClassVar[str] = "pld"

    def __init__(self, value_discretization_interval: float = 1e-4) -> None:
        super().__init__()
        v = value_discretization_interval
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1):
            raise ConfigurationError(
                f"value_discretization_interval must be in (0, 1), got {v!r}"
            )
        self._interval = float(v)
        self._acct = self._fresh()

    def _fresh(self) -> Any:
        # upstream's accountant, composing memoized PLDs for repeated Gaussian events
        # (bit-identical results; see privagg.dp._pld_memo; imported late, as
        # dp_accounting was before)
        from privagg.dp._pld_memo import make_pld_accountant

        return make_pld_accountant(self._interval)

    def _config(self) -> dict[str, Any]:
        return {"value_discretization_interval": self._interval}

    def _copy_into(self, new: Any) -> None:
        # dp_accounting's PLDAccountant rebinds its PLD on every compose, so a shallow
        # copy of the wrapper object suffices
        new._acct = copy.copy(self._acct)

    def _reset(self) -> None:
        self._acct = self._fresh()
        self._history = []

    def _unsupported(self, event: Event) -> tuple[Event, str] | None:
        rule = self._CHECKS.get(type(event))
        if rule is None:
            return event, "no PLD analysis for this event type (use the RDP accountant)"
        return rule(self, event)

    def _ok(self, event: Event) -> tuple[Event, str] | None:
        return None

    def _check_poisson(self, e: PoissonSampledEvent) -> tuple[Event, str] | None:
        if type(e.event) not in (GaussianEvent, LaplaceEvent):
            return (
                e.event,
                "PLD analyses Poisson sampling of a Gaussian or Laplace only",
            )
        return None

    def _check_composed(self, e: ComposedEvent) -> tuple[Event, str] | None:
        for sub in e.events:
            bad = self._unsupported(sub)
            if bad is not None:
                return bad
        return None

    def _check_self(self, e: SelfComposedEvent) -> tuple[Event, str] | None:
        return self._unsupported(e.event)

    _CHECKS: ClassVar[dict[type, Callable[[Any, Any], tuple[Event, str] | None]]] = {
        GaussianEvent: _ok,
        LaplaceEvent: _ok,
        PoissonSampledEvent: _check_poisson,
        ComposedEvent: _check_composed,
        SelfComposedEvent: _check_self,
    }

    def _apply(self, event: Event, count: int) -> None:
        if count > _PLD_MAX_COUNT:  # 10**400 steps ran for hours (fuzzing, issue #13)
            raise ConfigurationError(
                f"PldAccountant composes at most {_PLD_MAX_COUNT} repetitions at once, "
                f"got {count}: the parameters are outside its numeric range"
            )
        # composed on a copy, rebound on success: a ComposedEvent whose later part is
        # out of numeric range must not leave its earlier parts in the PLD (review of
        # the PLD memo, finding 1; upstream composes part by part in place)
        acct = copy.copy(self._acct)
        acct.compose(to_dp_accounting(event), count)
        self._acct = acct

    def epsilon(self, delta: float) -> float:
        """Epsilon at ``delta`` from the composed PLD (pessimistic estimate).

        Args:
            delta: target delta in ``(0, 1)``.

        Returns:
            Epsilon (``0`` before any composition).

        Raises:
            ConfigurationError: ``delta`` out of range, or the parameters are outside
                the accountant's numeric range.
        """
        _check_delta(delta)
        if not self._history:
            return 0.0
        with _numeric_range("PldAccountant.epsilon"):
            return float(self._acct.get_epsilon(delta))

    def delta(self, epsilon: float) -> float:
        """Delta at ``epsilon`` (hockey-stick divergence of the composed PLD).

        Args:
            epsilon: target epsilon, finite and ``>= 0``.

        Returns:
            Delta in ``[0, 1]``.

        Raises:
            ConfigurationError: ``epsilon`` out of range, or the parameters are
                outside the accountant's numeric range.
        """
        _check_epsilon(epsilon)
        if not self._history:
            return 0.0
        with _numeric_range("PldAccountant.delta"):
            return float(min(1.0, max(0.0, self._acct.get_delta(epsilon))))


ACCOUNTANTS: Mapping[str, type[_BaseAccountant]] = {
    "rdp": RdpAccountant,
    "pld": PldAccountant,
}
"""Accountants by name."""


def make_accountant(name: str, **kwargs: Any) -> Accountant:
    """Build an accountant by name (``"rdp"`` or ``"pld"``).

    Args:
        name: accountant name.
        **kwargs: passed to the accountant's constructor.

    Returns:
        A fresh accountant.

    Raises:
        ConfigurationError: unknown name.
    """
    cls = ACCOUNTANTS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigurationError(
            f"accountant must be one of {sorted(ACCOUNTANTS)}, got {name!r}"
        )
    acct: Accountant = cls(**kwargs)  # type: ignore[assignment]
    return acct
