"""Route privagg protocol bytes over Flower Messages.

privagg's roles exchange opaque bytes: the aggregator's ``start()``/``receive()`` return
``{party_id: request}`` and a responder answers ``handle(request) -> reply``. This module
is the network version of :func:`privagg.run_round`'s routing loop:

* :func:`drive_aggregator` runs any :class:`privagg.AggregatorRole` to completion over an
  :class:`Exchange` (one request/reply stage at a time; a party that does not answer in
  time is left out of ``replies``, which is how privagg sees a dropout).
* :class:`GridExchange` is the Flower implementation of :class:`Exchange`: one
  ``query.privagg`` Message per request, sent with ``Grid.send_and_receive(timeout=...)``.
* :func:`pack` / :func:`unpack` put the bytes in one ``ConfigRecord`` (a ``bytes`` field;
  no ``ArrayRecord``, no pickle) next to a few public routing fields.

Nothing here knows a backend: the payload is whatever the role produced.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedtrain.flower.errors import FlowerProtocolError
from privagg import AggregatorRole, ProtocolError

__all__ = [
    "is_party_id",
    "MESSAGE_TYPE",
    "RECORD",
    "DriveResult",
    "Envelope",
    "Exchange",
    "GridExchange",
    "Op",
    "drive_aggregator",
    "pack",
    "recovery_check",
    "send_and_receive",
    "unpack",
]

# the most characters of a node's own error text kept or logged (review r8)
_REASON_CHARS = 200
log = logging.getLogger(__name__)

MESSAGE_TYPE = "query.privagg"
"""Flower message type of every privagg message (``@app.query("privagg")``)."""

RECORD = "privagg"
"""Key of the ConfigRecord that carries a privagg message inside a RecordDict."""

MAX_STAGES = 64

#: what a party id may look like over Flower: 1-128 printable ASCII characters from a
#: small set (letters, digits, ``. _ : @ + -``), starting with a letter or a digit. A
#: node announces its id at hello; the ServerApp logs it and keys its run summary by
#: it, so no control character, space or quote may be in it.
_PARTY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")


def is_party_id(value: object) -> bool:
    """Whether ``value`` is a well-formed party id (:data:`_PARTY_ID`)."""
    return isinstance(value, str) and _PARTY_ID.fullmatch(value) is not None


class Op(enum.StrEnum):
    """The operations a ServerApp asks a node for (strings on the wire)."""

    HELLO = "hello"
    """Which party is this node? Reply carries its party id and roles."""
    REQUEST = "request"
    """An aggregator request for a responder; reply is the responder's reply bytes."""
    RECOVER = "recover"
    """The protected aggregate for the result holder; reply is the recovered vector."""


@dataclass(frozen=True)
class Envelope:
    """One privagg message as carried by a Flower Message.

    Attributes:
        op: one of :class:`Op`'s values.
        round_id: the privagg round id.
        party: the privagg party id the message is addressed to (or comes from).
        payload: opaque privagg bytes (a request, a reply, a result, or a vector).
        meta: small public strings (session spec, layout, contributors, roles).
    """

    op: str
    round_id: int
    party: str
    payload: bytes = b""
    meta: Mapping[str, str] = field(default_factory=dict)


def pack(env: Envelope) -> RecordDict:
    """Put an :class:`Envelope` into a RecordDict (one ConfigRecord under :data:`RECORD`).

    Args:
        env: the envelope.

    Returns:
        The RecordDict to use as a Message's content.
    """
    rec: dict[str, int | str | bytes] = {
        "op": env.op,
        "round": int(env.round_id),
        "party": env.party,
        "payload": bytes(env.payload),
    }
    for k, v in env.meta.items():
        rec[f"meta.{k}"] = str(v)
    return RecordDict({RECORD: ConfigRecord(rec)})  # type: ignore[arg-type]


def unpack(content: RecordDict) -> Envelope:
    """Read an :class:`Envelope` back from a Message's content.

    Args:
        content: the RecordDict of a Message.

    Returns:
        The envelope.

    Raises:
        ProtocolError: the content has no well-formed privagg record.
    """
    try:
        rec = content.config_records[RECORD]
        op, round_id, party, payload = (
            rec["op"],
            rec["round"],
            rec["party"],
            rec["payload"],
        )
    except (KeyError, TypeError) as exc:
        raise FlowerProtocolError("message carries no privagg record") from exc
    if not (
        isinstance(op, str)
        and type(round_id) is int  # not a bool
        and isinstance(party, str)
        and isinstance(payload, bytes)
    ):
        raise FlowerProtocolError("malformed privagg record")
    meta = {
        k.removeprefix("meta."): str(v) for k, v in rec.items() if k.startswith("meta.")
    }
    return Envelope(op, round_id, party, payload, meta)


def recovery_check(
    round_id: int, aggregate: bytes, vector: bytes, contributors: str
) -> str:
    """The holder's check value over its recovery reply (hex SHA-256 of the round id,
    the aggregate it was asked to recover, the recovered vector and the contributor
    list). The ServerApp recomputes it: a reply damaged on the way, or one that
    belongs to another request (an earlier round's, a stale one), is refused. Not an
    authenticator by itself: the holder signs it, with the run's challenge and the
    round id, under its pinned key (:func:`fedtrain.flower.holder_auth.
    recovery_message`), and the ServerApp checks that signature."""
    h = hashlib.sha256(b"fedtrain-flower-recover-1\x00")
    h.update(int(round_id).to_bytes(8, "big", signed=True))
    for part in (aggregate, vector, contributors.encode("utf-8")):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def send_and_receive(
    grid: Grid, messages: Sequence[Message], *, timeout: float, poll: float = 0.1
) -> list[Message]:
    """``Grid.send_and_receive`` with a short poll interval.

    Flower's own loop sleeps 3 s between pulls, which adds up to 3 s to every stage of
    a multi-stage protocol; this one pulls every ``poll`` seconds until every reply is
    in or ``timeout`` has passed.

    Args:
        grid: the ServerApp's grid.
        messages: messages to push.
        timeout: seconds to wait for the replies.
        poll: seconds between pulls.

    Returns:
        The replies that arrived in time.
    """
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


class Exchange(Protocol):
    """Deliver one stage of requests and collect the replies that arrive in time."""

    def exchange(
        self, requests: Mapping[str, bytes], *, stage: int
    ) -> dict[str, bytes]:
        """Send ``requests`` (party id -> bytes); return the replies that arrived.

        A party absent from the result did not answer (a dropout).
        """
        ...


@dataclass(frozen=True)
class DriveResult:
    """What :func:`drive_aggregator` observed.

    Attributes:
        result: the aggregator's protected aggregate (for the result holder).
        stages: number of request/reply stages run.
        missing: stage index -> parties that were asked but did not answer.
    """

    result: bytes
    stages: int
    missing: dict[int, tuple[str, ...]]


def drive_aggregator(
    aggregator: AggregatorRole, exchange: Exchange, *, max_stages: int = MAX_STAGES
) -> DriveResult:
    """Run ``aggregator`` to completion, routing its requests through ``exchange``.

    The same loop as :func:`privagg.run_round`, with the in-process ``handle`` calls
    replaced by a network exchange. Parties that stop answering are simply absent from
    the replies handed to ``aggregator.receive``; the protocol decides what that means
    (left out of the sum, or ``InsufficientParticipantsError``).

    Args:
        aggregator: any privagg aggregator role, not started yet.
        exchange: delivers one stage of requests.
        max_stages: safety bound on the number of stages.

    Returns:
        The :class:`DriveResult`.

    Raises:
        ProtocolError: the protocol did not finish within ``max_stages``, or a privagg
            error raised by the aggregator (for example too few survivors).
    """
    outbox = aggregator.start()
    missing: dict[int, tuple[str, ...]] = {}
    stage = 0
    while not aggregator.done:
        if stage >= max_stages:
            raise FlowerProtocolError("protocol did not finish")
        replies = exchange.exchange(outbox, stage=stage) if outbox else {}
        unexpected = set(replies) - set(outbox)
        if unexpected:
            raise FlowerProtocolError(
                f"replies from parties not asked: {sorted(unexpected)}"
            )
        gone = tuple(sorted(set(outbox) - set(replies)))
        if gone:
            missing[stage] = gone
            log.info("stage %d: no reply from %s", stage, ", ".join(gone))
        outbox = aggregator.receive(replies)
        stage += 1
    return DriveResult(aggregator.result(), stage, missing)


class GridExchange:
    """An :class:`Exchange` over a Flower ``Grid`` (the ServerApp's handle on nodes).

    Args:
        grid: the ServerApp's grid.
        nodes: party id -> Flower node id (from the hello stage).
        round_id: the privagg round id, bound into the routing fields.
        timeout: seconds to wait for replies of one stage; later replies are dropouts.
        meta: public strings sent with every request (session spec, layout).
        extra: optional records added to the first stage's messages (for example the
            global model as an ArrayRecord), by party id.
    """

    def __init__(
        self,
        grid: Grid,
        nodes: Mapping[str, int],
        *,
        round_id: int,
        timeout: float,
        meta: Mapping[str, str] | None = None,
        extra: Mapping[str, RecordDict] | None = None,
    ) -> None:
        self._grid = grid
        self._nodes = dict(nodes)
        self._round = round_id
        self._timeout = timeout
        self._meta = dict(meta or {})
        self._extra = dict(extra or {})
        self.errors: dict[str, str] = {}
        """Party id -> error text for parties whose ClientApp answered with an error."""
        self.reasons: dict[str, str] = {}
        """Party id -> why its reply was not passed on, in fixed words (``"client
        error"``, ``"unreadable envelope"``, ``"mismatched routing fields"``): never an
        error's text or a byte of the reply."""

    def exchange(
        self, requests: Mapping[str, bytes], *, stage: int
    ) -> dict[str, bytes]:
        """Send one Message per request and collect the replies within the timeout."""
        unknown = set(requests) - set(self._nodes)
        if unknown:
            raise FlowerProtocolError(
                f"aggregator addressed unknown parties {sorted(unknown)}"
            )
        party_of = {self._nodes[p]: p for p in requests}
        messages = []
        for party, payload in requests.items():
            meta = {**self._meta, "stage": str(stage)}
            content = pack(Envelope(Op.REQUEST, self._round, party, payload, meta))
            if stage == 0 and party in self._extra:
                for key, rec in self._extra[party].items():
                    content[key] = rec
            messages.append(
                Message(
                    content,
                    dst_node_id=self._nodes[party],
                    message_type=MESSAGE_TYPE,
                    group_id=f"privagg-{self._round}",
                )
            )
        replies: dict[str, bytes] = {}
        for msg in send_and_receive(self._grid, messages, timeout=self._timeout):
            sender = party_of.get(msg.metadata.src_node_id)
            if sender is None:
                continue
            if msg.has_error():
                # the node's text: kept and logged quoted, one line, cut
                self.errors[sender] = str(msg.error.reason)[:_REASON_CHARS]
                self.reasons[sender] = "client error"
                log.warning("party %s failed: %r", sender, self.errors[sender])
                continue
            try:
                env = unpack(msg.content)
            except ProtocolError as exc:
                self.errors[sender] = str(exc)
                self.reasons[sender] = "unreadable envelope"
                continue
            if (
                env.op != Op.REQUEST
                or env.party != sender
                or env.round_id != self._round
            ):
                self.errors[sender] = "reply with mismatched routing fields"
                self.reasons[sender] = "mismatched routing fields"
                continue
            replies[sender] = env.payload
        return replies
