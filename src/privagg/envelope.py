"""One versioned binary envelope for every privagg message.

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic  b"PVAG"
    4       2     format version (currently 2)
    6       1     scheme id        (Scheme)
    7       1     message kind     (per scheme; see each backend)
    8       32    params_id        (fingerprint of the public parameters + layout)
    40      8     round id
    48      8     payload length L
    56      L     payload
    56+L    16    BLAKE3 digest of bytes [0, 56+L), first 16 bytes

The digest detects truncation and accidental corruption (a flipped bit anywhere is
rejected). It is *not* authentication: anyone can recompute it. Authenticity, where the
threat model needs it, comes from the protocol (AES-GCM between parties, Ed25519
signatures over SHA-256 transcripts in SecAgg+), never from this digest; no signature,
commitment or key confirmation covers it. Format 2 (this one) replaced format 1's
BLAKE2b-128 with BLAKE3 (same length, about 5x the throughput on one core): bytes of
another format version raise :class:`~privagg.errors.FormatVersionError` (a
:class:`~privagg.errors.DeserializationError`), before any other check.

Decoding never unpickles or imports anything named by the data: the (scheme, kind) pair
selects a class from a closed registry, and every failure raises the same opaque
:class:`~privagg.errors.DeserializationError`.
"""

from __future__ import annotations

import enum
import hmac
import importlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt
from blake3 import blake3

from privagg.errors import DeserializationError, FormatVersionError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Header",
    "Message",
    "PayloadReader",
    "PayloadWriter",
    "Scheme",
    "decode_guard",
    "from_bytes",
    "open_envelope",
    "register_message",
    "seal",
]

MAGIC = b"PVAG"
FORMAT_VERSION = 2  # 1: BLAKE2b-128 digest; 2: BLAKE3 (first 16 bytes)
_HEADER = struct.Struct(">4sHBB32sQQ")
_DIGEST_SIZE = 16
PARAMS_ID_SIZE = 32


class Scheme(enum.IntEnum):
    """Closed set of schemes that may appear in an envelope."""

    CORE = 0
    PLAIN = 1
    CKKS = 2
    PAILLIER = 3
    SECAGG = 4
    ADDITIVE = 5


# Where each scheme's message classes live. Closed: the data picks an entry, never a path.
_SCHEME_MODULES: dict[Scheme, str] = {
    Scheme.CORE: "privagg.messages",
    Scheme.PLAIN: "privagg.messages",
    Scheme.CKKS: "privagg.messages",
    Scheme.PAILLIER: "privagg.messages",
    Scheme.SECAGG: "privagg.backends.secagg",
    Scheme.ADDITIVE: "privagg.backends.additive",
}


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed-size envelope header."""

    scheme: Scheme
    kind: int
    params_id: bytes
    round_id: int
    version: int = FORMAT_VERSION


def _digest(data: bytes | memoryview) -> bytes:
    return blake3(data).digest(_DIGEST_SIZE)


def seal(header: Header, payload: bytes | PayloadWriter) -> bytes:
    """Wrap ``payload`` in an envelope (format :data:`FORMAT_VERSION`).

    ``payload`` may be a :class:`PayloadWriter`: its fields are then joined once, straight
    into the envelope, instead of into a payload that is copied again (issue #13: the
    peak memory of sealing a large message is the message itself).

    Raises:
        ValueError: a header field out of range, or ``header.version`` other than
            :data:`FORMAT_VERSION` (this privagg writes no other format).
    """
    if isinstance(payload, PayloadWriter):
        parts, length = payload._chunks(), payload._length
    else:
        parts = [payload]
        length = len(payload)
    if len(header.params_id) != PARAMS_ID_SIZE:
        raise ValueError(
            f"params_id must be {PARAMS_ID_SIZE} bytes, got {len(header.params_id)}"
        )
    if not 0 <= header.kind <= 255:
        raise ValueError(f"kind must fit one byte, got {header.kind}")
    if not 0 <= header.round_id < 1 << 64:
        raise ValueError(f"round_id must fit 64 bits, got {header.round_id}")
    if header.version != FORMAT_VERSION:
        # the digest below is format 2's: never label it with another format
        raise ValueError(
            f"this privagg writes envelope format {FORMAT_VERSION} only, "
            f"got a header of format {header.version}"
        )
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        int(header.scheme),
        header.kind,
        header.params_id,
        header.round_id,
        length,
    )
    h = blake3(head)
    for part in parts:
        h.update(part)
    return b"".join((head, *parts, h.digest(_DIGEST_SIZE)))


def open_envelope(data: bytes | bytearray | memoryview) -> tuple[Header, memoryview]:
    """Check an envelope and return its header and a view of its payload.

    The view is always of immutable ``bytes``: ``data`` itself when it is ``bytes`` (or
    a contiguous view of ``bytes``), else a copy taken *before* the digest is checked.
    So what was checked is what every later read sees: a buffer the caller (or another
    thread) rewrites after this check cannot change the message, and the payload view
    never aliases the caller's mutable memory.

    Raises:
        FormatVersionError: an envelope of another format version (format 1: an older
            privagg); checked right after the magic.
        DeserializationError: bad magic, unknown scheme, wrong length, or a digest
            mismatch (truncated or corrupted bytes); an object that is not a readable
            bytes-like buffer (e.g. a released memoryview).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DeserializationError()
    view = _frozen_view(data)
    if len(view) < _HEADER.size + _DIGEST_SIZE:
        raise DeserializationError()
    magic, version, scheme, kind, params_id, round_id, length = _HEADER.unpack_from(
        view, 0
    )
    if magic != MAGIC:
        raise DeserializationError()
    if version != FORMAT_VERSION:
        raise FormatVersionError(version, FORMAT_VERSION)
    if len(view) != _HEADER.size + length + _DIGEST_SIZE:
        raise DeserializationError()
    end = _HEADER.size + length
    # compare_digest: no early exit on the first differing byte (issue #13 audit).
    if not hmac.compare_digest(_digest(view[:end]), bytes(view[end:])):
        raise DeserializationError()
    try:
        sch = Scheme(scheme)
    except ValueError:
        raise DeserializationError() from None
    return Header(sch, kind, bytes(params_id), round_id, version), view[
        _HEADER.size : end
    ]


def _frozen_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat byte view of ``data`` that nobody can change: in place over immutable
    ``bytes``, else over a copy (review: TOCTOU between the digest check and the
    parse of a mutable buffer)."""
    try:
        view = memoryview(data)
        if isinstance(view.obj, bytes):
            return memoryview(_flat(view))
        return memoryview(view.tobytes())
    except (TypeError, ValueError):  # released, or not a buffer
        raise DeserializationError() from None


def _flat(view: memoryview) -> memoryview | bytes:
    """``view`` as flat bytes: cast in place when it is C-contiguous with a castable
    format, else copied (a strided view, a non-native format such as ``>u4``)."""
    if view.c_contiguous:
        try:
            return view.cast("B")
        except TypeError:
            pass
    return view.tobytes()


class Message(Protocol):
    """What every registered message class provides."""

    SCHEME: ClassVar[Scheme]
    KIND: ClassVar[int]

    def to_bytes(self) -> bytes: ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self: ...


_MessageT = TypeVar("_MessageT")
_REGISTRY: dict[tuple[Scheme, int], Callable[[bytes | memoryview], Any]] = {}


def register_message(
    *pairs: tuple[Scheme, int],
) -> Callable[[type[_MessageT]], type[_MessageT]]:
    """Class decorator: let :func:`from_bytes` decode envelopes with these (scheme, kind)."""

    def deco(cls: type[_MessageT]) -> type[_MessageT]:
        for pair in pairs:
            if pair in _REGISTRY:
                raise RuntimeError(f"message kind {pair} registered twice")
            _REGISTRY[pair] = cls.from_bytes  # type: ignore[attr-defined]
        return cls

    return deco


def from_bytes(data: bytes | bytearray | memoryview) -> Any:
    """Decode any privagg envelope into its typed message.

    Raises:
        DeserializationError: the bytes are not a well-formed privagg message.
    """
    if not isinstance(data, bytes):
        # one immutable copy of a mutable buffer (none for a view of ``bytes``): the
        # dispatch below and the decoder then check and read the same bytes
        if not isinstance(data, (bytearray, memoryview)):
            raise DeserializationError()
        data = _frozen_view(data)
    header = open_envelope(data)[0]
    key = (header.scheme, header.kind)
    if key not in _REGISTRY:
        try:
            importlib.import_module(_SCHEME_MODULES[header.scheme])
        except ImportError:
            raise DeserializationError() from None
    decoder = _REGISTRY.get(key)
    if decoder is None:
        raise DeserializationError()
    return decoder(data)


# -- payload codec -----------------------------------------------------------------------
class PayloadWriter:
    """Appends length-prefixed fields to a payload.

    With ``borrow=True`` an array or a memoryview field is referenced, not copied, until
    :meth:`getvalue` or :func:`seal` joins the fields: for a writer that is sealed at once
    (a message's ``to_bytes``), it saves a copy of every large field. The caller must not
    modify a borrowed buffer before then.
    """

    __slots__ = ("_borrow", "_length", "_parts", "_small")

    # Fields shorter than this are copied into one running buffer (a message of many
    # small fields is a few chunks, not one object per field); longer immutable or
    # borrowed ones are referenced.
    _SMALL = 1024

    def __init__(self, *, borrow: bool = False) -> None:
        self._parts: list[bytes | memoryview] = []
        self._small = bytearray()
        self._length = 0
        self._borrow = borrow

    def _put(self, b: bytes | bytearray | memoryview) -> None:
        self._small += b
        self._length += len(b)

    def _ref(self, b: bytes | memoryview) -> None:
        """Reference ``b`` (immutable, or borrowed) as its own chunk."""
        if self._small:
            self._parts.append(bytes(self._small))
            self._small.clear()
        self._parts.append(b)
        self._length += len(b)

    def _chunks(self) -> list[bytes | memoryview]:
        """The payload's chunks, in order (the running buffer flushed)."""
        if self._small:
            self._parts.append(bytes(self._small))
            self._small.clear()
        return self._parts

    def u8(self, v: int) -> PayloadWriter:
        self._put(_U8.pack(v))
        return self

    def u32(self, v: int) -> PayloadWriter:
        self._put(_U32.pack(v))
        return self

    def u64(self, v: int) -> PayloadWriter:
        self._put(_U64.pack(v))
        return self

    def f64(self, v: float) -> PayloadWriter:
        self._put(_F64.pack(v))
        return self

    def blob(self, b: bytes | bytearray | memoryview) -> PayloadWriter:
        if not isinstance(b, (bytes, bytearray)):
            # any other buffer (a memoryview, or an array passed in its place) is
            # framed by its byte length, never its item count
            b = _flat(memoryview(b))
        self._put(_U64.pack(len(b)))
        if len(b) < self._SMALL:
            self._put(b)  # copied now
        elif isinstance(b, bytes) or (self._borrow and isinstance(b, memoryview)):
            self._ref(b)
        else:
            self._ref(bytes(b))
        return self

    def text(self, s: str) -> PayloadWriter:
        b = s.encode("utf-8")
        if len(b) >= self._SMALL:
            return self.blob(b)
        self._small += _U64.pack(len(b))
        self._small += b
        self._length += 8 + len(b)
        return self

    def texts(self, items: Sequence[str]) -> PayloadWriter:
        """``text`` of each of ``items``, in order (the same bytes, in one write)."""
        for s in items:
            self.text(s)
        return self

    def int_big(self, v: int) -> PayloadWriter:
        """A non-negative arbitrary-precision integer."""
        if v < 0:
            raise ValueError("int_big takes non-negative integers")
        return self.blob(v.to_bytes((v.bit_length() + 7) // 8 or 1, "big"))

    def array(self, a: npt.NDArray[Any]) -> PayloadWriter:
        """A 1-d little-endian array of a fixed numeric dtype."""
        arr = np.ascontiguousarray(a).reshape(-1)
        code = _DTYPE_CODES[
            arr.dtype.newbyteorder("<").str
            if arr.dtype.byteorder == ">"
            else arr.dtype.str
        ]
        self._put(_ARRAY_HEAD.pack(code, arr.size))
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        if le.nbytes < self._SMALL:
            self._put(le.tobytes())
        else:
            self._ref(le.data.cast("B") if self._borrow else le.tobytes())
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._chunks())


_U8, _U32, _U64, _F64 = (struct.Struct(f) for f in (">B", ">I", ">Q", ">d"))
_ARRAY_HEAD = struct.Struct(">BQ")


_DTYPE_CODES = {"<f8": 1, "<u8": 2, "<i8": 3, "<u4": 4, "<f4": 5, "|u1": 6}
_CODE_DTYPES = {v: np.dtype(k) for k, v in _DTYPE_CODES.items()}


class PayloadReader:
    """Reads fields written by :class:`PayloadWriter`; any overrun raises DeserializationError."""

    __slots__ = ("_end", "_frozen", "_pos", "_view")

    def __init__(self, data: bytes | memoryview) -> None:
        try:
            view = _flat(memoryview(data))
        except (TypeError, ValueError):  # released, or not a buffer
            raise DeserializationError() from None
        self._view = view if isinstance(view, memoryview) else memoryview(view)
        self._pos = 0
        self._end = len(self._view)
        # Immutable backing bytes: a view of them stays what was verified (digest,
        # lengths), so the *_view readers may return it without a copy.
        self._frozen = isinstance(self._view.obj, bytes)

    def _skip(self, n: int) -> int:
        """Advance over ``n`` bytes; their start."""
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise DeserializationError()
        self._pos = pos + n
        return pos

    def _take(self, n: int) -> memoryview:
        pos = self._skip(n)
        return self._view[pos : pos + n]

    def u8(self) -> int:
        return int(self._view[self._skip(1)])

    def u32(self) -> int:
        return int(_U32.unpack_from(self._view, self._skip(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self._view, self._skip(8))[0])

    def f64(self) -> float:
        return float(_F64.unpack_from(self._view, self._skip(8))[0])

    def blob(self) -> bytes:
        n = self.u64()
        pos = self._skip(n)
        return self._view[pos : pos + n].tobytes()

    def blob_view(self) -> memoryview:
        return self._take(self.u64())

    def blob_frozen(self) -> bytes | memoryview:
        """A blob that cannot change after this read: a read-only view of the payload when
        it is backed by immutable ``bytes`` (no copy), else a copy."""
        v = self._take(self.u64())
        return v.toreadonly() if self._frozen else bytes(v)

    def text(self) -> str:
        n = self.u64()
        pos = self._skip(n)
        try:
            return str(self._view[pos : pos + n], "utf-8")
        except UnicodeDecodeError:
            raise DeserializationError() from None

    def texts(self, n: int) -> list[str]:
        """``n`` :meth:`text` fields, in order."""
        view, end, pos, out = self._view, self._end, self._pos, []
        unpack = _U64.unpack_from
        try:
            for _ in range(n):
                if pos + 8 > end:
                    raise DeserializationError()
                (k,) = unpack(view, pos)
                pos += 8
                if pos + k > end:
                    raise DeserializationError()
                out.append(str(view[pos : pos + k], "utf-8"))
                pos += k
        except UnicodeDecodeError:
            raise DeserializationError() from None
        self._pos = pos
        return out

    def int_big(self) -> int:
        return int.from_bytes(self.blob(), "big")

    def _array_bytes(self) -> tuple[np.dtype[Any], memoryview]:
        code = self.u8()
        n = self.u64()
        dt = _CODE_DTYPES.get(code)
        if dt is None:
            raise DeserializationError()
        return dt, self._take(n * dt.itemsize)

    def array(self) -> npt.NDArray[Any]:
        dt, raw = self._array_bytes()
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)

    def array_frozen(self) -> npt.NDArray[Any]:
        """Like :meth:`array`, but without a copy where it can: a read-only array over the
        payload when that is backed by immutable ``bytes`` and the machine is
        little-endian (the wire order); otherwise the fresh copy :meth:`array` returns."""
        dt, raw = self._array_bytes()
        if self._frozen and dt.newbyteorder("=") == dt:
            return np.frombuffer(raw.toreadonly(), dtype=dt)
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)

    def done(self) -> None:
        """Raise unless every byte was consumed."""
        if self._pos != len(self._view):
            raise DeserializationError()


def decode_guard(fn: Callable[..., _MessageT]) -> Callable[..., _MessageT]:
    """Turn any non-privagg exception raised while decoding into DeserializationError."""

    def wrapper(*args: Any, **kwargs: Any) -> _MessageT:
        try:
            return fn(*args, **kwargs)
        except DeserializationError:
            raise
        except Exception:
            raise DeserializationError() from None

    wrapper.__name__ = getattr(fn, "__name__", "decode")
    wrapper.__doc__ = fn.__doc__
    return wrapper
