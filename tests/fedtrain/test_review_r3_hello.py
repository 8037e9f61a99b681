"""Outside review r3 of 0e52e00 (party ids checked at hello) and 48aa8b5 (test_seed).

A failing test here means the attack it describes works against the code under
review (the tests state what a secure implementation should do); a passing test
means the attack was refused.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import Error, Message
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    SHAPES,
    FakeGrid,
    _nodes,
    _task_identity,
)

from fedtrain.flower import client_app, server_app
from fedtrain.flower.errors import FlowerProtocolError
from fedtrain.flower.transport import (
    Envelope,
    Op,
    is_party_id,
    pack,
    recovery_check,
    unpack,
)
from privagg import Layout

ATTACKER = 103  # client-3, a malicious node
HOLDER = 200  # the genuine result-holder node


def _settings(**kw: Any) -> server_app.RunSettings:
    base: dict[str, Any] = {
        "backend": "plain",
        "shapes": SHAPES,
        "min_nodes": 5,
        "stage_timeout": 1.0,
    }
    return server_app.RunSettings(**{**base, **kw})


def _run(grid: FakeGrid, **kw: Any) -> dict[str, Any]:
    settings = _settings(**kw)
    return server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type,no-any-return]


def _attack(monkeypatch: pytest.MonkeyPatch, fake: Any) -> None:
    """Node ATTACKER answers with ``fake(env, msg)`` when it returns a Message."""
    real = client_app.privagg_query

    def query(msg: Message, context: Any) -> Message:
        if context.node_id == ATTACKER:
            out = fake(unpack(msg.content), msg)
            if out is not None:
                return out  # type: ignore[no-any-return]
        return real(msg, context)

    monkeypatch.setattr(client_app, "privagg_query", query)


def _with_holder() -> dict[int, dict[str, object]]:
    nodes = _nodes([1.0] * 5)
    nodes[HOLDER] = {"privagg-holder": True}
    return nodes


@pytest.mark.xfail(
    strict=True,
    reason="open (review r3, medium, documented): a duplicate party id at hello ends the run (FlowerProtocolError): one admitted node can stop any run",
)
def test_r3_one_node_claiming_another_party_id_does_not_end_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (DoS): a single node announces a well-formed id that another node
    owns ("client-0"); _hello raises 'two nodes claim party id' and the whole run
    ends for everybody. A node that misbehaves at hello is left out elsewhere
    (malformed id, unreadable reply); a duplicate should not be a one-node kill
    switch."""

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            return Message(pack(Envelope(Op.HELLO, 0, "client-0")), reply_to=msg)
        return None

    _attack(monkeypatch, fake)
    summary = _run(FakeGrid(_nodes([1.0] * 5)))
    assert {"client-1", "client-2", "client-4"} <= set(summary["parties"])


@pytest.mark.xfail(
    strict=True,
    reason="open (review r3, medium): a second node claiming holder=1 at hello ends the run: one admitted node can stop any run with a holder node",
)
def test_r3_one_client_claiming_the_holder_role_does_not_end_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (DoS): any client node adds meta holder="1" to its hello reply; with a
    genuine holder node present _hello raises 'more than one node claims the
    result-holder role' and the run ends (holder = "node")."""

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            reply = Envelope(Op.HELLO, 0, "client-3", b"", {"holder": "1"})
            return Message(pack(reply), reply_to=msg)
        return None

    _attack(monkeypatch, fake)
    summary = _run(FakeGrid(_with_holder()), min_nodes=6, holder="node")
    assert len(summary["rounds"]) == 1


@pytest.mark.xfail(
    strict=True,
    reason="open (review r3, HIGH): the holder role is self-declared at hello and its recovery reply is not authenticated (unkeyed check value); if the real holder misses hello, any node can claim it and return a forged sum and contributor list. Fix needs the holder pinned (run config + node authentication key) or a signed reply",
)
def test_r3_a_self_declared_holder_cannot_forge_the_aggregate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (integrity): the holder role is self-declared at hello and the recovery
    check value is an unkeyed hash. When the genuine holder node does not answer
    hello (restarting, slow), a client node that claims holder="1" is sent the
    aggregate to recover and answers any vector it likes with a matching check
    value: the ServerApp applies it as the round's result (model poisoning that
    bypasses secure aggregation and the clients' clipping)."""
    evil = 1000.0  # exact in float16 too

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            reply = Envelope(Op.HELLO, 0, "client-3", b"", {"holder": "1"})
            return Message(pack(reply), reply_to=msg)
        if env.op == Op.RECOVER:
            n = Layout.from_bytes(bytes.fromhex(env.meta["layout"])).size
            vector = np.full(n, evil, dtype="<f8").tobytes()
            contributors = json.dumps(["client-0"])
            check = recovery_check(env.round_id, env.payload, vector, contributors)
            out = Envelope(
                Op.RECOVER,
                env.round_id,
                env.party,
                vector,
                {"contributors": contributors, "check": check},
            )
            return Message(pack(out), reply_to=msg)
        return None

    _attack(monkeypatch, fake)
    grid = FakeGrid(_with_holder())
    grid.silent = {HOLDER}  # the genuine holder misses hello
    try:
        summary = _run(grid, min_nodes=6, holder="node")
    except (FlowerProtocolError, server_app.FlowerConfigError):
        return  # refused: fine
    rnd = summary["rounds"][0]
    values = [float(v) for arr in rnd["aggregate"].values() for v in np.ravel(arr)]
    assert evil not in values, (
        f"forged aggregate applied: contributors {rnd['contributors']}"
    )


def test_r3_a_holder_error_text_is_not_raised_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (log injection, low): _recover_remote puts the holder node's error
    text into FlowerProtocolError unquoted (f"...failed: {reason}"); hello and
    GridExchange quote node texts with %r. A newline in it forges log lines when
    the exception is logged."""
    forged = 'boom\nINFO privagg-summary {"forged": true}'
    real = client_app.privagg_query

    def query(msg: Message, context: Any) -> Message:
        if context.node_id == HOLDER and unpack(msg.content).op == Op.RECOVER:
            return Message(Error(code=1, reason=forged), reply_to=msg)
        return real(msg, context)

    monkeypatch.setattr(client_app, "privagg_query", query)
    with pytest.raises(FlowerProtocolError) as info:
        _run(FakeGrid(_with_holder()), min_nodes=6, holder="node")
    assert "\n" not in str(info.value)


@pytest.mark.xfail(
    strict=True,
    reason="open (review r3, medium, documented limit): outside active SecAgg+ party ids are not bound to nodes; a node can announce the id of a node that misses hello",
)
def test_r3_a_node_cannot_take_over_a_late_nodes_party_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (impersonation, documented design limit without active SecAgg+): the
    genuine client-0 misses hello; node 103 announces "client-0" and is used as
    client-0 for the run (its update counted and attributed to client-0, whose
    per-client ledger / contributor record it then drives). The ServerApp has no way
    to bind a party id to a node outside active SecAgg+."""

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            return Message(pack(Envelope(Op.HELLO, 0, "client-0")), reply_to=msg)
        return None

    _attack(monkeypatch, fake)
    grid = FakeGrid(_nodes([1.0] * 5))
    grid.silent = {100}  # the genuine client-0 misses hello
    monkeypatch.setitem(grid.contexts[ATTACKER].node_config, "party-id", "client-0")
    summary = _run(grid, min_nodes=5)
    assert "client-0" not in summary["rounds"][0]["contributors"]


class _EvilStr(str):
    def __eq__(self, other: object) -> bool:  # pragma: no cover - not reached
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize(
    "pid",
    [
        "client-0\n",  # fullmatch, not match + "$"
        "\uff10client",  # fullwidth digit
        "\u0663client",  # Arabic-Indic digit
        "client-\u0663",
        "client-0\u200b",  # zero-width space
        "K\u212a",  # Kelvin sign (case-folds to k)
        "a" + "\u0301",  # combining accent
        "../x",
        "a/../../etc",
        "a\\b",
    ],
)
def test_r3_unicode_lookalikes_and_paths_are_not_party_ids(pid: str) -> None:
    """REFUSED: the id regex is ASCII-only and anchored (fullmatch); '/' and '\\'
    are not allowed, so no party id can walk a path."""
    assert not is_party_id(pid)


def test_r3_a_str_subclass_is_only_checked_by_value() -> None:
    """A str subclass passes only if its value is well formed (unpack only ever
    yields plain str from a ConfigRecord, so a subclass cannot arrive over Flower)."""
    assert is_party_id(_EvilStr("client-0"))
    assert not is_party_id(_EvilStr("client 0"))
