"""Outside review r10 of 37a59d7 (the fixes for review r8's hello findings).

Every attack tried is a test. A passing test means the attack was refused; a strict
xfail (``reason="r10: ..."``) asserts the secure behaviour and means the attack works
against the code under review (severity in the reason).

Findings (all fixed after the review; their strict xfails are now plain tests):
MEDIUM: on the additive backend the identity directory could not be pinned at all
(``directory-fingerprint`` pins additive's key directory, the older
``identity-directory-fingerprint`` is an alias that must agree with it), so a
substituted identity file still bound any listed id to any key; fixed with run config
``identity-directory-pin``, required on additive. LOW: ``role`` was neither signed nor
checked against the backend's servers (a client proving its own id with ``role =
"server"`` was reported as an aggregation server); LOW: an aggregation server missing
after hello was noticed only at the server stage, after every client was sent its
round request; both fixed by checking the backend's server ids right after hello.
LOW: ``recovery_message`` / ``verify_recovery`` truncated float round ids, accepted str
and numpy round ids and raised untyped errors on None, NaN, inf and non-ASCII check
values; ``verify_holder_claim`` / ``verify_party_claim`` raised untyped errors on a
non-str meta value, a non-mapping meta or a non-bytes key; fixed (typed).
Refused (pass): relayed and replayed server proofs, a server announcing
``role = "client"``, servers missing from the directory, a stripped ``party-proof``
request, an unsolicited proof, a malformed challenge at the node, replayed / rebound
holder proofs, odd node and party ids, pin spellings, unreadable directories, node
text in logs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Error, Message
from tests.fedtrain.test_flower_active_secagg import make_identities
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
    fake_node,
    holder_identity,
)
from tests.fedtrain.test_review_r8_party_binding import (
    PARTIES,
    _additive_grid,
    _configs,
    _forged_directory,
    _hello,
    _reply,
    _run,
    _run_kw,
    _signed_reply,
    _signing_key,
    _write_directory,
)

import privagg
from fedtrain.flower import client_app, server_app
from fedtrain.flower.errors import (
    FlowerConfigError,
    FlowerProtocolError,
    NotEnoughNodesError,
)
from fedtrain.flower.holder_auth import (
    hello_message,
    new_challenge,
    party_hello_message,
    recovery_message,
    verify_holder_claim,
    verify_party_claim,
    verify_recovery,
)
from fedtrain.flower.transport import MESSAGE_TYPE, Envelope, Op, pack, unpack
from privagg.identity import identity_fingerprint

MARK = "R10-INJECTED"
ATTACKER = 300  # an extra admitted node in the additive grid
SERVER1 = 103  # server-1's node in _additive_grid (client-0..2 = 100..102)


class _SubInt(int):
    pass


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """client-0..3, each with its own key; the directory; its pin (as in r8)."""
    folder = tmp_path_factory.mktemp("r10-hello")
    directory, pin = make_identities(folder, PARTIES)
    return folder, directory, pin


def _additive(tmp_path: Path, extra: bool = False) -> tuple[dict[int, Any], dict]:
    nodes, kw = _additive_grid(tmp_path)
    if extra:
        nodes[ATTACKER] = {"party-id": "client-9"}
    kw = {**kw, "min_nodes": len(nodes), "node_wait": 1.0}
    assert nodes[SERVER1]["party-id"] == "server-1"
    return nodes, kw


def _ops_to(grid: FakeGrid, node: int) -> set[Op]:
    return {unpack(m.content).op for m in grid.sent if m.metadata.dst_node_id == node}


def _rewrite_hello(
    monkeypatch: pytest.MonkeyPatch,
    node: int,
    *,
    request: Any = None,
    reply: Any = None,
) -> None:
    """Node ``node``'s real ClientApp, its hello request meta rewritten by
    ``request(meta)`` and its hello reply meta by ``reply(meta)`` (a relay, or the
    node itself, changing fields the proof does not sign)."""
    real = client_app.privagg_query

    def query(msg: Message, context: Any) -> Message:
        env = unpack(msg.content)
        if context.node_id != node or env.op != Op.HELLO:
            return real(msg, context)
        if request is not None:
            msg = Message(
                pack(Envelope(Op.HELLO, 0, "", b"", request(dict(env.meta)))),
                dst_node_id=node,
                message_type=MESSAGE_TYPE,
            )
        out = real(msg, context)
        if reply is None or out.has_error():
            return out
        got = unpack(out.content)
        meta = reply(dict(got.meta))
        return Message(pack(Envelope(Op.HELLO, 0, got.party, b"", meta)), reply_to=msg)

    monkeypatch.setattr(client_app, "privagg_query", query)


def _no_raw(caplog: pytest.LogCaptureFixture, *marks: str) -> None:
    for rec in caplog.records:
        text = rec.getMessage()
        for m in (MARK, *marks):
            assert m not in text, text
        assert "\n" not in text, text
        assert len(text) < 2048, len(text)


# -- 1. additive with a directory: server slots and roles -----------------------------


def test_r10_relayed_or_replayed_server_proof_cannot_take_a_server_slot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ATTACK: server-1 misses hello; node 300 announces server-1 (role = "server")
    with (a) server-1's genuine key signing for server-1's node id (a relay of the
    live proof) and (b) server-1's genuine reply to an earlier hello (replay). Both
    are ignored: the run stops typed before any request (since the fix: the backend's
    server ids are checked right after hello; before, "unknown parties ['server-1']"
    at the server stage) and node 300 never receives a request."""
    nodes, kw = _additive(tmp_path, extra=True)
    key1 = _signing_key(tmp_path / "identities", "server-1")
    grid0 = FakeGrid(nodes)
    old = Message(
        pack(
            Envelope(
                Op.HELLO,
                0,
                "",
                b"",
                {"challenge": new_challenge().hex(), "party-proof": "1"},
            )
        ),
        dst_node_id=SERVER1,
        message_type=MESSAGE_TYPE,
    )
    old_reply = unpack(client_app.privagg_query(old, grid0.contexts[SERVER1]).content)
    assert "party-signature" in old_reply.meta
    fakes = [
        _signed_reply(key1, "server-1", as_node=SERVER1, extra={"role": "server"}),
        _reply("server-1", dict(old_reply.meta)),
    ]
    for fake in fakes:
        fake_node(monkeypatch, ATTACKER, fake)
        grid = FakeGrid(nodes)
        grid.silent = {SERVER1}
        with pytest.raises(
            NotEnoughNodesError, match=r"aggregation servers \['server-1'\]"
        ):
            _run_kw(grid, kw)
        assert _ops_to(grid, ATTACKER) == {Op.HELLO}
        assert {unpack(m.content).op for m in grid.sent} == {Op.HELLO}


def test_r10_a_client_proving_its_id_as_role_server_is_not_a_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Was LOW (fixed): a client proving its own id with role = "server" (or a relay
    flipping the unsigned field) was reported as an aggregation server. Now a
    role = "server" claim for an id that is not one of the backend's servers is
    left out (logged): the servers are exactly additive's."""
    nodes, kw = _additive(tmp_path)
    _rewrite_hello(monkeypatch, 102, reply=lambda m: m | {"role": "server"})
    summary = _run_kw(FakeGrid(nodes), kw)
    assert summary["servers"] == ["server-1", "server-2"]


@pytest.mark.parametrize("role", ["client", "", "Server", f"server\n{MARK}"])
def test_r10_a_server_announcing_another_role_stops_the_run_typed(
    role: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ATTACK (role confusion): server-1 proves its id but announces role = "client"
    (or empty, other case, injected text), the field the proof does not sign: it is no
    server then, so the run stops typed right after hello (server-1 missing:
    NotEnoughNodesError; under review privagg's ConfigurationError "client ids must
    differ from the server ids") before any request, and the node's role text never
    reaches the log."""
    nodes, kw = _additive(tmp_path)
    _rewrite_hello(monkeypatch, SERVER1, reply=lambda m: m | {"role": role})
    grid = FakeGrid(nodes)
    with caplog.at_level(logging.DEBUG, logger="fedtrain.flower"):
        with pytest.raises(
            NotEnoughNodesError, match=r"aggregation servers \['server-1'\]"
        ):
            _run_kw(grid, kw)
    assert {unpack(m.content).op for m in grid.sent} == {Op.HELLO}
    _no_raw(caplog)


def test_r10_servers_missing_from_the_directory_fail_typed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator listed only the clients in the identity directory: the servers'
    claims are ignored at hello (logged, node id only) and the run stops with a typed
    NotEnoughNodesError naming the missing server ids (before the fix, a
    FlowerProtocolError after the clients' first requests)."""
    nodes, kw = _additive(tmp_path)
    path = Path(kw["identity_directory"])
    keys = server_app.load_directory(path).keys
    _write_directory(path, {p: k for p, k in keys.items() if p.startswith("client")})
    kw = {
        **kw,
        "identity_directory_pin": server_app.load_directory(path).fingerprint.hex(),
    }
    grid = FakeGrid(nodes)
    with caplog.at_level(logging.WARNING, logger="fedtrain.flower.server_app"):
        with pytest.raises(
            NotEnoughNodesError,
            match=r"aggregation servers \['server-1', 'server-2'\]",
        ):
            _run_kw(grid, kw)
    assert f"node {SERVER1} announced a party id the identity directory" in caplog.text
    # was LOW (fixed): found only at the server stage, after every client uploaded;
    # now right after hello, before any request
    assert {unpack(m.content).op for m in grid.sent} == {Op.HELLO}


# -- 2. the additive exception to pinning ---------------------------------------------


def test_r10_additive_identity_directory_can_be_pinned(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Was MEDIUM (fixed): on additive the identity directory could not be pinned.
    Run config ``identity-directory-pin`` pins it on any backend; a substituted file
    is refused before any message."""
    nodes, kw = _additive(tmp_path, extra=True)
    genuine = Path(kw["identity_directory"])
    ident_pin = server_app.load_directory(genuine).fingerprint.hex()
    evil = Ed25519PrivateKey.generate()
    forged = _forged_directory(genuine.parent, tmp_path / "forged.json", evil)
    fake_node(monkeypatch, ATTACKER, _signed_reply(evil, "client-0", as_node=ATTACKER))
    grid = FakeGrid(nodes)
    grid.silent = {100}
    kw = {
        **kw,
        "identity_directory": str(forged),
        "identity_directory_pin": ident_pin,
    }
    with pytest.raises(privagg.ParameterMismatchError):
        _run_kw(grid, kw)
    assert grid.sent == []
    # and without an identity pin an additive run with a directory does not start
    kw.pop("identity_directory_pin")
    grid = FakeGrid(nodes)
    with pytest.raises(FlowerConfigError, match="identity-directory-pin"):
        _run_kw(grid, kw)
    assert grid.sent == []


def test_r10_additive_substituted_directory_does_not_bind_ids(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Was MEDIUM (fixed): the substituted file, with additive's configuration (its
    identity pin included, as additive now requires), is refused when read."""
    nodes, kw = _additive(tmp_path, extra=True)
    genuine = Path(kw["identity_directory"])
    evil = Ed25519PrivateKey.generate()
    forged = _forged_directory(genuine.parent, tmp_path / "forged.json", evil)
    fake_node(monkeypatch, ATTACKER, _signed_reply(evil, "client-0", as_node=ATTACKER))
    grid = FakeGrid(nodes)
    grid.silent = {100}
    with pytest.raises(privagg.ParameterMismatchError):
        server_app._run_directory(
            server_app.RunSettings(**{**kw, "identity_directory": str(forged)})
        )
    d = server_app._run_directory(server_app.RunSettings(**kw))  # the genuine one
    assert d is not None
    parties, _ = server_app._hello(
        grid,  # type: ignore[arg-type]
        sorted(grid.contexts),
        1.0,
        set(),
        directory=d,
    )
    assert parties.get("client-0") != ATTACKER


# -- 3. downgrade of the party proof ----------------------------------------------------


def test_r10_a_stripped_party_proof_request_fails_closed(
    identities: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (downgrade): a relay strips meta party-proof from client-1's hello
    request, so the genuine node answers without a proof; the ServerApp (with a
    directory) does not accept the unproven claim: client-1 is left out, nobody takes
    it. The same for a node that drops its own proof when asked."""
    folder, directory, _ = identities
    for kw in (
        {"request": lambda m: {k: v for k, v in m.items() if k != "party-proof"}},
        {"reply": lambda m: {k: v for k, v in m.items() if k != "party-signature"}},
    ):
        _rewrite_hello(monkeypatch, 101, **kw)
        assert _hello(FakeGrid(_configs(folder)), directory) == {
            "client-0": 100,
            "client-2": 102,
            "client-3": 103,
        }


def test_r10_the_node_signs_only_when_asked_and_only_a_well_formed_challenge(
    identities: tuple[Path, Path, str],
) -> None:
    """ATTACK (malicious ServerApp): without party-proof the node signs nothing; with
    party-proof and a malformed challenge (upper case, short, non-hex, injected)
    the node refuses with a typed FlowerProtocolError and signs nothing; party-proof
    with any value but "1" is not a request."""
    folder, _, _ = identities
    ctx = FakeGrid(_configs(folder)).contexts[100]
    ch = new_challenge().hex()
    for meta in ({"challenge": ch}, {"challenge": ch, "party-proof": "yes"}):
        out = client_app._hello(Envelope(Op.HELLO, 0, "", b"", meta), ctx)
        assert "party-signature" not in out.meta and out.party == "client-0"
    for bad in (ch.upper(), ch[:-2], "zz" * 32, ch + "\n" + MARK, ""):
        env = Envelope(Op.HELLO, 0, "", b"", {"challenge": bad, "party-proof": "1"})
        with pytest.raises(FlowerProtocolError, match="well-formed holder challenge"):
            client_app._hello(env, ctx)


def test_r10_an_unsolicited_proof_without_a_directory_changes_nothing(
    identities: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a directory a claim is the node's own (documented); a garbage
    party-signature sent unasked is neither checked nor trusted, and ids bind as
    before."""
    folder, _, _ = identities
    fake_node(monkeypatch, 103, _reply("client-3", {"party-signature": MARK}))
    assert _hello(FakeGrid(_configs(folder)), None) == {
        p: 100 + i for i, p in enumerate(PARTIES)
    }


# -- 4. the holder proof binds the node id ----------------------------------------------


def test_r10_holder_proof_is_bound_to_challenge_party_and_node() -> None:
    """ATTACK: a holder proof replayed over another challenge, from another node id,
    with another party id ('' vs an id, and back), or handed in as a party proof:
    refused; only the exact tuple verifies."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    pin = identity_fingerprint(pub)
    ch, ch2 = new_challenge(), new_challenge()
    for party in ("", "client-0"):
        sig = key.sign(hello_message(ch, party, 200)).hex()
        meta = {"holder-key": pub.hex(), "holder-signature": sig}
        assert verify_holder_claim(meta, ch, party, pin, 200) == pub
        assert verify_holder_claim(meta, ch2, party, pin, 200) is None
        for node in (0, 199, 201, 200 + 2**32, 2**64 - 1):
            assert verify_holder_claim(meta, ch, party, pin, node) is None
        other = "client-0" if party == "" else ""
        assert verify_holder_claim(meta, ch, other, pin, 200) is None
        assert not verify_party_claim({"party-signature": sig}, ch, party, pub, 200)
        psig = key.sign(party_hello_message(ch, party, 200)).hex()
        meta2 = {"holder-key": pub.hex(), "holder-signature": psig}
        assert verify_holder_claim(meta2, ch, party, pin, 200) is None


def test_r10_a_holder_reply_replayed_in_a_later_hello_is_refused(
    identities: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """ATTACK: node 103 replays the genuine holder's reply to an earlier hello (from
    the holder's own node id, too: the relay is the holder's SuperLink path); the
    holder is silent now: no holder is accepted."""
    folder, directory, _ = identities
    ident, holder_pin = holder_identity(tmp_path / "holder")
    configs = _configs(folder)
    configs[200] = {"privagg-holder": True, **ident}
    grid = FakeGrid(configs)
    old = Message(
        pack(Envelope(Op.HELLO, 0, "", b"", {"challenge": new_challenge().hex()})),
        dst_node_id=200,
        message_type=MESSAGE_TYPE,
    )
    old_meta = dict(
        unpack(client_app.privagg_query(old, grid.contexts[200]).content).meta
    )
    assert "holder-signature" in old_meta
    for node in (103, 200):
        fake_node(monkeypatch, node, _reply("", old_meta))
        grid = FakeGrid(configs)
        if node == 103:
            grid.silent = {200}
        _, holder = server_app._hello(
            grid,  # type: ignore[arg-type]
            sorted(grid.contexts),
            1.0,
            set(),
            holder_pin=bytes.fromhex(holder_pin),
            directory=server_app.load_directory(directory),
        )
        assert holder is None


# -- 5. typed errors ------------------------------------------------------------------------

_BAD_NODES = [
    True,
    False,
    np.int64(5),
    np.uint64(5),
    _SubInt(5),
    5.0,
    -1,
    2**64,
    2**200,
    None,
    "5",
    b"\x05",
    math.nan,
]
_BAD_PARTIES = [None, 5, b"client-0", "\ud800", "client-\udcff", ["client-0"]]


def test_r10_odd_node_and_party_ids_are_refused_typed_everywhere() -> None:
    """ATTACK: node ids that are not exact ints in [0, 2**64) and party ids that are
    not encodable str, through every public function that takes them: the frames
    raise FlowerProtocolError, the verifiers return False / None; nothing else
    escapes. Edge ids 0 and 2**64-1 and a 1 MB party id work."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    pin = identity_fingerprint(pub)
    ch = new_challenge()
    good = key.sign(hello_message(ch, "client-0", 5)).hex()
    hmeta = {"holder-key": pub.hex(), "holder-signature": good}
    pmeta = {"party-signature": key.sign(party_hello_message(ch, "client-0", 5)).hex()}
    for node in _BAD_NODES:
        for frame in (hello_message, party_hello_message):
            with pytest.raises(FlowerProtocolError, match="unsigned 64-bit"):
                frame(ch, "client-0", node)  # type: ignore[arg-type]
        assert verify_holder_claim(hmeta, ch, "client-0", pin, node) is None  # type: ignore[arg-type]
        assert verify_party_claim(pmeta, ch, "client-0", pub, node) is False  # type: ignore[arg-type]
    for party in _BAD_PARTIES:
        for frame in (hello_message, party_hello_message):
            with pytest.raises(FlowerProtocolError, match="party id"):
                frame(ch, party, 5)  # type: ignore[arg-type]
        assert verify_holder_claim(hmeta, ch, party, pin, 5) is None  # type: ignore[arg-type]
        assert verify_party_claim(pmeta, ch, party, pub, 5) is False  # type: ignore[arg-type]
    for frame in (hello_message, party_hello_message):
        for node in (0, 2**64 - 1):
            frame(ch, "x" * 1_000_000, node)
        with pytest.raises(FlowerProtocolError, match="32 bytes"):
            frame(ch[:31], "client-0", 5)


def test_r10_recovery_frame_is_typed() -> None:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    ch = new_challenge()
    sig = key.sign(recovery_message(ch, 1, "c")).hex()
    for rid in (1.5, 1.0, "1", np.int64(1), _SubInt(1), None, math.nan, math.inf):
        with pytest.raises(FlowerProtocolError):
            recovery_message(ch, rid, "c")  # type: ignore[arg-type]
        with pytest.raises(FlowerProtocolError):
            verify_recovery(pub, sig, ch, rid, "c")  # type: ignore[arg-type]
    for check in ("\u00e9", "\ud800", None, 5):
        with pytest.raises(FlowerProtocolError):
            recovery_message(ch, 1, check)  # type: ignore[arg-type]


def test_r10_claim_verifiers_are_total() -> None:
    ch = new_challenge()
    pin = b"\x00" * 32
    for meta in ({"holder-key": 5}, {"holder-key": None}, None, [("a", "b")]):
        assert verify_holder_claim(meta, ch, "p", pin, 1) is None  # type: ignore[arg-type]
        assert verify_party_claim(meta, ch, "p", b"\x01" * 32, 1) is False  # type: ignore[arg-type]
    for key in (None, "ab" * 32, 5):
        assert (
            verify_party_claim({"party-signature": "00" * 64}, ch, "p", key, 1) is False
        )  # type: ignore[arg-type]


# -- 6. pin handling ----------------------------------------------------------------------


def test_r10_pin_spellings_and_conflicts(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """The pin under either name, upper case, with whitespace: the same pin, and the
    run goes through; both names set and disagreeing (on plain and on additive):
    FlowerConfigError before any message; a malformed pin, a missing or unreadable
    directory file: a typed privagg error before any message."""
    folder, directory, pin = identities
    for kw in (
        {"directory_fingerprint": f"  {pin.upper()}\n"},
        {"identity_directory_fingerprint": f"\t{pin}  "},
        {"directory_fingerprint": pin.upper(), "identity_directory_fingerprint": pin},
    ):
        assert server_app.RunSettings(**kw).pin() == pin
        summary = _run(FakeGrid(_configs(folder)), directory, **kw)
        assert summary["parties"] == PARTIES
    other = "0" * 64
    for backend in ("plain", "additive"):
        grid = FakeGrid(_configs(folder))
        # additive: refused for the missing identity-directory-pin (its
        # directory-fingerprint pins its key directory), plain: the two disagree
        with pytest.raises(FlowerConfigError, match=r"disagree|identity-directory-pin"):
            _run(
                grid,
                directory,
                backend=backend,
                directory_fingerprint=pin,
                identity_directory_fingerprint=other,
            )
        assert grid.sent == []
    grid = FakeGrid(_configs(folder))
    with pytest.raises(FlowerConfigError, match="disagree"):
        _run(grid, directory, directory_fingerprint=pin, identity_directory_pin=other)
    assert grid.sent == []
    summary = _run(FakeGrid(_configs(folder)), directory, identity_directory_pin=pin)
    assert summary["parties"] == PARTIES
    for bad in ("zz" * 32, pin[:-2], other):
        grid = FakeGrid(_configs(folder))
        with pytest.raises(privagg.PrivaggError):
            _run(grid, directory, directory_fingerprint=bad)
        assert grid.sent == []
    unreadable = tmp_path / "dir-as-file"
    unreadable.mkdir()
    for path in (tmp_path / "missing.json", unreadable):
        grid = FakeGrid(_configs(folder))
        with pytest.raises(privagg.ConfigurationError):
            _run(grid, path, directory_fingerprint=pin)
        assert grid.sent == []


# -- 7. log hygiene -------------------------------------------------------------------------


def test_r10_node_text_never_reaches_the_log_raw(
    identities: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ATTACK: node 103 announces a well-formed id outside the directory (its text
    is the attacker's), injected role / holder fields, and then fails its round with a
    100 KB error reason carrying newlines: the id never reaches a log line, no line
    spans lines or runs long, and the reason kept in the summary is cut at 200."""
    folder, directory, _ = identities
    alien = "r10-injected-alien-id"
    meta = {"role": f"server\n{MARK}", "holder": f"1\n{MARK}"}

    genuine = client_app.privagg_query
    fake_node(monkeypatch, 103, _reply(alien, meta))
    with caplog.at_level(logging.DEBUG, logger="fedtrain.flower"):
        _hello(FakeGrid(_configs(folder)), directory)
    assert "identity directory does not list" in caplog.text
    _no_raw(caplog, alien)
    # a proven client that fails its round with a long, multi-line reason
    reason = f"x\n{MARK}\r\n" * 8000
    real = genuine

    def failing(msg: Message, context: Any) -> Message:
        if context.node_id == 103 and unpack(msg.content).op != Op.HELLO:
            return Message(Error(code=7, reason=reason), reply_to=msg)
        return real(msg, context)

    monkeypatch.setattr(client_app, "privagg_query", failing)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="fedtrain.flower"):
        summary = _run(FakeGrid(_configs(folder)), directory)
    errors = summary["rounds"][0]["errors"]
    assert set(errors) == {"client-3"} and len(errors["client-3"]) <= 200
    assert "client-3" in summary["rounds"][0]["dropped"]
    for rec in caplog.records:
        text = rec.getMessage()
        assert "\n" not in text and len(text) < 2048, text[:300]
