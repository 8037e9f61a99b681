"""Outside security review of 7010b99 (issue #14): SecAgg+ drops a client whose reply
it cannot read instead of aborting the round.

Each test is one attack on that change, by a malicious client (alone or in a
coalition up to the round's limits) or by the server (which controls the network),
with crafted or replayed bytes at every stage (0 advertise, 1 shares, 2 masked input,
3 survivor-set signatures [active only], then the unmask shares). A refused attack is
pinned to its exact outcome: the exact sum of the contributors the result names, or
the exact typed error with no result.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import struct
from collections.abc import Callable, Mapping

import numpy as np
import pytest

import privagg
from privagg import Layout
from privagg.backends._shamir import PRIME, SHARE_SIZE
from privagg.backends._wire import peek_header
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.envelope import FORMAT_VERSION, Scheme
from privagg.errors import InsufficientParticipantsError, ProtocolError
from privagg.hazmat import DeterministicRng

SIZE = 8
VICTIM = "c03"
MASKED = 2  # the stage of the masked upload, in both variants
_LOGGER = "privagg.backends.secagg.aggregator"

Tamper = Callable[[int, dict[str, bytes]], dict[str, bytes]]


def _ids(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def _last(active: bool) -> int:
    """The unmask stage's index (the passive variant has no signature stage)."""
    return 4 if active else 3


def _stages(active: bool) -> list[int]:
    return list(range(_last(active) + 1))


def _session(n: int, active: bool, full_graph: bool = False) -> privagg.Session:
    return SecAggBackend(active=active, full_graph=full_graph).setup(
        Layout.from_arrays({"w": np.zeros(SIZE)}), max_clients=n
    )


class _Round:
    """One round driven a stage at a time; every reply the aggregator got is kept."""

    def __init__(
        self,
        n: int,
        active: bool,
        *,
        session: privagg.Session | None = None,
        round_id: int = 1,
        full_graph: bool = False,
        seed: int = 11,
    ) -> None:
        g = np.random.default_rng(seed)
        self.n = n
        self.ups = {c: g.uniform(-1, 1, SIZE) for c in _ids(n)}
        self.session = session or _session(n, active, full_graph)
        self.clients = {
            c: self.session.client(c, round_id, u, rng=DeterministicRng(i))
            for i, (c, u) in enumerate(sorted(self.ups.items()))
        }
        agg = self.session.aggregator(round_id, sorted(self.ups))
        assert isinstance(agg, SecAggAggregator)
        self.agg = agg
        self.requests = agg.start()
        self.asked: list[set[str]] = []  # who got a request, by stage
        self.got: list[dict[str, bytes]] = []  # what the aggregator received, by stage
        self.stage = 0

    def honest(self, *, quiet_refusals: bool = False) -> dict[str, bytes]:
        """Every asked client's own answer (a client that refuses for too few parties
        is silent when ``quiet_refusals``, as a node answering with an error)."""
        out = {}
        for c, req in self.requests.items():
            try:
                out[c] = self.clients[c].handle(req)
            except InsufficientParticipantsError:
                if not quiet_refusals:
                    raise
        return out

    def step(self, replies: dict[str, bytes]) -> None:
        self.asked.append(set(self.requests))
        self.got.append(dict(replies))  # kept also when receive() raises
        self.requests = self.agg.receive(replies)
        self.stage += 1

    def run(
        self, tamper: Tamper | None = None, *, quiet_refusals: bool = False
    ) -> privagg.Recovered:
        while not self.agg.done:
            replies = self.honest(quiet_refusals=quiet_refusals)
            if tamper is not None:
                replies = tamper(self.stage, replies)
            self.step(replies)
        return self.session.holder().recover(self.agg.result())

    def assert_exact(self, res: privagg.Recovered) -> None:
        ref = sum(self.ups[c] for c in res.contributors)
        tol = SecAggBackend().tolerance(n_clients=self.n, max_abs=1.0)
        assert np.max(np.abs(res.vector - ref)) <= tol

    def revealed(self) -> list[tuple[str, str, int]]:
        """(holder, owner, which secret) of every share the aggregator received."""
        out = []
        for sender, data in self.got[-1].items():
            try:
                m = sm.UnmaskShares.from_bytes(data)
            except privagg.PrivaggError:
                continue
            if m.party == sender:
                out += [(sender, owner, which) for owner, which, _ in m.shares]
        return out


def _junk(n: int, seed: int = 5) -> bytes:
    return random.Random(seed).randbytes(n)  # public test bytes, not a secret


def _relabel(data: bytes, party: str) -> bytes:
    """A well-formed message of the same kind, re-sealed as sent by ``party``."""
    return dataclasses.replace(privagg.from_bytes(data), party=party).to_bytes()


def _header_patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


# crafted replies beyond the six kinds of test_secagg_garbage_drop.py
def _crafted(kind: str, honest: bytes, r: _Round) -> object:
    if kind == "version":  # FormatVersionError (a DeserializationError)
        return _header_patch(honest, 4, struct.pack(">H", FORMAT_VERSION + 1))
    if kind == "scheme":  # another scheme: ProtocolError in check_header
        return _header_patch(honest, 6, bytes([Scheme.ADDITIVE]))
    if kind == "stale-stage":  # the victim's own reply of the previous stage
        return r.got[-1].get(VICTIM, b"") if r.got else b"\x00"
    if kind == "trailing":
        return honest + b"\x00"
    if kind == "header-only":
        return honest[:56]
    if kind == "not-bytes":
        return "a str, not bytes"
    raise AssertionError(kind)


CRAFTED = ["version", "scheme", "stale-stage", "trailing", "header-only", "not-bytes"]


@pytest.mark.parametrize("kind", CRAFTED)
@pytest.mark.parametrize(
    ("active", "stage"), [(a, s) for a in (True, False) for s in _stages(a)]
)
def test_crafted_reply_at_any_stage_drops_only_its_sender(
    active: bool, stage: int, kind: str
) -> None:
    """Another format version, another scheme byte, the victim's own reply of the
    previous stage (out of order), a trailing byte, the header alone, or not bytes at
    all: the victim alone is dropped at that stage, the sum is exact."""
    r = _Round(7, active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == stage:
            replies[VICTIM] = _crafted(kind, replies[VICTIM], r)  # type: ignore[assignment]
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert r.agg.rejected == {VICTIM}
    assert set(res.contributors) == set(_ids(7)) - (
        {VICTIM} if stage <= MASKED else set()
    )


def _assert_one_secret_each(
    r: _Round, contributors: set[str], *, done: bool = True
) -> None:
    """Of every share the server received at the unmask stage: only b of a
    contributor, only s_sk of anyone else, never a holder's own secret, and (when the
    round finished) each contributor's b from at least t holders."""
    kinds: dict[str, set[int]] = {}
    b_holders: dict[str, set[str]] = {}
    for holder, owner, which in r.revealed():
        assert holder != owner
        kinds.setdefault(owner, set()).add(which)
        if which == sm._B:
            b_holders.setdefault(owner, set()).add(holder)
    for owner, ws in kinds.items():
        assert ws == ({sm._B} if owner in contributors else {sm._S}), owner
    t = r.agg.graph.threshold
    for c in contributors if done else ():
        assert len(b_holders.get(c, set())) >= t, c


# -- b and s_sk: never both, and b always reconstructed for a contributor --------------
@pytest.mark.parametrize("kind", ["junk", "other-party"])
@pytest.mark.parametrize(
    ("active", "stage"), [(a, s) for a in (True, False) for s in _stages(a)]
)
def test_a_dropped_client_never_has_both_secrets_revealed(
    active: bool, stage: int, kind: str
) -> None:
    """Whatever the stage of the garbage drop: for every client the unmask stage
    reveals only b (it is a contributor) or only s_sk (it is not); a contributor's b
    comes from t holders other than itself; never fewer contributors than the quorum."""
    r = _Round(7, active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == stage:
            bad = _junk(len(replies[VICTIM])) if kind == "junk" else replies["c00"]
            replies[VICTIM] = bad
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    contributors = set(res.contributors)
    assert (VICTIM in contributors) == (stage > MASKED)
    assert len(contributors) >= r.session.unmask_quorum(7)  # type: ignore[attr-defined]
    _assert_one_secret_each(r, contributors)


def _can_unmask_without(replies: Mapping[str, bytes], bad: set[str], t: int) -> bool:
    """Oracle from honest unmask replies alone: does every secret someone holds keep
    t shares once ``bad``'s replies are gone?"""
    holders: dict[str, set[str]] = {}
    for sender, data in replies.items():
        for owner, _, _ in sm.UnmaskShares.from_bytes(data).shares:
            holders.setdefault(owner, set()).add(sender)
    return all(len(h - bad) >= t for h in holders.values())


@pytest.mark.parametrize("active", [True, False])
def test_one_garbage_client_at_every_stage_of_one_round(active: bool) -> None:
    """10 clients; c01 garbles stage 0, c02 stage 1, c03 stage 2, (active) c04 its
    signature, c05 the unmask stage: the exact sum of all but c01-c03, or, where c05's
    shares were needed (the graph is drawn per session), InsufficientParticipantsError
    at the last stage; either way each secret is revealed as b or as s_sk only."""
    r = _Round(10, active)
    bad = {s: f"c{s + 1:02d}" for s in _stages(active)}
    bad[_last(active)] = "c05"
    last = _last(active)
    can: list[bool] = []

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            can.append(_can_unmask_without(replies, {"c05"}, r.agg.graph.threshold))
        replies[bad[s]] = _junk(len(replies[bad[s]]), seed=s)
        return replies

    try:
        res = r.run(tamper)
    except InsufficientParticipantsError as exc:
        assert can == [False] and "too few shares" in str(exc)
        _assert_one_secret_each(r, set(_ids(10)) - {"c01", "c02", "c03"}, done=False)
        return
    assert can == [True]
    r.assert_exact(res)
    assert r.agg.rejected == set(bad.values())
    assert set(res.contributors) == set(_ids(10)) - {"c01", "c02", "c03"}
    _assert_one_secret_each(r, set(res.contributors))


@pytest.mark.parametrize("active", [True, False])
def test_server_pretending_an_upload_was_garbage_gets_s_sk_but_never_b(
    active: bool,
) -> None:
    """Malicious server: it keeps the victim's valid masked input y_v and hands the
    aggregator garbage in its place (the victim 'dropped' at stage 2). The holders
    reveal s_sk_v (to remove v's pairwise masks) and no share of b_v; asked again,
    now with v among the survivors, every client that answered refuses."""
    r = _Round(7, active)
    kept: dict[str, bytes] = {}

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            kept[VICTIM] = replies[VICTIM]
            replies[VICTIM] = _junk(len(replies[VICTIM]))
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert VICTIM not in res.contributors
    assert sm.MaskedInput.from_bytes(kept[VICTIM]).party == VICTIM  # a valid upload
    shares = [(h, w) for h, o, w in r.revealed() if o == VICTIM]
    assert shares and {w for _, w in shares} == {sm._S}
    # a second unmask request naming the victim a survivor: refused by all who answered
    survivors = tuple(sorted((*res.contributors, VICTIM)))
    for holder in r.got[-1]:
        forged = sm.UnmaskRequest(
            r.agg._cfg.params_id, 1, holder, survivors, (), ()
        ).to_bytes()
        with pytest.raises(
            ProtocolError, match="unexpected message kind 9 at this stage"
        ):
            r.clients[holder].handle(forged)


# -- a reply dropped at stage k cannot come back at stage k + 1 -------------------------
def _unasked_reply(
    r: _Round, active: bool, stage: int, replies: Mapping[str, bytes]
) -> bytes:
    """What the victim, dropped at ``stage - 1``, sends unasked at ``stage``: its own
    genuine unmask shares for the active unmask stage (it signed, but its signature was
    garbled), else another client's reply of this stage relabelled as its own."""
    if active and stage == _last(active):
        some = sm.UnmaskRequest.from_bytes(next(iter(r.requests.values())))
        req = r.agg._unmask_requests([VICTIM], some.signatures)[VICTIM]
        return r.clients[VICTIM].handle(req)
    return _relabel(replies[sorted(replies)[0]], VICTIM)


@pytest.mark.parametrize(
    ("active", "stage"), [(a, s) for a in (True, False) for s in _stages(a)[:-1]]
)
def test_a_client_dropped_at_one_stage_cannot_answer_the_next(
    active: bool, stage: int
) -> None:
    """The victim's reply at ``stage`` is garbage; at ``stage + 1`` (where it was not
    asked) it answers anyway: a ProtocolError that changes nothing, and the round then
    ends with the exact sum."""
    r = _Round(7, active)
    while r.stage <= stage:
        replies = r.honest()
        if r.stage == stage:
            replies[VICTIM] = _junk(len(replies[VICTIM]))
        r.step(replies)
    assert VICTIM not in r.requests
    replies = {c: r.clients[c].handle(q) for c, q in r.requests.items()}
    intruded = {**replies, VICTIM: _unasked_reply(r, active, stage + 1, replies)}
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive(intruded)
    assert r.agg.rejected == {VICTIM}
    r.step(replies)
    res = r.run()
    r.assert_exact(res)
    assert (VICTIM in res.contributors) == (stage > MASKED)


def test_a_client_left_out_at_stage_1_cannot_answer_it() -> None:
    """A client that advertised keys but was not asked to share them (too few live
    neighbours) sends shares anyway: refused as a party that was not asked."""
    for gone in itertools.combinations(_ids(7), 3):
        r = _Round(7, True)
        replies = {c: x for c, x in r.honest().items() if c not in gone}
        try:
            r.step(replies)
        except InsufficientParticipantsError:
            continue
        left_out = sorted(set(r.agg._keys) - set(r.requests))
        if left_out:
            break
    else:
        pytest.fail("no round left an advertised client out of stage 1")
    who = left_out[0]
    want = r.agg._nbrs[who] & r.agg._keys.keys()
    cts = tuple((c, b"x" * 80) for c in sorted(want))
    forged = sm.SharesMessage(r.agg._cfg.params_id, 1, who, cts).to_bytes()
    replies = {c: r.clients[c].handle(q) for c, q in r.requests.items()}
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive({**replies, who: forged})


def test_a_reply_from_a_party_not_asked_raises_at_every_stage() -> None:
    """A reply keyed by a party outside the round is the caller's routing error at every
    stage, also when a garbage reply from a real client comes in the same batch."""
    for active in (True, False):
        r = _Round(5, active)
        while not r.agg.done:
            replies = r.honest()
            bad = {**replies, "c00": b"junk", "c99": next(iter(replies.values()))}
            with pytest.raises(ProtocolError, match="unexpected party 'c99'"):
                r.agg.receive(bad)
            r.step(replies)
        r.assert_exact(r.session.holder().recover(r.agg.result()))
        assert r.agg.rejected == set()


# -- quorum and threshold: coalitions answering garbage ---------------------------------
def _garbage_from(stage: int, who: set[str]) -> Tamper:
    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == stage:
            for c in who & replies.keys():
                replies[c] = _junk(len(replies[c]), seed=len(c))
        return replies

    return tamper


def _last_requests_kinds(r: _Round) -> set[int]:
    return {peek_header(q).kind for q in r.requests.values()}


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("m", range(8))
def test_a_coalition_answering_garbage_at_stage_2_never_goes_below_the_quorum(
    active: bool, m: int
) -> None:
    """m of 7 clients (c00, c01, ...) upload garbage. Below the quorum
    (5 active, 3 passive): InsufficientParticipantsError at stage 2. At or above it:
    the exact sum of the 7 - m others, or (sparse graph: a dropped client's mask key
    left with fewer than t live holders) the same error, still at stage 2. Either way
    no consistency or unmask request is sent when the round aborts."""
    r = _Round(7, active)
    q = r.session.unmask_quorum(7)  # type: ignore[attr-defined]
    bad = set(_ids(7)[:m])
    try:
        res = r.run(_garbage_from(MASKED, bad))
    except InsufficientParticipantsError as exc:
        assert 7 - m < q or "live holders of a needed secret" in str(exc)
    else:
        assert 7 - m >= q
        r.assert_exact(res)
        assert set(res.contributors) == set(_ids(7)) - bad
        assert r.agg.rejected == bad
        return
    assert r.stage == MASKED and not r.agg.done
    assert _last_requests_kinds(r) == {sm.SecAggKind.MASK}  # nothing after stage 2
    with pytest.raises(ProtocolError):
        r.agg.result()


@pytest.mark.parametrize("m", range(8))
def test_a_coalition_garbling_its_signatures_never_goes_below_the_quorum(
    m: int,
) -> None:
    """Active: m of 7 survivors answer the consistency request with garbage. With
    fewer than q = 5 signers: InsufficientParticipantsError and no unmask request;
    otherwise every one of the 7 uploads is in the exact sum."""
    r = _Round(7, True)
    bad = set(_ids(7)[:m])
    if 7 - m >= 5:
        res = r.run(_garbage_from(3, bad))
        r.assert_exact(res)
        assert set(res.contributors) == set(_ids(7))
        assert set(r.asked[4]) == set(_ids(7)) - bad
        return
    with pytest.raises(InsufficientParticipantsError, match="signatures"):
        r.run(_garbage_from(3, bad))
    assert _last_requests_kinds(r) == {sm.SecAggKind.CONSISTENCY}


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("m", range(8))
def test_garbage_unmask_replies_give_the_exact_sum_or_no_result(
    active: bool, m: int
) -> None:
    """m holders answer the unmask request with garbage. Oracle from the honest replies
    alone: the round can finish iff every secret someone holds keeps t shares among the
    others; then the exact sum of all 7, else InsufficientParticipantsError and no
    result."""
    r = _Round(7, active)
    last = _last(active)
    while r.stage < last:
        r.step(r.honest())
    honest = r.honest()
    bad = set(sorted(honest)[:m])
    can = _can_unmask_without(honest, bad, r.agg.graph.threshold)
    replies = _garbage_from(last, bad)(last, dict(honest))
    if can:
        r.step(replies)
        res = r.session.holder().recover(r.agg.result())
        r.assert_exact(res)
        assert set(res.contributors) == set(_ids(7))
        assert r.agg.rejected == bad
        return
    with pytest.raises(InsufficientParticipantsError, match="too few shares"):
        r.agg.receive(replies)
    assert not r.agg.done


@pytest.mark.parametrize("active", [True, False])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_tiny_rounds_never_reveal_one_update_whoever_answers_garbage(
    active: bool, n: int
) -> None:
    """Every stage, every set of clients answering garbage there (n = 2, 3, 4, complete
    graph): the round ends with the exact sum of at least max(2, quorum) clients, none
    of those who garbled their upload or an earlier reply, or with a typed
    InsufficientParticipantsError."""
    session = _session(n, active)
    q = session.unmask_quorum(n)  # type: ignore[attr-defined]
    rid = 0
    for stage in _stages(active):
        for m in range(1, n + 1):
            for bad in itertools.combinations(_ids(n), m):
                rid += 1
                r = _Round(n, active, session=session, round_id=rid)
                try:
                    res = r.run(_garbage_from(stage, set(bad)), quiet_refusals=True)
                except InsufficientParticipantsError:
                    assert not r.agg.done
                    continue
                r.assert_exact(res)
                assert len(res.contributors) >= max(2, q)
                if stage <= MASKED:
                    assert not set(bad) & set(res.contributors)


# -- crafted unmask shares ---------------------------------------------------------------
def _forge_shares(
    data: bytes,
    change: Callable[[str, int, bytes], bytes],
    *,
    dealt: SecAggAggregator | None = None,
) -> bytes:
    """``data`` (an ``UnmaskShares``) with each revealed share replaced by
    ``change(owner, which, share)``; the salts that follow the shares (v5) are kept.

    Without ``dealt`` a changed share does not open its dealer's commitment: a holder
    lying. With ``dealt`` (the round's aggregator) each changed share is made the one
    its dealer committed to: the aggregator's record of the dealer's commitment
    becomes the commitment to the changed share under the same salt, exactly what the
    aggregator holds when the dealer dealt that wrong share (since v5 only a dealer can
    make a wrong share that opens; ``test_review_r7_clients.py`` runs such dealers for
    real). The decoding sees the same shares either way."""
    m = sm.UnmaskShares.from_bytes(data)
    n = SHARE_SIZE
    shares = []
    for o, w, rec in m.shares:
        sh, salt = change(o, w, rec[:n]), rec[n:]
        if dealt is not None and sh != rec[:n]:
            as_dealt(dealt, o, m.party, w, sh + salt)
        shares.append((o, w, sh + salt))
    return dataclasses.replace(m, shares=tuple(shares)).to_bytes()


def as_dealt(
    agg: SecAggAggregator, owner: str, holder: str, which: int, revealed: bytes
) -> None:
    """Make ``revealed`` (share || salt) the share ``owner`` committed to dealing
    ``holder`` in ``agg``'s round (see :func:`_forge_shares`)."""
    n = SHARE_SIZE
    c = sa_ctx._share_commitment(
        agg._cfg, agg._round, owner, holder, which, revealed[:n], revealed[n:]
    )
    cs, cb = agg._commits[owner, holder]
    agg._commits[owner, holder] = (c, cb) if which == sm._S else (cs, c)


def _plus_one(sh: bytes) -> bytes:
    return ((int.from_bytes(sh, "big") + 1) % PRIME).to_bytes(SHARE_SIZE, "big")


@pytest.mark.parametrize("active", [True, False])
def test_wrong_shares_hidden_behind_one_noncanonical_share_are_all_ignored(
    active: bool,
) -> None:
    """c00 (x = 1: its shares are always among the t used) sends every share off by
    one and one share equal to the prime: the whole reply is ignored, none of its
    wrong shares is used, the sum is exact."""
    r = _Round(7, active)
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            first = sm.UnmaskShares.from_bytes(replies["c00"]).shares[0][0]

            def change(o: str, w: int, sh: bytes) -> bytes:
                return (
                    PRIME.to_bytes(SHARE_SIZE, "big") if o == first else _plus_one(sh)
                )

            replies["c00"] = _forge_shares(replies["c00"], change)
        return replies

    res = r.run(tamper)
    r.assert_exact(res)
    assert r.agg.rejected == {"c00"} and set(res.contributors) == set(_ids(7))


def _mask_key_liars(
    r: _Round, last: int, n_liars: int, chosen: list[str]
) -> Callable[[int, dict[str, bytes]], dict[str, bytes]]:
    """A tamper: VICTIM drops before its masked upload; at the unmask stage its
    ``n_liars`` holders with the smallest x (their shares are among the first t; the
    graph depends on the session) reveal wrong shares of its mask key (unrelated
    offsets) that VICTIM dealt them (``_forge_shares(dealt=...)``: they open VICTIM's
    commitments), and are appended to ``chosen``."""

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            del replies[VICTIM]  # an ordinary dropout: its mask key is recovered
        if s == last:
            holders = sorted(
                c
                for c, d in replies.items()
                if any(o == VICTIM for o, _, _ in sm.UnmaskShares.from_bytes(d).shares)
            )
            assert len(holders) == 4  # degree 4, only VICTIM dropped
            chosen.extend(holders[:n_liars])
            for k, holder in enumerate(holders[:n_liars]):

                def change(o: str, w: int, sh: bytes, k: int = k) -> bytes:
                    if o != VICTIM:
                        return sh
                    v = int.from_bytes(sh, "big") + 1 + 7**90 * (k + 1) ** 3
                    return (v % PRIME).to_bytes(SHARE_SIZE, "big")

                replies[holder] = _forge_shares(replies[holder], change, dealt=r.agg)
        return replies

    return tamper


@pytest.mark.parametrize("active", [True, False])
def test_a_wrong_canonical_mask_key_share_is_corrected(active: bool) -> None:
    """A well-formed but wrong share of a dropped client's mask key used to abort the
    round (pinned here until the #14 follow-up): the victim's four holders' shares
    (t = 2) now correct one wrong share, checked against the advertised key; the sum is
    exact and the dealer of the wrong share (v5: it opens the victim's commitment) is
    named, not the holder."""
    r = _Round(7, active)
    chosen: list[str] = []
    res = r.run(_mask_key_liars(r, _last(active), 1, chosen))
    r.assert_exact(res)
    assert len(chosen) == 1
    assert r.agg.rejection_reasons == {VICTIM: "dealt wrong mask-key shares"}
    assert set(res.contributors) == set(_ids(7)) - {VICTIM}


@pytest.mark.parametrize("active", [True, False])
def test_too_many_wrong_mask_key_shares_abort_cleanly(active: bool) -> None:
    """Two wrong shares among the four (one more than can be corrected with t = 2):
    the round aborts at the last stage with a typed ProtocolError and no result; no
    key that fails the advertised one is used."""
    r = _Round(7, active)
    with pytest.raises(ProtocolError, match="do not reconstruct its advertised key"):
        r.run(_mask_key_liars(r, _last(active), 2, []))
    assert not r.agg.done


# -- what is logged ----------------------------------------------------------------------
def test_a_drop_is_logged_with_the_error_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One warning per ignored reply: round, sender, the error's type. Never the bytes,
    the session's params_id, a share or the error's text."""
    r = _Round(7, True)
    replayed = _Round(7, True, session=r.session, round_id=0)
    last = _last(True)
    shares_hex: list[str] = []

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        other = replayed.honest()
        replayed.step(other)
        if s == MASKED:
            replies["c05"] = other["c05"]  # replayed from round 0
        if s == last:
            m = sm.UnmaskShares.from_bytes(replies["c00"])
            shares_hex.extend(sh.hex() for _, _, sh in m.shares)
            replies["c00"] = _forge_shares(  # opening its commitments: v5 checks
                replies["c00"],  # the opening before the encoding
                lambda o, w, sh: PRIME.to_bytes(SHARE_SIZE, "big"),
                dealt=r.agg,
            )
        return replies

    with caplog.at_level(logging.DEBUG, logger="privagg"):
        res = r.run(tamper)
    r.assert_exact(res)
    records = [rec for rec in caplog.records if rec.name == _LOGGER]
    assert [rec.levelno for rec in records] == [logging.WARNING] * 2
    assert [rec.getMessage() for rec in records] == [
        "SecAgg+ round 1: ignoring c05's unreadable reply (ProtocolError); it is "
        "treated as dropped",
        "SecAgg+ round 1: ignoring c00's unreadable reply (DeserializationError); it "
        "is treated as dropped",
    ]
    text = caplog.text
    params_hex = r.agg._cfg.params_id.hex()
    assert params_hex not in text and "replay" not in text
    assert all(sh not in text and sh[:16] not in text for sh in shares_hex)
    assert all(rec.exc_info is None for rec in records)


# -- callers: run_round and a misconfigured aggregator ---------------------------------
@pytest.mark.parametrize("stage", [0, MASKED, 4])
def test_run_round_reports_a_garbage_client_as_dropped(
    stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_round (privagg.simulation) with one client answering garbage at a stage:
    a RoundResult whose contributors have the exact sum, the client listed in
    ``dropped`` exactly when its upload is not in the sum, nothing in ``failed``."""
    session = _session(7, True)
    g = np.random.default_rng(3)
    ups = {c: {"w": g.uniform(-1, 1, SIZE)} for c in _ids(7)}
    make = session.client

    class Garbling:
        def __init__(self, inner: privagg.protocols.ClientRole) -> None:
            self.inner, self.n = inner, 0

        def handle(self, request: bytes) -> bytes:
            out = self.inner.handle(request)
            self.n += 1
            return _junk(len(out)) if self.n - 1 == stage else out

    def client(cid: str, *a: object, **kw: object) -> object:
        inner = make(cid, *a, **kw)  # type: ignore[arg-type]
        return Garbling(inner) if cid == VICTIM else inner

    monkeypatch.setattr(session, "client", client)
    res = privagg.run_round(session, ups)
    ref = sum(ups[c]["w"] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= SecAggBackend().tolerance(
        n_clients=7, max_abs=1.0
    )
    assert (VICTIM in res.dropped) == (stage <= MASKED)
    assert set(res.dropped) == set(_ids(7)) - set(res.contributors)
    assert res.failed == {}


def test_an_aggregator_of_another_session_ends_in_insufficient_participants(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients of session A answering an aggregator of session B (an operator's
    mistake, or a wholesale replay from another session): every reply is ignored; the
    round ends with InsufficientParticipantsError at stage 0 (it was a
    ParameterMismatchError before 7010b99); the log names ParameterMismatchError for
    each client, which is what tells the operator."""
    a, b = _Round(5, True), _session(5, True)
    agg = b.aggregator(1, _ids(5))
    agg.start()
    with (
        caplog.at_level(logging.WARNING, logger=_LOGGER),
        pytest.raises(InsufficientParticipantsError),
    ):
        agg.receive(a.honest())
    assert agg.rejected == set(_ids(5))  # type: ignore[attr-defined]
    assert caplog.text.count("(ParameterMismatchError)") == 5
