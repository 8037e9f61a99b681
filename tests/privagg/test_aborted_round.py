"""A refused batch ends the round (closing note 4, section 3): after an aggregator
refuses a batch (too few contributors, a server's bad partial sum, ...) every later
``receive`` / ``result`` call raises the same error family, nothing is returned and
nothing of the refused batch is kept. Additive, SecAgg+ (active and passive) and the
one-shot aggregators share the rule (``FinishedResult._run_stage``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

import privagg
from privagg import (
    InsufficientParticipantsError,
    Layout,
    PrivaggError,
    ProtocolError,
)
from privagg.backends import additive as ad
from privagg.backends.additive.roles import AdditiveAggregator
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.hazmat import DeterministicRng

SIZE = 8


def _ups(n: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(3)
    return {f"c{i:02d}": g.uniform(-1, 1, SIZE) for i in range(n)}


def _layout() -> Layout:
    return Layout.from_arrays({"w": np.zeros(SIZE)})


class _Round:
    def __init__(
        self, session: privagg.Session, ups: Mapping[str, np.ndarray], round_id: int
    ) -> None:
        self.clients = {
            c: session.client(c, round_id, u, rng=DeterministicRng(i))
            for i, (c, u) in enumerate(sorted(ups.items()))
        }
        self.servers = session.servers(round_id)
        self.agg = session.aggregator(round_id, sorted(ups))
        self.requests = self.agg.start()

    def replies(self) -> dict[str, bytes]:
        parties = {**self.clients, **self.servers}
        return {p: parties[p].handle(r) for p, r in self.requests.items()}


def _assert_over(
    agg: privagg.protocols.AggregatorRole, family: type[PrivaggError]
) -> None:
    assert not agg.done
    with pytest.raises(family, match="aborted"):
        agg.result()


# -- additive --------------------------------------------------------------------------
def _additive(n: int = 4, min_contributions: int = 3) -> ad.AdditiveSession:
    return ad.AdditiveBackend(n_servers=2, min_contributions=min_contributions).setup(
        _layout(), max_clients=n
    )


def test_additive_refused_batch_then_valid_batch_raises_and_keeps_nothing() -> None:
    ups = _ups(4)
    r = _Round(_additive(), ups, 1)
    honest = r.replies()
    bad = {**honest, "c00": b"garbage", "c01": b""}  # 2 usable < min_contributions=3
    with pytest.raises(InsufficientParticipantsError) as first:
        r.agg.receive(bad)
    assert "aborted" not in str(first.value)  # the refusal itself says why
    agg = r.agg
    assert isinstance(agg, AdditiveAggregator)
    # nothing of the refused batch is kept (no partial sum, no contributor), only the
    # report of the clients it rejected: ids and error types
    assert agg._partial0 is None and agg._contributors == ()
    assert agg.rejected == {"c00", "c01"}
    assert all(
        w.startswith("unreadable reply: ") for w in agg.rejection_reasons.values()
    )
    with pytest.raises(InsufficientParticipantsError, match="aborted"):
        agg.receive(honest)  # a valid batch: refused, nothing returned
    with pytest.raises(InsufficientParticipantsError, match="aborted"):
        agg.receive({})
    _assert_over(agg, InsufficientParticipantsError)
    assert agg.rejected == {"c00", "c01"}  # the refused batch's report, unchanged


def test_additive_server_stage_refusal_is_terminal() -> None:
    ups = _ups(4)
    r = _Round(_additive(), ups, 1)
    r.requests = r.agg.receive(r.replies())
    partials = r.replies()
    assert partials  # server 1's partial sum
    with pytest.raises(InsufficientParticipantsError):
        r.agg.receive({})  # no server answered
    with pytest.raises(InsufficientParticipantsError, match="aborted"):
        r.agg.receive(partials)  # the right partial sums, too late
    _assert_over(r.agg, InsufficientParticipantsError)


def test_additive_bad_partial_sum_then_good_one_raises_protocol_error() -> None:
    ups = _ups(4)
    r = _Round(_additive(), ups, 1)
    r.requests = r.agg.receive(r.replies())
    partials = r.replies()
    with pytest.raises(PrivaggError) as first:
        r.agg.receive(dict.fromkeys(partials, b"not a partial sum"))
    assert not isinstance(first.value, InsufficientParticipantsError)
    with pytest.raises(ProtocolError, match="aborted") as later:
        r.agg.receive(partials)
    assert not isinstance(later.value, InsufficientParticipantsError)
    _assert_over(r.agg, ProtocolError)


def test_additive_routing_error_is_not_a_refusal() -> None:
    """A reply from a party that was not asked is refused before anything is read:
    the round goes on (tests/privagg/test_review_additive_drop.py pins the details)."""
    ups = _ups(4)
    s = _additive()
    r = _Round(s, ups, 1)
    honest = r.replies()
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive({**honest, "c99": b"x"})
    r.requests = r.agg.receive(honest)
    partials = r.replies()
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive({**partials, "c00": b"x"})  # a client at the server stage
    r.agg.receive(partials)
    res = s.holder().recover(r.agg.result())
    assert sorted(res.contributors) == sorted(ups)


def test_additive_rejection_reasons_name_the_error_type_only() -> None:
    ups = _ups(5)
    r = _Round(_additive(5, 2), ups, 1)
    honest = r.replies()
    secret = b"client-chosen secret label \xff"
    r.agg.receive({**honest, "c00": b"", "c01": secret + honest["c01"][40:]})
    assert isinstance(r.agg, AdditiveAggregator)
    reasons = r.agg.rejection_reasons
    assert set(reasons) == {"c00", "c01"} == r.agg.rejected
    for why in reasons.values():
        assert why.startswith("unreadable reply: ")
        assert why.removeprefix("unreadable reply: ").isidentifier()
        assert "secret" not in why


# -- SecAgg+ ----------------------------------------------------------------------------
def _secagg(active: bool, n: int = 5) -> privagg.Session:
    return SecAggBackend(active=active).setup(_layout(), max_clients=n)


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_secagg_refused_batch_then_valid_batch_raises_and_keeps_nothing(
    active: bool, stage: int
) -> None:
    ups = _ups(5)
    r = _Round(_secagg(active), ups, 1)
    for _ in range(stage):
        r.requests = r.agg.receive(r.replies())
    honest = r.replies()
    few = dict(list(honest.items())[:1])  # one client left: below the threshold
    with pytest.raises(InsufficientParticipantsError):
        r.agg.receive(few)
    agg = r.agg
    assert isinstance(agg, SecAggAggregator)
    assert agg._acc is None and agg._keys == {} and agg._routed == {}
    assert agg._u3 == () and agg.rejected == set()  # nobody was unreadable
    with pytest.raises(InsufficientParticipantsError, match="aborted"):
        agg.receive(honest)
    _assert_over(agg, InsufficientParticipantsError)


def test_secagg_garbage_reasons_name_the_error_type() -> None:
    ups = _ups(5)
    r = _Round(_secagg(True), ups, 1)
    replies = r.replies()
    r.requests = r.agg.receive({**replies, "c02": b"\x00" * 40})
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg.rejected == {"c02"}
    assert r.agg.rejection_reasons["c02"].startswith("unreadable reply: ")


# -- one-shot (plain) -------------------------------------------------------------------
def test_oneshot_refusal_is_terminal() -> None:
    s = privagg.get_backend("plain").setup(_layout(), max_clients=3)
    ups = _ups(3)
    r = _Round(s, ups, 1)
    honest = r.replies()
    with pytest.raises(PrivaggError):
        r.agg.receive({**honest, "c00": b"garbage"})
    with pytest.raises(ProtocolError, match="aborted"):
        r.agg.receive(honest)
    _assert_over(r.agg, ProtocolError)
