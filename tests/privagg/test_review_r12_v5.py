"""Review r12 (outside reviewer, applied cryptography): SecAgg+ v5 committed shares
(commit 05f42f3), what review r11 left.

Attacks: the salts (default Rng, repeats, ever in clear), every binding of a share
commitment (params_id, round, dealer, holder, kind) at the aggregator and at the
holder, cross-round and cross-session replays of reveals, kind confusion in a reveal,
a relay swapping / replaying / reordering commitments, dealers crafting records
(valid commitments over garbage), out-of-range shares that open their commitment, t - 1
colluders using the blame rules for a double reveal, and blame correctness (false
accusations, a lying dealer laundering its blame). A resisted attack pins the defended
outcome (exact sum, typed error, who is named); a finding is an ``xfail(strict=True)``
test that asserts the secure behaviour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

import privagg
from privagg import Layout
from privagg._rng import SystemRng
from privagg.backends import _shamir
from privagg.backends._primitives import aead_decrypt, aead_encrypt
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import _context as sa_ctx
from privagg.backends.secagg import client as sa_client
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.hazmat import DeterministicRng
from tests.privagg.test_review_r7_clients import DEALER, _bound_last, _lying_dealer
from tests.privagg.test_review_secagg_drop import (
    MASKED,
    SIZE,
    _ids,
    _junk,
    _last,
    _Round,
    _session,
    as_dealt,
)

Tamper = Callable[[int, dict[str, bytes]], dict[str, bytes]]
N7 = 7
NS = _shamir.SHARE_SIZE


class _R(_Round):
    """A :class:`_Round` whose clients draw from ``DeterministicRng(rng_base + i)``, or
    from the session's default Rng when ``rng_base`` is None (another round of the same
    session must not reuse the first round's streams)."""

    def __init__(
        self,
        n: int,
        active: bool,
        *,
        session: privagg.Session | None = None,
        round_id: int = 1,
        rng_base: int | None = 0,
    ) -> None:
        g = np.random.default_rng(11 + round_id)
        self.n = n
        self.ups = {c: g.uniform(-1, 1, SIZE) for c in _ids(n)}
        self.session = session or _session(n, active)
        self.clients = {
            c: self.session.client(
                c,
                round_id,
                u,
                rng=None if rng_base is None else DeterministicRng(rng_base + i),
            )
            for i, (c, u) in enumerate(sorted(self.ups.items()))
        }
        agg = self.session.aggregator(round_id, sorted(self.ups))
        assert isinstance(agg, SecAggAggregator)
        self.agg = agg
        self.requests = agg.start()
        self.asked = []
        self.got = []
        self.stage = 0
        self.sent: list[dict[str, bytes]] = []  # the requests, by stage

    def drive(
        self, *, requests: Tamper | None = None, replies: Tamper | None = None
    ) -> privagg.Recovered:
        """Run the round with the relay tampering with ``requests`` (what clients get)
        and/or ``replies`` (what the aggregator gets) at each stage."""
        while not self.agg.done:
            if requests is not None:
                self.requests = requests(self.stage, dict(self.requests))
            self.sent.append(dict(self.requests))
            rep = self.honest()
            if replies is not None:
                rep = replies(self.stage, rep)
            self.step(rep)
        return self.session.holder().recover(self.agg.result())

    def held(self) -> dict[str, dict[str, sa_client._Held]]:
        """holder -> owner -> the shares and salts it holds (after stage 2)."""
        out = {}
        for c in self.clients:
            st = _client(self, c)._state
            assert isinstance(st, sa_client._Masked | sa_client._Signed)
            m = st.masked if isinstance(st, sa_client._Signed) else st
            out[c] = dict(m.held)
        return out


def _client(r: _Round, cid: str) -> sa_client.SecAggClient:
    cl = r.clients[cid]
    assert isinstance(cl, sa_client.SecAggClient)
    return cl


def _reveal(h: sa_client._Held, which: int) -> bytes:
    if which == sm._S:
        return _shamir.encode_share(h.s) + h.salt_s
    return _shamir.encode_share(h.b) + h.salt_b


def _replace_reveals(
    data: bytes, change: Callable[[str, int, bytes], tuple[int, bytes]]
) -> bytes:
    """``data`` (an ``UnmaskShares``) with each entry replaced by ``change``."""
    m = sm.UnmaskShares.from_bytes(data)
    shares = tuple((o, *change(o, w, rec)) for o, w, rec in m.shares)
    return dataclasses.replace(m, shares=shares).to_bytes()


# -- 1. the salts: default Rng, never repeated, never in clear ----------------------------
def test_r12_default_client_rng_is_the_csprng_and_salts_never_repeat() -> None:
    """A client made without ``rng`` draws its salts from ``SystemRng``; over two
    rounds of one session every salt (per dealer, holder, kind, round) is distinct."""
    session = _session(N7, True)
    salts: list[bytes] = []
    pairs = 0
    for rid in (1, 2):
        r = _R(N7, True, session=session, round_id=rid, rng_base=None)
        assert all(type(_client(r, c)._rng) is SystemRng for c in r.clients)
        for _ in range(MASKED + 1):  # after MASK every client holds its shares
            r.step(r.honest())
        for held in r.held().values():
            pairs += len(held)
            for h in held.values():
                salts += [h.salt_s, h.salt_b]
    assert pairs >= 2 * N7 * 2  # every client holds shares of >= 2 neighbours
    assert all(len(s) == sm.SALT_SIZE for s in salts)
    assert len(set(salts)) == len(salts) == 2 * pairs


@pytest.mark.parametrize("active", [True, False])
def test_r12_no_share_or_salt_in_clear_but_the_revealed_kind(active: bool) -> None:
    """Everything the server sees (every request and reply of the round) is scanned for
    every dealt share and salt: before the unmask replies none appears; in them only the
    b shares and salts of survivors (here everyone): no s share, no s salt, ever. The
    commitments in clear are 32-byte hashes that contain neither."""
    r = _R(N7, active)
    for _ in range(MASKED + 1):
        r.sent.append(dict(r.requests))
        r.step(r.honest())
    held = r.held()
    res = r.drive()
    r.assert_exact(res)
    before = b"".join(
        [d for st in r.sent for d in st.values()]
        + [d for st in r.got[:-1] for d in st.values()]
    )
    last = b"".join(r.got[-1].values())
    for hs in held.values():
        for h in hs.values():
            s_enc, b_enc = _shamir.encode_share(h.s), _shamir.encode_share(h.b)
            for secret in (s_enc, b_enc, h.salt_s, h.salt_b):
                assert secret not in before
            assert s_enc not in last and h.salt_s not in last
            assert b_enc + h.salt_b in last


# -- 2. every binding of a commitment is checked -------------------------------------------
def test_r12_a_reveal_opens_only_its_own_dealer_holder_kind_round_and_session() -> None:
    """Every real reveal of a round opens the commitment of exactly its (dealer, holder,
    kind) at its round's aggregator, and none of: the other kind, another dealer's
    commitment to the same holder, the same dealer's to another holder, the same pair
    in another round of the session, the same pair and round id in another session."""
    r = _R(N7, True)
    r.drive()
    other_round = _R(N7, True, session=r.session, round_id=2, rng_base=100)
    other_round.drive()
    other_session = _R(N7, True, rng_base=200)
    other_session.drive()
    agg = r.agg
    checked = 0
    for holder, data in r.got[-1].items():
        for owner, which, rec in sm.UnmaskShares.from_bytes(data).shares:
            assert agg._opens(owner, holder, which, rec)
            assert not agg._opens(owner, holder, 1 - which, rec)
            for d, h in agg._commits:
                if (d, h) != (owner, holder) and (d == owner or h == holder):
                    assert not agg._opens(d, h, which, rec)
                    assert not agg._opens(d, h, 1 - which, rec)
            for other in (other_round.agg, other_session.agg):
                if (owner, holder) in other._commits:
                    assert not other._opens(owner, holder, which, rec)
                    assert not other._opens(owner, holder, 1 - which, rec)
            checked += 1
    assert checked >= 2 * N7


def _seeded_session(active: bool) -> privagg.Session:
    """A session whose params_id follows from a public seed (the same each call)."""
    return SecAggBackend(active=active).setup(
        Layout.from_arrays({"w": np.zeros(SIZE)}),
        max_clients=N7,
        rng=DeterministicRng(b"r12-public-seed".ljust(32, b"\0")),
    )


@pytest.mark.parametrize("where", ["round", "session", "same params_id and round"])
@pytest.mark.parametrize("active", [True, False])
def test_r12_reveal_replayed_from_another_round_or_session_is_named(
    active: bool, where: str
) -> None:
    """c00 held shares of the same owners in an earlier round of the session, in
    round 1 of another session, or in round 1 of an earlier run from the same public
    seed (same params_id and round id: every field the commitment binds is equal) and
    reveals those (share, salt) instead of this round's: the commitment binds the
    round and params_id, and the salt and share are fresh, so none opens; only c00 is
    named ("share does not open its commitment"), the sum over all seven is exact."""
    seeded = where == "same params_id and round"
    first = _R(
        N7, active, rng_base=0, session=_seeded_session(active) if seeded else None
    )
    for _ in range(MASKED + 1):
        first.step(first.honest())
    old = first.held()["c00"]
    if where == "round":
        r = _R(N7, active, session=first.session, round_id=2, rng_base=100)
    elif seeded:
        r = _R(N7, active, session=_seeded_session(active), rng_base=100)
        assert r.agg._cfg.params_id == first.agg._cfg.params_id
    else:
        r = _R(N7, active, rng_base=100)
    last = _last(active)
    replayed: list[str] = []

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:

            def change(o: str, w: int, rec: bytes) -> tuple[int, bytes]:
                if o in old:
                    replayed.append(o)
                    return w, _reveal(old[o], w)
                return w, rec

            replies["c00"] = _replace_reveals(replies["c00"], change)
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert replayed
    assert len(res.contributors) == N7
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}


@pytest.mark.parametrize("active", [True, False])
def test_r12_s_share_revealed_as_a_b_share_does_not_open(active: bool) -> None:
    """Kind confusion: for every survivor c00 holds, it sends the mask-key share and
    its salt (which open commit_s) labelled as the self-mask share: the aggregator
    checks it against commit_b under kind b, it does not open; c00 alone is named,
    its shares are erasures, the sum is exact."""
    r = _R(N7, active)
    for _ in range(MASKED + 1):
        r.step(r.honest())
    mine = r.held()["c00"]
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            replies["c00"] = _replace_reveals(
                replies["c00"], lambda o, w, rec: (w, _reveal(mine[o], sm._S))
            )
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert len(res.contributors) == N7
    assert r.agg.rejection_reasons == {"c00": "share does not open its commitment"}


@pytest.mark.parametrize("active", [True, False])
def test_r12_s_share_of_a_survivor_labelled_s_is_ignored_whole(active: bool) -> None:
    """c00 reveals, for every survivor it holds, the mask-key share with the salt that
    DOES open commit_s, labelled as such (the double-reveal half a colluder can send):
    the aggregator never checks or uses it, the whole reply is ignored ("unusable
    reply"); the sum is exact without c00's shares."""
    r = _R(N7, active)
    for _ in range(MASKED + 1):
        r.step(r.honest())
    mine = r.held()["c00"]
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            replies["c00"] = _replace_reveals(
                replies["c00"], lambda o, w, rec: (sm._S, _reveal(mine[o], sm._S))
            )
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert len(res.contributors) == N7
    assert r.agg.rejection_reasons == {"c00": "unusable reply"}


# -- 3. a relay swapping, replaying or reordering commitments -------------------------------
def _relay_change(r: _R, holder: str, how: str) -> tuple[Tamper, list[str]]:
    """A request tamper: in ``holder``'s MaskRequest, one dealer's record gets the
    commitments changed as ``how`` says. Returns the tamper and the dealer (filled)."""
    dealer: list[str] = []

    def tamper(s: int, requests: dict[str, bytes]) -> dict[str, bytes]:
        if s != MASKED:
            return requests
        m = sm.MaskRequest.from_bytes(requests[holder])
        recs = dict(m.ciphertexts)
        d = sorted(recs)[0]
        dealer.append(d)
        cs, cb, ct = sm.open_sealed(recs[d])
        if how == "swap kinds":
            new = sm.seal_shares(cb, cs, ct)
        elif how == "other dealer":
            other = sorted(recs)[1]
            ocs, ocb, _ = sm.open_sealed(recs[other])
            new = sm.seal_shares(ocs, ocb, ct)
        elif how == "other holder":
            h2 = next(
                h
                for h, q in sorted(requests.items())
                if h != holder and d in dict(sm.MaskRequest.from_bytes(q).ciphertexts)
            )
            rec2 = dict(sm.MaskRequest.from_bytes(requests[h2]).ciphertexts)[d]
            ocs, ocb, _ = sm.open_sealed(rec2)
            new = sm.seal_shares(ocs, ocb, ct)
        elif how == "garbage ciphertext":
            new = sm.seal_shares(cs, cb, ct[:-1] + bytes([ct[-1] ^ 1]))
        else:
            raise AssertionError(how)
        recs[d] = new
        cts = tuple(sorted(recs.items()))
        requests[holder] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return requests

    return tamper, dealer


@pytest.mark.parametrize(
    "how", ["swap kinds", "other dealer", "other holder", "garbage ciphertext"]
)
@pytest.mark.parametrize("active", [True, False])
def test_r12_relayed_commitments_swapped_or_replayed_are_refused(
    active: bool, how: str
) -> None:
    """The relay (the server, or the network) changes the commitments beside one
    dealer's ciphertext to c00 (commit_s <-> commit_b, another dealer's to c00, the
    same dealer's to another holder) or flips a ciphertext bit under valid
    commitments. They are not in the AAD, but c00 checks them against the decrypted
    shares: it refuses the dealer as for a bad ciphertext; that dealer is left out
    ("share refused by a neighbour", the server's own doing here), c00 is never named,
    nothing is accepted that its dealer did not commit to, and the sum of the others
    is exact."""
    r = _R(N7, active)
    tamper, dealer = _relay_change(r, "c00", how)
    res = r.drive(requests=tamper)
    r.assert_exact(res)
    (d,) = dealer
    assert r.agg.rejection_reasons == {d: "share refused by a neighbour"}
    assert sorted(res.contributors) == sorted(set(_ids(N7)) - {d})


@pytest.mark.parametrize("active", [True, False])
def test_r12_reordered_records_change_nothing(active: bool) -> None:
    """The relay reverses the order of the records in every MaskRequest (and of the
    entries it forwards): records are matched by dealer id, not position; no one is
    named, the sum over all seven is exact."""
    r = _R(N7, active)

    def tamper(s: int, requests: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            for c, q in requests.items():
                m = sm.MaskRequest.from_bytes(q)
                cts = tuple(reversed(m.ciphertexts))
                requests[c] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return requests

    res = r.drive(requests=tamper)
    r.assert_exact(res)
    assert len(res.contributors) == N7 and r.agg.rejection_reasons == {}


# -- 4. dealers crafting records: valid-looking commitments over bad contents -------------
def _craft(r: _R, dealer: str, how: str) -> tuple[Tamper, list[str]]:
    """A reply tamper: ``dealer`` (malicious, with its real share key) re-seals its
    record to its first holder as ``how`` says. Returns the tamper and that holder."""
    victim: list[str] = []
    S, B = sm._S, sm._B

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s != 1:
            return replies
        cl = _client(r, dealer)
        st = cl._state
        assert isinstance(st, sa_client._Shared)
        cfg, rid = cl._cfg, cl._round
        m = sm.SharesMessage.from_bytes(replies[dealer])
        recs = dict(m.ciphertexts)
        h = sorted(recs)[0]
        victim.append(h)
        key, aad = sa_ctx._share_key(
            cfg, rid, st.c_shared[h], dealer, h, st.adv.view.u0 + st.seed
        )
        cs, cb, ct = sm.open_sealed(recs[h])
        pt = aead_decrypt(key, ct, aad)
        s_enc, b_enc = pt[:NS], pt[NS : 2 * NS]
        salt_s, salt_b = pt[2 * NS : 2 * NS + 32], pt[2 * NS + 32 :]

        def com(
            which: int,
            sh: bytes,
            salt: bytes,
            *,
            rnd: int = rid,
            dlr: str = dealer,
            hld: str = h,
        ) -> bytes:
            return sa_ctx._share_commitment(cfg, rnd, dlr, hld, which, sh, salt)

        other = sorted(recs)[1]
        if how == "out-of-range share, committed":
            s_enc = _shamir.PRIME.to_bytes(NS, "big")
            cs = com(S, s_enc, salt_s)
        elif how == "salts swapped inside":
            salt_s, salt_b = salt_b, salt_s
        elif how == "commit_s under kind b":
            cs = com(B, s_enc, salt_s)
        elif how == "commit_b for another holder":
            cb = com(B, b_enc, salt_b, hld=other)
        elif how == "commit_s of another round":
            cs = com(S, s_enc, salt_s, rnd=rid + 1)
        elif how == "commit_b naming another dealer":
            cb = com(B, b_enc, salt_b, dlr=other)
        else:
            raise AssertionError(how)
        ct = aead_encrypt(key, s_enc + b_enc + salt_s + salt_b, aad)
        recs[h] = sm.seal_shares(cs, cb, ct)
        cts = tuple(sorted(recs.items()))
        replies[dealer] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return replies

    return tamper, victim


@pytest.mark.parametrize(
    "how",
    [
        "out-of-range share, committed",
        "salts swapped inside",
        "commit_s under kind b",
        "commit_b for another holder",
        "commit_s of another round",
        "commit_b naming another dealer",
    ],
)
@pytest.mark.parametrize("active", [True, False])
def test_r12_dealer_crafted_record_is_refused_by_the_holder(
    active: bool, how: str
) -> None:
    """c01 seals, under its real share key, a record whose commitments are valid
    SHA-256 values but wrong for the holder's check: a committed out-of-range share,
    salts swapped, the kind byte, holder, dealer or round changed in one commitment.
    The honest holder refuses c01 (no field of the binding is skipped); c01 alone is
    named ("share refused by a neighbour") and left out; the sum of the others is
    exact."""
    r = _R(N7, active)
    tamper, victim = _craft(r, "c01", how)
    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert victim and victim[0] in res.contributors
    assert r.agg.rejection_reasons == {"c01": "share refused by a neighbour"}
    assert sorted(res.contributors) == sorted(set(_ids(N7)) - {"c01"})


@pytest.mark.parametrize("active", [True, False])
def test_r12_out_of_range_share_that_opens_drops_only_the_holder(active: bool) -> None:
    """A colluding dealer committed to a 33-byte value >= p for a colluding holder c00
    (which kept it): c00 reveals it with its salt, it opens, it is not a field element.
    The whole reply of c00 is ignored ("unreadable reply: DeserializationError"),
    nothing of it reaches decoding, the owner is not named, the sum is exact."""
    r = _R(N7, active)
    last = _last(active)
    owner: list[str] = []

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            m = sm.UnmaskShares.from_bytes(replies["c00"])
            o, w, rec = m.shares[0]
            owner.append(o)
            bad = _shamir.PRIME.to_bytes(NS, "big") + rec[NS:]
            as_dealt(r.agg, o, "c00", w, bad)
            assert r.agg._opens(o, "c00", w, bad)
            shares = ((o, w, bad), *m.shares[1:])
            replies["c00"] = dataclasses.replace(m, shares=shares).to_bytes()
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert len(res.contributors) == N7
    assert r.agg.rejection_reasons == {"c00": "unreadable reply: DeserializationError"}


# -- 5. t - 1 colluders and the blame rules: no double reveal -------------------------------
def _accuse(accusers: list[str], accused: str) -> Tamper:
    """A request tamper with the effect of ``accusers`` falsely reporting
    ``accused``'s (valid) record as bad: the aggregator holds and checks the record
    ``accused`` really sent, the accusers' MaskedInput lists ``accused`` as rejected
    (signed attestation included), exactly what malicious accusers send."""

    def tamper(s: int, requests: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            for a in accusers:
                m = sm.MaskRequest.from_bytes(requests[a])
                cts = tuple(
                    (d, rec[:-1] + bytes([rec[-1] ^ 1]) if d == accused else rec)
                    for d, rec in m.ciphertexts
                )
                assert cts != m.ciphertexts
                requests[a] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return requests

    return tamper


@pytest.mark.parametrize("active", [True, False])
def test_r12_colluders_accusing_a_survivor_never_get_both_its_secrets(
    active: bool,
) -> None:
    """Double reveal: t - 1 colluding neighbours of an honest victim (which uploads)
    falsely refuse its record, so the aggregator leaves it out of U3 and recovers its
    mask key from the honest holders. The server now has y_victim and s_victim; the
    honest holders reveal no share of b_victim (it is not a survivor), so the
    coalition holds at most its own t - 1 shares of b: x_victim stays hidden. The sum
    of the others is exact."""
    n, victim = 12, "c03"
    r = _R(n, active)
    t = r.agg.graph.threshold
    # the graph is fixed after stage 0: pick the colluders among the victim's holders
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    colluders = sorted(r.agg._nbrs[victim] - {victim})[: t - 1]
    res = r.drive(requests=_accuse(colluders, victim))
    r.assert_exact(res)
    assert victim not in res.contributors
    revealed = r.revealed()
    honest = set(_ids(n)) - set(colluders) - {victim}
    b_victim = {h for h, o, w in revealed if o == victim and w == sm._B}
    s_victim = {h for h, o, w in revealed if o == victim and w == sm._S}
    assert not b_victim & honest
    assert len(b_victim | set(colluders)) <= t - 1  # what the coalition can ever have
    assert len(s_victim & honest) >= t  # the mask key was recovered, as designed
    assert r.agg.rejection_reasons == {victim: "share refused by a neighbour"}


# -- 6. blame correctness -------------------------------------------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r12_false_accusation_costs_availability_only(active: bool) -> None:
    """c00 falsely reports the valid record of its neighbour d as bad: d is left out
    (its upload ignored, its mask key recovered: availability, as documented), the sum
    of the others is exact, and no share of d's self-mask is revealed."""
    r = _R(N7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"] - {"c00"})[0]
    res = r.drive(requests=_accuse(["c00"], d))
    r.assert_exact(res)
    assert sorted(res.contributors) == sorted(set(_ids(N7)) - {d})
    assert not [h for h, o, w in r.revealed() if o == d and w == sm._B]


@pytest.mark.parametrize("active", [True, False])
def test_r12_false_accusation_does_not_name_the_honest_dealer_alone(
    active: bool,
) -> None:
    """r12 FINDING LOW (fixed): when c00 refuses d's record although the record d
    sent decrypts and opens its commitments, d is not named as the culprit alone.
    The aggregator cannot check a refusal (its evidence would be the refuser's
    shares), so it reports a dispute naming both sides: d is left out for "share
    refused by a neighbour" and ``disputes`` names its accuser c00 (before the fix
    the accuser was never named)."""
    r = _R(N7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    d = sorted(r.agg._nbrs["c00"] - {"c00"})[0]
    r.drive(requests=_accuse(["c00"], d))
    assert r.agg.rejection_reasons == {d: "share refused by a neighbour"}
    assert r.agg.disputes == {d: frozenset({"c00"})}


def _laundering(r: _R, which: str, how: str) -> Tamper:
    """``DEALER`` (lying on its ``which`` shares) also answers one message badly
    before its lie is decoded: its masked upload (garbage: a stage-2 dropout) for
    ``which == "s"``; for ``"b"`` its unmask reply as garbage, or with one reveal
    that does not open (a holder's lie)."""
    last = _last(r.agg._cfg.active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if which == "s" and s == MASKED:
            replies[DEALER] = _junk(len(replies[DEALER]))
        if which == "b" and s == last:
            if how == "garbage":
                replies[DEALER] = _junk(len(replies[DEALER]))
            else:
                m = sm.UnmaskShares.from_bytes(replies[DEALER])
                o, w, rec = m.shares[0]
                bad = rec[:-1] + bytes([rec[-1] ^ 1])
                shares = ((o, w, bad), *m.shares[1:])
                replies[DEALER] = dataclasses.replace(m, shares=shares).to_bytes()
        return replies

    return tamper


LAUNDER = [("s", "garbage"), ("b", "garbage"), ("b", "holder lie")]


@pytest.mark.parametrize(("which", "how"), LAUNDER)
@pytest.mark.parametrize("active", [True, False])
def test_r12_lying_dealer_with_a_bad_reply_gives_an_exact_sum(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str, how: str
) -> None:
    """A dealer that deals the bound's worth of wrong shares AND answers one message
    badly (see :func:`_laundering`): its secret is still corrected, the sum is exact,
    it is named (under some reason) and no honest client is."""
    r = _R(12, active)
    with _lying_dealer(monkeypatch, r, DEALER, which, _bound_last) as lied:
        res = r.drive(replies=_laundering(r, which, how))
    assert len(lied) == 3
    r.assert_exact(res)
    assert set(r.agg.rejection_reasons) == {DEALER}


@pytest.mark.parametrize(("which", "how"), LAUNDER)
@pytest.mark.parametrize("active", [True, False])
def test_r12_lying_dealer_cannot_launder_its_blame(
    monkeypatch: pytest.MonkeyPatch, active: bool, which: str, how: str
) -> None:
    """r12 FINDING LOW (fixed: proven misbehaviour replaces an earlier reason): a
    dealer whose wrong shares were corrected is reported as such ("dealt wrong
    self-mask shares" / "dealt wrong mask-key shares"), whatever other reason it
    collected first."""
    r = _R(12, active)
    with _lying_dealer(monkeypatch, r, DEALER, which, _bound_last):
        r.drive(replies=_laundering(r, which, how))
    want = (
        "dealt wrong self-mask shares"
        if which == "b"
        else "dealt wrong mask-key shares"
    )
    assert r.agg.rejection_reasons.get(DEALER) == want


# -- 7. more relay replays, and what blame rests on -----------------------------------------
@pytest.mark.parametrize("active", [True, False])
def test_r12_record_replayed_from_the_previous_round_is_refused(active: bool) -> None:
    """The relay keeps dealer d's record to c00 from round 1 (commitments and
    ciphertext) and relays it in round 2 instead of d's fresh one: the share key and
    the commitments bind the round, c00 refuses d; d alone is left out and named
    ("share refused by a neighbour", the relay's doing), the sum is exact."""
    first = _R(N7, active)
    first.drive()
    old = dict(sm.MaskRequest.from_bytes(first.sent[MASKED]["c00"]).ciphertexts)
    r = _R(N7, active, session=first.session, round_id=2, rng_base=100)
    dealer: list[str] = []

    def tamper(s: int, requests: dict[str, bytes]) -> dict[str, bytes]:
        if s == MASKED:
            m = sm.MaskRequest.from_bytes(requests["c00"])
            d = sorted(set(dict(m.ciphertexts)) & set(old))[0]
            dealer.append(d)
            cts = tuple((s_, old[s_] if s_ == d else rec) for s_, rec in m.ciphertexts)
            requests["c00"] = dataclasses.replace(m, ciphertexts=cts).to_bytes()
        return requests

    res = r.drive(requests=tamper)
    r.assert_exact(res)
    (d,) = dealer
    assert r.agg.rejection_reasons == {d: "share refused by a neighbour"}
    assert sorted(res.contributors) == sorted(set(_ids(N7)) - {d})


@pytest.mark.parametrize("active", [True, False])
def test_r12_reveal_altered_in_transit_costs_blame_not_the_sum(active: bool) -> None:
    """INFO (out of the model of an honest aggregator): replies are not signed (the
    envelope digest is unkeyed), so a relay that flips one salt bit of an honest
    holder's reveal on its way to the aggregator has that holder named exactly as a
    liar. What holds: the share is an erasure and the sum is exact; blame is only as
    authentic as the client-aggregator channel (TLS)."""
    r = _R(N7, active)
    last = _last(active)

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if s == last:
            m = sm.UnmaskShares.from_bytes(replies["c01"])
            o, w, rec = m.shares[0]
            bad = rec[:-1] + bytes([rec[-1] ^ 1])
            shares = ((o, w, bad), *m.shares[1:])
            replies["c01"] = dataclasses.replace(m, shares=shares).to_bytes()
        return replies

    res = r.drive(replies=tamper)
    r.assert_exact(res)
    assert len(res.contributors) == N7
    assert r.agg.rejection_reasons == {"c01": "share does not open its commitment"}


# -- 8. reveals the holder cannot hold never reach the commitment check ------------------
@pytest.mark.parametrize("whose", ["itself", "non-neighbour", "not in U2", "refused"])
@pytest.mark.parametrize("active", [True, False])
def test_r12_reveal_for_an_owner_it_cannot_hold_is_ignored_whole(
    active: bool, whose: str
) -> None:
    """c00 adds to its reveals an entry (random bytes) for an owner it holds no
    commitment of: itself, a non-neighbour, a neighbour that dropped at stage 1 (not
    in U2), or a neighbour whose record it refused. The aggregator has no commitment
    for that pair; the reply is ignored whole before any opening ("unusable reply",
    never a KeyError or an abort); the sum is exact."""
    r = _R(N7, active)
    r.sent.append(dict(r.requests))
    r.step(r.honest())
    nbrs = r.agg._nbrs["c00"] - {"c00"}
    target = {
        "itself": "c00",
        "non-neighbour": min(set(_ids(N7)) - nbrs - {"c00"}),
        "not in U2": max(nbrs),
        "refused": min(nbrs),
    }[whose]
    last = _last(active)

    def replies(s: int, rep: dict[str, bytes]) -> dict[str, bytes]:
        if whose == "not in U2" and s == 1:
            del rep[target]
        if s == last:
            m = sm.UnmaskShares.from_bytes(rep["c00"])
            assert target not in {o for o, _, _ in m.shares}
            which = sm._B if target in r.agg._u3 else sm._S
            extra = (target, which, _junk(sm.REVEAL_SIZE))
            rep["c00"] = dataclasses.replace(m, shares=(*m.shares, extra)).to_bytes()
        return rep

    requests = _accuse(["c00"], target) if whose == "refused" else None
    res = r.drive(requests=requests, replies=replies)
    r.assert_exact(res)
    want = {"c00": "unusable reply"}
    if whose == "refused":
        want[target] = "share refused by a neighbour"
    assert r.agg.rejection_reasons == want
    assert (target in res.contributors) == (whose in ("itself", "non-neighbour"))


# -- 9. blame correctness, as a property over liars -----------------------------------------
@pytest.mark.parametrize("which", ["b", "s"])
@pytest.mark.parametrize("case", range(6))
def test_r12_blame_names_exactly_the_liars_whatever_they_combine(
    monkeypatch: pytest.MonkeyPatch, case: int, which: str
) -> None:
    """A lying dealer (wrong committed shares of its seed, or of its key and then
    dropping, to a random subset of its holders) and 0-2 lying holders (every reveal's
    salt flipped), chosen at random: the outcome is exactly the one predicted from
    the shares that open (liars' shares are erasures, the dealer's wrong shares count
    against the decoding bound of what is left): an exact sum naming exactly the
    holder liars ("share does not open its commitment") and the dealer iff one of its
    wrong shares reached decoding; or InsufficientParticipantsError (a needed secret
    with fewer than t opened shares) or a ProtocolError naming the dealer (beyond the
    bound). No honest client is ever named."""
    rnd = np.random.default_rng(1000 + case + (50 if which == "s" else 0))
    r = _R(12, True)
    idx = {c: i + 1 for i, c in enumerate(sorted(r.ups))}
    inv = {x: c for c, x in idx.items()}
    others = sorted(set(_ids(12)) - {DEALER})
    liars = {str(c) for c in rnd.choice(others, int(rnd.integers(0, 3)), False)}
    last = _last(True)

    def pick(xs: list[int]) -> list[int]:
        return sorted(int(x) for x in rnd.choice(xs, int(rnd.integers(0, 5)), False))

    def tamper(s: int, replies: dict[str, bytes]) -> dict[str, bytes]:
        if which == "s" and s == MASKED:
            del replies[DEALER]
        if s == last:  # the round's state, before an abort forgets it
            u3 = set(r.agg._u3)
            for o in r.agg._needed():
                opened[o] = (r.agg._holders(o) & u3) - liars
            for c in liars:

                def flip(o: str, w: int, rec: bytes) -> tuple[int, bytes]:
                    return w, rec[:-1] + bytes([rec[-1] ^ 1])

                replies[c] = _replace_reveals(replies[c], flip)
        return replies

    t = r.agg.graph.threshold
    opened: dict[str, frozenset[str]] = {}  # needed owner -> holders whose share opens
    outcome: object
    with _lying_dealer(monkeypatch, r, DEALER, which, pick) as lied:
        try:
            outcome = r.drive(replies=tamper)
        except (privagg.InsufficientParticipantsError, privagg.ProtocolError) as e:
            outcome = e
    assert opened
    reaching = {inv[x] for x in lied} & opened.get(DEALER, set())
    m = len(opened.get(DEALER, ()))
    beyond = len(reaching) > _shamir.max_wrong_shares(m, t, checked=True)
    named = set(r.agg.rejection_reasons)
    assert named <= liars | {DEALER}  # never an honest client
    if any(len(v) < t for v in opened.values()):
        assert isinstance(outcome, privagg.InsufficientParticipantsError)
    elif beyond:
        assert isinstance(outcome, privagg.ProtocolError)
        assert repr(DEALER) in str(outcome)
    else:
        assert isinstance(outcome, privagg.Recovered)
        r.assert_exact(outcome)
        want = dict.fromkeys(liars, "share does not open its commitment")
        if reaching:
            want[DEALER] = (
                "dealt wrong self-mask shares"
                if which == "b"
                else "dealt wrong mask-key shares"
            )
        assert r.agg.rejection_reasons == want
