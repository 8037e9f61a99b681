"""The CKKS wire format: encrypted updates and message bodies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from privagg.backends.ckks._release import (
    _check_count,
)
from privagg.backends.ckks._sealwrap import _Seal
from privagg.envelope import (
    PayloadReader,
    PayloadWriter,
)
from privagg.errors import (
    DeserializationError,
    ParameterMismatchError,
)

if TYPE_CHECKING:
    from privagg.backends.ckks.keys import CkksPublicContext, CkksSecretContext

_BODY_VERSION = 1
_MAX_CONTRIBUTIONS = 1 << 40


# -- encrypted updates ------------------------------------------------------------------
class EncryptedUpdate:
    """Encrypted flat vector (or a sum of them) under one key; counts its contributions.

    ``a + b`` adds ciphertexts (refusing other keys, parameters or sizes);
    ``to_bytes``/``from_bytes`` use the packed wire format.
    """

    __slots__ = ("_state", "count", "key_fingerprint", "size", "words")

    def __init__(
        self,
        key_fingerprint: bytes,
        state: _Seal,
        count: int,
        size: int,
        words: npt.NDArray[np.uint64],
    ) -> None:
        self.key_fingerprint = key_fingerprint
        self._state = state
        self.count = count
        self.size = size
        self.words = words

    @property
    def n_ciphertexts(self) -> int:
        """Ciphertexts holding the vector."""
        return int(self.words.shape[0])

    def __add__(self, other: object) -> EncryptedUpdate:
        if not isinstance(other, EncryptedUpdate):
            return NotImplemented
        if other.key_fingerprint != self.key_fingerprint:
            raise ParameterMismatchError(
                "cannot add CKKS ciphertexts of different keys/parameters"
            )
        if other.size != self.size:
            raise ParameterMismatchError(
                f"cannot add CKKS updates of {self.size} and {other.size} values"
            )
        _check_count(
            self._state.params, self.count + other.count, self._state.params.value_bound
        )
        words = self.words.copy()
        self._state.add_into(words, other.words)
        return EncryptedUpdate(
            self.key_fingerprint,
            self._state,
            self.count + other.count,
            self.size,
            words,
        )

    def to_bytes(self) -> bytes:
        """Body: version, contribution count, value count, packed coefficients."""
        return (
            PayloadWriter()
            .u8(_BODY_VERSION)
            .u64(self.count)
            .u64(self.size)
            .blob(self._state.pack(self.words))
            .getvalue()
        )

    @classmethod
    def from_bytes(
        cls,
        data: bytes | memoryview,
        context: CkksPublicContext | CkksSecretContext,
        *,
        size: int | None = None,
    ) -> EncryptedUpdate:
        """Decode :meth:`to_bytes`; DeserializationError on any malformation."""
        pub: CkksPublicContext = getattr(context, "public", None) or context  # type: ignore[assignment]
        return _decode_body(data, pub.fingerprint, context.seal_state(), size)

    def __repr__(self) -> str:
        return (
            f"EncryptedUpdate(values={self.size}, ciphertexts={self.n_ciphertexts}, "
            f"contributions={self.count})"
        )


def _parse_body(
    data: bytes | memoryview, state: _Seal, size: int | None
) -> tuple[int, int, memoryview, int]:
    """Parse a body's header: (contributions, values, packed view, ciphertext count).

    ``size``: the number of values the body must hold (None: any, up to 2**40).
    """
    try:
        r = PayloadReader(data)
        if r.u8() != _BODY_VERSION:
            raise DeserializationError()
        count = r.u64()
        n_values = r.u64()
        packed = r.blob_view()
        r.done()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if not 1 <= count <= _MAX_CONTRIBUTIONS or n_values > 1 << 40:
        raise DeserializationError()
    if size is not None and n_values != size:
        raise DeserializationError()
    n_ct = -(-n_values // state.n)
    if len(packed) != n_ct * state.ct_bytes:
        raise DeserializationError()
    return count, n_values, packed, n_ct


def _decode_body(
    data: bytes | memoryview, fp: bytes, state: _Seal, size: int | None
) -> EncryptedUpdate:
    count, n_values, packed, n_ct = _parse_body(data, state, size)
    try:
        words = state.unpack(packed, n_ct)
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    return EncryptedUpdate(fp, state, count, n_values, words)


def _read_body(
    data: bytes | memoryview, state: _Seal, size: int
) -> tuple[int, memoryview, int]:
    """Parse a body's header: (contributions, packed view, ciphertext count)."""
    count, _, packed, n_ct = _parse_body(data, state, size)
    return count, packed, n_ct


def _body(count: int, size: int, packed: bytes | bytearray) -> bytes:
    return (
        PayloadWriter().u8(_BODY_VERSION).u64(count).u64(size).blob(packed).getvalue()
    )


def _body_buffer(
    count: int, size: int, packed_len: int
) -> tuple[bytearray, memoryview]:
    """A body with room for ``packed_len`` packed bytes, and a view of that room: once
    filled, the buffer holds exactly ``_body(count, size, packed)``. Lets encryption and
    combination write the packed words in place (no separate packed copy, issue #13)."""
    head = PayloadWriter().u8(_BODY_VERSION).u64(count).u64(size).u64(packed_len)
    prefix = head.getvalue()  # blob() = u64 length, then the bytes
    buf = bytearray(len(prefix) + packed_len)
    buf[: len(prefix)] = prefix
    return buf, memoryview(buf)[len(prefix) :]
