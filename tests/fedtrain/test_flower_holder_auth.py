"""The result holder pinned by its own Ed25519 key (#14, review r3, HIGH).

With ``holder = "node"`` the run config pins the holder's key fingerprint
(``holder-key``); at hello the holder signs the ServerApp's fresh challenge, and it
signs every recovery reply over the challenge, the round id and the reply's check
value (:mod:`fedtrain.flower.holder_auth`). Each test below is an attack on that over
the fake Grid (real ClientApp handler, no processes): a claim or a reply that does not
prove the pinned key is ignored (hello) or refused before anything is applied
(recovery).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    SHAPES,
    FakeGrid,
    _nodes,
    _task_identity,
    fake_node,
    holder_identity,
)

import privagg
from fedtrain.flower import client_app, holder_auth, server_app
from fedtrain.flower.errors import (
    FlowerConfigError,
    FlowerProtocolError,
    NotEnoughNodesError,
)
from fedtrain.flower.holder_auth import (
    HolderSigner,
    hello_message,
    make_holder_key,
    recovery_message,
)
from fedtrain.flower.transport import Envelope, Op, pack, recovery_check, unpack
from privagg import Layout
from privagg.identity import check_public_key, load_identity_key

ATTACKER = 103  # client-3, an admitted but malicious node
HOLDER = 200
EVIL = 1000.0


class _Recording(server_app._SyntheticTask):
    """The synthetic task, counting what it applied."""

    def __init__(self) -> None:
        super().__init__(SHAPES)
        self.applied: list[int] = []

    def apply(self, round_id: int, aggregate: Any, contributors: Any) -> Any:
        self.applied.append(round_id)
        return super().apply(round_id, aggregate, contributors)


def _setup(tmp_path: Path) -> tuple[FakeGrid, server_app.RunSettings]:
    ident, pin = holder_identity(tmp_path / "holder-machine")
    nodes = _nodes([1.0] * 5)
    nodes[HOLDER] = {"privagg-holder": True, **ident}
    settings = server_app.RunSettings(
        backend="plain",
        shapes=SHAPES,
        rounds=2,
        min_nodes=6,
        stage_timeout=1.0,
        holder="node",
        holder_key=pin,
    )
    return FakeGrid(nodes), settings


def _signer(path: Path) -> HolderSigner:
    return HolderSigner(load_identity_key(privagg.read_secret_file(path)).reveal())


def _other_key(tmp_path: Path) -> HolderSigner:
    """A valid Ed25519 identity key that is not the pinned one."""
    return _signer(make_holder_key(tmp_path / "other.key")[0])


def _run(grid: FakeGrid, settings: server_app.RunSettings, task: Any = None) -> Any:
    return server_app.run(grid, settings, task or _Recording())


def holder_claim(meta: dict[str, str]) -> Any:
    """ATTACKER's hello reply: its own party id and a holder claim with ``meta``; if
    it were asked to recover, a forged sum (EVIL everywhere) with a matching unkeyed
    check value."""

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            reply = Envelope(Op.HELLO, 0, "client-3", b"", {"holder": "1", **meta})
            return Message(pack(reply), reply_to=msg)
        if env.op == Op.RECOVER:  # never reached: a forged sum if it were
            n = Layout.from_bytes(bytes.fromhex(env.meta["layout"])).size
            vec = np.full(n, EVIL, dtype="<f8").tobytes()
            text = json.dumps(["client-0"])
            check = recovery_check(env.round_id, env.payload, vec, text)
            out = Envelope(
                Op.RECOVER,
                env.round_id,
                env.party,
                vec,
                {"contributors": text, "check": check},
            )
            return Message(pack(out), reply_to=msg)
        return None

    return fake


def _ops(grid: FakeGrid) -> set[str]:
    return {unpack(m.content).op for m in grid.sent}


# -- hello: claims that do not prove the pinned key ---------------------------------------


def _claims(tmp_path: Path, genuine: HolderSigner, challenge: bytes) -> dict[str, Any]:
    """Holder claims an attacker can make without the pinned secret key."""
    other = _other_key(tmp_path)
    msg = hello_message(challenge, "client-3", 7)
    right_key = genuine.public_key.hex()
    return {
        "wrong key, valid signature": {
            "holder-key": other.public_key.hex(),
            "holder-signature": other.sign(msg),
        },
        "right key, signed by another key": {
            "holder-key": right_key,
            "holder-signature": other.sign(msg),
        },
        "right key, no signature": {"holder-key": right_key},
        "right key, zero signature": {
            "holder-key": right_key,
            "holder-signature": "00" * 64,
        },
        "right key, truncated signature": {
            "holder-key": right_key,
            "holder-signature": other.sign(msg)[:-2],
        },
        "right key, garbage signature": {
            "holder-key": right_key,
            "holder-signature": "zz" * 64,
        },
        "truncated key": {"holder-key": right_key[:-2], "holder-signature": "00" * 64},
        "garbage key": {"holder-key": "x" * 64, "holder-signature": "00" * 64},
        # the identity point: under it R = identity, S = 0 verifies on every message
        "small-order key": {
            "holder-key": "01" + "00" * 31,
            "holder-signature": "01" + "00" * 63,
        },
        "no key": {},
    }


@pytest.mark.parametrize(
    "kind",
    [
        "wrong key, valid signature",
        "right key, signed by another key",
        "right key, no signature",
        "right key, zero signature",
        "right key, truncated signature",
        "right key, garbage signature",
        "truncated key",
        "garbage key",
        "small-order key",
        "no key",
    ],
)
def test_a_holder_claim_without_the_pinned_key_is_ignored(
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ATTACK: client-3 claims the holder role with a key or signature it can make;
    with the genuine holder present the claim is ignored (logged in fixed words) and
    the genuine holder recovers; with the genuine holder silent at hello no holder is
    accepted: the run stops before any round (no forged sum applied)."""
    caplog.set_level(logging.WARNING)
    grid, settings = _setup(tmp_path)
    genuine = _signer(tmp_path / "holder-machine" / "secagg-identity-holder.key")
    claim = _claims(tmp_path, genuine, b"\x00" * 32)[kind]
    fake_node(monkeypatch, ATTACKER, holder_claim(claim))
    task = _Recording()
    summary = _run(grid, settings, task)
    assert len(task.applied) == 2 and len(summary["rounds"]) == 2
    holders = {
        m.metadata.dst_node_id for m in grid.sent if unpack(m.content).op == Op.RECOVER
    }
    assert holders == {HOLDER}
    warned = [r.getMessage() for r in caplog.records if "holder" in r.getMessage()]
    assert warned and all(f"node {ATTACKER} claims" in w for w in warned)
    for value in claim.values():  # the node's bytes are never logged
        assert all(value not in w for w in warned)

    grid, settings = _setup(tmp_path / "second")
    grid.silent = {HOLDER}
    task = _Recording()
    with pytest.raises(NotEnoughNodesError, match="holder"):
        _run(grid, settings, task)
    assert task.applied == [] and _ops(grid) == {Op.HELLO}


def test_a_replayed_hello_signature_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (replay): client-3 recorded the genuine holder's hello reply of an
    earlier run (key and valid signature over that run's challenge) and replays it
    while the holder misses hello: the signature is over another challenge, so no
    holder is accepted."""
    grid, settings = _setup(tmp_path)
    reply = client_app.privagg_query(
        Message(
            pack(Envelope(Op.HELLO, 0, "", b"", {"challenge": "ab" * 32})),
            dst_node_id=HOLDER,
            message_type="query.privagg",
        ),
        grid.contexts[HOLDER],
    )
    recorded = dict(unpack(reply.content).meta)
    assert recorded["holder"] == "1" and "holder-signature" in recorded
    # the recorded reply verifies for its own challenge only
    pin = settings.holder_pin()
    assert pin is not None
    ab, ac = b"\xab" * 32, b"\xac" * 32
    assert holder_auth.verify_holder_claim(recorded, ab, "", pin, HOLDER)
    assert not holder_auth.verify_holder_claim(recorded, ac, "", pin, HOLDER)
    assert not holder_auth.verify_holder_claim(recorded, ab, "client-3", pin, HOLDER)
    # relayed by another node (review r8): the proof names the holder's node id
    assert not holder_auth.verify_holder_claim(recorded, ab, "", pin, HOLDER + 1)

    def replay(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            out = Envelope(Op.HELLO, 0, "", b"", recorded)
            return Message(pack(out), reply_to=msg)
        return holder_claim({})(env, msg)

    fake_node(monkeypatch, ATTACKER, replay)
    grid2, _ = _setup(tmp_path / "again")
    grid2.contexts[HOLDER] = grid.contexts[HOLDER]  # the same holder machine
    grid2.silent = {HOLDER}
    task = _Recording()
    with pytest.raises(NotEnoughNodesError, match="holder"):
        _run(grid2, settings, task)
    assert task.applied == []


def test_two_nodes_with_the_pinned_key_the_first_is_the_holder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The same holder key on two machines (a copy): both prove it; the node whose
    reply the ServerApp reads first is the holder for the whole run, the other is
    logged, the run goes on."""
    caplog.set_level(logging.WARNING)
    grid, settings = _setup(tmp_path)
    copy = dict(grid.contexts[HOLDER].node_config)
    nodes = {n: dict(c.node_config) for n, c in grid.contexts.items()}
    nodes[201] = copy
    grid = FakeGrid(nodes)
    summary = _run(grid, dataclasses.replace(settings, min_nodes=7))
    assert len(summary["rounds"]) == 2
    holders = {
        m.metadata.dst_node_id for m in grid.sent if unpack(m.content).op == Op.RECOVER
    }
    assert len(holders) == 1 and holders <= {HOLDER, 201}  # the first reply's node
    assert any(
        "also proves the pinned holder key" in r.getMessage() for r in caplog.records
    )


def test_holder_node_without_its_key_or_run_without_a_pin(tmp_path: Path) -> None:
    """holder = "node" without run config ``holder-key``: refused before any message
    is sent. A holder node without ``privagg-identity-key`` claims the role without a
    proof, so no holder is accepted and no round runs; asked to recover it refuses
    (typed) before releasing anything."""
    grid, settings = _setup(tmp_path)
    for bad in ("", "ab" * 31, "g" * 64):
        with pytest.raises(FlowerConfigError, match="holder-key"):
            _run(grid, dataclasses.replace(settings, holder_key=bad))
    assert grid.sent == []
    del grid.contexts[HOLDER].node_config["privagg-identity-key"]
    with pytest.raises(NotEnoughNodesError, match="holder"):
        _run(grid, settings)
    assert _ops(grid) == {Op.HELLO}
    with pytest.raises(FlowerConfigError, match="privagg-identity-key"):
        client_app._holder_signer(grid.contexts[HOLDER])
    # holder = "server" needs no pin (no holder node is used)
    server_side = dataclasses.replace(settings, holder="server", holder_key="")
    assert server_side.holder_pin() is None


# -- recovery: replies not signed by the pinned key for this run and round ---------------


def _tamper(
    kind: str, other: HolderSigner, genuine: HolderSigner, context: Any
) -> tuple[Any, list[tuple[Envelope, Envelope]]]:
    """The holder node's recovery reply of the run's second round, altered; the list
    of (request, genuine reply) the holder node produced."""
    real_query = client_app.privagg_query
    rounds: list[tuple[Envelope, Envelope]] = []

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op != Op.RECOVER:
            return None
        real = real_query(msg, context)
        got = unpack(real.content)
        rounds.append((env, got))
        if len(rounds) == 1:
            return real
        meta = dict(got.meta)
        vector, text = got.payload, meta["contributors"]
        if kind in ("forged, other key", "forged, unsigned", "forged, old signature"):
            n = Layout.from_bytes(bytes.fromhex(env.meta["layout"])).size
            vector = np.full(n, EVIL, dtype="<f8").tobytes()
            text = json.dumps(["client-0"])
        check = recovery_check(env.round_id, env.payload, vector, text)
        meta.update(contributors=text, check=check)
        challenge = bytes.fromhex(env.meta["challenge"])
        if kind == "forged, other key":
            meta["signature"] = other.sign(
                recovery_message(challenge, env.round_id, check)
            )
        elif kind == "forged, unsigned":
            del meta["signature"]
        elif kind == "forged, old signature":
            meta["signature"] = rounds[0][1].meta["signature"]
        elif kind == "round r replayed at r+1":
            # round r's vector, contributors and signature, relabelled for r+1 (its
            # unkeyed check value recomputed for r+1's aggregate)
            first = rounds[0][1]
            vector, text = first.payload, first.meta["contributors"]
            check = recovery_check(env.round_id, env.payload, vector, text)
            meta = dict(first.meta) | {"check": check}
        elif kind == "another run's challenge":
            meta["signature"] = genuine.sign(
                recovery_message(b"\x01" * 32, env.round_id, check)
            )
        elif kind == "truncated signature":
            meta["signature"] = meta["signature"][:-2]
        elif kind == "garbage signature":
            meta["signature"] = "not hex at all"
        else:
            raise AssertionError(kind)
        out = Envelope(Op.RECOVER, env.round_id, got.party, vector, meta)
        return Message(pack(out), reply_to=msg)

    return fake, rounds


@pytest.mark.parametrize(
    "kind",
    [
        "forged, other key",
        "forged, unsigned",
        "forged, old signature",
        "round r replayed at r+1",
        "another run's challenge",
        "truncated signature",
        "garbage signature",
    ],
)
def test_a_recovery_reply_not_signed_for_this_run_and_round_is_refused(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK: the holder's recovery reply of round r+1 is replaced (on the way, or by
    a node answering for it) by a forged sum signed with another key, unsigned, with
    round r's signature, by round r's whole reply, by a signature over another run's
    challenge, or a cut or garbage signature (each with a matching unkeyed check
    value): FlowerProtocolError, round r+1 is not applied."""
    grid, settings = _setup(tmp_path)
    genuine = _signer(tmp_path / "holder-machine" / "secagg-identity-holder.key")
    fake, rounds = _tamper(kind, _other_key(tmp_path), genuine, grid.contexts[HOLDER])
    fake_node(monkeypatch, HOLDER, fake)
    task = _Recording()
    with pytest.raises(
        FlowerProtocolError, match="not signed by the pinned holder key"
    ):
        _run(grid, settings, task)
    assert len(rounds) == 2
    assert task.applied == [rounds[0][0].round_id]  # round r only


def test_the_genuine_signed_reply_is_accepted(tmp_path: Path) -> None:
    """Control: the holder's own signed replies are applied, every round."""
    grid, settings = _setup(tmp_path)
    task = _Recording()
    summary = _run(grid, settings, task)
    assert len(task.applied) == 2
    replies = [m for m in grid.sent if unpack(m.content).op == Op.RECOVER]
    assert all(len(unpack(m.content).meta["challenge"]) == 64 for m in replies)
    assert summary["rounds"][0]["contributors"] == [f"client-{i}" for i in range(5)]


# -- the signed messages ------------------------------------------------------------------


def test_signed_messages_are_domain_separated_and_bound() -> None:
    c = b"\x07" * 32
    assert hello_message(c, "", 1) != recovery_message(c, 0, "")
    assert hello_message(c, "a", 1) != hello_message(c, "b", 1)
    assert hello_message(c, "", 1) != hello_message(b"\x08" * 32, "", 1)
    assert hello_message(c, "", 1) != hello_message(c, "", 2)
    check = "ab" * 32
    assert recovery_message(c, 1, check) != recovery_message(c, 2, check)
    assert recovery_message(c, 1, check) != recovery_message(c, 1, "cd" * 32)
    for bad in (b"", b"\x00" * 31, b"\x00" * 33):
        with pytest.raises(FlowerProtocolError):
            hello_message(bad, "", 1)
    with pytest.raises(FlowerProtocolError):
        holder_auth.parse_challenge("AB" * 32)  # not the ServerApp's lowercase form
    with pytest.raises(privagg.ConfigurationError):
        check_public_key(b"\x01" + b"\x00" * 31)  # the identity point
    challenge = holder_auth.new_challenge()
    assert len(challenge) == 32 and challenge != holder_auth.new_challenge()
