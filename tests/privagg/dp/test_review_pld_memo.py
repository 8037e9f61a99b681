"""Outside review of the PLD memo (privagg.dp._pld_memo): one test per attack.

Passing tests document attacks the change resisted. The review's four findings (a
complex parameter served from the memo, the fallback guard, pickling, a failed compose
leaving part of a ComposedEvent in the PLD) were xfail(strict=True) on the reviewed
code (78e622e); they pass since their fixes. Reference throughout: dp_accounting's own,
unmemoized ``PLDAccountant`` fed the same events.
"""

from __future__ import annotations

import math
import pickle
import threading

import numpy as np
import pytest
from dp_accounting import dp_event as de
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_mod

from privagg.dp import (
    ComposedEvent,
    GaussianEvent,
    LaplaceEvent,
    PldAccountant,
    PoissonSampledEvent,
    PrivacyLedger,
    SelfComposedEvent,
    _pld_memo,
    to_dp_accounting,
)
from privagg.errors import ConfigurationError

_GRID = 1e-3
_COARSE = 1e-2
_DELTAS = (1e-3, 1e-6)
_EPSILONS = (0.0, 1.0, 4.0)
_REL = pld_privacy_accountant.NeighborRel


def _figures(acct: object) -> tuple[float, ...]:
    out = [float(acct.get_epsilon(d)) for d in _DELTAS]  # type: ignore[attr-defined]
    out += [float(acct.get_delta(e)) for e in _EPSILONS]  # type: ignore[attr-defined]
    return tuple(out)


def _outcome(acct: object, events: list[tuple[object, int]]) -> object:
    """Figures after composing, or the exception type if composing/reading raised."""
    try:
        for ev, n in events:
            acct.compose(ev, n)  # type: ignore[attr-defined]
        return _figures(acct)
    except Exception as exc:  # the type is the observable
        return type(exc).__name__


def _memo(grid: float = _GRID, relation: object = None) -> object:
    cls = _pld_memo.MemoPLDAccountant
    if relation is None:
        return cls(value_discretization_interval=grid)
    return cls(neighboring_relation=relation, value_discretization_interval=grid)


def _upstream(grid: float = _GRID, relation: object = None) -> object:
    cls = pld_privacy_accountant.PLDAccountant
    if relation is None:
        return cls(value_discretization_interval=grid)
    return cls(neighboring_relation=relation, value_discretization_interval=grid)


def _same_as_upstream(
    events: list[tuple[object, int]], grid: float = _GRID, relation: object = None
) -> None:
    got = _outcome(_memo(grid, relation), events)
    want = _outcome(_upstream(grid, relation), events)
    assert got == want, (events, got, want)


def _snapshot(pld: object) -> list[object]:
    snap: list[object] = [pld._symmetric]  # type: ignore[attr-defined]
    for side in ("_pmf_remove", "_pmf_add"):
        pmf = getattr(pld, side)
        snap += [type(pmf).__name__, pmf._infinity_mass, pmf._discretization]
        if hasattr(pmf, "_probs"):
            snap += [pmf._lower_loss, np.array(pmf._probs, copy=True)]
        else:
            snap += [dict(pmf._loss_probs)]
    return snap


def _assert_same_snapshot(a: list[object], b: list[object]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray)
            assert x.shape == y.shape and np.array_equal(x, y)
        else:
            assert x == y


# -- 1. in-place mutation of kept PLDs ------------------------------------------------


@pytest.mark.parametrize(
    ("z", "q", "grid"),
    [(1.1, 0.05, _GRID), (1.3, None, _GRID), (60.0, None, _COARSE)],
    ids=["sampled-dense", "gaussian-dense", "gaussian-sparse"],
)
def test_every_pld_operation_leaves_kept_plds_untouched(
    z: float, q: float | None, grid: float
) -> None:
    """compose (incl. with heavy truncation, which writes into a slice in
    _truncate_tails), self_compose (1 returns self for sparse), epsilon/delta (scalar
    and vectorised), composed-pld delta, mixture and to_dense never write into a kept
    PLD."""
    rel = _REL.ADD_OR_REMOVE_ONE
    leaf = _pld_memo._gaussian(z, grid, rel, q)
    kept = (
        _pld_memo._sampled_gaussian(z, q, grid, rel, 3)
        if q is not None
        else _pld_memo._gaussian(z, grid, rel, None)
    )
    before = [_snapshot(leaf), _snapshot(kept)]
    ident = pld_mod.identity(value_discretization_interval=grid)
    for p in (leaf, kept):
        ident.compose(p)
        p.compose(ident)
        p.compose(p)
        p.compose(p, tail_mass_truncation=0.5)
        p.compose(leaf, tail_mass_truncation=1e-3)
        p.self_compose(1)
        p.self_compose(1).compose(p)
        p.self_compose(4, tail_mass_truncation=1e-3)
        p.get_epsilon_for_delta(1e-5)
        p.get_delta_for_epsilon(0.5)
        p.get_delta_for_epsilon([0.0, 0.5, 3.0])
        p.get_delta_for_epsilon_for_composed_pld(leaf, 0.5)
        p.compute_mixture(leaf, 0.3)
        p._pmf_remove.to_dense_pmf()
        p._pmf_add.to_dense_pmf()
    # the accountant path, several accountants sharing the kept objects
    accts = [_memo(grid) for _ in range(3)]
    ev = (
        de.GaussianDpEvent(z)
        if q is None
        else de.PoissonSampledDpEvent(q, de.GaussianDpEvent(z))
    )
    for a in accts:
        a.compose(ev, 3 if q is not None else 1)
        a.compose(ev, 3 if q is not None else 1)
        a.get_epsilon(1e-6)
        a.get_delta(0.1)
    after = [_snapshot(leaf), _snapshot(kept)]
    for b, a in zip(before, after, strict=True):
        _assert_same_snapshot(b, a)
    if grid == _COARSE:
        assert type(leaf._pmf_remove).__name__ == "SparsePLDPmf"  # sparse path hit


# -- 2. cache keys that might conflate different events -------------------------------


@pytest.mark.parametrize(
    "variants",
    [
        # signed zero: -0.0 == 0.0 and hashes equal
        [de.GaussianDpEvent(-0.0), de.GaussianDpEvent(0.0)],
        [
            de.PoissonSampledDpEvent(-0.0, de.GaussianDpEvent(1.0)),
            de.PoissonSampledDpEvent(0.3, de.GaussianDpEvent(-0.0)),
        ],
        # int vs float vs bool vs numpy scalars (equal, hash-equal keys)
        [
            de.PoissonSampledDpEvent(0.5, de.GaussianDpEvent(np.float32(1.25))),
            de.PoissonSampledDpEvent(0.5, de.GaussianDpEvent(1.25)),
            de.PoissonSampledDpEvent(np.float64(0.5), de.GaussianDpEvent(1.25)),
        ],
        [de.GaussianDpEvent(2), de.GaussianDpEvent(2.0)],
        [
            de.PoissonSampledDpEvent(1, de.GaussianDpEvent(1.5)),
            de.PoissonSampledDpEvent(True, de.GaussianDpEvent(1.5)),
            de.PoissonSampledDpEvent(1.0, de.GaussianDpEvent(1.5)),
        ],
        # NaN: never equal, a singleton nan hits, a fresh one misses
        [
            de.GaussianDpEvent(math.nan),
            de.GaussianDpEvent(float("nan")),
            de.PoissonSampledDpEvent(math.nan, de.GaussianDpEvent(1.0)),
            de.PoissonSampledDpEvent(0.2, de.GaussianDpEvent(math.inf)),
        ],
        # negative parameters
        [
            de.GaussianDpEvent(-1.5),
            de.GaussianDpEvent(1.5),
            de.PoissonSampledDpEvent(-0.2, de.GaussianDpEvent(1.0)),
        ],
    ],
    ids=["signed-zero", "signed-zero-sampled", "numpy", "int", "bool-q", "nan", "neg"],
)
def test_equal_hash_keys_do_not_conflate_events(variants: list[object]) -> None:
    for first in range(len(variants)):  # every variant first, to catch poisoning
        order = variants[first:] + variants[:first]
        for ev in order:
            _same_as_upstream([(ev, 3)])


def test_count_is_part_of_the_key_and_equal_stds_share_a_leaf() -> None:
    """Gaussian(2.0) x4 and Gaussian(1.0) x1 build the same std (shared leaf, as
    upstream); sampled counts 1, 2, 3 must stay distinct."""
    _same_as_upstream([(de.GaussianDpEvent(2.0), 4), (de.GaussianDpEvent(1.0), 1)])
    sampled = de.PoissonSampledDpEvent(0.09, de.GaussianDpEvent(1.05))
    for counts in ([1, 2, 3], [3, 2, 1], [2, 2, 1, 3]):
        _same_as_upstream([(sampled, n) for n in counts])


def test_discretization_intervals_do_not_conflate() -> None:
    ev = de.PoissonSampledDpEvent(0.1, de.GaussianDpEvent(1.2))
    for grid in (_COARSE, _GRID, _COARSE, 2e-3, _GRID):
        _same_as_upstream([(ev, 2), (de.GaussianDpEvent(1.7), 1)], grid=grid)


@pytest.mark.parametrize(
    "relation",
    [_REL.REPLACE_ONE, _REL.REPLACE_SPECIAL, _REL.ADD_OR_REMOVE_ONE],
    ids=lambda r: r.name,
)
def test_neighbouring_relations_do_not_conflate(relation: object) -> None:
    events = [
        (de.GaussianDpEvent(1.4), 2),
        (de.PoissonSampledDpEvent(0.2, de.GaussianDpEvent(1.4)), 2),
    ]
    for rel in (_REL.ADD_OR_REMOVE_ONE, relation, _REL.REPLACE_ONE, relation):
        _same_as_upstream(events, relation=rel)


def test_complex_parameter_is_refused_like_upstream() -> None:
    _same_as_upstream([(de.GaussianDpEvent(2.0), 3)])
    _same_as_upstream([(de.GaussianDpEvent(2.0 + 0j), 3)])


# -- 3. nesting, copies, resumes ------------------------------------------------------


def test_nested_composed_and_self_composed_events_match_upstream() -> None:
    s = de.PoissonSampledDpEvent(0.04, de.GaussianDpEvent(0.9))
    g = de.GaussianDpEvent(2.5)
    inner = de.ComposedDpEvent([s, de.SelfComposedDpEvent(g, 3), de.NoOpDpEvent()])
    events = [
        (de.SelfComposedDpEvent(de.SelfComposedDpEvent(s, 2), 3), 2),
        (de.ComposedDpEvent([inner, de.SelfComposedDpEvent(inner, 2)]), 1),
        (de.ComposedDpEvent([de.LaplaceDpEvent(3.0), s]), 2),
        (de.PoissonSampledDpEvent(0.3, de.LaplaceDpEvent(2.0)), 1),
        (s, 12),
    ]
    _same_as_upstream(events)
    _same_as_upstream(events)  # now served from the memo


def test_copies_are_independent_and_match_upstream() -> None:
    s = PoissonSampledEvent(0.06, GaussianEvent(1.2))
    base = PldAccountant(value_discretization_interval=_GRID).compose(s, 5)
    base_eps = base.epsilon(1e-5)
    c1 = base.copy().compose(s, 5)
    c2 = base.copy().compose(GaussianEvent(3.0), 2)
    c3 = c1.copy().compose(s, 5)
    assert base.epsilon(1e-5) == base_eps  # copies never write back
    ref = _upstream()
    for ev, n in [(s, 5), (s, 5), (s, 5)]:
        ref.compose(to_dp_accounting(ev), n)
    assert c3.epsilon(1e-5) == float(ref.get_epsilon(1e-5))
    ref2 = _upstream()
    ref2.compose(to_dp_accounting(s), 5)
    ref2.compose(de.GaussianDpEvent(3.0), 2)
    assert c2.epsilon(1e-5) == float(ref2.get_epsilon(1e-5))
    assert c2.delta(1.0) == float(min(1.0, max(0.0, ref2.get_delta(1.0))))


def test_state_dict_round_trip_and_ledger_resume_are_bit_identical(tmp_path) -> None:
    s = PoissonSampledEvent(0.05, GaussianEvent(1.1))
    events = [
        (s, 10),
        (ComposedEvent((s, LaplaceEvent(4.0))), 1),
        (SelfComposedEvent(s, 3), 2),
    ]
    acct = PldAccountant(value_discretization_interval=_GRID)
    for ev, n in events:
        acct.compose(ev, n)
    back = PldAccountant(value_discretization_interval=_GRID)
    back.load_state_dict(acct.state_dict())
    assert back.epsilon(1e-5) == acct.epsilon(1e-5)
    assert back.delta(2.0) == acct.delta(2.0)
    ref = _upstream()
    for ev, n in events:
        ref.compose(to_dp_accounting(ev), n)
    assert acct.epsilon(1e-5) == float(ref.get_epsilon(1e-5))

    path = tmp_path / "ledger.json"
    kw = {
        "target_epsilon": 100.0,
        "delta": 1e-5,
        "accountant": "pld",
        "accountant_kwargs": {"value_discretization_interval": _GRID},
    }
    led = PrivacyLedger(path, **kw)
    checked = led.check(s, 10)
    for r, (ev, n) in enumerate(events):
        led.spend(r, ev, count=n)
    resumed = PrivacyLedger(path, **kw)
    assert resumed.epsilon == led.epsilon == float(ref.get_epsilon(1e-5))
    assert checked == led.records[0]["epsilon_after"]


# -- 4. threads, memory, fallback -----------------------------------------------------


def test_concurrent_accountants_sharing_the_memo_match_upstream() -> None:
    evs = [
        de.PoissonSampledDpEvent(0.021 + 0.001 * i, de.GaussianDpEvent(1.0))
        for i in range(3)
    ]
    plan = [(evs[i % 3], 2 + i % 2) for i in range(6)]
    want = _outcome(_upstream(), plan)
    results: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(_outcome(_memo(), plan))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [want] * 4


def test_memo_is_bounded_by_maxsize() -> None:
    """Many distinct counts/events cannot grow the memo past its _MAXSIZE entries per
    table (1-10 MB per entry at the default grid, so under 200 MB retained even after
    every accountant is gone: bounded, noted, not a finding)."""
    ev = de.PoissonSampledDpEvent(0.5, de.GaussianDpEvent(8.0))
    for n in range(1, 40):
        _memo(_COARSE).compose(ev, n)
    for z in range(40):
        _memo(_COARSE).compose(de.GaussianDpEvent(20.0 + z), 1)
    info = _pld_memo.memo_info()
    assert info["sampled"]["currsize"] <= _pld_memo._MAXSIZE
    assert info["leaf"]["currsize"] <= _pld_memo._MAXSIZE


def test_subclassed_events_go_to_upstream() -> None:
    class MyGaussian(de.GaussianDpEvent):
        pass

    _same_as_upstream(
        [(MyGaussian(1.3), 2), (de.PoissonSampledDpEvent(0.1, MyGaussian(1.3)), 2)]
    )


def test_fallback_triggers_when_pldaccountant_drops_the_hook(monkeypatch) -> None:
    """Finding 3 (low, fixed): the guard looks at PLDAccountant itself, not at the
    abstract declaration on its base class."""
    assert type(_pld_memo.make_pld_accountant(_GRID)) is _pld_memo.MemoPLDAccountant
    monkeypatch.delattr(pld_privacy_accountant.PLDAccountant, "_maybe_compose")
    acct = _pld_memo.make_pld_accountant(_GRID)
    assert type(acct) is pld_privacy_accountant.PLDAccountant


# -- 5. findings ----------------------------------------------------------------------


def test_pld_accountant_still_pickles() -> None:
    acct = PldAccountant(value_discretization_interval=_GRID).compose(
        GaussianEvent(1.5), 2
    )
    back = pickle.loads(pickle.dumps(acct))
    assert back.epsilon(1e-5) == acct.epsilon(1e-5)


def test_failed_compose_leaves_the_accountant_unchanged() -> None:
    acct = PldAccountant(value_discretization_interval=_GRID)
    with pytest.raises(ConfigurationError):
        acct.compose(ComposedEvent((GaussianEvent(1.0), GaussianEvent(1e-300))), 1)
    assert acct.ledger == ()
    acct.compose(GaussianEvent(2.0), 1)
    resumed = PldAccountant(value_discretization_interval=_GRID)
    resumed.load_state_dict(acct.state_dict())
    assert acct.epsilon(1e-5) == resumed.epsilon(1e-5)
