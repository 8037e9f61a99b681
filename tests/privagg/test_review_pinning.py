"""Outside security review of the pinned additive key directory (issue #14).

Threat model: the coordinator (server 0, the aggregator) is malicious and hands every
process its directory file; up to ``n_servers - 2`` servers collude with it; clients
may be malicious. Each test is one attack on ``privagg._pin``,
``privagg.distribution.directory_fingerprint`` / ``session_for_role(pinned=)`` and
``AdditiveBackend.load_role(pinned=)``: a refused attack is a regression test; an
attack that worked was fixed (see the review report in the commit message).
"""

from __future__ import annotations

import hmac
import re
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import Role
from privagg import _pin as pin_mod
from privagg.backends.additive import AdditiveBackend
from privagg.backends.additive import _material as mat
from privagg.distribution import (
    OwnKey,
    directory_fingerprint,
    key_holders,
    make_directory,
    own_key,
    session_for_role,
)
from privagg.envelope import Header, PayloadWriter, Scheme, open_envelope, seal
from privagg.identity import IdentityDirectory
from privagg.keys import fingerprint
from tests.privagg.test_directory_pinning import KW, LAYOUT
from tests.privagg.test_directory_pinning import _load as _via_api
from tests.privagg.test_directory_pinning import _party as _who

ROLES = ["client", "aggregator", "server", "holder"]
CLIENTS = ["client-0", "client-1", "client-2"]
REFUSED = (privagg.ParameterMismatchError, privagg.DeserializationError)


def _world(
    n_servers: int = 3,
) -> tuple[AdditiveBackend, dict[str, OwnKey], bytes, bytes]:
    be = AdditiveBackend(bound=1.0, n_servers=n_servers)
    keys = {p: own_key(be, r, p) for p, r in key_holders(be).items()}
    directory = make_directory(be, [k.public for k in keys.values()])
    return be, keys, directory, directory_fingerprint(directory)


def _via_hook(
    be: AdditiveBackend,
    keys: dict[str, OwnKey],
    role: str,
    directory: bytes,
    pinned: Any,
) -> Any:
    pid, secret = _who(keys, role)
    return be.load_role(
        LAYOUT, role, pid, directory, secret=secret, pinned=pinned, **KW
    )


LOADERS = [_via_api, _via_hook]


def _raw_directory(entries: list[tuple[str, str, bytes]], **header: Any) -> bytes:
    """A directory file written entry by entry, in the order given (no checks): what a
    malicious coordinator can hand a process."""
    w = PayloadWriter().u32(header.pop("count", len(entries)))
    parts: list[bytes] = []
    for party, role, pk in entries:
        w.text(party).text(role).blob(pk)
        parts += [party.encode(), role.encode(), pk]
    did = header.pop("params_id", fingerprint(b"additive/directory", *parts))
    payload = w.getvalue() + header.pop("trailer", b"")
    return seal(
        Header(
            Scheme.ADDITIVE,
            header.pop("kind", mat.DIRECTORY_KIND),
            did,
            header.pop("round_id", 0),
        ),
        payload,
    )


def _entries(directory: bytes) -> list[tuple[str, str, bytes]]:
    return [(p, r, pk) for p, (r, pk) in sorted(mat.parse_directory(directory).items())]


# -- the pin itself, in every form ------------------------------------------------------
def test_review_pin_accepts_only_the_fingerprint_in_its_two_spellings() -> None:
    be, keys, directory, fp = _world()
    good = [fp, fp.hex(), fp.hex().upper(), f"  {fp.hex()}\n", f"\t{fp.hex().upper()} "]
    for pinned in good:
        assert pin_mod.parse_pin(pinned) == fp
        for load in LOADERS:
            for role in ROLES:
                assert load(be, keys, role, directory, pinned).params_id


MALFORMED: list[Any] = [
    None,
    "",
    b"",
    " ",
    "\n",
    "00" * 31,  # 62 hex
    "0" * 63,
    "0" * 65,
    "00" * 33,
    "zz" * 32,
    "0x" + "00" * 31,
    "00" * 16 + " " + "00" * 16,  # whitespace inside
    "00" * 16 + ":" + "00" * 16,
    "\u0660" * 64,  # Arabic-Indic digits: str.isdigit, not hex
    b"\x00" * 31,
    b"\x00" * 33,
    b"0" * 64,  # the hex text as bytes is not the 32-byte fingerprint
    bytearray(32),
    memoryview(bytes(32)),
    0,
    1,
    True,
    False,
    [0] * 32,
    object(),
]


def _pin_id(pinned: object) -> str:
    """A test id without memory addresses (xdist workers must collect the same ids)."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(pinned))[:20]


@pytest.mark.parametrize("pinned", MALFORMED, ids=_pin_id)
def test_review_malformed_or_missing_pin_fails_closed_at_every_layer(
    pinned: Any,
) -> None:
    be, keys, directory, _ = _world()
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        pin_mod.parse_pin(pinned)
    for load in LOADERS:
        for role in ROLES:
            with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
                load(be, keys, role, directory, pinned)


def test_review_the_right_pin_of_the_genuine_bytes_with_the_case_changed_in_the_file() -> (
    None
):
    """Case folding applies to the pin's text, never to the file: any change to the
    directory file is another fingerprint."""
    be, keys, directory, fp = _world()
    for i in range(len(directory)):
        bad = bytearray(directory)
        bad[i] ^= 0x20
        assert directory_fingerprint(bytes(bad)) != fp
        # a damaged envelope is not a directory; an intact one is not the pinned one
        with pytest.raises(REFUSED):
            _via_api(be, keys, "client", bytes(bad), fp)


def test_review_a_pin_of_the_other_directory_kind_never_matches() -> None:
    """Domain separation: the same bytes under the identity-directory fingerprint and
    the own-keys fingerprint differ; an additive pin pins no identity directory and an
    identity directory's pin pins no additive directory."""
    from tests.privagg.test_identity_directory import _directory, _keys

    be, keys, directory, fp = _world()
    ident = _directory(_keys())
    assert directory_fingerprint(ident.to_bytes()) != ident.fingerprint
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        IdentityDirectory.from_bytes(ident.to_bytes(), pinned=fp)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        _via_api(be, keys, "client", directory, ident.fingerprint)
    active = privagg.get_backend("secagg", active=True)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        session_for_role(
            active, LAYOUT, Role.AGGREGATOR, directory=ident, pinned=fp, **KW
        )
    # an empty pin given for the identity directory is refused, not skipped
    for empty in ("", b""):
        with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
            session_for_role(
                active, LAYOUT, Role.AGGREGATOR, directory=ident, pinned=empty, **KW
            )


# -- key substitution, reordering, duplicates, extra parties -----------------------------
@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize("role", ROLES)
def test_review_permuted_duplicated_or_extra_entries_are_refused(
    load: Any, role: str
) -> None:
    be, keys, directory, fp = _world()
    e = _entries(directory)  # holder, server-1, server-2
    holder, s1, s2 = e
    evil = own_key(be, Role.SERVER, "server-1")
    evil_pk = mat.read_public_key(evil.public)[2]
    attacks = {
        # server-1's and server-2's keys swapped (canonical order kept)
        "swap-servers": [holder, (s1[0], s1[1], s2[2]), (s2[0], s2[1], s1[2])],
        # the holder's key is server-1's (a colluding server reads the result)
        "holder-is-server": [(holder[0], holder[1], s1[2]), s1, s2],
        # server-2's key is the holder's
        "server-is-holder": [holder, s1, (s2[0], s2[1], holder[2])],
        # the attacker's key for server-1
        "substituted": [holder, (s1[0], s1[1], evil_pk), s2],
        # one party twice, twice in a row
        "duplicate": [holder, s1, s1, s2],
        # entries out of order
        "reordered": [s2, s1, holder],
        # an extra party in any role
        "extra-server": [holder, s1, s2, ("server-3", "server", evil_pk)],
        "extra-client": [("client-0", "holder", evil_pk), holder, s1, s2],
        # a party dropped
        "missing": [holder, s1],
        # a role relabelled
        "relabelled": [(holder[0], "server", holder[2]), s1, s2],
    }
    for name, entries in attacks.items():
        bad = _raw_directory(entries)
        assert directory_fingerprint(bad) != fp, name
        with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
            load(be, keys, role, bad, fp)


def test_review_one_canonical_file_per_key_set() -> None:
    """Encodings that name the same keys in another way do not parse, so a fingerprint
    of the one canonical file is a fingerprint of the keys; and a file that parses is
    refused unless it is byte for byte the pinned one."""
    be, keys, directory, fp = _world()
    e = _entries(directory)
    assert _raw_directory(e) == directory  # the canonical file is reproducible
    (hp, hr, hpk), s1, s2 = e
    u = int.from_bytes(hpk, "little")
    same_key = [
        # X25519 ignores the top bit: the same key with it set
        (u | (1 << 255)).to_bytes(32, "little"),
    ]
    if u < 19:  # u + p fits in 255 bits only for tiny u (never for a real key)
        same_key.append((u + 2**255 - 19).to_bytes(32, "little"))
    variants = [_raw_directory([(hp, hr, pk), s1, s2]) for pk in same_key]
    variants += [
        _raw_directory(e, params_id=bytes(32)),  # header not fingerprinting content
        _raw_directory(e, round_id=1),
        _raw_directory(e, trailer=b"\x00"),
        _raw_directory(e, count=4),
        _raw_directory(e, kind=mat.PUBLIC_KEY_KIND),
        _raw_directory(e, kind=mat.OWN_KEY_KIND),
    ]
    for bad in variants:
        assert bad != directory
        with pytest.raises(privagg.DeserializationError):
            mat.parse_directory(bad)
        with pytest.raises(REFUSED):
            _via_api(be, keys, "client", bad, fp)
        # even pinned to itself it is refused (not canonical)
        with pytest.raises(privagg.DeserializationError):
            _via_api(be, keys, "client", bad, directory_fingerprint(bad))
    # the header is not the pin: the envelope's params_id is a function of the entries
    # only, so two files with the same entries have the same header id, and the pin
    # covers the whole file (header, payload and digest)
    assert open_envelope(directory)[0].params_id == fingerprint(
        b"additive/directory",
        *(x for ent in e for x in (ent[0].encode(), ent[1].encode(), ent[2])),
    )


# -- files that are not the directory ---------------------------------------------------
@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize("which", ["server-1", "server-2", "holder"])
def test_review_a_key_file_given_as_the_directory_reveals_nothing(
    load: Any, which: str
) -> None:
    """A server's (or the holder's) own secret key file, or a public key file, given as
    the directory: refused as not a directory (DeserializationError, as load_role
    documents), and the error says nothing derived from the file -- not the secret, not
    its public key, not a digest of it."""
    be, keys, _, fp = _world()
    k = keys[which]
    sk = mat.read_own_key(k.secret)[2]
    pk = mat.read_public_key(k.public)[2]
    for blob in (k.secret, k.public):
        for pinned in (fp, directory_fingerprint(blob)):
            for role in ROLES:
                with pytest.raises(privagg.DeserializationError) as err:
                    load(be, keys, role, blob, pinned)
                text = f"{err.value!s} {err.value!r}"
                for leak in (sk, pk, directory_fingerprint(blob), fingerprint(blob)):
                    assert leak.hex()[:8] not in text


# -- params_id binds every key of the directory ------------------------------------------
def test_review_params_id_binds_every_key_and_its_assignment() -> None:
    """Commit 40f0227: params_id binds every key of the canonical directory. Every
    directory a backend accepts gives its own params_id (a coordinator that pins its
    own file cannot share a params_id with a genuine node), and the same directory
    gives the same params_id in every role."""
    be, keys, directory, fp = _world()
    genuine = {_via_api(be, keys, r, directory, fp).params_id for r in ROLES}
    assert len(genuine) == 1
    e = _entries(directory)
    (hp, hr, hpk), (p1, r1, k1), (p2, r2, k2) = e
    fresh = {
        p: mat.read_public_key(own_key(be, key_holders(be)[p], p).public)[2]
        for p in ("holder", "server-1", "server-2")
    }
    others = [
        [(hp, hr, k1), (p1, r1, hpk), (p2, r2, k2)],  # holder <-> server-1
        [(hp, hr, hpk), (p1, r1, k2), (p2, r2, k1)],  # server-1 <-> server-2
        [(hp, hr, k2), (p1, r1, k1), (p2, r2, hpk)],  # holder <-> server-2
        [(hp, hr, fresh["holder"]), (p1, r1, k1), (p2, r2, k2)],
        [(hp, hr, hpk), (p1, r1, fresh["server-1"]), (p2, r2, k2)],
        [(hp, hr, hpk), (p1, r1, k1), (p2, r2, fresh["server-2"])],
        [(hp, hr, k1), (p1, r1, k1), (p2, r2, k1)],  # one key everywhere
    ]
    seen = {fp: genuine.pop()}
    for entries in others:
        other = _raw_directory(entries)
        pid = be.load_role(
            LAYOUT, "aggregator", None, other, pinned=directory_fingerprint(other), **KW
        ).params_id
        assert pid not in seen.values()
        seen[directory_fingerprint(other)] = pid
    assert len(seen) == len(others) + 1
    # the params_id also binds the session's other public inputs: the same directory
    # under another layout or another max_clients is another session
    other_layout = privagg.Layout.from_arrays({"w": np.zeros(7)})
    for kw in (
        {"layout": other_layout, "max_clients": 3},
        {"layout": LAYOUT, "max_clients": 4},
    ):
        s = be.load_role(
            kw["layout"],
            "aggregator",
            None,
            directory,
            pinned=fp,
            max_clients=kw["max_clients"],
        )
        assert s.params_id not in seen.values()


def test_review_a_directory_for_other_n_servers_is_refused_even_when_pinned() -> None:
    """The pin does not replace the key-holder check: a genuine, pinned directory made
    for three servers is no directory for a two-server (weaker) session."""
    _, _, directory3, fp3 = _world(3)
    be2 = AdditiveBackend(bound=1.0, n_servers=2)
    with pytest.raises(privagg.ParameterMismatchError, match="key holders"):
        be2.load_role(LAYOUT, "client", "client-0", directory3, pinned=fp3, **KW)
    with pytest.raises(privagg.ParameterMismatchError, match="key holders"):
        session_for_role(
            be2, LAYOUT, "aggregator", material=directory3, pinned=fp3, **KW
        )


# -- a directory replayed across sessions and rounds -------------------------------------
def test_review_replayed_requests_across_sessions_and_rounds_are_refused() -> None:
    """The directory (and its pin) lives for many sessions; a coordinator replaying a
    request of one session or round into another gets nothing: the client refuses a
    foreign params_id or round, a server serves a round once, the holder releases a
    round once."""
    be, keys, directory, fp = _world()
    s = {r: _via_api(be, keys, r, directory, fp) for r in ROLES}
    other = session_for_role(
        be,
        privagg.Layout.from_arrays({"w": np.zeros(7)}),
        "client",
        party_id="client-0",
        material=directory,
        pinned=fp,
        **KW,
    )
    a = s["aggregator"].aggregator(7, CLIENTS)
    reqs = a.start()
    with pytest.raises(privagg.PrivaggError):
        other.client("client-0", 7, np.zeros(7)).handle(reqs["client-0"])
    with pytest.raises(privagg.PrivaggError):
        s["client"].client("client-0", 8, np.zeros(LAYOUT.size)).handle(
            reqs["client-0"]
        )
    clients = {
        c: _via_api(be, keys, "client", directory, fp)
        if c == "client-0"
        else session_for_role(
            be, LAYOUT, "client", party_id=c, material=directory, pinned=fp, **KW
        )
        for c in CLIENTS
    }
    replies = {
        c: clients[c].client(c, 7, np.full(LAYOUT.size, 0.25)).handle(reqs[c])
        for c in CLIENTS
    }
    to_servers = a.receive(replies)
    servers = {
        p: session_for_role(
            be,
            LAYOUT,
            "server",
            party_id=p,
            material=directory,
            secret=keys[p].secret,
            pinned=fp,
            **KW,
        )
        for p in ("server-1", "server-2")
    }
    partial = {p: servers[p].servers(7)[p].handle(to_servers[p]) for p in servers}
    with pytest.raises(privagg.PrivaggError):
        servers["server-1"].servers(7)["server-1"].handle(to_servers["server-1"])
    assert a.receive(partial) == {}
    holder = s["holder"].holder()
    rec = holder.recover(a.result())
    np.testing.assert_allclose(rec.vector, np.full(LAYOUT.size, 0.75), atol=1e-3)
    with pytest.raises(privagg.PrivaggError):
        holder.recover(a.result())


# -- constant time, and no field-wise equality of secrets --------------------------------
def test_review_every_pin_check_is_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(pin_mod.hmac, "compare_digest", spy)
    be, keys, directory, fp = _world()
    wrong = bytes(a ^ 1 for a in fp)
    for load in LOADERS:
        for role in ROLES:
            calls.clear()
            load(be, keys, role, directory, fp.hex().upper())
            assert (fp, fp) in calls
            calls.clear()
            with pytest.raises(privagg.ParameterMismatchError):
                load(be, keys, role, directory, wrong)
            assert (fp, wrong) in calls
    from tests.privagg.test_identity_directory import _directory, _keys

    ident = _directory(_keys())
    calls.clear()
    with pytest.raises(privagg.ParameterMismatchError):
        IdentityDirectory.from_bytes(ident.to_bytes(), pinned=bytes(32))
    assert (ident.fingerprint, bytes(32)) in calls


def test_review_secret_holders_compare_by_identity_and_hide_their_secret() -> None:
    be, keys, directory, fp = _world()
    k = keys["server-1"]
    sk = mat.read_own_key(k.secret)[2]
    twin = OwnKey(k.role, k.party_id, k.public, k.secret)
    assert k == k and k != twin and not (k == twin)
    assert hash(k) != hash(twin) or k is not twin
    for text in (repr(k), str(k), repr(twin)):
        assert sk.hex()[:8] not in text and k.secret.hex()[:16] not in text
    # a pin mismatch shows only a prefix of the (public) fingerprint of the file
    with pytest.raises(privagg.ParameterMismatchError) as err:
        _via_api(be, keys, "server", directory, bytes(32))
    assert sk.hex()[:8] not in str(err.value)
    assert fp.hex()[:16] in str(err.value) and fp.hex() not in str(err.value)
