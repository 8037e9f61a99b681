"""dp_accounting's PLD accountant, with the privacy loss distributions of Gaussian
releases memoized.

A training run asks the same question many times: its ledger checks a round's event
(a Poisson-sampled Gaussian at the same ``q`` and ``z``, composed ``steps`` times)
before the round, spends it after, and replays its history on every resume. Each time,
dp_accounting builds the event's PLD from scratch, and for a sampled Gaussian at the
default grid (``1e-4``) that takes about a second of pure-Python loss inversion. This
subclass keeps the PLDs of the Gaussian leaves it has built, keyed by every argument
dp_accounting passes to the builder, and composes the kept object instead of a rebuilt
one. It changes no arithmetic: the builder calls and the ``compose`` / ``self_compose``
calls are exactly upstream's, so the composed PLD is bit-identical to an unmemoized
accountant's (tests/privagg/dp/test_pld_memo.py checks that against
``dp_accounting.pld.PLDAccountant`` itself).

Sharing is sound because a dp_accounting PLD is never changed after it is built:
``compose`` and ``self_compose`` return new objects over new arrays (the same test
checks that a kept PLD's arrays are unchanged after use). Other events (Laplace,
Poisson-sampled Laplace, ...) go to upstream untouched: their PLDs are analytic and
cheap. Should a dp_accounting release drop the private hook this relies on
(``_maybe_compose``, defined on ``PLDAccountant`` itself), :func:`make_pld_accountant`
returns the plain upstream accountant. The memo keys only on real ``int``/``float``
parameters (privagg's events convert every parameter to ``float``); anything else goes
to upstream, which then raises its own errors.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld

__all__ = ["MemoPLDAccountant", "make_pld_accountant", "memo_info"]

# An entry is 1-10 MB at the default grid (1e-4; measured: a sampled Gaussian at
# q = 0.05, z = 1.1 composed 3000 times holds 8.1 MB): 8 of each kind bound the memo to
# under 200 MB. A run uses one or two distinct events; calibration's bisection
# cycles through the memo without growing it.
_MAXSIZE = 8


@functools.lru_cache(maxsize=_MAXSIZE)
def _gaussian(
    std: float, interval: float, relation: Any, sampling_prob: float | None
) -> Any:
    if sampling_prob is None:  # upstream's call for a GaussianDpEvent
        return pld.from_gaussian_mechanism(
            standard_deviation=std,
            value_discretization_interval=interval,
            neighboring_relation=relation,
        )
    # upstream's call for a PoissonSampledDpEvent of a GaussianDpEvent
    return pld.from_gaussian_mechanism(
        standard_deviation=std,
        value_discretization_interval=interval,
        sampling_prob=sampling_prob,
        neighboring_relation=relation,
    )


@functools.lru_cache(maxsize=_MAXSIZE)
def _sampled_gaussian(
    z: float, q: float, interval: float, relation: Any, count: int
) -> Any:
    return _gaussian(z, interval, relation, q).self_compose(count)


def memo_info() -> dict[str, Any]:
    """Hits, misses and sizes of the two memo tables (for tests and diagnostics)."""
    return {
        "leaf": _gaussian.cache_info()._asdict(),
        "sampled": _sampled_gaussian.cache_info()._asdict(),
    }


def _real(x: Any) -> bool:
    """A parameter the memo may key on: a real int or float (not bool, complex or a
    numpy scalar, whose hashes could equal a different upstream input's)."""
    return type(x) in (int, float)


def _memo_pld(acct: Any, event: Any, count: int) -> Any | None:
    """The PLD upstream would compose for ``event`` repeated ``count`` times, from the
    memo, or None where upstream must handle the event itself."""
    interval = acct._value_discretization_interval
    relation = acct.neighboring_relation
    if type(event) is dp_event.GaussianDpEvent:
        z = event.noise_multiplier
        if not _real(z) or z == 0:  # z = 0: upstream marks the accountant non-private
            return None
        return _gaussian(z / math.sqrt(count), interval, relation, None)
    if type(event) is dp_event.PoissonSampledDpEvent and (
        type(event.event) is dp_event.GaussianDpEvent
    ):
        q, z = event.sampling_probability, event.event.noise_multiplier
        if not (_real(q) and _real(z)) or q == 0 or z == 0:
            return None  # upstream: a no-op, non-private, or its own type errors
        return _sampled_gaussian(z, q, interval, relation, count)
    return None


class MemoPLDAccountant(pld_privacy_accountant.PLDAccountant):  # type: ignore[misc]
    """``PLDAccountant`` composing memoized PLDs for Gaussian leaves (module level, so
    an accountant holding one still pickles)."""

    _pld: Any

    def _maybe_compose(self, event: Any, count: int, do_compose: bool) -> Any:
        if do_compose:
            kept = _memo_pld(self, event, count)
            if kept is not None:  # upstream's own step, on the kept PLD
                self._pld = self._pld.compose(kept)
                return None
        return super()._maybe_compose(event, count, do_compose)


def _hook_present() -> bool:
    """Whether this dp_accounting's ``PLDAccountant`` itself defines the hook the memo
    overrides (the abstract declaration on its base class does not count)."""
    return "_maybe_compose" in vars(pld_privacy_accountant.PLDAccountant)


def make_pld_accountant(value_discretization_interval: float) -> Any:
    """A fresh dp_accounting PLD accountant (add-or-remove-one) at this grid step,
    memoizing Gaussian leaves where this dp_accounting allows it."""
    cls = MemoPLDAccountant if _hook_present() else pld_privacy_accountant.PLDAccountant
    return cls(value_discretization_interval=value_discretization_interval)
