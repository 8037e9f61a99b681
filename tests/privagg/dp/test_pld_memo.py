"""The PLD accountant's memo of Gaussian PLDs (privagg.dp._pld_memo) changes no figure.

Reference: dp_accounting's own ``PLDAccountant`` (the unmemoized upstream class), run
side by side on the same events: every epsilon and delta must be equal as floats, not
merely close, because the memo only reuses objects upstream would rebuild identically.
"""

from __future__ import annotations

import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from privagg.dp import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    PldAccountant,
    PoissonSampledEvent,
    SelfComposedEvent,
    _pld_memo,
    to_dp_accounting,
)

_GRID = 1e-3  # coarse enough to keep each PLD build well under a second
_DELTAS = (1e-3, 1e-5, 1e-8)
_EPSILONS = (0.0, 0.5, 2.0, 8.0)


def _upstream(events: list[tuple[object, int]]) -> pld_privacy_accountant.PLDAccountant:
    acct = pld_privacy_accountant.PLDAccountant(value_discretization_interval=_GRID)
    for event, count in events:
        acct.compose(to_dp_accounting(event), count)
    return acct


def _ours(events: list[tuple[object, int]]) -> PldAccountant:
    acct = PldAccountant(value_discretization_interval=_GRID)
    for event, count in events:
        acct.compose(event, count)  # type: ignore[arg-type]
    return acct


def _same(ours: PldAccountant, ref: pld_privacy_accountant.PLDAccountant) -> None:
    for d in _DELTAS:
        assert ours.epsilon(d) == float(ref.get_epsilon(d)), d
    for e in _EPSILONS:
        assert ours.delta(e) == float(min(1.0, max(0.0, ref.get_delta(e)))), e


_SAMPLED = PoissonSampledEvent(0.05, GaussianEvent(1.1))
_CASES = {
    "gaussian": [(GaussianEvent(2.0), 1), (GaussianEvent(2.0), 7)],
    "sampled": [(_SAMPLED, 20), (_SAMPLED, 20), (_SAMPLED, 3)],
    "composed_with_laplace": [
        (ComposedEvent((_SAMPLED, LaplaceEvent(3.0), GaussianEvent(1.5))), 2),
        (SelfComposedEvent(_SAMPLED, 5), 4),
    ],
}


@pytest.mark.parametrize("events", list(_CASES.values()), ids=list(_CASES))
def test_memoized_accountant_equals_upstream_bit_for_bit(
    events: list[tuple[object, int]],
) -> None:
    _same(_ours(events), _upstream(events))
    # a second pass is served from the memo and must read the same
    _same(_ours(events), _upstream(events))


def test_repeated_event_is_built_once() -> None:
    # parameters no other test uses, so the first compose must build
    ev = PoissonSampledEvent(0.031, GaussianEvent(0.93))
    before = _pld_memo.memo_info()
    a = _ours([(ev, 11)])
    mid = _pld_memo.memo_info()
    b = a.copy().compose(ev, 11)
    c = _ours([(ev, 11), (ev, 11)])
    after = _pld_memo.memo_info()
    assert mid["leaf"]["misses"] == before["leaf"]["misses"] + 1
    assert mid["sampled"]["misses"] == before["sampled"]["misses"] + 1
    assert after["leaf"]["misses"] == mid["leaf"]["misses"]  # never rebuilt
    assert after["sampled"]["misses"] == mid["sampled"]["misses"]
    assert after["sampled"]["hits"] >= mid["sampled"]["hits"] + 3
    assert b.epsilon(1e-5) == c.epsilon(1e-5)
    _same(c, _upstream([(ev, 11), (ev, 11)]))


def _arrays(pld: object) -> list[np.ndarray]:
    out = []
    for side in ("_pmf_remove", "_pmf_add"):
        pmf = getattr(pld, side)
        probs = getattr(pmf, "_probs", None)
        if probs is not None:
            out.append(np.array(probs, copy=True))
        else:
            out.append(np.array(sorted(pmf._loss_probs.items())))
    return out


def test_kept_plds_are_never_changed_by_their_use() -> None:
    """Sharing a PLD between accountants is sound only if nothing writes into it."""
    ev = PoissonSampledEvent(0.07, GaussianEvent(1.3))
    _ours([(ev, 4)])
    interval, relation = _GRID, _upstream([]).neighboring_relation
    leaf = _pld_memo._gaussian(1.3, interval, relation, 0.07)
    kept = _pld_memo._sampled_gaussian(1.3, 0.07, interval, relation, 4)
    snap = [_arrays(leaf), _arrays(kept)]
    acct = _ours([(ev, 4), (ev, 4), (GaussianEvent(1.0), 2), (ev, 4)])
    acct.epsilon(1e-6)
    acct.delta(1.0)
    for got, want in zip([_arrays(leaf), _arrays(kept)], snap, strict=True):
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)


def test_no_op_and_non_private_gaussians_are_left_to_upstream() -> None:
    """q = 0 (a no-op) and z = 0 (non-private) are upstream's cases, not the memo's;
    privagg's events refuse both, so they are fed as dp_accounting events here."""
    from dp_accounting import dp_event

    cases = [
        dp_event.PoissonSampledDpEvent(0.0, dp_event.GaussianDpEvent(1.0)),
        dp_event.PoissonSampledDpEvent(0.5, dp_event.GaussianDpEvent(0.0)),
        dp_event.GaussianDpEvent(0.0),
    ]
    for ev in cases:
        ours = _pld_memo.make_pld_accountant(_GRID)
        ref = pld_privacy_accountant.PLDAccountant(value_discretization_interval=_GRID)
        assert type(ours) is not type(ref)  # the memoizing subclass is in use
        ours.compose(ev, 3)
        ref.compose(ev, 3)
        assert ours.get_epsilon(1e-5) == ref.get_epsilon(1e-5), ev


@settings(max_examples=8, deadline=None)
@given(
    q=st.floats(0.01, 1.0),
    z=st.floats(0.6, 4.0),
    count=st.integers(1, 30),
)
def test_property_sampled_gaussian_matches_upstream(
    q: float, z: float, count: int
) -> None:
    ev = GaussianEvent(z) if q == 1.0 else PoissonSampledEvent(q, GaussianEvent(z))
    events = [(ev, count), (ev, count)]
    _same(_ours(events), _upstream(events))
