"""Attacks of security review #11 on the additive backend (findings 2 and 4).

Finding 2: a malicious coordinator (server 0) with honest other servers relayed only a
victim's seed entry; the honest server summed it and the holder released that one
client's update as "the aggregate". Now an honest server refuses to sum fewer than
``min_contributions`` clients, every partial sum is authenticated by its server for
exactly the contributor list it summed (HPKE AuthEncap under the server's and the
holder's existing keys), and the holder releases only if every server's list is the
result's list and has at least ``min_contributions`` clients.

Finding 4: every round got id 0 and neither the servers nor the holder remembered the
rounds they served, so a stale ``ClientShares`` of an earlier run was accepted. Now
round ids come from ``session.next_round_id()`` and every server and the holder serve a
round id at most once per session.

The attacker below is server 0: it has everything server 0 sees (client replies, the
servers' replies) and builds any message it likes, but it holds no server's or the
holder's key. Tests read a session's private ``_cfg`` only for public parameters, and
``_server_keys`` only where they model a party that legitimately holds that key.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import privagg
from privagg import (
    DeserializationError,
    InsufficientParticipantsError,
    Layout,
    PrivaggError,
    ProtocolError,
)
from privagg._rng import SystemRng
from privagg.backends import additive as ad
from privagg.backends._masking import ids_digest
from privagg.backends._primitives import (
    aead_encrypt,
    ecdh,
    hkdf,
    new_x25519,
    x25519_key,
    x25519_public,
)
from privagg.backends.additive import _context as ad_ctx
from privagg.hazmat import DeterministicRng
from privagg.protocols import Responder

SIZE = 40
TOL = 2.0**-15  # one client's fixed-point error at scale_bits=16


def _session(
    n: int = 3, n_servers: int = 2, min_contributions: int = 2
) -> tuple[ad.AdditiveSession, dict[str, np.ndarray]]:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    be = ad.AdditiveBackend(n_servers=n_servers, min_contributions=min_contributions)
    s = be.setup(layout, max_clients=n)
    g = np.random.default_rng(11)  # test data only
    return s, {f"c{i}": g.uniform(-1, 1, SIZE) for i in range(n)}


def _collect(
    s: ad.AdditiveSession, ups: dict[str, np.ndarray], rid: int
) -> tuple[ad.AdditiveAggregator, dict[str, bytes]]:
    """Stage 1 with honest clients: the coordinator's view of their replies."""
    agg = s.aggregator(rid, list(ups))
    reqs = agg.start()
    return agg, {c: s.client(c, rid, ups[c]).handle(reqs[c]) for c in ups}


def _honest_round(
    s: ad.AdditiveSession, ups: dict[str, np.ndarray], rid: int
) -> tuple[dict[str, bytes], bytes]:
    agg, reps = _collect(s, ups, rid)
    reqs = agg.receive(reps)
    servers = s.servers(rid)
    agg.receive({sid: servers[sid].handle(reqs[sid]) for sid in servers})
    return reps, agg.result()


def _entry(reply: bytes, sid: str) -> tuple[str, bytes, bytes]:
    m = ad.ClientShares.from_bytes(reply)
    return m.party, m.ephemeral_pk, dict(m.seeds)[sid]


def _ask(
    server: Responder,
    s: ad.AdditiveSession,
    rid: int,
    sid: str,
    entries: tuple[tuple[str, bytes, bytes], ...],
) -> ad.PartialSum:
    req = ad.ServerRequest(s.params_id, rid, sid, entries).to_bytes()
    return ad.PartialSum.from_bytes(server.handle(req))


def _isolate(
    s: ad.AdditiveSession, reps: dict[str, bytes], rid: int, victim: str
) -> bytes:
    """Finding 2: relay only the victim's seeds; release its server-0 share as "the sum"."""
    share0 = ad.ClientShares.from_bytes(reps[victim]).share0
    parts = []
    for sid, srv in s.servers(rid).items():
        p = _ask(srv, s, rid, sid, (_entry(reps[victim], sid),))
        parts.append((sid, p.ephemeral_pk, p.ciphertext))
    return ad.ResultMessage(
        s.params_id, rid, "holder", (victim,), share0, tuple(parts)
    ).to_bytes()


# -- finding 2: a coordinator isolating one client -------------------------------------
def test_isolation_attack_reproduced_when_min_contributions_is_explicitly_1() -> None:
    """What the old code allowed by default, now only after an explicit opt-in: the
    holder releases exactly one client's update."""
    s, ups = _session(3, min_contributions=1)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    rec = s.holder().recover(_isolate(s, reps, rid, "c1"))
    assert rec.contributors == ("c1",)
    assert np.max(np.abs(rec.vector - ups["c1"])) <= TOL  # the victim's update


@pytest.mark.parametrize("n_servers", [2, 4])
def test_isolation_attack_refused_by_default(n_servers: int) -> None:
    s, ups = _session(3, n_servers)
    assert s.min_contributions == 2
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    with pytest.raises(InsufficientParticipantsError, match="min_contributions=2"):
        _isolate(s, reps, rid, "c1")
    # and the refusal did not use up the round: the honest round still completes
    agg, reps2 = _collect(s, ups, s.next_round_id())
    assert agg.receive(reps2)


def test_holder_refuses_a_single_contributor_even_if_a_server_summed_one() -> None:
    """Defence in depth: a server that (misconfigured) sums one client's seeds; the
    holder still refuses to release that sum."""
    s, ups = _session(3)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    lax = dataclasses.replace(s._cfg, min_contributions=1)  # same params_id and keys
    srv = ad.AdditiveServer(
        lax, "server-1", rid, s._server_keys["server-1"], DeterministicRng(1)
    )
    p = _ask(srv, s, rid, "server-1", (_entry(reps["c1"], "server-1"),))
    share0 = ad.ClientShares.from_bytes(reps["c1"]).share0
    res = ad.ResultMessage(
        s.params_id,
        rid,
        "holder",
        ("c1",),
        share0,
        (("server-1", p.ephemeral_pk, p.ciphertext),),
    )
    with pytest.raises(InsufficientParticipantsError):
        s.holder().recover(res.to_bytes())
    # padding the claimed list does not help: server-1 authenticated ("c1",) only
    padded = dataclasses.replace(res, contributors=("c0", "c1"))
    with pytest.raises(DeserializationError):
        s.holder().recover(padded.to_bytes())


def test_servers_summing_different_sets_are_refused_by_the_holder() -> None:
    """Server 0 gives server-1 all three clients and server-2 only two; whichever list it
    then shows the holder, one server's authenticated list differs: no release."""
    s, ups = _session(3, 3)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    servers = s.servers(rid)
    lists = {"server-1": ("c0", "c1", "c2"), "server-2": ("c0", "c1")}
    parts = []
    for sid, ids in lists.items():
        p = _ask(servers[sid], s, rid, sid, tuple(_entry(reps[c], sid) for c in ids))
        assert p.contributors == ids
        parts.append((sid, p.ephemeral_pk, p.ciphertext))
    share0 = sum(
        (ad.ClientShares.from_bytes(reps[c]).share0 for c in ("c0", "c1")),
        start=np.zeros(SIZE, s._cfg.dtype),
    )
    for claimed in lists.values():
        res = ad.ResultMessage(
            s.params_id, rid, "holder", claimed, share0, tuple(parts)
        )
        with pytest.raises(DeserializationError):
            s.holder().recover(res.to_bytes())


def _forged_partial(
    s: ad.AdditiveSession, rid: int, sid: str, ids: tuple[str, ...], static: bytes
) -> tuple[str, bytes, bytes]:
    """A partial sum made by server 0 itself: zeros, under a fresh ephemeral key and the
    given stand-in for the static Diffie-Hellman term (server 0 cannot compute it)."""
    cfg = s._cfg
    eph = x25519_key(new_x25519(DeterministicRng(5)))
    epk = x25519_public(eph.private_bytes_raw())
    key, aad = ad_ctx._partial_key(
        cfg, rid, sid, ids, epk, ecdh(eph, cfg.holder_pk), static
    )
    return sid, epk, aead_encrypt(key, bytes(4 * SIZE), aad)


def test_coordinator_cannot_forge_a_server_partial() -> None:
    s, ups = _session(3)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    cfg = s._cfg
    ids = ("c0", "c1", "c2")
    share0 = ad.ClientShares.from_bytes(reps["c1"]).share0
    # v1-style: the key from the ephemeral Diffie-Hellman alone, which anyone can make
    eph = x25519_key(new_x25519(DeterministicRng(6)))
    epk = x25519_public(eph.private_bytes_raw())
    ctx = ad_ctx._ctx(cfg, rid, "server-1") + ids_digest(ids) + epk
    key = hkdf(
        ecdh(eph, cfg.holder_pk),
        salt=cfg.params_id,
        info=ad_ctx._DOMAIN + b"partial-key" + ctx,
    )
    v1 = (
        "server-1",
        epk,
        aead_encrypt(key, bytes(4 * SIZE), ad_ctx._DOMAIN + b"partial" + ctx),
    )
    # AuthEncap shape with a static term of server 0's own making
    own = _forged_partial(s, rid, "server-1", ids, ecdh(eph, cfg.server_pks[0]))
    for forged in (v1, own):
        res = ad.ResultMessage(s.params_id, rid, "holder", ids, share0, (forged,))
        with pytest.raises(DeserializationError):
            s.holder().recover(res.to_bytes())


def test_partial_sum_cannot_move_to_another_server_or_round() -> None:
    s, ups = _session(3, 3)
    rid = s.next_round_id()
    _, result = _honest_round(s, ups, rid)
    msg = ad.ResultMessage.from_bytes(result)
    (s1, e1, c1), (s2, e2, c2) = msg.partials
    swapped = dataclasses.replace(msg, partials=((s1, e2, c2), (s2, e1, c1)))
    with pytest.raises(DeserializationError):
        s.holder().recover(swapped.to_bytes())
    # into a later round (the holder has not served it): bound to the round id
    later = dataclasses.replace(msg, round_id=s.next_round_id())
    with pytest.raises(DeserializationError):
        s.holder().recover(later.to_bytes())
    assert np.allclose(
        s.holder().recover(result).vector, sum(ups.values()), atol=3 * TOL
    )


def test_odd_length_authenticated_partial_is_a_deserialization_error() -> None:
    """A partial sum that authenticates (made with server-1's key) but whose plaintext
    is not P ring words is refused without numpy's ValueError."""
    s, ups = _session(2)
    rid = s.next_round_id()
    _, result = _honest_round(s, ups, rid)
    msg = ad.ResultMessage.from_bytes(result)
    cfg = s._cfg
    sk = x25519_key(s._server_keys["server-1"].unsafe_material())
    eph = x25519_key(new_x25519(DeterministicRng(9)))
    epk = x25519_public(eph.private_bytes_raw())
    key, aad = ad_ctx._partial_key(
        cfg,
        rid,
        "server-1",
        msg.contributors,
        epk,
        ecdh(eph, cfg.holder_pk),
        ecdh(sk, cfg.holder_pk),
    )
    ct = aead_encrypt(key, b"\x01" * (4 * SIZE - 1), aad)
    bad = dataclasses.replace(msg, partials=(("server-1", epk, ct),))
    with pytest.raises(DeserializationError):
        s.holder().recover(bad.to_bytes())


def test_sybil_clients_remain_outside_the_guarantee() -> None:
    """The documented limit: clients are not authenticated, so a coordinator that makes
    up a client ("ghost") of its own meets min_contributions=2 and subtracts the ghost.
    Deployments need authenticated client admission (see docs/backends/additive.md)."""
    s, ups = _session(3)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    ghost_update = np.zeros(SIZE)
    ghost_req = ad.ShareRequest(s.params_id, rid, "ghost").to_bytes()
    ghost = s.client("ghost", rid, ghost_update, rng=DeterministicRng(2)).handle(
        ghost_req
    )
    ids = ("c1", "ghost")
    parts = []
    for sid, srv in s.servers(rid).items():
        p = _ask(srv, s, rid, sid, (_entry(reps["c1"], sid), _entry(ghost, sid)))
        parts.append((sid, p.ephemeral_pk, p.ciphertext))
    share0 = sum(
        (ad.ClientShares.from_bytes(r).share0 for r in (reps["c1"], ghost)),
        start=np.zeros(SIZE, s._cfg.dtype),
    )
    rec = s.holder().recover(
        ad.ResultMessage(
            s.params_id, rid, "holder", ids, share0, tuple(parts)
        ).to_bytes()
    )
    assert np.max(np.abs(rec.vector - ups["c1"])) <= 2 * TOL


# -- finding 4: round-id reuse ----------------------------------------------------------
def test_round_ids_are_fresh_per_round() -> None:
    s, ups = _session(3)
    ids = [s.next_round_id() for _ in range(3)]
    assert len(set(ids)) == 3
    privagg.run_round(s, {c: {"w": u} for c, u in ups.items()})
    privagg.run_round(s, {c: {"w": u} for c, u in ups.items()})
    assert s.next_round_id() not in set(ids)


def test_stale_client_shares_from_an_earlier_round_are_refused() -> None:
    """Finding 4: replies of an earlier run used to fit (every run was round 0)."""
    s, ups = _session(3)
    rid1 = s.next_round_id()
    stale, _ = _honest_round(s, ups, rid1)
    rid2 = s.next_round_id()
    assert rid2 != rid1
    agg, reps = _collect(s, ups, rid2)
    reps["c0"] = stale["c0"]
    # refused: c0 counts as not answering (since the drop-on-garbage change)
    to_servers = agg.receive(reps)
    assert agg.rejected == {"c0"} and set(to_servers) == {"server-1"}
    # re-sealed under the new round id, the seeds no longer open (round in the AAD)
    m = ad.ClientShares.from_bytes(stale["c0"])
    resealed = dataclasses.replace(m, round_id=rid2).to_bytes()
    srv = s.servers(rid2)["server-1"]
    entries = (_entry(resealed, "server-1"), _entry(reps["c1"], "server-1"))
    with pytest.raises(DeserializationError):
        _ask(srv, s, rid2, "server-1", entries)


def test_a_reused_round_id_is_refused_by_every_role() -> None:
    """Server 0 re-runs a finished round with that round's own replies, to get a second
    partial sum over a subset (c1 alone is their difference); servers and holder refuse."""
    s, ups = _session(3)
    rid = s.next_round_id()
    reps, result = _honest_round(s, ups, rid)
    s.holder().recover(result)
    with pytest.raises(ProtocolError, match="already aggregated"):
        s.aggregator(rid, list(ups))
    subset = ("c0", "c2")
    for sid, srv in s.servers(rid).items():
        with pytest.raises(ProtocolError, match="already served"):
            _ask(srv, s, rid, sid, tuple(_entry(reps[c], sid) for c in subset))
    with pytest.raises(ProtocolError, match="already served"):
        s.holder().recover(result)  # a fresh holder object of the same session
    with pytest.raises(ProtocolError):
        privagg.run_round(s, {c: {"w": u} for c, u in ups.items()}, round_id=rid)
    assert s.next_round_id() != rid


def test_refused_round_is_not_marked_served() -> None:
    """Only a released partial sum uses up a round: a refused request does not."""
    s, ups = _session(3)
    rid = s.next_round_id()
    _, reps = _collect(s, ups, rid)
    srv = s.servers(rid)["server-1"]
    with pytest.raises(InsufficientParticipantsError):
        _ask(srv, s, rid, "server-1", (_entry(reps["c0"], "server-1"),))
    p = _ask(
        s.servers(rid)["server-1"],
        s,
        rid,
        "server-1",
        tuple(_entry(reps[c], "server-1") for c in ("c0", "c1", "c2")),
    )
    assert p.contributors == ("c0", "c1", "c2")


# -- second review (independent) ------------------------------------------------------------
def test_directly_built_roles_share_the_round_register() -> None:
    """Second review, finding 1: a server or holder object built directly (one process
    per role, a fresh object per request) used to start with an empty register, so the
    same round could be summed twice over different client sets and the difference of
    the two releases was one client's update. Role objects of one (params, party) now
    share a process-wide register."""
    sess = ad.AdditiveBackend(bound=1.0, n_servers=2).setup(
        Layout.from_arrays({"w": np.zeros(4)}), max_clients=4
    )
    cfg = sess._cfg
    sid = cfg.server_ids[-1]
    key = sess.servers(sess.next_round_id())[sid]._key  # type: ignore[attr-defined]
    rid = sess.next_round_id()
    a = ad.AdditiveServer(cfg, sid, rid, key, SystemRng())
    b = ad.AdditiveServer(cfg, sid, rid, key, SystemRng())
    assert a._served is b._served
    a._served.claim(rid)
    with pytest.raises(ProtocolError):
        b._served.check(rid)
    h1 = ad.AdditiveHolder(cfg, sess.holder()._key)
    h2 = ad.AdditiveHolder(cfg, sess.holder()._key)
    assert h1._recovered is h2._recovered


def test_strided_memoryview_is_a_typed_error() -> None:
    """Second review, finding 6: a non-contiguous memoryview raised BufferError."""
    from privagg.backends import _wire

    data = memoryview(bytes(200))[::2]
    try:
        _wire.peek_header(data)  # type: ignore[arg-type]  # unverified: may parse
    except PrivaggError:
        pass
    with pytest.raises(PrivaggError):
        privagg.from_bytes(data)  # type: ignore[arg-type]
