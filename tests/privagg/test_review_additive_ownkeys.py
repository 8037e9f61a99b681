"""Outside review of the additive backend without a dealer (``Dealing.OWN_KEYS``).

Each test runs one attack against the distributed roles (every role loaded from the
public directory and, for a key holder, its own secret blob) and shows that it is
refused, or, for a documented limit, exactly what it achieves. The attacker is server 0
(the coordinator) unless the test says otherwise: it sees every message, builds any
message it likes and holds no key holder's secret.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Role
from privagg.backends import additive as ad
from privagg.backends.additive import _context as ad_ctx
from privagg.backends.additive import _material as mat
from privagg.distribution import directory_fingerprint as _pin
from privagg.distribution import key_holders, make_directory, own_key, session_for_role
from privagg.envelope import Header, PayloadWriter, Scheme, open_envelope, seal
from privagg.keys import fingerprint

LAYOUT = privagg.Layout.from_arrays({"w": np.zeros(16)})
CLIENTS = ["c0", "c1", "c2"]
KW: dict[str, Any] = {"max_clients": 3}
# Curve25519 points of small order (RFC 7748 section 6.1; cr.yp.to/ecdh.html#validate)
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def _backend(n_servers: int = 3) -> ad.AdditiveBackend:
    return ad.AdditiveBackend(bound=1.0, n_servers=n_servers)


def _world(n_servers: int = 3) -> tuple[ad.AdditiveBackend, dict[str, Any], bytes]:
    """Every key holder's own key, the operator's directory, every role's session."""
    be = _backend(n_servers)
    keys = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
    directory = make_directory(be, [k.public for k in keys.values()])
    pin = _pin(directory)  # what the operator publishes out of band
    sessions: dict[str, Any] = {
        "aggregator": session_for_role(
            be, LAYOUT, Role.AGGREGATOR, material=directory, pinned=pin, **KW
        ),
        **{
            c: session_for_role(
                be,
                LAYOUT,
                Role.CLIENT,
                party_id=c,
                material=directory,
                pinned=pin,
                **KW,
            )
            for c in CLIENTS
        },
        **{
            p: session_for_role(
                be,
                LAYOUT,
                k.role,
                party_id=p,
                material=directory,
                secret=k.secret,
                pinned=pin,
                **KW,
            )
            for p, k in keys.items()
        },
    }
    sessions["keys"] = keys
    return be, sessions, directory


def _updates() -> dict[str, np.ndarray]:
    g = np.random.default_rng(5)  # test data only
    return {c: g.uniform(-0.9, 0.9, LAYOUT.size) for c in CLIENTS}


def _client_replies(
    s: dict[str, Any], rid: int, ups: dict[str, np.ndarray]
) -> tuple[Any, dict[str, bytes]]:
    agg = s["aggregator"].aggregator(rid, CLIENTS)
    reqs = agg.start()
    return agg, {c: s[c].client(c, rid, ups[c]).handle(reqs[c]) for c in CLIENTS}


def _server(s: dict[str, Any], sid: str, rid: int) -> Any:
    return s[sid].servers(rid)[sid]


def _entry(reply: bytes, sid: str) -> tuple[str, bytes, bytes]:
    m = ad.ClientShares.from_bytes(reply)
    return m.party, m.ephemeral_pk, dict(m.seeds)[sid]


def _sk(k: Any) -> bytes:
    return mat.read_own_key(k.secret)[2]


def _reseal(kind: int, params_id: bytes, payload: bytes) -> bytes:
    return seal(Header(Scheme.ADDITIVE, kind, params_id, 0), payload)


# -- key substitution: the coordinator's own directory ---------------------------------
def test_coordinator_cannot_make_a_client_encrypt_to_its_own_key() -> None:
    """A coordinator that builds a directory with its own key as server-1's (and the
    holder's) drives a session whose params_id no client with the operator's directory
    accepts: the client encrypts only to keys from its own copy of the directory."""
    be, s, genuine = _world()
    mine = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
    fake = make_directory(be, [k.public for k in mine.values()])
    evil = session_for_role(
        be, LAYOUT, Role.AGGREGATOR, material=fake, pinned=_pin(fake), **KW
    )
    assert evil.params_id != s["aggregator"].params_id
    reqs = evil.aggregator(1, CLIENTS).start()
    with pytest.raises(privagg.PrivaggError):
        s["c0"].client("c0", 1, np.zeros(LAYOUT.size)).handle(reqs["c0"])
    # the coordinator's key cannot stand in for server-1's against the genuine
    # directory either (its key is not the directory's)
    with pytest.raises(privagg.ParameterMismatchError, match="directory"):
        be.load_role(
            LAYOUT,
            "server",
            "server-1",
            genuine,
            secret=mine["server-1"].secret,
            pinned=_pin(genuine),
            **KW,
        )


# -- a server's partial sum over one client, or two sets, or a relabelled round -------
def test_server_refuses_single_client_second_set_and_relabelled_round() -> None:
    _, s, _ = _world()
    _, reps = _client_replies(s, 7, _updates())
    srv = _server(s, "server-1", 7)
    pid = s["aggregator"].params_id

    def ask(server: Any, rid: int, entries: tuple[Any, ...]) -> bytes:
        out: bytes = server.handle(
            ad.ServerRequest(pid, rid, "server-1", entries).to_bytes()
        )
        return out

    with pytest.raises(privagg.InsufficientParticipantsError):
        ask(srv, 7, (_entry(reps["c0"], "server-1"),))
    # the same entry twice does not count twice (a repeated id is malformed)
    e0 = _entry(reps["c0"], "server-1")
    with pytest.raises(privagg.DeserializationError):
        ad.ServerRequest.from_bytes(
            ad.ServerRequest(pid, 7, "server-1", (e0, e0)).to_bytes()
        )
    # an entry relabelled as another client does not decrypt
    with pytest.raises(privagg.DeserializationError):
        ask(_server(s, "server-1", 7), 7, (e0, ("c9", e0[1], e0[2])))
    # the round's seeds do not open under another round id
    with pytest.raises(privagg.DeserializationError):
        ask(
            _server(s, "server-1", 8),
            8,
            tuple(_entry(reps[c], "server-1") for c in CLIENTS),
        )
    # serve {c0, c1}; then {c0, c1, c2} for the same round: refused (a fresh role
    # object of the same session too)
    ask(
        _server(s, "server-1", 7),
        7,
        tuple(_entry(reps[c], "server-1") for c in CLIENTS[:2]),
    )
    with pytest.raises(privagg.ProtocolError, match="already served"):
        ask(
            _server(s, "server-1", 7),
            7,
            tuple(_entry(reps[c], "server-1") for c in CLIENTS),
        )


@pytest.mark.parametrize("bad", LOW_ORDER)
def test_low_order_keys_from_the_coordinator_are_refused_and_burn_nothing(
    bad: bytes,
) -> None:
    """A low-order ephemeral key (X25519 gives an all-zero secret) in a server request
    or in a partial sum handed to the holder: a typed error, and the round stays
    usable for the genuine messages."""
    _, s, _ = _world()
    agg, reps = _client_replies(s, 3, _updates())
    pid = s["aggregator"].params_id
    entries = [_entry(reps[c], "server-1") for c in CLIENTS]
    entries[0] = (entries[0][0], bad, entries[0][2])
    with pytest.raises(privagg.ProtocolError):
        _server(s, "server-1", 3).handle(
            ad.ServerRequest(pid, 3, "server-1", tuple(entries)).to_bytes()
        )
    to_servers = agg.receive(reps)
    agg.receive({sid: _server(s, sid, 3).handle(r) for sid, r in to_servers.items()})
    msg = ad.ResultMessage.from_bytes(agg.result())
    parts = list(msg.partials)
    parts[0] = (parts[0][0], bad, parts[0][2])
    forged = ad.ResultMessage(
        pid, 3, "holder", msg.contributors, msg.partial0.copy(), tuple(parts)
    ).to_bytes()
    holder = s["holder"].holder()
    with pytest.raises(privagg.ProtocolError):
        holder.recover(forged)
    got = holder.recover(agg.result())
    assert got.contributors == tuple(CLIENTS)


# -- a server colluding with the coordinator (n_servers = 3) ---------------------------
def test_coordinator_and_one_server_learn_only_a_sum_of_min_contributions() -> None:
    """Server 0 and server-1 collude (server-1's key is theirs); server-2 and the
    holder are honest. They forge server-1's partial sum at will and use the holder as
    an oracle, but server-2's partial sum covers >= min_contributions clients, once per
    round: what the holder releases is a sum over two real clients, never one update."""
    _, s, _ = _world()
    ups = _updates()
    agg, reps = _client_replies(s, 4, ups)
    pid = s["aggregator"].params_id
    cfg = s["aggregator"]._cfg  # public parameters only
    victim, other = "c0", "c1"
    srv2 = _server(s, "server-2", 4)
    with pytest.raises(privagg.InsufficientParticipantsError):
        srv2.handle(
            ad.ServerRequest(
                pid, 4, "server-2", (_entry(reps[victim], "server-2"),)
            ).to_bytes()
        )
    pair = tuple(_entry(reps[c], "server-2") for c in (victim, other))
    p2 = ad.PartialSum.from_bytes(
        srv2.handle(ad.ServerRequest(pid, 4, "server-2", pair).to_bytes())
    )
    with pytest.raises(privagg.ProtocolError, match="already served"):
        _server(s, "server-2", 4).handle(
            ad.ServerRequest(
                pid, 4, "server-2", (*pair, _entry(reps["c2"], "server-2"))
            ).to_bytes()
        )
    # the colluders' own server-1 partial: its key is theirs, so it opens at the holder
    p1 = ad.PartialSum.from_bytes(
        _server(s, "server-1", 4).handle(
            ad.ServerRequest(
                pid,
                4,
                "server-1",
                tuple(_entry(reps[c], "server-1") for c in (victim, other)),
            ).to_bytes()
        )
    )
    # a claimed single-contributor result with server-2's pair partial: refused
    share0 = {c: ad.ClientShares.from_bytes(reps[c]).share0 for c in CLIENTS}
    single = ad.ResultMessage(
        pid,
        4,
        "holder",
        (victim,),
        share0[victim].copy(),
        (
            ("server-1", p1.ephemeral_pk, p1.ciphertext),
            ("server-2", p2.ephemeral_pk, p2.ciphertext),
        ),
    ).to_bytes()
    holder = s["holder"].holder()
    with pytest.raises(privagg.PrivaggError):
        holder.recover(single)
    # the best they get: the sum of the two real updates
    both = ad.ResultMessage(
        pid,
        4,
        "holder",
        (victim, other),
        (share0[victim] + share0[other]).astype(cfg.dtype),
        (
            ("server-1", p1.ephemeral_pk, p1.ciphertext),
            ("server-2", p2.ephemeral_pk, p2.ciphertext),
        ),
    ).to_bytes()
    got = holder.recover(both)
    tol = 2 * _backend().tolerance(n_clients=2, max_abs=0.9)
    np.testing.assert_allclose(got.vector, ups[victim] + ups[other], atol=tol)
    assert np.max(np.abs(got.vector - ups[victim])) > 10 * tol
    del agg


# -- malicious clients -----------------------------------------------------------------
def test_client_cannot_answer_for_another_party_or_reuse_its_seeds() -> None:
    _, s, _ = _world()
    agg, reps = _client_replies(s, 6, _updates())
    # c1 sends c0's reply as its own: the label is checked, c1 counts as not answering
    agg.receive({**reps, "c1": reps["c0"]})
    assert agg.rejected == {"c1"}
    # c1 relabels c0's shares as its own (fresh envelope): the seeds are bound to c0,
    # so the server cannot open them and aborts instead of summing c0 twice
    agg2, reps2 = _client_replies(s, 9, _updates())
    m0 = ad.ClientShares.from_bytes(reps2["c0"])
    stolen = ad.ClientShares(
        m0.params_id, 9, "c1", m0.ephemeral_pk, m0.share0, m0.seeds
    )
    to_servers = agg2.receive({**reps2, "c1": stolen.to_bytes()})
    with pytest.raises(privagg.DeserializationError):
        _server(s, "server-1", 9).handle(to_servers["server-1"])


def test_inconsistent_client_shares_shift_the_sum_undetected() -> None:
    """Documented limit (SECURITY.md, no output integrity): a client that adds a value
    to its server-0 share shifts the released sum by it, inside the sized range,
    without any party noticing. It learns nothing from doing so."""
    be, s, _ = _world()
    ups = _updates()
    agg, reps = _client_replies(s, 11, ups)
    m = ad.ClientShares.from_bytes(reps["c2"])
    cfg = s["aggregator"]._cfg
    shift = np.zeros(LAYOUT.size, dtype=cfg.dtype)
    shift[0] = 1 << 16  # +1.0 at scale_bits = 16
    bent = ad.ClientShares(
        m.params_id,
        11,
        "c2",
        m.ephemeral_pk,
        (m.share0 + shift).astype(cfg.dtype),
        m.seeds,
    )
    to_servers = agg.receive({**reps, "c2": bent.to_bytes()})
    agg.receive({sid: _server(s, sid, 11).handle(r) for sid, r in to_servers.items()})
    got = s["holder"].holder().recover(agg.result())
    want = sum(ups.values())
    want[0] += 1.0
    np.testing.assert_allclose(
        got.vector, want, atol=be.tolerance(n_clients=3, max_abs=0.9)
    )


# -- crafted key material --------------------------------------------------------------
def _directory_payload(entries: list[tuple[str, str, bytes]]) -> tuple[bytes, bytes]:
    w = PayloadWriter().u32(len(entries))
    parts: list[bytes] = []
    for party, role, pk in entries:
        w.text(party).text(role).blob(pk)
        parts += [party.encode(), role.encode(), pk]
    return fingerprint(b"additive/directory", *parts), w.getvalue()


def _entries(
    be: ad.AdditiveBackend, keys: dict[str, Any]
) -> list[tuple[str, str, bytes]]:
    pks = {p: mat.read_public_key(k.public)[2] for p, k in keys.items()}
    roles = {p: r.value for p, r in key_holders(be).items()}
    return [(p, roles[p], pks[p]) for p in sorted(pks)]


def _load_agg(be: ad.AdditiveBackend, directory: bytes) -> Any:
    # pinned to the file given, so that the canonical-form checks are what refuse it
    return be.load_role(
        LAYOUT, "aggregator", None, directory, pinned=_pin(directory), **KW
    )


def test_directory_must_be_canonical() -> None:
    """One set of keys, one directory: reordered entries, a header that does not
    fingerprint them, a non-canonical key encoding or a low-order key are refused."""
    be, s, directory = _world()
    entries = _entries(be, s["keys"])
    did, payload = _directory_payload(entries)
    assert _reseal(mat.DIRECTORY_KIND, did, payload) == directory
    _load_agg(be, directory)
    bad: list[bytes] = []
    did2, p2 = _directory_payload(list(reversed(entries)))  # unsorted
    bad.append(_reseal(mat.DIRECTORY_KIND, did2, p2))
    bad.append(_reseal(mat.DIRECTORY_KIND, bytes(32), payload))  # header not its digest
    bad.append(seal(Header(Scheme.ADDITIVE, mat.DIRECTORY_KIND, did, 5), payload))
    for i in range(len(entries)):
        party, role, pk = entries[i]
        # the same key with the ignored top bit set, and u + p: X25519 reads both as pk
        u = int.from_bytes(pk, "little")
        variants = [bytes(pk[:31]) + bytes([pk[31] | 0x80])]
        if u + 2**255 - 19 < 2**256:
            variants.append((u + 2**255 - 19).to_bytes(32, "little"))
        for alt in [*variants, *LOW_ORDER]:
            e = list(entries)
            e[i] = (party, role, alt)
            bad.append(_reseal(mat.DIRECTORY_KIND, *_directory_payload(e)))
        # a party listed in the wrong role
        e = list(entries)
        e[i] = (party, "holder" if role == "server" else "server", pk)
        with pytest.raises(privagg.ParameterMismatchError):
            _load_agg(be, _reseal(mat.DIRECTORY_KIND, *_directory_payload(e)))
    # an extra key holder
    extra = [*entries, ("server-9", "server", entries[0][2])]
    with pytest.raises(privagg.ParameterMismatchError):
        _load_agg(be, _reseal(mat.DIRECTORY_KIND, *_directory_payload(sorted(extra))))
    # a huge count, a truncated payload, trailing bytes
    bad.append(_reseal(mat.DIRECTORY_KIND, did, struct.pack(">I", 0xFFFFFFFF)))
    bad.append(_reseal(mat.DIRECTORY_KIND, did, payload[:-1]))
    bad.append(_reseal(mat.DIRECTORY_KIND, did, payload + b"\x00"))
    for blob in bad:
        with pytest.raises(privagg.DeserializationError):
            _load_agg(be, blob)


def test_public_and_own_key_blobs_are_bound_to_their_party() -> None:
    be, s, directory = _world()
    keys = s["keys"]
    k1 = keys["server-1"]
    role, party, pk = mat.read_public_key(k1.public)
    sk = _sk(k1)
    # a public blob relabelled as server-2's under the old header: refused
    relabelled = _reseal(
        mat.PUBLIC_KEY_KIND,
        open_envelope(k1.public)[0].params_id,
        PayloadWriter().text("server").text("server-2").blob(pk).getvalue(),
    )
    with pytest.raises(privagg.DeserializationError):
        mat.read_public_key(relabelled)
    with pytest.raises(privagg.DeserializationError):
        make_directory(be, [relabelled, keys["server-2"].public, keys["holder"].public])
    # server-1's secret fully re-sealed as "server-2" (consistent header): it reads, but
    # its key is not server-2's in the directory
    pub2, sec2 = mat.seal_own_key("server", "server-2", sk)
    assert mat.read_own_key(sec2)[:2] == ("server", "server-2")
    with pytest.raises(privagg.ParameterMismatchError, match="directory"):
        be.load_role(
            LAYOUT,
            "server",
            "server-2",
            directory,
            secret=sec2,
            pinned=_pin(directory),
            **KW,
        )
    # ... or as the holder
    _, sech = mat.seal_own_key("holder", "holder", sk)
    with pytest.raises(privagg.ParameterMismatchError, match="directory"):
        be.load_role(
            LAYOUT, "holder", None, directory, secret=sech, pinned=_pin(directory), **KW
        )
    # an own-key blob whose public half is not its secret's, or a non-32-byte secret
    bogus = PayloadWriter().text(role).text(party).blob(pk).blob(bytes(32)).getvalue()
    with pytest.raises(privagg.DeserializationError):
        mat.read_own_key(_reseal(mat.OWN_KEY_KIND, mat._key_id(role, party, pk), bogus))
    short = PayloadWriter().text(role).text(party).blob(pk).blob(sk[:31]).getvalue()
    with pytest.raises(privagg.DeserializationError):
        mat.read_own_key(_reseal(mat.OWN_KEY_KIND, mat._key_id(role, party, pk), short))
    # a public key with a non-canonical encoding
    hi = bytes(pk[:31]) + bytes([pk[31] | 0x80])
    with pytest.raises(privagg.DeserializationError):
        mat.read_public_key(
            _reseal(
                mat.PUBLIC_KEY_KIND,
                mat._key_id(role, party, hi),
                PayloadWriter().text(role).text(party).blob(hi).getvalue(),
            )
        )
    del pub2


def test_refusals_never_show_a_secret() -> None:
    """Errors raised on wrong or crafted key material carry no secret bytes."""
    be, s, directory = _world()
    keys = s["keys"]
    secrets = {p: _sk(k) for p, k in keys.items()}
    shown: list[str] = []
    attempts = [
        lambda: be.load_role(
            LAYOUT,
            "server",
            "server-2",
            directory,
            secret=keys["server-1"].secret,
            pinned=_pin(directory),
            **KW,
        ),
        lambda: be.load_role(
            LAYOUT,
            "holder",
            None,
            directory,
            secret=keys["server-1"].secret,
            pinned=_pin(directory),
            **KW,
        ),
        lambda: be.load_role(
            LAYOUT,
            "aggregator",
            None,
            directory,
            secret=keys["holder"].secret,
            pinned=_pin(directory),
            **KW,
        ),
        lambda: be.load_role(
            LAYOUT,
            "aggregator",
            None,
            keys["holder"].secret,
            pinned=_pin(keys["holder"].secret),
            **KW,
        ),
        lambda: mat.read_own_key(keys["holder"].secret[:-1] + b"\x00"),
        lambda: make_directory(be, [keys["holder"].secret]),
    ]
    for attempt in attempts:
        with pytest.raises(privagg.PrivaggError) as info:
            attempt()
        exc: BaseException | None = info.value
        while exc is not None:
            shown.append(repr(exc) + str(exc))
            exc = exc.__cause__ or exc.__context__
    text = "".join(shown)
    for sk in secrets.values():
        assert sk.hex() not in text and repr(sk) not in text
    held = s["server-1"]
    assert all(sk.hex() not in repr(held.servers(1)) for sk in secrets.values())


def test_register_of_a_loaded_server_is_per_session_and_claims_after_success() -> None:
    """A refused request (too few entries, undecryptable entry) does not mark the round
    served; the genuine request afterwards is served once."""
    _, s, _ = _world()
    _, reps = _client_replies(s, 12, _updates())
    pid = s["aggregator"].params_id
    e = tuple(_entry(reps[c], "server-1") for c in CLIENTS)
    srv_session = s["server-1"]
    with pytest.raises(privagg.InsufficientParticipantsError):
        srv_session.servers(12)["server-1"].handle(
            ad.ServerRequest(pid, 12, "server-1", e[:1]).to_bytes()
        )
    assert 12 not in srv_session._served["server-1"]
    out = srv_session.servers(12)["server-1"].handle(
        ad.ServerRequest(pid, 12, "server-1", e).to_bytes()
    )
    assert ad.PartialSum.from_bytes(out).contributors == tuple(CLIENTS)
    assert isinstance(srv_session._served["server-1"], ad_ctx._RoundRegister)
    with pytest.raises(privagg.ProtocolError):
        srv_session.servers(12)["server-1"].handle(
            ad.ServerRequest(pid, 12, "server-1", e).to_bytes()
        )
