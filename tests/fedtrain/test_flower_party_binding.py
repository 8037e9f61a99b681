"""Party ids bound to keys at hello (#14, review r3's last open finding).

With run config ``identity-directory`` (party id -> Ed25519 public key, written by
``privagg directory``), the ServerApp accepts a node's claim of a party id the directory
lists only if the node signed the hello's fresh challenge and that id with the
directory's key for it (:func:`fedtrain.flower.holder_auth.verify_party_claim`), on any
backend. These tests run the ``plain`` backend, where nothing else binds a party id.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from tests.fedtrain.test_flower_active_secagg import make_identities
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    SHAPES,
    FakeGrid,
    _task_identity,
    fake_node,
)

from fedtrain.flower import client_app, server_app
from fedtrain.flower.holder_auth import (
    hello_message,
    new_challenge,
    party_hello_message,
    verify_party_claim,
)
from fedtrain.flower.transport import MESSAGE_TYPE, Envelope, Op, pack, unpack

PARTIES = [f"client-{i}" for i in range(4)]
ATTACKER = 103  # client-3: a malicious node with its own, genuine key


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("party-binding")
    directory, _pin = make_identities(folder, PARTIES)
    return folder, directory


def _configs(
    folder: Path, parties: list[str] = PARTIES
) -> dict[int, dict[str, object]]:
    return {
        100 + i: {
            "party-id": p,
            "privagg-weight": 1.0,
            "privagg-backends": "plain",
            "privagg-identity-key": str(folder / p / f"secagg-identity-{p}.key"),
        }
        for i, p in enumerate(parties)
    }


def _run(grid: FakeGrid, directory: Path | None, **kw: Any) -> dict[str, Any]:
    settings = server_app.RunSettings(
        **{
            "backend": "plain",
            "shapes": SHAPES,
            "min_nodes": len(grid.contexts),
            "stage_timeout": 1.0,
            "identity_directory": str(directory) if directory else "",
            **kw,
        }
    )
    out: dict[str, Any] = server_app.run(
        grid,  # type: ignore[arg-type]
        settings,
        server_app._SyntheticTask(SHAPES),
    )
    return out


def _claim(party: str, meta: dict[str, str] | None = None) -> Any:
    """A node's fake hello answer: ``party`` with ``meta`` (else the real ClientApp)."""

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            return Message(
                pack(Envelope(Op.HELLO, 0, party, b"", meta or {})), reply_to=msg
            )
        return None

    return fake


def test_every_node_proves_its_party_id(identities: tuple[Path, Path]) -> None:
    folder, directory = identities
    summary = _run(FakeGrid(_configs(folder)), directory)
    assert summary["parties"] == PARTIES
    assert summary["rounds"][0]["contributors"] == PARTIES


def test_a_node_cannot_take_over_a_late_nodes_party_id(
    identities: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review r3's attack with a directory: client-0 misses hello; node 103 announces
    client-0 (unsigned, or signed with its own key). Its claim is ignored: client-0 is
    in no round."""
    folder, directory = identities
    own = Ed25519PrivateKey.generate()
    for meta in ({}, {"party-signature": "00" * 64}):
        fake_node(monkeypatch, ATTACKER, _claim("client-0", meta))
        grid = FakeGrid(_configs(folder))
        grid.silent = {100}  # the genuine client-0
        with caplog.at_level(logging.WARNING, logger="fedtrain.flower.server_app"):
            summary = _run(grid, directory, min_nodes=4)
        assert "client-0" not in summary["parties"]
        assert summary["rounds"][0]["contributors"] == ["client-1", "client-2"]
        assert "without proving its key" in caplog.text

    def signed_with_own_key(env: Envelope, msg: Message) -> Message | None:
        if env.op != Op.HELLO:
            return None
        sig = own.sign(
            party_hello_message(
                bytes.fromhex(env.meta["challenge"]), "client-0", ATTACKER
            )
        )
        reply = Envelope(Op.HELLO, 0, "client-0", b"", {"party-signature": sig.hex()})
        return Message(pack(reply), reply_to=msg)

    fake_node(monkeypatch, ATTACKER, signed_with_own_key)
    grid = FakeGrid(_configs(folder))
    grid.silent = {100}
    summary = _run(grid, directory, min_nodes=4)
    assert summary["parties"] == ["client-1", "client-2"]


def test_a_node_cannot_knock_out_another_by_announcing_its_id(
    identities: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a proof a second claim of client-0 is ignored, so client-0 stays (with
    no directory both claimants are left out: tests/fedtrain/test_review_r3_hello.py)."""
    folder, directory = identities
    fake_node(monkeypatch, ATTACKER, _claim("client-0"))
    summary = _run(FakeGrid(_configs(folder)), directory)
    assert summary["parties"] == ["client-0", "client-1", "client-2"]
    assert summary["rounds"][0]["contributors"] == ["client-0", "client-1", "client-2"]


def test_a_replayed_proof_from_an_earlier_hello_is_refused(
    identities: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 103 recorded client-0's real proof from an earlier hello and replays it
    while client-0 misses this one: the proof covers the earlier challenge."""
    folder, directory = identities
    grid = FakeGrid(_configs(folder))
    old_challenge = new_challenge()
    req = Message(
        pack(
            Envelope(
                Op.HELLO,
                0,
                "",
                b"",
                {"challenge": old_challenge.hex(), "party-proof": "1"},
            )
        ),
        dst_node_id=100,
        message_type=MESSAGE_TYPE,
    )
    recorded = unpack(client_app.privagg_query(req, grid.contexts[100]).content)
    assert recorded.party == "client-0" and "party-signature" in recorded.meta
    fake_node(monkeypatch, ATTACKER, _claim("client-0", dict(recorded.meta)))
    grid = FakeGrid(_configs(folder))
    grid.silent = {100}
    summary = _run(grid, directory, min_nodes=4)
    assert "client-0" not in summary["parties"]


def test_a_party_id_outside_the_directory_is_left_out(
    identities: tuple[Path, Path],
) -> None:
    folder, directory = identities
    configs = _configs(folder)
    configs[104] = dict(configs[103]) | {"party-id": "intruder"}
    summary = _run(FakeGrid(configs), directory)
    assert summary["parties"] == PARTIES


def test_without_a_directory_party_ids_are_the_nodes_claims(
    identities: tuple[Path, Path],
) -> None:
    """Nodes with keys in a run without a directory: their proofs are not needed and
    the run is as before (party ids are then the nodes' own claims: the documented
    limit, strict xfail in test_review_r3_hello.py)."""
    folder, _ = identities
    summary = _run(FakeGrid(_configs(folder)), None)
    assert summary["parties"] == PARTIES


def test_proofs_are_bound_to_their_context_challenge_id_and_node() -> None:
    """Unit: a party proof verifies only for its challenge, id, Flower node id and key;
    a holder's hello signature is never a party proof; malformed signatures and node
    ids are refused."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    ch, other = new_challenge(), new_challenge()
    msg = party_hello_message(ch, "client-0", 100)
    good = {"party-signature": key.sign(msg).hex()}
    assert verify_party_claim(good, ch, "client-0", pub, 100)
    assert not verify_party_claim(good, other, "client-0", pub, 100)
    assert not verify_party_claim(good, ch, "client-1", pub, 100)
    assert not verify_party_claim(good, ch, "client-0", pub, 101)  # relayed
    other_pub = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not verify_party_claim(good, ch, "client-0", other_pub, 100)
    holder_sig = {"party-signature": key.sign(hello_message(ch, "client-0", 100)).hex()}
    assert not verify_party_claim(holder_sig, ch, "client-0", pub, 100)
    sig = good["party-signature"]
    for bad in ("", sig.upper(), sig[:-2], sig + "00", "zz" * 64, " " + sig[1:]):
        assert not verify_party_claim(
            {"party-signature": bad}, ch, "client-0", pub, 100
        )
    assert not verify_party_claim({}, ch, "client-0", pub, 100)
    for node in (-1, 2**64, True):
        assert not verify_party_claim(good, ch, "client-0", pub, node)


def test_a_proof_relayed_by_another_node_in_the_same_run_is_refused(
    identities: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 103 obtains client-0's genuine proof for THIS hello (a network attacker
    who sees client-0's reply without TLS, and drops it) and answers with it: the
    proof names client-0's Flower node id (100), not 103, so it does not verify."""
    folder, directory = identities
    grid = FakeGrid(_configs(folder))

    def relay(env: Envelope, msg: Message) -> Message | None:
        if env.op != Op.HELLO:
            return None
        genuine = unpack(client_app.privagg_query(msg, grid.contexts[100]).content)
        reply = Envelope(Op.HELLO, 0, "client-0", b"", dict(genuine.meta))
        return Message(pack(reply), reply_to=msg)

    fake_node(monkeypatch, ATTACKER, relay)
    grid.silent = {100}
    summary = _run(grid, directory, min_nodes=4)
    assert "client-0" not in summary["parties"]
