"""Wire helpers shared by the SecAgg+ and additive messages (envelope + length-prefixed fields)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from privagg.envelope import (
    FORMAT_VERSION,
    MAGIC,
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    decode_guard,
    open_envelope,
    seal,
)
from privagg.errors import DeserializationError, FormatVersionError

__all__ = [
    "Message",
    "count",
    "peek_header",
    "fixed",
    "read_ids",
    "read_pairs",
    "write_ids",
    "write_pairs",
]

_MAX_ITEMS = 1 << 20
_HEADER = struct.Struct(">4sHBB32sQQ")


def peek_header(data: bytes) -> Header:
    """The envelope header, *unverified* (no digest check): only to choose which error to
    raise before the full, verifying decode. Malformed input raises DeserializationError,
    an envelope of another format version :class:`~privagg.errors.FormatVersionError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DeserializationError()
    if isinstance(data, memoryview) and not data.c_contiguous:
        data = data.tobytes()  # struct cannot read a strided view
    if len(data) < _HEADER.size:
        raise DeserializationError()
    _magic, version, scheme, kind, params_id, round_id, _ = _HEADER.unpack_from(data, 0)
    if _magic != MAGIC:
        raise DeserializationError()
    if version != FORMAT_VERSION:
        raise FormatVersionError(version, FORMAT_VERSION)
    try:
        sch = Scheme(scheme)
    except ValueError:
        raise DeserializationError() from None
    return Header(sch, kind, bytes(params_id), round_id, version)


def count(r: PayloadReader) -> int:
    """A u32 item count, bounded."""
    n = r.u32()
    if n > _MAX_ITEMS:
        raise DeserializationError()
    return n


def write_ids(w: PayloadWriter, ids: Sequence[str]) -> None:
    """A list of party ids."""
    w.u32(len(ids)).texts(ids)


def read_ids(r: PayloadReader) -> tuple[str, ...]:
    """Inverse of :func:`write_ids`; duplicates are malformed."""
    ids = tuple(r.texts(count(r)))
    if len(set(ids)) != len(ids):
        raise DeserializationError()
    return ids


def fixed(r: PayloadReader, size: int) -> bytes:
    """A blob of exactly ``size`` bytes."""
    b = r.blob()
    if len(b) != size:
        raise DeserializationError()
    return b


def write_pairs(w: PayloadWriter, items: Sequence[tuple[str, bytes]]) -> None:
    """A list of (party id, blob)."""
    w.u32(len(items))
    for who, blob in items:
        w.text(who).blob(blob)


def read_pairs(r: PayloadReader) -> tuple[tuple[str, bytes], ...]:
    """Inverse of :func:`write_pairs`; a repeated party id is malformed."""
    items = tuple((r.text(), r.blob()) for _ in range(count(r)))
    if len({c[0] for c in items}) != len(items):
        raise DeserializationError()
    return items


@dataclass(frozen=True)
class Message:
    """Common shape: envelope header fields + the party the message is from or to."""

    SCHEME: ClassVar[Scheme]
    KIND: ClassVar[int]
    params_id: bytes
    round_id: int
    party: str

    def _write(self, w: PayloadWriter) -> None:
        pass

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party)

    def body(self) -> bytes:
        """The payload fields after the party id (what :meth:`_write` writes), alone.

        With :meth:`seal_body`, a message addressed to many parties with the same fields
        is encoded once instead of once per party.
        """
        w = PayloadWriter()
        self._write(w)
        return w.getvalue()

    @classmethod
    def seal_body(
        cls, params_id: bytes, round_id: int, party: str, body: bytes
    ) -> bytes:
        """The envelope of a message of this class for ``party`` whose fields after the
        party id encode as ``body`` (see :meth:`body`): the bytes :meth:`to_bytes` of
        that message returns (a payload is its fields' encodings in order)."""
        payload = PayloadWriter().text(party).getvalue() + body
        return seal(Header(cls.SCHEME, cls.KIND, params_id, round_id), payload)

    def to_bytes(self) -> bytes:
        """Encode as an envelope."""
        # Sealed at once: large fields are borrowed, not copied, and joined only into
        # the envelope (issue #13: peak memory).
        w = PayloadWriter(borrow=True).text(self.party)
        self._write(w)
        return seal(Header(self.SCHEME, self.KIND, self.params_id, self.round_id), w)

    @classmethod
    @decode_guard
    def from_bytes(cls, data: bytes) -> Self:
        """Decode; raises DeserializationError on any malformation."""
        h, payload = open_envelope(data)
        if h.scheme != cls.SCHEME or h.kind != cls.KIND:
            raise DeserializationError()
        r = PayloadReader(payload)
        party = r.text()
        msg = cls._read(h.params_id, h.round_id, party, r)
        r.done()
        return msg
