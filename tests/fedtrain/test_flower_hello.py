"""The ServerApp's hello: a node's party id is its own choice, so it is checked before
it is logged or kept, and an unreadable hello reply leaves that node out instead of
ending the run (findings of the drop-reason review, #14)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    SHAPES,
    FakeGrid,
    _nodes,
    _task_identity,
    fake_node,
)

from fedtrain.flower import client_app, server_app
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.transport import Envelope, Op, is_party_id, pack

NODE = 103  # client-3
PLANT = "PLANTED-id-0123456789"


@pytest.mark.parametrize(
    "pid",
    [
        "client-0",
        "server-1",
        "holder",
        "hospital-a",
        "c0",
        "a",
        "x" * 128,
        "n.1:a@b+c_d",
    ],
)
def test_well_formed_party_ids(pid: str) -> None:
    assert is_party_id(pid)


@pytest.mark.parametrize(
    "pid",
    [
        "",
        "-client",
        ".hidden",
        "x" * 129,
        "client 0",
        "client\n0",
        "INFO forged\nline",
        "client\x00",
        "caf\u00e9",
        "client/0",
        "a'b",
        'a"b',
        None,
        7,
        b"client-0",
    ],
)
def test_malformed_party_ids(pid: Any) -> None:
    assert not is_party_id(pid)


def _run(grid: FakeGrid) -> dict[str, Any]:
    settings = server_app.RunSettings(
        backend="plain", shapes=SHAPES, min_nodes=5, stage_timeout=1.0
    )
    return server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type,no-any-return]


@pytest.mark.parametrize(
    "announced", [f"client-3\nINFO forged {PLANT}", f"{PLANT} x", "", "\u00e9" + PLANT]
)
def test_a_malformed_announced_id_leaves_that_node_out(
    announced: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def hello(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            return Message(pack(Envelope(Op.HELLO, 0, announced)), reply_to=msg)
        return None

    fake_node(monkeypatch, NODE, hello)
    summary = _run(FakeGrid(_nodes([1.0] * 5)))
    assert summary["parties"] == ["client-0", "client-1", "client-2", "client-4"]
    text = " ".join(r.getMessage() for r in caplog.records) + repr(summary)
    assert PLANT not in text
    for record in caplog.records:
        assert "\n" not in record.getMessage()


@pytest.mark.parametrize(
    "content",
    [
        RecordDict(),
        RecordDict({"privagg": ConfigRecord({"op": "hello"})}),
        RecordDict(
            {
                "privagg": ConfigRecord(
                    {"op": "hello", "round": "0", "party": "client-3", "payload": b""}
                )
            }
        ),
    ],
    ids=["empty", "no-fields", "round-not-int"],
)
def test_an_unreadable_hello_reply_leaves_that_node_out(
    content: RecordDict, monkeypatch: pytest.MonkeyPatch
) -> None:

    def hello(env: Envelope, msg: Message) -> Message | None:
        return Message(content, reply_to=msg) if env.op == Op.HELLO else None

    fake_node(monkeypatch, NODE, hello)
    summary = _run(FakeGrid(_nodes([1.0] * 5)))
    assert summary["parties"] == ["client-0", "client-1", "client-2", "client-4"]


def test_a_node_config_with_a_malformed_party_id_is_refused() -> None:
    ctx = SimpleNamespace(node_config={"party-id": "client 0\n"})
    with pytest.raises(FlowerConfigError, match="party-id"):
        client_app._party_id(ctx)  # type: ignore[arg-type]
