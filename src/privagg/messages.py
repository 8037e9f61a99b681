"""The messages of one-shot protocols (plain, CKKS, Paillier): request, contribution, aggregate.

A one-shot round is: the aggregator sends each client a :class:`RoundRequest`; each
client answers with a :class:`Contribution` whose ``body`` is its protected update
(backend-specific: a float vector, CKKS ciphertexts, Paillier ciphertexts); the
aggregator combines them into an :class:`AggregateMessage` for the result holder. The
envelope's scheme byte says which backend's body a message carries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self

from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    decode_guard,
    open_envelope,
    register_message,
    seal,
)
from privagg.errors import DeserializationError

__all__ = ["AggregateMessage", "Contribution", "OneShotKind", "RoundRequest"]

ONE_SHOT_SCHEMES = (Scheme.PLAIN, Scheme.CKKS, Scheme.PAILLIER)
_MAX_CONTRIBUTORS = 1 << 20


class OneShotKind(enum.IntEnum):
    """Message kinds shared by the one-shot schemes."""

    REQUEST = 1
    CONTRIBUTION = 2
    AGGREGATE = 3


def _open(data: bytes, kind: int) -> tuple[Header, PayloadReader]:
    header, payload = open_envelope(data)
    if header.kind != kind or header.scheme not in ONE_SHOT_SCHEMES:
        raise DeserializationError()
    return header, PayloadReader(payload)


@register_message(*((s, OneShotKind.REQUEST) for s in ONE_SHOT_SCHEMES))
@dataclass(frozen=True, slots=True)
class RoundRequest:
    """Aggregator -> client: "send your protected update for this round"."""

    KIND: ClassVar[int] = OneShotKind.REQUEST
    scheme: Scheme
    params_id: bytes
    round_id: int
    client_id: str

    def to_bytes(self) -> bytes:
        """Encode as an envelope."""
        body = PayloadWriter().text(self.client_id).getvalue()
        return seal(Header(self.scheme, self.KIND, self.params_id, self.round_id), body)

    @classmethod
    @decode_guard
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; raises DeserializationError on any malformation."""
        h, r = _open(data, cls.KIND)
        cid = r.text()
        r.done()
        return cls(h.scheme, h.params_id, h.round_id, cid)


@register_message(*((s, OneShotKind.CONTRIBUTION) for s in ONE_SHOT_SCHEMES))
@dataclass(frozen=True, slots=True)
class Contribution:
    """Client -> aggregator: one protected (weighted) update."""

    KIND: ClassVar[int] = OneShotKind.CONTRIBUTION
    scheme: Scheme
    params_id: bytes
    round_id: int
    client_id: str
    body: bytes | memoryview

    def to_bytes(self) -> bytes:
        """Encode as an envelope."""
        # sealed in one join: no separate payload copy of a large body (issue #13)
        payload = PayloadWriter(borrow=True).text(self.client_id).blob(self.body)
        return seal(
            Header(self.scheme, self.KIND, self.params_id, self.round_id), payload
        )

    @classmethod
    @decode_guard
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; raises DeserializationError on any malformation."""
        h, r = _open(data, cls.KIND)
        cid = r.text()
        # a read-only view of the (digest-checked, immutable) message: no copy of a
        # large body (issue #13); a copy when ``data`` is a mutable buffer
        body = r.blob_frozen()
        r.done()
        return cls(h.scheme, h.params_id, h.round_id, cid, body)

    def __repr__(self) -> str:
        return (
            f"Contribution(scheme={self.scheme.name}, round={self.round_id}, "
            f"client={self.client_id!r}, body=<{len(self.body)} bytes>)"
        )


@register_message(*((s, OneShotKind.AGGREGATE) for s in ONE_SHOT_SCHEMES))
@dataclass(frozen=True, slots=True)
class AggregateMessage:
    """Aggregator -> result holder: the combined (still protected) sum and who is in it."""

    KIND: ClassVar[int] = OneShotKind.AGGREGATE
    scheme: Scheme
    params_id: bytes
    round_id: int
    contributors: tuple[str, ...]
    body: bytes | memoryview

    def to_bytes(self) -> bytes:
        """Encode as an envelope."""
        w = PayloadWriter(borrow=True).u32(len(self.contributors))
        for c in self.contributors:
            w.text(c)
        w.blob(self.body)
        return seal(Header(self.scheme, self.KIND, self.params_id, self.round_id), w)

    @classmethod
    @decode_guard
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; raises DeserializationError on any malformation."""
        h, r = _open(data, cls.KIND)
        n = r.u32()
        if n > _MAX_CONTRIBUTORS:
            raise DeserializationError()
        contributors = tuple(r.text() for _ in range(n))
        if len(set(contributors)) != n:
            raise DeserializationError()
        body = r.blob_frozen()  # as in Contribution.from_bytes
        r.done()
        return cls(h.scheme, h.params_id, h.round_id, contributors, body)

    def __repr__(self) -> str:
        return (
            f"AggregateMessage(scheme={self.scheme.name}, round={self.round_id}, "
            f"contributors={len(self.contributors)}, body=<{len(self.body)} bytes>)"
        )
