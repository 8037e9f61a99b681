"""Messages of the additive-sharing scheme."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt

from privagg.backends import _wire
from privagg.envelope import (
    PayloadReader,
    PayloadWriter,
    Scheme,
    register_message,
)
from privagg.errors import (
    DeserializationError,
)


class AdditiveKind(enum.IntEnum):
    """Message kinds of the additive scheme."""

    REQUEST = 1
    SHARES = 2
    SERVER_REQUEST = 3
    PARTIAL = 4
    RESULT = 5


@dataclass(frozen=True)
class _Message(_wire.Message):
    SCHEME: ClassVar[Scheme] = Scheme.ADDITIVE


def _ring_array(
    r: PayloadReader, *, frozen: bool = False
) -> npt.NDArray[np.unsignedinteger]:
    """A ring-word vector; ``frozen``: a read-only view of the message, not a copy."""
    a = r.array_frozen() if frozen else r.array()
    if a.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise DeserializationError()
    return a


@register_message((Scheme.ADDITIVE, AdditiveKind.REQUEST))
@dataclass(frozen=True)
class ShareRequest(_Message):
    """Aggregator -> client: "send your shares for this round"."""

    KIND: ClassVar[int] = AdditiveKind.REQUEST


@register_message((Scheme.ADDITIVE, AdditiveKind.SHARES))
@dataclass(frozen=True, eq=False)
class ClientShares(_Message):
    """Client -> aggregator: server 0's share, and an encrypted seed for each other server.

    Decoded, ``share0`` is read-only: a view of the received bytes when they are an
    immutable ``bytes`` (the coordinator adds it to its sum without a copy, issue #13).
    """

    KIND: ClassVar[int] = AdditiveKind.SHARES
    ephemeral_pk: bytes = b""
    share0: npt.NDArray[np.unsignedinteger] = field(
        default_factory=lambda: np.zeros(0, np.uint32)
    )
    seeds: tuple[tuple[str, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        w.blob(self.ephemeral_pk).array(self.share0)
        _wire.write_pairs(w, self.seeds)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(
            params_id,
            round_id,
            party,
            _wire.fixed(r, 32),
            _ring_array(r, frozen=True),
            _wire.read_pairs(r),
        )

    def __repr__(self) -> str:
        return f"ClientShares(round={self.round_id}, client={self.party!r})"


@register_message((Scheme.ADDITIVE, AdditiveKind.SERVER_REQUEST))
@dataclass(frozen=True)
class ServerRequest(_Message):
    """Aggregator -> server k: each contributor's ephemeral key and encrypted seed."""

    KIND: ClassVar[int] = AdditiveKind.SERVER_REQUEST
    entries: tuple[tuple[str, bytes, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        w.u32(len(self.entries))
        for cid, epk, ct in self.entries:
            w.text(cid).blob(epk).blob(ct)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        entries = tuple(
            (r.text(), _wire.fixed(r, 32), r.blob()) for _ in range(_wire.count(r))
        )
        if len({e[0] for e in entries}) != len(entries):
            raise DeserializationError()
        return cls(params_id, round_id, party, entries)


@register_message((Scheme.ADDITIVE, AdditiveKind.PARTIAL))
@dataclass(frozen=True)
class PartialSum(_Message):
    """Server k -> aggregator: its partial sum, encrypted to the result holder.

    Decoded, ``ciphertext`` is a read-only view of the received bytes when they are an
    immutable ``bytes`` (the coordinator relays it without a copy), else a copy.
    """

    KIND: ClassVar[int] = AdditiveKind.PARTIAL
    contributors: tuple[str, ...] = ()
    ephemeral_pk: bytes = b""
    ciphertext: bytes | memoryview = b""

    def _write(self, w: PayloadWriter) -> None:
        _wire.write_ids(w, self.contributors)
        w.blob(self.ephemeral_pk).blob(self.ciphertext)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(
            params_id,
            round_id,
            party,
            _wire.read_ids(r),
            _wire.fixed(r, 32),
            r.blob_frozen(),
        )

    def __repr__(self) -> str:
        return f"PartialSum(round={self.round_id}, server={self.party!r})"


@register_message((Scheme.ADDITIVE, AdditiveKind.RESULT))
@dataclass(frozen=True, eq=False)
class ResultMessage(_Message):
    """Aggregator -> holder: server 0's partial sum and the other servers' encrypted ones."""

    KIND: ClassVar[int] = AdditiveKind.RESULT
    contributors: tuple[str, ...] = ()
    partial0: npt.NDArray[np.unsignedinteger] = field(
        default_factory=lambda: np.zeros(0, np.uint32)
    )
    partials: tuple[tuple[str, bytes, bytes | memoryview], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _wire.write_ids(w, self.contributors)
        w.array(self.partial0)
        w.u32(len(self.partials))
        for sid, epk, ct in self.partials:
            w.text(sid).blob(epk).blob(ct)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        ids = _wire.read_ids(r)
        p0 = _ring_array(r)
        parts = tuple(
            (r.text(), _wire.fixed(r, 32), r.blob()) for _ in range(_wire.count(r))
        )
        if len({p[0] for p in parts}) != len(parts):
            raise DeserializationError()
        return cls(params_id, round_id, party, ids, p0, parts)

    def __repr__(self) -> str:
        return f"AdditiveResult(round={self.round_id}, contributors={len(self.contributors)})"
