"""Outside security review of 8539b36 / d5710df (issue #14): the Flower ServerApp's
per-client ``drop_reasons`` (``server_app.drop_reasons``, ``GridExchange.reasons``).

A malicious node answers one stage of a passive SecAgg+ round over the fake Grid with
planted bytes (in a ClientApp error, an unreadable envelope, its routing fields, its
payload) or with another node's payload: only that node is dropped, its reason is one
of the documented fixed phrases, no other node is blamed, and no window of the planted
bytes reaches ``drop_reasons`` (``errors`` holds the ClientApp's error text by design,
see docs/flower.md). A one-shot round ended by such a payload raises an error that
names none of them either. FakeGrid only: no Flower deployment is started.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    SHAPES,
    FakeGrid,
    _nodes,
    _task_identity,
    fake_node,
)

import privagg
from fedtrain.flower import client_app, server_app
from fedtrain.flower.transport import RECORD, Envelope, Op, pack, unpack

PLANT = "PLANTED-label-\u00fe\u00ed-SECRET-client-chosen-0123456789"
NODE = 103  # client-3
OTHER = 100
# an error text that forges a line of the ServerApp's log
FORGED = (
    "boom\nINFO fedtrain.flower.server_app: round 9: client-0 " + PLANT
)  # client-0, whose payload client-3 replays

pytestmark = pytest.mark.skipif(
    "secagg" not in privagg.available_backends(), reason="secagg backend not available"
)


@dataclass
class _Malicious:
    """Wraps the ClientApp: node NODE answers ``stage`` with a fault of ``kind``."""

    kind: str
    stage: int
    real: Any = field(default=client_app.privagg_query)
    seen: dict[tuple[int, int], bytes] = field(default_factory=dict)
    fired: bool = False

    def __call__(self, msg: Message, context: Any) -> Message:
        req = unpack(msg.content)
        stage = int(req.meta.get("stage", "0"))
        if context.node_id == NODE and stage == self.stage and req.op == Op.REQUEST:
            self.fired = True
            if self.kind == "error":
                raise RuntimeError(PLANT)  # FakeGrid: Error(reason=repr(exc))
            if self.kind == "error-reply":  # the node's own Error, its text verbatim
                return Message(Error(code=1, reason=FORGED), reply_to=msg)
        reply = self.real(msg, context)
        env = unpack(reply.content)
        self.seen[(context.node_id, stage)] = env.payload
        if context.node_id != NODE or stage != self.stage or req.op != Op.REQUEST:
            return reply
        party, payload = env.party, env.payload
        if self.kind == "envelope":  # a record whose payload is text: malformed
            rec = ConfigRecord({"op": env.op, "round": env.round_id, "party": PLANT})
            rec["payload"] = PLANT
            return Message(RecordDict({RECORD: rec}), reply_to=msg)
        if self.kind == "routing":
            party = PLANT
        elif self.kind == "payload":
            payload = PLANT.encode("utf-8") + payload[len(PLANT) :]
        elif self.kind == "other-party":
            payload = self.seen[(OTHER, stage)]
        else:
            raise AssertionError(self.kind)
        return Message(
            pack(Envelope(env.op, env.round_id, party, payload, dict(env.meta))),
            reply_to=msg,
        )


def _scan(text: str) -> None:
    raw = PLANT.encode("utf-8")
    for i in range(len(raw) - 8):
        w = raw[i : i + 8]
        assert w.hex() not in text
        assert w.decode("utf-8", "replace") not in text
    for i in range(len(PLANT) - 8):
        assert PLANT[i : i + 8] not in text
        assert json.dumps(PLANT[i : i + 8])[1:-1] not in text


def _run(backend: str, fault: _Malicious, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(client_app, "privagg_query", fault)
    grid = FakeGrid(_nodes([1.0] * 5))
    settings = server_app.RunSettings(
        backend=backend,
        backend_options={"active": False} if backend == "secagg" else {},
        shapes=SHAPES,
        min_nodes=5,
        stage_timeout=1.0,
    )
    return server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]


_WANT = {
    "error": "client error",
    "error-reply": "client error",
    "envelope": "unreadable envelope",
    "routing": "mismatched routing fields",
}


@pytest.mark.parametrize("stage", [0, 2])
@pytest.mark.parametrize(
    "kind", ["error", "error-reply", "envelope", "routing", "payload", "other-party"]
)
def test_one_malicious_node_is_the_only_drop_and_its_reason_is_fixed_words(
    kind: str,
    stage: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fault = _Malicious(kind, stage)
    summary = _run("secagg", fault, monkeypatch)
    assert fault.fired
    rec = summary["rounds"][0]
    assert rec["dropped"] == ["client-3"]
    assert rec["contributors"] == ["client-0", "client-1", "client-2", "client-4"]
    why = rec["drop_reasons"]
    assert set(why) == {"client-3"}  # client-0 (replayed) is not blamed
    if kind in _WANT:
        assert why["client-3"] == _WANT[kind]
    else:
        kind_name = why["client-3"].removeprefix("unreadable reply: ")
        assert why["client-3"] != kind_name and kind_name.isidentifier()
        assert kind_name.endswith("Error")
    _scan(json.dumps(why))
    _scan(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    _scan(json.dumps({k: v for k, v in rec.items() if k != "errors"}))
    if kind.startswith("error"):  # the ClientApp's error text is under ``errors``
        assert PLANT in rec["errors"]["client-3"]  # (documented)
    # the log may quote a node's error text, but it cannot forge a log line with it
    for record in caplog.records:
        assert "\n" not in record.getMessage()


def test_a_one_shot_round_ended_by_a_payload_names_no_planted_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plain aggregator has no drop: client-3's planted payload ends the run with a
    typed error (the round is aborted, see tests/privagg/test_review_aborted_round.py)
    whose text carries none of the planted bytes."""
    fault = _Malicious("payload", 0)
    with pytest.raises(privagg.PrivaggError) as exc:
        _run("plain", fault, monkeypatch)
    assert fault.fired
    _scan(f"{exc.value!r} {exc.value}")


def test_a_failed_hello_cannot_forge_a_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Node NODE answers the hello with an Error whose text holds a newline and a
    forged log line: it is not a party, the others' round runs, and no log message
    holds a newline (the text is quoted)."""
    caplog.set_level(logging.DEBUG)

    def hello_fails(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            return Message(Error(code=1, reason=FORGED), reply_to=msg)
        return None

    fake_node(monkeypatch, NODE, hello_fails)
    grid = FakeGrid(_nodes([1.0] * 5))
    settings = server_app.RunSettings(
        backend="plain", shapes=SHAPES, min_nodes=5, stage_timeout=1.0
    )
    summary = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    assert summary["parties"] == ["client-0", "client-1", "client-2", "client-4"]
    assert any("failed hello" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        assert "\n" not in record.getMessage()
