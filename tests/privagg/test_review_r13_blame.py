"""Review r13 (outside reviewer): SecAgg+ v5 blame reporting after ef60c00.

The change under attack: a proven "dealt wrong ... shares" reason now replaces any
earlier reason of that dealer (``RingAggregator._convict``), and
``SecAggAggregator.disputes`` names, for each client whose share record a neighbour
refused at stage 2, the neighbours that refused it (over Flower, appended to that
client's drop reason).

Attacks: colluding holders trying to get an honest dealer convicted (a share of
another holder, a forged share, combined with a false accusation), a convicted dealer
trying to come back into (or a conviction pushing anyone out of) the sum, refusals
that name a party not routed to the refuser or a foreign id (log injection),
refusals of uploads the aggregator did not accept, replies of a party not asked, the
bound and contents of ``disputes``, and the Flower drop reason built from it. A
resisted attack pins the defended outcome (exact sum, who is named, the report); a
finding would be an ``xfail(strict=True)`` test asserting the secure behaviour.
"""

from __future__ import annotations

import dataclasses
import logging
from types import ModuleType

import numpy as np
import pytest

from privagg.backends import _shamir
from privagg.backends.secagg import messages as sm
from privagg.errors import ProtocolError
from tests.privagg.test_review_r7_clients import DEALER, _bound_last, _lying_dealer
from tests.privagg.test_review_r12_v5 import _R, LAUNDER, Tamper, _accuse, _laundering
from tests.privagg.test_review_secagg_drop import MASKED, _ids, _last, _relabel

_LOGGER = "privagg.backends.secagg.aggregator"
NS = _shamir.SHARE_SIZE
DOES_NOT_OPEN = "share does not open its commitment"
REFUSED = "share refused by a neighbour"


def _server_app() -> ModuleType:
    mod: ModuleType = pytest.importorskip("fedtrain.flower.server_app")
    return mod


def _x(r: _R, cid: str) -> int:
    """``cid``'s Shamir x-coordinate (1 + its index in the sorted U0)."""
    return sorted(r.ups).index(cid) + 1


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        rec.getMessage()
        for rec in caplog.records
        if rec.name == _LOGGER and rec.levelno >= logging.WARNING
    ]


# -- 1. an honest dealer is never convicted ------------------------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r13_holders_swapping_in_other_holders_shares_cannot_convict_the_dealer(
    active: bool,
) -> None:
    """The bound's worth of colluding holders of an honest survivor E reveal, as their
    own share of E's self-mask seed, the (genuine, opening) share and salt E dealt to
    another holder: a share off E's polynomial at their x, which would make decoding
    'correct' E. The commitment binds the holder, so none of them opens: each colluder
    is named ("share does not open its commitment"), E is not named, the sum is
    exact and E stays a contributor."""
    n, owner = 12, "c03"
    r = _R(n, active)
    for _ in range(MASKED + 1):
        r.sent.append(dict(r.requests))
        r.step(r.honest())
    holders = sorted(r.agg._holders(owner))
    bound = _shamir.max_wrong_shares(len(holders), r.agg.graph.threshold, checked=True)
    assert bound >= 2
    colluders, donors = holders[:bound], holders[bound : 2 * bound]

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == _last(active):
            got = {
                h: {
                    o: rec
                    for o, _, rec in sm.UnmaskShares.from_bytes(replies[h]).shares
                }
                for h in donors
            }
            for c, d in zip(colluders, donors, strict=True):
                m = sm.UnmaskShares.from_bytes(replies[c])
                shares = tuple(
                    (o, w, got[d][o] if o == owner else rec) for o, w, rec in m.shares
                )
                assert shares != m.shares
                replies[c] = dataclasses.replace(m, shares=shares).to_bytes()
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert r.agg.rejection_reasons == dict.fromkeys(colluders, DOES_NOT_OPEN)
    assert owner in res.contributors
    assert len(res.contributors) == n
    assert r.agg.disputes == {}


@pytest.mark.parametrize("active", [True, False])
def test_r13_false_accusation_and_forged_shares_never_convict_the_dealer(
    active: bool,
) -> None:
    """c00 falsely refuses d's record (d is left out, its mask key recovered) and a
    second colluder, holder of d, reveals a forged share of d's mask key (its own
    salt, another value): the forged share does not open, so decoding never sees a
    'wrong' share of d and d is not upgraded to "dealt wrong mask-key shares". d
    stays "share refused by a neighbour" with c00 in ``disputes``; the forger is named;
    the sum of the others is exact."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]
    forger = sorted(r.agg._nbrs[d] - {"c00"})[0]

    accuse = _accuse(["c00"], d)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == _last(active):
            m = sm.UnmaskShares.from_bytes(replies[forger])
            shares = []
            for o, w, rec in m.shares:
                if o == d:
                    assert w == sm._S
                    v = (int.from_bytes(rec[:NS], "big") + 1) % _shamir.PRIME
                    rec = v.to_bytes(NS, "big") + rec[NS:]
                shares.append((o, w, rec))
            replies[forger] = dataclasses.replace(m, shares=tuple(shares)).to_bytes()
        return replies

    res = r.drive(requests=accuse, replies=tamper)
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {d: REFUSED, forger: DOES_NOT_OPEN}
    assert r.agg.disputes == {d: frozenset({"c00"})}
    assert sorted(res.contributors) == sorted(set(_ids(7)) - {d})


# -- 2. a conviction changes the report only ----------------------------------------------
@pytest.mark.parametrize(("which", "how"), LAUNDER)
@pytest.mark.parametrize("active", [True, False])
def test_r13_conviction_changes_the_report_not_who_contributes(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    active: bool,
    which: str,
    how: str,
) -> None:
    """The same round (same client streams, same bad reply of DEALER) run twice: once
    with DEALER also dealing the bound's worth of wrong shares, once honestly. The
    conviction replaces DEALER's milder reason (and logs it) but the contributors, the
    set of named clients and the exact sum are the same in both runs: ``_convict``
    neither brings a dropped dealer back nor pushes a survivor out."""
    control = _R(12, active)
    res_c = control.drive(replies=_laundering(control, which, how))
    milder = control.agg.rejection_reasons[DEALER]
    assert not milder.startswith("dealt wrong")

    r = _R(12, active)
    with (
        caplog.at_level(logging.WARNING, logger=_LOGGER),
        _lying_dealer(monkeypatch, r, DEALER, which, _bound_last) as lied,
    ):
        res = r.drive(replies=_laundering(r, which, how))
    assert len(lied) == 3
    r.assert_exact(res)
    control.assert_exact(res_c)
    assert res.contributors == res_c.contributors
    assert (DEALER in res.contributors) == (which == "b")
    assert r.agg.rejected == control.agg.rejected == {DEALER}
    proven = (
        "dealt wrong self-mask shares"
        if which == "b"
        else "dealt wrong mask-key shares"
    )
    assert r.agg.rejection_reasons == {DEALER: proven}
    assert r.agg.disputes == control.agg.disputes == {}
    assert [w for w in _warnings(caplog) if "(proven)" in w] == [
        f"SecAgg+ round 1: {DEALER} is reported for {proven!r} (proven), not for {milder!r}"
    ]


def test_r13_convicted_survivor_with_an_invalid_signature_stays_a_contributor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Active variant: DEALER deals wrong self-mask shares and then sends an invalid
    survivor-set signature ("invalid signature": it is not asked to reveal, but its
    masked input is in the sum). The conviction replaces the reason; DEALER's
    self-mask is still removed and it stays a contributor: the sum is exact."""
    r = _R(12, True)

    def bad_sig(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED + 1:
            m = sm.SignatureMessage.from_bytes(replies[DEALER])
            replies[DEALER] = dataclasses.replace(m, signature=bytes(64)).to_bytes()
        return replies

    with _lying_dealer(monkeypatch, r, DEALER, "b", _bound_last) as lied:
        res = r.drive(replies=bad_sig)
    assert len(lied) == 3
    r.assert_exact(res)
    assert DEALER in res.contributors
    assert len(res.contributors) == 12
    assert r.agg.rejection_reasons == {DEALER: "dealt wrong self-mask shares"}


@pytest.mark.parametrize("active", [True, False])
def test_r13_refused_and_convicted_dealer_stays_out_and_both_sides_are_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, active: bool
) -> None:
    """DEALER lies on its mask-key shares and its record to one holder (one it lied
    to) is refused: DEALER is left out at stage 2, its mask key is recovered with its
    wrong shares corrected, and it is reported "dealt wrong mask-key shares" (the
    refusal's reason is replaced and logged) while ``disputes`` still names the
    refuser. The conviction does not bring DEALER back: it is no contributor, the sum
    of the others is exact. Over Flower the drop reason carries both."""
    r = _R(12, active)
    with (
        caplog.at_level(logging.WARNING, logger=_LOGGER),
        _lying_dealer(monkeypatch, r, DEALER, "s", _bound_last) as lied,
    ):
        r.sent.append(dict(r.requests))
        r.step(r.honest())
        accuser = max(r.agg._nbrs[DEALER], key=lambda c: _x(r, c))
        res = r.drive(requests=_accuse([accuser], DEALER))
    assert _x(r, accuser) in lied
    r.assert_exact(res)
    assert DEALER not in res.contributors
    assert sorted(res.contributors) == sorted(set(_ids(12)) - {DEALER})
    assert r.agg.rejection_reasons == {DEALER: "dealt wrong mask-key shares"}
    assert r.agg.disputes == {DEALER: frozenset({accuser})}
    assert any(
        f"{DEALER} is reported for 'dealt wrong mask-key shares' (proven), not for "
        f"{REFUSED!r}" in w
        for w in _warnings(caplog)
    )
    server_app = _server_app()
    from fedtrain.flower.transport import DriveResult

    got = server_app.drop_reasons(
        _ids(12), res.contributors, r.agg, {}, DriveResult(b"", 5, {})
    )
    assert got == {DEALER: f"dealt wrong mask-key shares (refused by {accuser})"}


# -- 3. what a refusal can name, and whose refusals count ------------------------------------
def _refusing(r: _R, refuser: str, rejected: tuple[str, ...]) -> Tamper:
    """``refuser``'s masked upload re-sent listing ``rejected`` as refused records,
    with ``missing`` made consistent with that list (in the passive variant only the
    content checks of the list itself can then refuse the upload)."""

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            m = sm.MaskedInput.from_bytes(replies[refuser])
            routed = {x for x, _ in r.agg._routed[refuser]}
            missing = tuple(sorted(r.agg._nbrs[refuser] - (routed - set(rejected))))
            replies[refuser] = dataclasses.replace(
                m, rejected=rejected, missing=missing
            ).to_bytes()
        return replies

    return tamper


@pytest.mark.parametrize(
    "target", ["non-neighbour", "stage-1 dropout", "foreign id", "log injection"]
)
@pytest.mark.parametrize("active", [True, False])
def test_r13_refusal_of_a_party_never_routed_to_the_refuser_is_not_a_dispute(
    caplog: pytest.LogCaptureFixture, active: bool, target: str
) -> None:
    """c00 lists as refused a client of U2 that is not its neighbour (so never dealt
    it a record), an id outside U0, or an id carrying a forged log line. The refusal
    list must be a subset of the records routed to c00: the upload is unusable
    (c00 alone is dropped), nobody is accused, ``disputes`` stays empty and no log
    line carries the foreign text."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    gone = sorted(r.agg._nbrs["c00"])[-1]
    shares = r.honest()
    if target == "stage-1 dropout":  # a neighbour that never dealt (not in U2)
        del shares[gone]
    r.sent.append(dict(r.requests))
    r.step(shares)
    if target == "stage-1 dropout":
        bogus = gone
    elif target == "non-neighbour":
        bogus = sorted(set(_ids(7)) - r.agg._nbrs["c00"] - {"c00"})[0]
    elif target == "foreign id":
        bogus = "c99"
    else:
        bogus = "c01\nCRITICAL forged: c01 dealt wrong mask-key shares" + "x" * 4096
    with caplog.at_level(logging.DEBUG, logger="privagg"):
        res = r.drive(replies=_refusing(r, "c00", (bogus,)))
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {"c00": "unusable reply"}
    assert r.agg.disputes == {}
    out = {"c00"} | ({gone} if target == "stage-1 dropout" else set())
    assert sorted(res.contributors) == sorted(set(_ids(7)) - out)
    assert "forged" not in caplog.text and "c99" not in caplog.text


@pytest.mark.parametrize("active", [True, False])
def test_r13_refusals_in_an_unusable_upload_do_not_count(active: bool) -> None:
    """c00 refuses its neighbour d in an upload the aggregator does not accept (its
    ``missing`` list is left as the honest one, contradicting the refusal): the
    refusal is not counted, d is neither accused nor in ``disputes`` and stays a
    contributor; c00 alone is dropped."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            m = sm.MaskedInput.from_bytes(replies["c00"])
            replies["c00"] = dataclasses.replace(m, rejected=(d,)).to_bytes()
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert r.agg.rejection_reasons == {"c00": "unusable reply"}
    assert r.agg.disputes == {}
    assert d in res.contributors
    assert sorted(res.contributors) == sorted(set(_ids(7)) - {"c00"})


@pytest.mark.parametrize("active", [True, False])
def test_r13_reply_of_a_party_not_asked_cannot_add_a_dispute(active: bool) -> None:
    """c06 drops at stage 1 (not asked for a masked upload); at stage 2 the relay
    delivers an upload labelled c06 (c00's, relabelled, refusing a neighbour of c00):
    the batch is refused before anything is read (``ProtocolError``), ``disputes`` and
    the reasons stay empty, and the round goes on with the honest replies."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]
    replies = r.honest()
    del replies["c06"]
    r.sent.append(dict(r.requests))
    r.step(replies)
    assert "c06" not in r.requests
    honest = r.honest()
    m = sm.MaskedInput.from_bytes(honest["c00"])
    forged = _relabel(dataclasses.replace(m, rejected=(d,)).to_bytes(), "c06")
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive({**honest, "c06": forged})
    assert r.agg.disputes == {}
    assert r.agg.rejection_reasons == {}
    r.sent.append(dict(r.requests))
    r.step(honest)  # the same batch without the forged reply
    res = r.drive()
    r.assert_exact(res)
    assert r.agg.disputes == {}
    assert "c06" not in res.contributors


# -- 4. disputes: contents, bound, Flower -----------------------------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r13_disputes_name_exactly_the_refusing_neighbours(
    caplog: pytest.LogCaptureFixture, active: bool
) -> None:
    """Two neighbours of d refuse its record: ``disputes`` maps d to exactly those two
    (ids of U0 only, no bytes), one warning names both, each refuser stays a
    contributor, and the Flower drop reason of d lists them, sorted, in bounded text
    (ids over Flower are checked at hello: no control character, at most 128
    characters)."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]
    other = sorted(r.agg._nbrs[d] - {"c00"})[-1]
    with caplog.at_level(logging.WARNING, logger=_LOGGER):
        res = r.drive(requests=_accuse(["c00", other], d))
    r.assert_exact(res)
    assert r.agg.disputes == {d: frozenset({"c00", other})}
    for accused, refusers in r.agg.disputes.items():
        assert isinstance(refusers, frozenset)
        assert refusers <= r.agg._nbrs[accused]
        assert all(type(c) is str and c in r.ups for c in refusers)
    assert {"c00", other} <= set(res.contributors)
    assert r.agg.rejection_reasons == {d: REFUSED}
    disputes = [w for w in _warnings(caplog) if "refused by" in w]
    assert disputes == [
        f"SecAgg+ round 1: {d}'s share record refused by c00, {other} (unproven: "
        "either side may have lied)"
    ]
    server_app = _server_app()
    from fedtrain.flower.transport import DriveResult, is_party_id

    got = server_app.drop_reasons(
        _ids(7), res.contributors, r.agg, {}, DriveResult(b"", 5, {})
    )
    assert got == {d: f"{REFUSED} (refused by c00, {other})"}
    for bad in (
        "c0\nERROR forged",
        "c0\r",
        "c0\x1b[2J",
        "a" * 129,
        "",
        "c0 c1",
        "c1, c2",
        "c0)",
    ):
        assert not is_party_id(bad)


@pytest.mark.parametrize("how", ["silent", "unusable"])
def test_r13_refused_client_that_also_dropped(how: str) -> None:
    """d is refused by c00 and also does not upload (silent) or uploads garbage
    content (a masked vector one word short): ``disputes`` still records c00's refusal (the aggregator's full view),
    d is left out either way and no honest party is blamed for it. Over Flower the
    drop reason keeps d's own cause: "no reply (stage 2)" for silence (the refusal
    changed nothing: d was out anyway), its rejection reason with the refusers
    otherwise."""
    r = _R(7, True)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]

    def replies(s: int, rep: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            if how == "silent":
                del rep[d]
            else:
                m = sm.MaskedInput.from_bytes(rep[d])
                short = np.array(m.masked[:-1])
                rep[d] = dataclasses.replace(m, masked=short).to_bytes()
        return rep

    res = r.drive(requests=_accuse(["c00"], d), replies=replies)
    r.assert_exact(res)
    assert d not in res.contributors
    assert r.agg.disputes == {d: frozenset({"c00"})}
    want = {} if how == "silent" else {d: "unusable reply"}
    assert r.agg.rejection_reasons == want
    server_app = _server_app()
    from fedtrain.flower.transport import DriveResult

    missing: dict[int, tuple[str, ...]] = {MASKED: (d,)} if how == "silent" else {}
    got = server_app.drop_reasons(
        _ids(7), res.contributors, r.agg, {}, DriveResult(b"", 5, missing)
    )
    assert got == {
        d: f"no reply (stage {MASKED})"
        if how == "silent"
        else "unusable reply (refused by c00)"
    }


def test_r13_disputes_are_bounded_by_the_refusals_routed() -> None:
    """Every honest neighbour of a dealer that sends all of them bad records refuses
    it: ``disputes`` has one key (the dealer) and at most ``degree`` refusers, all of
    them its neighbours; no other client is listed."""
    n = 12
    r = _R(n, True)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    nbrs = sorted(r.agg._nbrs[DEALER])
    res = r.drive(requests=_accuse(nbrs, DEALER))
    r.assert_exact(res)
    assert r.agg.disputes == {DEALER: frozenset(nbrs)}
    assert len(nbrs) == r.agg.graph.degree
    assert r.agg.rejection_reasons == {DEALER: REFUSED}
    assert sorted(res.contributors) == sorted(set(_ids(n)) - {DEALER})
    assert np.all(np.isfinite(res.vector))


@pytest.mark.parametrize("active", [True, False])
def test_r13_mutual_refusal_names_both_and_keeps_the_sum_exact(active: bool) -> None:
    """c00 and its neighbour d refuse each other's record (one of them, or the relay,
    lied; the aggregator cannot tell): both are left out as "share refused by a
    neighbour", ``disputes`` names each as the other's refuser (the refusal of an
    upload that passed its checks counts even when that uploader is itself left out),
    both mask keys are recovered and the sum of the other five is exact."""
    r = _R(7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"])[0]
    one, other = _accuse(["c00"], d), _accuse([d], "c00")
    res = r.drive(requests=lambda s, q: other(s, one(s, q)))
    r.assert_exact(res)
    assert r.agg.disputes == {d: frozenset({"c00"}), "c00": frozenset({d})}
    assert r.agg.rejection_reasons == {d: REFUSED, "c00": REFUSED}
    assert sorted(res.contributors) == sorted(set(_ids(7)) - {d, "c00"})
