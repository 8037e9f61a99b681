"""SecAgg+ messages: one class per (scheme, kind), bytes in and out of the envelope."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np
import numpy.typing as npt

from privagg.backends import _shamir, _wire
from privagg.envelope import (
    PayloadReader,
    PayloadWriter,
    Scheme,
    register_message,
)
from privagg.errors import (
    DeserializationError,
)

_B, _S = 0, 1  # which secret a share is of

# SecAgg+ v5 share records (fixed sizes, checked when a message is read):
COMMIT_SIZE = (
    32  # SHA-256 commitment to one dealt share (see _context._share_commitment)
)
SALT_SIZE = 32  # the secret salt of one commitment
_GCM_TAG = 16
# a dealt share record: commit_s || commit_b || AES-GCM(s share || b share || salt_s || salt_b)
SEALED_SIZE = 2 * COMMIT_SIZE + 2 * (_shamir.SHARE_SIZE + SALT_SIZE) + _GCM_TAG
# a revealed share: share || salt
REVEAL_SIZE = _shamir.SHARE_SIZE + SALT_SIZE


def seal_shares(commit_s: bytes, commit_b: bytes, ciphertext: bytes) -> bytes:
    """One dealt share record: the two commitments in clear, then the ciphertext
    (:func:`open_sealed` is its inverse)."""
    return commit_s + commit_b + ciphertext


def open_sealed(record: bytes) -> tuple[bytes, bytes, bytes]:
    """(commit_s, commit_b, ciphertext) of a record of :data:`SEALED_SIZE` bytes."""
    if len(record) != SEALED_SIZE:
        raise DeserializationError()
    c = COMMIT_SIZE
    return record[:c], record[c : 2 * c], record[2 * c :]


def _read_sealed(r: PayloadReader) -> tuple[tuple[str, bytes], ...]:
    items = _wire.read_pairs(r)
    if any(len(rec) != SEALED_SIZE for _, rec in items):
        raise DeserializationError()
    return items


class SecAggKind(enum.IntEnum):
    """Message kinds of the SecAgg+ scheme (envelope byte 7)."""

    SETUP = 1
    ADVERTISE = 2
    SHARE_KEYS = 3
    SHARES = 4
    MASK = 5
    MASKED = 6
    CONSISTENCY = 7
    SIGNATURE = 8
    UNMASK = 9
    UNMASK_SHARES = 10
    RESULT = 11


# -- messages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Message(_wire.Message):
    SCHEME: ClassVar[Scheme] = Scheme.SECAGG


_count, _fixed = _wire.count, _wire.fixed
_write_ids, _read_ids = _wire.write_ids, _wire.read_ids
_write_cts, _read_cts = _wire.write_pairs, _wire.read_pairs


@register_message((Scheme.SECAGG, SecAggKind.SETUP))
@dataclass(frozen=True)
class SetupRequest(_Message):
    """Aggregator -> client (stage 0): participants, graph degree and threshold."""

    KIND: ClassVar[int] = SecAggKind.SETUP
    participants: tuple[str, ...] = ()
    degree: int = 0
    threshold: int = 0

    def _write(self, w: PayloadWriter) -> None:
        _write_ids(w, self.participants)
        w.u32(self.degree).u32(self.threshold)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        ids = _read_ids(r)
        return cls(params_id, round_id, party, ids, r.u32(), r.u32())


@register_message((Scheme.SECAGG, SecAggKind.ADVERTISE))
@dataclass(frozen=True)
class AdvertiseMessage(_Message):
    """Client -> aggregator (stage 0): ephemeral public keys, the commitment to the
    self-mask seed (SecAgg+ v4) and (active variant) the Ed25519 signature over them."""

    KIND: ClassVar[int] = SecAggKind.ADVERTISE
    c_pk: bytes = b""
    s_pk: bytes = b""
    signature: bytes = b""
    # SHA-256 commitment to the self-mask seed b (see _context._seed_commitment)
    b_commit: bytes = b""

    def _write(self, w: PayloadWriter) -> None:
        w.blob(self.c_pk).blob(self.s_pk).blob(self.b_commit).blob(self.signature)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        c_pk, s_pk, b_commit = _fixed(r, 32), _fixed(r, 32), _fixed(r, 32)
        sig = r.blob()
        if len(sig) not in (0, 64):
            raise DeserializationError()
        return cls(params_id, round_id, party, c_pk, s_pk, sig, b_commit)


@register_message((Scheme.SECAGG, SecAggKind.SHARE_KEYS))
@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Aggregator -> client (stage 1): the advertised keys of the client and its neighbours."""

    KIND: ClassVar[int] = SecAggKind.SHARE_KEYS
    keys: tuple[AdvertiseMessage, ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        w.u32(len(self.keys))
        for k in self.keys:
            w.text(k.party)
            k._write(w)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        keys = tuple(
            AdvertiseMessage._read(params_id, round_id, r.text(), r)
            for _ in range(_count(r))
        )
        if len({k.party for k in keys}) != len(keys):
            raise DeserializationError()
        return cls(params_id, round_id, party, keys)


@register_message((Scheme.SECAGG, SecAggKind.SHARES))
@dataclass(frozen=True)
class SharesMessage(_Message):
    """Client -> aggregator (stage 1): the dealt share records (:func:`seal_shares`,
    :data:`SEALED_SIZE` bytes each), by recipient."""

    KIND: ClassVar[int] = SecAggKind.SHARES
    ciphertexts: tuple[tuple[str, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_cts(w, self.ciphertexts)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _read_sealed(r))


@register_message((Scheme.SECAGG, SecAggKind.MASK))
@dataclass(frozen=True)
class MaskRequest(_Message):
    """Aggregator -> client (stage 2): the share records addressed to it, by dealer."""

    KIND: ClassVar[int] = SecAggKind.MASK
    ciphertexts: tuple[tuple[str, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_cts(w, self.ciphertexts)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _read_sealed(r))


@register_message((Scheme.SECAGG, SecAggKind.MASKED))
@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """Client -> aggregator (stage 2): the masked update (ring words)."""

    KIND: ClassVar[int] = SecAggKind.MASKED
    masked: npt.NDArray[np.unsignedinteger] = field(
        default_factory=lambda: np.zeros(0, np.uint32)
    )
    # senders whose share ciphertext failed (not masked with)
    rejected: tuple[str, ...] = ()
    # graph neighbours the client did NOT mask with (sorted), and (active variant) its
    # Ed25519 signature over them, bound to the round's view: the partner attestation
    # that holders check before they reveal the client's self-mask shares.
    missing: tuple[str, ...] = ()
    signature: bytes = b""

    def _write(self, w: PayloadWriter) -> None:
        w.array(self.masked)
        _write_ids(w, self.rejected)
        _write_ids(w, self.missing)
        w.blob(self.signature)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        # read-only and without a copy over immutable (digest-checked) bytes: the
        # aggregator only adds it into its sum
        a = r.array_frozen()
        if a.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise DeserializationError()
        rejected, missing, sig = _read_ids(r), _read_ids(r), r.blob()
        if len(sig) not in (0, 64) or len(set(missing)) != len(missing):
            raise DeserializationError()
        return cls(params_id, round_id, party, a, rejected, missing, sig)

    def __repr__(self) -> str:
        return f"MaskedInput(round={self.round_id}, client={self.party!r}, size={self.masked.size})"


@register_message((Scheme.SECAGG, SecAggKind.CONSISTENCY))
@dataclass(frozen=True)
class ConsistencyRequest(_Message):
    """Aggregator -> client (stage 3, active variant): the survivor set to sign."""

    KIND: ClassVar[int] = SecAggKind.CONSISTENCY
    survivors: tuple[str, ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_ids(w, self.survivors)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _read_ids(r))


@register_message((Scheme.SECAGG, SecAggKind.SIGNATURE))
@dataclass(frozen=True)
class SignatureMessage(_Message):
    """Client -> aggregator (stage 3, active variant): Ed25519 signature on the survivor set."""

    KIND: ClassVar[int] = SecAggKind.SIGNATURE
    signature: bytes = b""

    def _write(self, w: PayloadWriter) -> None:
        w.blob(self.signature)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _fixed(r, 64))


@register_message((Scheme.SECAGG, SecAggKind.UNMASK))
@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Aggregator -> client (last stage): survivors (+ their signatures, active variant)."""

    KIND: ClassVar[int] = SecAggKind.UNMASK
    survivors: tuple[str, ...] = ()
    signatures: tuple[tuple[str, bytes], ...] = ()
    # (owner, neighbours it did not mask with, owner's signature) for the survivors whose
    # self-mask shares the recipient may hold (active variant).
    attestations: tuple[tuple[str, tuple[str, ...], bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_ids(w, self.survivors)
        _write_cts(w, self.signatures)
        self._write_attestations(w, self.attestations)

    @staticmethod
    def _write_attestations(
        w: PayloadWriter, attestations: Sequence[tuple[str, tuple[str, ...], bytes]]
    ) -> None:
        w.u32(len(attestations))
        for owner, missing, sig in attestations:
            w.text(owner)
            _write_ids(w, missing)
            w.blob(sig)

    @classmethod
    def for_recipients(
        cls,
        params_id: bytes,
        round_id: int,
        survivors: tuple[str, ...],
        signatures: tuple[tuple[str, bytes], ...],
        attestations: Mapping[str, tuple[tuple[str, tuple[str, ...], bytes], ...]],
    ) -> dict[str, bytes]:
        """The request for each recipient of ``attestations`` (recipient -> its
        attestations): the bytes of ``cls(params_id, round_id, recipient, survivors,
        signatures, attestations[recipient]).to_bytes()``, with the fields every
        recipient shares (survivors and their signatures) encoded once."""
        head = PayloadWriter()
        _write_ids(head, survivors)
        _write_cts(head, signatures)
        shared = head.getvalue()
        out = {}
        for cid, att in attestations.items():
            tail = PayloadWriter()
            cls._write_attestations(tail, att)
            out[cid] = cls.seal_body(params_id, round_id, cid, shared + tail.getvalue())
        return out

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        survivors, sigs = _read_ids(r), _read_cts(r)
        att = []
        for _ in range(_count(r)):
            owner, missing, sig = r.text(), _read_ids(r), _fixed(r, 64)
            att.append((owner, missing, sig))
        if len({o for o, _, _ in att}) != len(att):
            raise DeserializationError()
        return cls(params_id, round_id, party, survivors, sigs, tuple(att))


@register_message((Scheme.SECAGG, SecAggKind.UNMASK_SHARES))
@dataclass(frozen=True)
class UnmaskShares(_Message):
    """Client -> aggregator (last stage): (owner, which secret, share || salt) triples
    (:data:`REVEAL_SIZE` bytes: the share and the salt that opens its commitment)."""

    KIND: ClassVar[int] = SecAggKind.UNMASK_SHARES
    shares: tuple[tuple[str, int, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        w.u32(len(self.shares))
        for owner, which, sh in self.shares:
            w.text(owner).u8(which).blob(sh)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        out = []
        for _ in range(_count(r)):
            owner, which, sh = r.text(), r.u8(), _fixed(r, REVEAL_SIZE)
            if which not in (_B, _S):
                raise DeserializationError()
            out.append((owner, which, sh))
        if len({o for o, _, _ in out}) != len(out):
            raise DeserializationError()
        return cls(params_id, round_id, party, tuple(out))

    def __repr__(self) -> str:
        return f"UnmaskShares(round={self.round_id}, client={self.party!r}, n={len(self.shares)})"


@register_message((Scheme.SECAGG, SecAggKind.RESULT))
@dataclass(frozen=True, eq=False)
class ResultMessage(_Message):
    """Aggregator -> result holder: the unmasked sum of the contributors (ring words)."""

    KIND: ClassVar[int] = SecAggKind.RESULT
    contributors: tuple[str, ...] = ()
    total: npt.NDArray[np.unsignedinteger] = field(
        default_factory=lambda: np.zeros(0, np.uint32)
    )

    def _write(self, w: PayloadWriter) -> None:
        _write_ids(w, self.contributors)
        w.array(self.total)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        ids = _read_ids(r)
        a = r.array_frozen()  # read-only, no copy: the holder only decodes it
        if a.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise DeserializationError()
        return cls(params_id, round_id, party, ids, a)

    def __repr__(self) -> str:
        return f"ResultMessage(round={self.round_id}, contributors={len(self.contributors)})"
