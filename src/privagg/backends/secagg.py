"""SecAgg+ (Bell et al., CCS 2020): masking-based secure aggregation with dropout recovery.

One untrusted aggregator learns the sum of the surviving clients' updates and nothing
else; clients may drop out at any stage. With ``full_graph=True`` the protocol is the
complete-graph protocol of Bonawitz et al. (CCS 2017). See ``docs/backends/secagg.md``
for the design, the threat model and the choice of the graph degree and threshold.

Stages (each is one request from the aggregator and one reply from each client; a
missing reply is a dropout):

0. ``SETUP`` -> ``ADVERTISE``: the round's participant list ``U0`` and ``(k, t)``; each
   client makes two fresh X25519 key pairs (``c`` for encryption, ``s`` for masking) and a
   32-byte self-mask seed ``b``, and advertises the public keys, signed with its long-term
   Ed25519 identity key when ``active=True`` over (keys, H(U0), n, k, t, q, m).
1. ``SHARE_KEYS`` -> ``SHARES``: the aggregator relays every advertised key set (U1); the
   graph seed hashes them all. Each client checks its neighbours' signatures (same H(U0)
   and parameters), requires at least ``m >= t`` live neighbours, Shamir-shares ``s_sk``
   and ``b`` (threshold ``t``) among its live neighbours only (never itself) and encrypts
   each pair of shares with AES-256-GCM under ``HKDF(ECDH(c_i, c_j))``, binding
   (params, round, H(U0), sender, recipient) as associated data.
2. ``MASK`` -> ``MASKED``: each client decrypts the shares addressed to it (a sender whose
   ciphertext fails is treated as dropped and reported), requires ``t`` of them, and uploads
   ``y_i = x_i + PRG(b_i) + sum_j +-PRG(s_ij) mod 2**bits`` (PRG: AES-256-CTR).
3. (``active=True`` only) ``CONSISTENCY`` -> ``SIGNATURE``: each survivor signs (H(U0), graph
   seed, ``U3``); clients later refuse to unmask unless a quorum ``q`` signed the same.
4. ``UNMASK`` -> ``UNMASK_SHARES``: each survivor sends its shares of ``b_i`` for survivors
   and of ``s_sk_j`` for dropped neighbours (never both for one client); the aggregator
   reconstructs, removes the masks and emits ``RESULT`` (the unmasked sum).

Every message carries the scheme, kind, params_id and round id in its envelope and the
sending/receiving party in its payload; duplicates, replays, messages of another round or
session and out-of-order stages raise :class:`~privagg.errors.ProtocolError`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn, Self

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.backends import _shamir, _wire
from privagg.backends._graph import (
    GraphParams,
    choose_parameters,
    consistency_quorum,
    harary_neighbours,
    min_live_neighbours,
)
from privagg.backends._ringcode import add_masks, centred, encode_to_ring
from privagg.backends._secagg_crypto import (
    aead_decrypt,
    aead_encrypt,
    ecdh,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    hkdf,
    new_ed25519,
    new_x25519,
    x25519_key,
    x25519_public,
)
from privagg.encoding import FixedPointEncoder, noise_headroom
from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    register_message,
    seal,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    InsufficientParticipantsError,
    MissingKeyError,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.keys import SecretBytes, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, Recovered, Responder, check_setup_args

__all__ = [
    "AdvertiseMessage",
    "SecAggMaterial",
    "ConsistencyRequest",
    "MaskRequest",
    "MaskedInput",
    "ResultMessage",
    "SecAggAggregator",
    "SecAggBackend",
    "SecAggClient",
    "SecAggHolder",
    "SecAggKind",
    "SecAggSession",
    "SetupRequest",
    "ShareKeysRequest",
    "SharesMessage",
    "SignatureMessage",
    "UnmaskRequest",
    "UnmaskShares",
]

_DOMAIN = b"privagg/secagg/v2/"  # v2: signed partner attestations (stage 2)
_B, _S = 0, 1  # which secret a share is of


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
    """Client -> aggregator (stage 0): ephemeral public keys (+ Ed25519 signature)."""

    KIND: ClassVar[int] = SecAggKind.ADVERTISE
    c_pk: bytes = b""
    s_pk: bytes = b""
    signature: bytes = b""

    def _write(self, w: PayloadWriter) -> None:
        w.blob(self.c_pk).blob(self.s_pk).blob(self.signature)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        c_pk, s_pk = _fixed(r, 32), _fixed(r, 32)
        sig = r.blob()
        if len(sig) not in (0, 64):
            raise DeserializationError()
        return cls(params_id, round_id, party, c_pk, s_pk, sig)


@register_message((Scheme.SECAGG, SecAggKind.SHARE_KEYS))
@dataclass(frozen=True)
class ShareKeysRequest(_Message):
    """Aggregator -> client (stage 1): the advertised keys of the client and its neighbours."""

    KIND: ClassVar[int] = SecAggKind.SHARE_KEYS
    keys: tuple[AdvertiseMessage, ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        w.u32(len(self.keys))
        for k in self.keys:
            w.text(k.party).blob(k.c_pk).blob(k.s_pk).blob(k.signature)

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
    """Client -> aggregator (stage 1): encrypted share pairs, by recipient."""

    KIND: ClassVar[int] = SecAggKind.SHARES
    ciphertexts: tuple[tuple[str, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_cts(w, self.ciphertexts)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _read_cts(r))


@register_message((Scheme.SECAGG, SecAggKind.MASK))
@dataclass(frozen=True)
class MaskRequest(_Message):
    """Aggregator -> client (stage 2): the encrypted shares addressed to it, by sender."""

    KIND: ClassVar[int] = SecAggKind.MASK
    ciphertexts: tuple[tuple[str, bytes], ...] = ()

    def _write(self, w: PayloadWriter) -> None:
        _write_cts(w, self.ciphertexts)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(params_id, round_id, party, _read_cts(r))


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
        a = r.array()
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
        w.u32(len(self.attestations))
        for owner, missing, sig in self.attestations:
            w.text(owner)
            _write_ids(w, missing)
            w.blob(sig)

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
    """Client -> aggregator (last stage): (owner, which secret, share) triples."""

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
            owner, which, sh = r.text(), r.u8(), _fixed(r, _shamir.SHARE_SIZE)
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
        a = r.array()
        if a.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
            raise DeserializationError()
        return cls(params_id, round_id, party, ids, a)

    def __repr__(self) -> str:
        return f"ResultMessage(round={self.round_id}, contributors={len(self.contributors)})"


# -- shared configuration ------------------------------------------------------------------
@dataclass(frozen=True)
class _Config:
    """Public parameters of a session (identical for every role)."""

    params_id: bytes
    size: int
    encoder: FixedPointEncoder
    value_bound: float
    clip: bool
    max_weight: float
    ring_bits: int
    max_clients: int
    dropout_rate: float
    corruption_rate: float
    sigma: int
    eta: int
    full_graph: bool
    active: bool

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def graph(self, n: int) -> GraphParams:
        return choose_parameters(
            n,
            dropout_rate=self.dropout_rate,
            corruption_rate=self.corruption_rate,
            sigma=self.sigma,
            eta=self.eta,
            full_graph=self.full_graph,
            population=self.max_clients,
        )

    def quorum(self, n: int) -> int:
        """Survivors (and, if active, survivor-set signatures) needed before unmasking."""
        # A survivor's self-mask seed needs t live *other* holders: t + 1 survivors at least.
        t1 = min(self.graph(n).threshold + 1, n)
        if not self.active:
            return t1
        return consistency_quorum(
            n,
            corruption_rate=self.corruption_rate,
            threshold=t1,
            population=self.max_clients,
        )

    def min_live(self, n: int) -> int:
        """Fewest advertised neighbours a client accepts at stage 1 (>= t)."""
        g = self.graph(n)
        return min_live_neighbours(
            n, g.degree, g.threshold, dropout_rate=self.dropout_rate, eta=self.eta
        )

    def round_params(self, n: int) -> bytes:
        """(k, t, q, min_live) for a round of ``n`` clients, as bound into key signatures."""
        g = self.graph(n)
        return struct.pack(
            ">IIIII", n, g.degree, g.threshold, self.quorum(n), self.min_live(n)
        )

    def graph_seed(
        self,
        round_id: int,
        participants: Sequence[str],
        keys: Mapping[str, AdvertiseMessage],
    ) -> bytes:
        """SHA-256 over (params, round, H(U0)) and every advertised key set of U1."""
        h = hashlib.sha256(
            _DOMAIN
            + b"graph"
            + self.params_id
            + round_id.to_bytes(8, "big")
            + u0_digest(participants)
        )
        for cid in sorted(keys):
            k = keys[cid]
            h.update(struct.pack(">I", len(cid)) + cid.encode() + k.c_pk + k.s_pk)
        return h.digest()

    def neighbours(
        self,
        round_id: int,
        participants: Sequence[str],
        keys: Mapping[str, AdvertiseMessage],
        seed: bytes | None = None,
    ) -> dict[str, frozenset[str]]:
        """The graph over U0, ordered by :meth:`graph_seed` (all advertised keys, U1)."""
        ids = sorted(participants)
        seed = seed if seed is not None else self.graph_seed(round_id, ids, keys)
        return harary_neighbours(ids, self.graph(len(ids)).degree, seed)

    def check_header(self, data: bytes, round_id: int, kind: int, who: str) -> None:
        """Cheap checks before decoding: scheme, parameters, round, kind."""
        h = _wire.peek_header(data)
        if h.scheme != Scheme.SECAGG:
            raise ProtocolError(f"{who}: message of another scheme")
        if not hmac.compare_digest(h.params_id, self.params_id):
            raise ParameterMismatchError(
                f"{who}: message made under different parameters or keys"
            )
        if h.round_id != round_id:
            raise ProtocolError(
                f"{who}: message for round {h.round_id}, expected {round_id} (replay?)"
            )
        if h.kind != kind:
            raise ProtocolError(
                f"{who}: unexpected message kind {h.kind} at this stage (expected {kind})"
            )


def _check_round_id(round_id: int) -> None:
    if (
        isinstance(round_id, bool)
        or not isinstance(round_id, int)
        or not 0 <= round_id < 1 << 64
    ):
        raise ConfigurationError(
            f"round_id must be an int in [0, 2**64), got {round_id!r}"
        )


def u0_digest(participants: Sequence[str]) -> bytes:
    """H(U0): SHA-256 of the sorted, length-prefixed participant ids."""
    h = hashlib.sha256(_DOMAIN + b"U0")
    for p in sorted(participants):
        h.update(struct.pack(">I", len(p)) + p.encode())
    return h.digest()


def _key_message(
    cfg: _Config,
    round_id: int,
    cid: str,
    c_pk: bytes,
    s_pk: bytes,
    u0: bytes,
    rparams: bytes,
) -> bytes:
    """What a client signs at stage 0: its keys, H(U0) and the round's (n, k, t, q, min_live)."""
    return (
        _DOMAIN
        + b"keys"
        + cfg.params_id
        + round_id.to_bytes(8, "big")
        + struct.pack(">I", len(cid))
        + cid.encode()
        + c_pk
        + s_pk
        + u0
        + rparams
    )


def _survivor_message(
    cfg: _Config, round_id: int, survivors: Sequence[str], view: bytes
) -> bytes:
    """What a client signs at stage 3: the survivor set U3 and its view of the round,
    ``view = H(U0) || graph seed`` (so all clients that reveal shares agree on U0 and on
    the graph, not only on U3)."""
    h = hashlib.sha256()
    for s in sorted(survivors):
        h.update(struct.pack(">I", len(s)) + s.encode())
    return (
        _DOMAIN
        + b"survivors"
        + cfg.params_id
        + round_id.to_bytes(8, "big")
        + view
        + h.digest()
    )


def _partner_message(
    cfg: _Config, round_id: int, view: bytes, cid: str, missing: Sequence[str]
) -> bytes:
    """What a client signs at stage 2 (active variant): the graph neighbours it did *not*
    mask with, bound to its view ``H(U0) || graph seed`` of the round.

    Holders check this attestation before they reveal the client's self-mask shares: if
    a survivor is among the neighbours it did not mask with, the server could have
    steered its masking partners (selective delivery, then selective drop) and the
    holders refuse (see :meth:`SecAggClient._check_attestations`).
    """
    h = hashlib.sha256()
    for m in sorted(missing):
        h.update(struct.pack(">I", len(m)) + m.encode())
    return (
        _DOMAIN
        + b"partners"
        + cfg.params_id
        + round_id.to_bytes(8, "big")
        + view
        + struct.pack(">I", len(cid))
        + cid.encode()
        + h.digest()
    )


def _valid_x25519(pk: bytes) -> bool:
    """False for a low-order (or otherwise unusable) X25519 public key."""
    try:
        ecdh(_PROBE_KEY, pk)
    except ProtocolError:
        return False
    return True


def _share_key(
    cfg: _Config, round_id: int, shared: bytes, sender: str, recipient: str, u0: bytes
) -> tuple[bytes, bytes]:
    ctx = (
        cfg.params_id
        + round_id.to_bytes(8, "big")
        + u0
        + struct.pack(">I", len(sender))
        + sender.encode()
        + struct.pack(">I", len(recipient))
        + recipient.encode()
    )
    key = hkdf(shared, salt=cfg.params_id, info=_DOMAIN + b"share-key" + ctx)
    return key, _DOMAIN + b"share-aad" + ctx


def _pair_seed(cfg: _Config, round_id: int, shared: bytes, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    ctx = (
        struct.pack(">I", len(lo))
        + lo.encode()
        + struct.pack(">I", len(hi))
        + hi.encode()
    )
    return hkdf(
        shared,
        salt=cfg.params_id,
        info=_DOMAIN + b"mask" + round_id.to_bytes(8, "big") + ctx,
    )


_PROBE_KEY = x25519_key(hashlib.sha256(_DOMAIN + b"probe").digest())


def _pair_sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def _x_coord(index: Mapping[str, int], cid: str) -> int:
    return index[cid] + 1


# -- client --------------------------------------------------------------------------------
class SecAggClient:
    """A SecAgg+ client's state machine for one round (bytes in, bytes out)."""

    def __init__(
        self,
        cfg: _Config,
        party_id: str,
        round_id: int,
        update: FloatVector,
        weight: float,
        rng: Rng,
        identity: SecretBytes | None,
        directory: Callable[[str], bytes],
        noise: NoiseShare | None = None,
    ) -> None:
        self._cfg = cfg
        self._id = party_id
        self._round = round_id
        self._update = update
        self._weight = weight
        self._rng = rng
        self._identity = identity
        self._directory = directory
        self._noise = noise
        self._expect: int = SecAggKind.SETUP
        self._participants: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        self._graph: GraphParams | None = None
        self._quorum = 1
        self._min_live = 1
        self._u0 = b""
        self._rparams = b""
        self._seed = b""
        self._nbrs: frozenset[str] = frozenset()
        self._c_sk: SecretBytes | None = None
        self._s_sk: SecretBytes | None = None
        self._b: SecretBytes | None = None
        self._keys: dict[str, AdvertiseMessage] = {}
        self._own_pks: tuple[bytes, bytes] = (b"", b"")
        self._c_shared: dict[str, bytes] = {}  # X25519(c_i, c_j), stage 1 -> stage 2
        self._held: dict[str, tuple[int, int]] = {}  # owner -> (s share, b share)
        self._masked_with: frozenset[str] = frozenset()
        self._missing: frozenset[str] = frozenset()  # neighbours not masked with
        self._all_nbrs: dict[str, frozenset[str]] = {}
        self._signed: tuple[str, ...] | None = None

    @property
    def party_id(self) -> str:
        """This client's id."""
        return self._id

    def handle(self, request: bytes) -> bytes:
        """Answer the aggregator's request for the current stage."""
        self._cfg.check_header(
            request, self._round, self._expect, f"client {self._id!r}"
        )
        if self._expect == SecAggKind.SETUP:
            return self._setup(SetupRequest.from_bytes(request))
        if self._expect == SecAggKind.SHARE_KEYS:
            return self._share(ShareKeysRequest.from_bytes(request))
        if self._expect == SecAggKind.MASK:
            return self._mask(MaskRequest.from_bytes(request))
        if self._expect == SecAggKind.CONSISTENCY:
            return self._consistency(ConsistencyRequest.from_bytes(request))
        if self._expect == SecAggKind.UNMASK:
            return self._unmask(UnmaskRequest.from_bytes(request))
        raise ProtocolError(f"client {self._id!r} has finished this round")

    def _check_party(self, msg: _Message) -> None:
        if msg.party != self._id:
            raise ProtocolError(
                f"client {self._id!r} got a request addressed to {msg.party!r}"
            )

    def _setup(self, req: SetupRequest) -> bytes:
        self._check_party(req)
        ids = req.participants
        if self._id not in ids:
            raise ProtocolError(
                f"client {self._id!r} is not among the round's participants"
            )
        if len(ids) > self._cfg.max_clients:
            raise ProtocolError(
                f"round has {len(ids)} participants, session allows {self._cfg.max_clients}"
            )
        g = self._cfg.graph(len(ids))
        if (req.degree, req.threshold) != (g.degree, g.threshold):
            raise ProtocolError(
                "the aggregator proposed a graph degree/threshold other than the session's"
            )
        self._participants = tuple(sorted(ids))
        self._index = {c: i for i, c in enumerate(self._participants)}
        self._graph = g
        # n, k, t, q and the stage-1 minimum all follow from |U0|, which the key signature
        # binds (with H(U0)): neighbours that saw another U0 reject these keys.
        self._quorum = self._cfg.quorum(len(ids))
        self._min_live = self._cfg.min_live(len(ids))
        self._u0 = u0_digest(self._participants)
        self._rparams = self._cfg.round_params(len(ids))
        self._c_sk = SecretBytes(new_x25519(self._rng), label="secagg c_sk")
        self._s_sk = SecretBytes(new_x25519(self._rng), label="secagg s_sk")
        self._b = SecretBytes(self._rng.random_bytes(32), label="secagg self-mask seed")
        c_pk = x25519_public(self._c_sk.reveal())
        s_pk = x25519_public(self._s_sk.reveal())
        self._own_pks = (c_pk, s_pk)
        sig = b""
        if self._cfg.active:
            if self._identity is None:
                raise ConfigurationError("the active variant needs an identity key")
            sig = ed25519_sign(
                self._identity.reveal(),
                _key_message(
                    self._cfg,
                    self._round,
                    self._id,
                    c_pk,
                    s_pk,
                    self._u0,
                    self._rparams,
                ),
            )
        self._expect = SecAggKind.SHARE_KEYS
        return AdvertiseMessage(
            self._cfg.params_id, self._round, self._id, c_pk, s_pk, sig
        ).to_bytes()

    def _share(self, req: ShareKeysRequest) -> bytes:
        self._check_party(req)
        assert self._graph is not None and self._c_sk is not None
        assert self._s_sk is not None and self._b is not None
        keys = {k.party: k for k in req.keys}
        mine = keys.get(self._id)
        if mine is None or (mine.c_pk, mine.s_pk) != self._own_pks:
            raise ProtocolError(
                f"client {self._id!r}: the relayed key set misstates its own keys"
            )
        # The request carries every advertised key set of the round (U1); the graph seed
        # hashes all of them. The keys of the client's neighbours must be signed over the
        # same H(U0) and round parameters (n, k, t, q, min_live) as its own; the seed
        # itself is signed with the survivor set at stage 3, so every client that reveals a
        # share saw the same U0 and the same graph (see docs/backends/secagg.md).
        for cid, k in keys.items():
            if cid not in self._index:
                raise ProtocolError(
                    f"client {self._id!r}: keys of non-participant {cid!r} relayed"
                )
            if k.c_pk == k.s_pk:
                raise ProtocolError(f"client {cid!r} advertised equal keys")
        if len(
            {k.c_pk for k in keys.values()} | {k.s_pk for k in keys.values()}
        ) != 2 * len(keys):
            raise ProtocolError("two clients advertised the same key")
        self._seed = self._cfg.graph_seed(self._round, self._participants, keys)
        self._all_nbrs = self._cfg.neighbours(
            self._round, self._participants, keys, self._seed
        )
        self._nbrs = self._all_nbrs[self._id]
        if self._cfg.active:
            for cid in sorted(self._nbrs & keys.keys()):
                k = keys[cid]
                msg = _key_message(
                    self._cfg, self._round, cid, k.c_pk, k.s_pk, self._u0, self._rparams
                )
                if not ed25519_verify(self._directory(cid), k.signature, msg):
                    raise ProtocolError(
                        f"bad signature on the keys of client {cid!r} (forged, or signed for another "
                        "participant list / round parameters)"
                    )
        # Neighbours only: the owner never holds (or reveals) a share of its own secrets,
        # except in a one-client round, where the sum is the input anyway.
        solo = len(self._participants) == 1
        holders = [self._id] if solo else sorted(self._nbrs & keys.keys())
        t = self._graph.threshold
        if len(holders) < self._min_live:
            raise InsufficientParticipantsError(
                f"client {self._id!r} has {len(holders)} live neighbours; it needs {self._min_live} "
                f"(threshold {t})"
            )
        self._keys = keys
        xs = [_x_coord(self._index, h) for h in holders]
        s_sh = _shamir.share(self._s_sk.reveal(), xs, t, self._rng)
        b_sh = _shamir.share(self._b.reveal(), xs, t, self._rng)
        cts = []
        c_sk = x25519_key(self._c_sk.reveal())
        for h in holders:
            x = _x_coord(self._index, h)
            if solo:
                self._held[h] = (s_sh[x], b_sh[x])
                self._masked_with = frozenset({h})
                continue
            shared = ecdh(c_sk, keys[h].c_pk)
            self._c_shared[h] = shared
            key, aad = _share_key(self._cfg, self._round, shared, self._id, h, self._u0)
            pt = _shamir.encode_share(s_sh[x]) + _shamir.encode_share(b_sh[x])
            cts.append((h, aead_encrypt(key, pt, aad)))
        self._expect = SecAggKind.MASK
        return SharesMessage(
            self._cfg.params_id, self._round, self._id, tuple(cts)
        ).to_bytes()

    def _mask(self, req: MaskRequest) -> bytes:
        self._check_party(req)
        assert self._graph is not None and self._c_sk is not None
        assert self._s_sk is not None and self._b is not None
        peers: set[str] = set()
        rejected: list[str] = []
        for sender, ct in req.ciphertexts:
            shared = self._c_shared.get(sender)
            if shared is None:
                raise ProtocolError(
                    f"client {self._id!r}: shares relayed from unexpected {sender!r}"
                )
            key, aad = _share_key(
                self._cfg, self._round, shared, sender, self._id, self._u0
            )
            try:
                pt = aead_decrypt(key, ct, aad)
                if len(pt) != 2 * _shamir.SHARE_SIZE:
                    raise DeserializationError()
                held = (
                    _shamir.decode_share(pt[: _shamir.SHARE_SIZE]),
                    _shamir.decode_share(pt[_shamir.SHARE_SIZE :]),
                )
            except DeserializationError:
                # A bad share ciphertext: treat the sender as dropped (do not mask with it,
                # hold nothing of it) and report it, so the aggregator excludes it too.
                rejected.append(sender)
                continue
            self._held[sender] = held
            peers.add(sender)
        solo = len(self._participants) == 1
        if len(peers) < self._graph.threshold and not solo:
            raise InsufficientParticipantsError(
                f"client {self._id!r}: {len(peers)} neighbours shared keys; threshold is {self._graph.threshold}"
            )
        if not solo:
            self._masked_with = frozenset(peers)
        # The partner attestation: the graph neighbours this client did not mask with,
        # signed with its identity key over its view of the round (active variant).
        self._missing = self._nbrs - peers
        missing = tuple(sorted(self._missing))
        att_sig = b""
        if self._cfg.active:
            assert self._identity is not None
            att_sig = ed25519_sign(
                self._identity.reveal(),
                _partner_message(
                    self._cfg, self._round, self._u0 + self._seed, self._id, missing
                ),
            )
        self._c_shared = {}
        s_sk = x25519_key(self._s_sk.reveal())
        seeds = [(self._b.reveal(), 1)]
        for j in sorted(peers):
            seed = _pair_seed(
                self._cfg, self._round, ecdh(s_sk, self._keys[j].s_pk), self._id, j
            )
            seeds.append((seed, _pair_sign(self._id, j)))
        # Encoding and all k + 1 masks in one cache-blocked pass over the vector.
        y = self._encode(seeds)
        self._update = np.zeros(0)
        self._expect = SecAggKind.CONSISTENCY if self._cfg.active else SecAggKind.UNMASK
        return MaskedInput(
            self._cfg.params_id,
            self._round,
            self._id,
            y,
            tuple(sorted(rejected)),
            missing,
            att_sig,
        ).to_bytes()

    def _encode(
        self, masks: Sequence[tuple[bytes, int]]
    ) -> npt.NDArray[np.unsignedinteger]:
        cfg = self._cfg
        return encode_to_ring(
            cfg.encoder,
            self._update,
            self._weight,
            value_bound=cfg.value_bound,
            clip=cfg.clip,
            rng=self._rng,
            dtype=cfg.dtype,
            noise=self._noise,
            who=f"client {self._id!r}",
            masks=masks,
        )

    def _consistency(self, req: ConsistencyRequest) -> bytes:
        self._check_party(req)
        assert self._graph is not None and self._identity is not None
        self._check_survivors(req.survivors)
        if self._missing & set(req.survivors):
            # A neighbour this client did not mask with cannot have survived an honest
            # round (it was not in U2, or its share ciphertext was rejected).
            raise ProtocolError(
                f"client {self._id!r}: the survivor set includes a neighbour it did not "
                "mask with (selective delivery?)"
            )
        self._signed = tuple(sorted(req.survivors))
        sig = ed25519_sign(
            self._identity.reveal(),
            _survivor_message(
                self._cfg, self._round, self._signed, self._u0 + self._seed
            ),
        )
        self._expect = SecAggKind.UNMASK
        return SignatureMessage(
            self._cfg.params_id, self._round, self._id, sig
        ).to_bytes()

    def _check_survivors(self, survivors: Sequence[str]) -> None:
        assert self._graph is not None
        if self._id not in survivors or any(s not in self._index for s in survivors):
            raise ProtocolError(f"client {self._id!r}: invalid survivor set")
        if len(set(survivors)) != len(survivors):
            raise ProtocolError(f"client {self._id!r}: duplicate survivors")
        if len(survivors) < self._quorum:
            raise InsufficientParticipantsError(
                f"{len(survivors)} survivors, {self._quorum} needed"
            )

    def _unmask(self, req: UnmaskRequest) -> bytes:
        self._check_party(req)
        assert self._graph is not None
        survivors = tuple(sorted(req.survivors))
        self._check_survivors(survivors)
        if self._cfg.active:
            if survivors != self._signed:
                raise ProtocolError(
                    f"client {self._id!r}: survivor set differs from the one it signed"
                )
            msg = _survivor_message(
                self._cfg, self._round, survivors, self._u0 + self._seed
            )
            alive = set(survivors)
            valid: set[str] = set()
            for cid, sig in req.signatures:  # a quorum of valid signatures suffices
                if len(valid) >= self._quorum:
                    break
                if cid in alive and ed25519_verify(self._directory(cid), sig, msg):
                    valid.add(cid)
            if len(valid) < self._quorum:
                raise ProtocolError(
                    f"client {self._id!r}: {len(valid)} valid survivor-set signatures, need {self._quorum}"
                )
        alive = set(survivors)
        if self._cfg.active and len(self._participants) > 1:
            self._check_attestations(req.attestations, alive)
        out = []
        for owner in sorted(self._masked_with):  # never its own secrets
            s_share, b_share = self._held[owner]
            if owner in alive:
                out.append((owner, _B, _shamir.encode_share(b_share)))
            else:
                out.append((owner, _S, _shamir.encode_share(s_share)))
        self._expect = -1
        self._held = {}
        return UnmaskShares(
            self._cfg.params_id, self._round, self._id, tuple(out)
        ).to_bytes()

    def _check_attestations(
        self,
        attestations: Sequence[tuple[str, tuple[str, ...], bytes]],
        alive: set[str],
    ) -> None:
        """Refuse to reveal anything unless every survivor whose self-mask share this
        client would reveal masked with *all* of its graph neighbours that survived.

        This is what stops a malicious server from isolating a victim ``v`` (security
        review, finding 1): deliver to ``v`` only the share ciphertexts of a set ``A`` of
        neighbours, so that ``v`` masks with ``A`` only, then declare ``A`` dropped. The
        holders would reveal ``A``'s mask keys (dropped) and ``v``'s self-mask seed
        (survivor), unmasking ``x_v`` alone. ``v`` signs the neighbours it did not mask
        with (over its view of the round), so the server cannot hide ``A``'s absence:
        a holder that reveals ``b_v`` is itself a surviving neighbour of ``v``, so it is
        a masking partner of ``v`` whose pairwise mask is never revealed. The whole check
        runs before any share is released: on failure nothing is revealed.
        """
        att = {owner: (missing, sig) for owner, missing, sig in attestations}
        view = self._u0 + self._seed
        for owner in sorted(self._masked_with & alive):
            entry = att.get(owner)
            if entry is None:
                raise ProtocolError(
                    f"client {self._id!r}: no partner attestation for survivor {owner!r}"
                )
            missing, sig = entry
            msg = _partner_message(self._cfg, self._round, view, owner, missing)
            if not ed25519_verify(self._directory(owner), sig, msg):
                raise ProtocolError(
                    f"client {self._id!r}: bad partner attestation of {owner!r}"
                )
            if not set(missing) <= self._all_nbrs.get(owner, frozenset()):
                raise ProtocolError(
                    f"client {self._id!r}: the attestation of {owner!r} names non-neighbours"
                )
            if set(missing) & alive:
                raise ProtocolError(
                    f"client {self._id!r}: survivor {owner!r} did not mask with some of "
                    "its surviving neighbours; refusing to reveal its self-mask share "
                    "(selective delivery?)"
                )

    def __repr__(self) -> str:
        return f"SecAggClient(client={self._id!r}, round={self._round})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecAggClient holds secret material and cannot be pickled")


# -- aggregator ----------------------------------------------------------------------------
class SecAggAggregator:
    """The untrusted SecAgg+ server's state machine for one round."""

    def __init__(
        self,
        cfg: _Config,
        round_id: int,
        client_ids: Sequence[str],
        directory: Callable[[str], bytes],
    ) -> None:
        if len(set(client_ids)) != len(client_ids):
            raise ConfigurationError("client ids must be unique")
        if not client_ids:
            raise ConfigurationError("a round needs at least one client")
        if len(client_ids) > cfg.max_clients:
            raise ConfigurationError(
                f"{len(client_ids)} clients, but the session was set up for max_clients={cfg.max_clients}"
            )
        self._cfg = cfg
        self._round = round_id
        self._u0 = tuple(sorted(client_ids))
        self._graph = cfg.graph(len(self._u0))
        self._quorum = cfg.quorum(len(self._u0))
        self._min_live = cfg.min_live(len(self._u0))
        self._u0_digest = u0_digest(self._u0)
        self._rparams = cfg.round_params(len(self._u0))
        self._seed = b""
        self._nbrs: dict[str, frozenset[str]] = {}  # known once the keys are advertised
        self._rejected_by: dict[str, frozenset[str]] = {}
        self._peers: dict[str, frozenset[str]] = {}
        self._attest: dict[str, tuple[tuple[str, ...], bytes]] = {}
        self.rejected: set[str] = set()  # clients dropped for invalid keys or shares
        self._directory = directory
        self._expect: int | None = None
        self._keys: dict[str, AdvertiseMessage] = {}
        self._routed: dict[str, list[tuple[str, bytes]]] = {}
        self._u2: frozenset[str] = frozenset()
        self._u3: tuple[str, ...] = ()
        self._acc: npt.NDArray[np.unsignedinteger] | None = None
        self._result: bytes | None = None

    @property
    def graph(self) -> GraphParams:
        """The round's degree and threshold."""
        return self._graph

    @property
    def done(self) -> bool:
        """True once the sum is unmasked."""
        return self._result is not None

    def result(self) -> bytes:
        """The unmasked sum for the result holder."""
        if self._result is None:
            raise ProtocolError("the round has not finished")
        return self._result

    def _msg(self, cls: type[Any], **kw: Any) -> Callable[[str], bytes]:
        return lambda party: cls(
            self._cfg.params_id, self._round, party, **kw
        ).to_bytes()

    def start(self) -> dict[str, bytes]:
        """Stage 0: send the participant list and (k, t) to every client."""
        if self._expect is not None:
            raise ProtocolError("round already started")
        self._expect = SecAggKind.ADVERTISE
        mk = self._msg(
            SetupRequest,
            participants=self._u0,
            degree=self._graph.degree,
            threshold=self._graph.threshold,
        )
        return {cid: mk(cid) for cid in self._u0}

    def _decode(
        self,
        replies: Mapping[str, bytes],
        cls: type[Any],
        allowed: frozenset[str] | set[str],
    ) -> dict[str, Any]:
        out = {}
        for sender, data in replies.items():
            if sender not in allowed:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
            self._cfg.check_header(data, self._round, cls.KIND, f"reply of {sender!r}")
            msg = cls.from_bytes(data)
            if msg.party != sender:
                raise ProtocolError(
                    f"party {sender!r} sent a reply labelled {msg.party!r}"
                )
            out[sender] = msg
        return out

    def _need(self, n: int, what: str) -> None:
        if n < self._graph.threshold:
            raise InsufficientParticipantsError(
                f"{n} {what}, fewer than the threshold {self._graph.threshold}; round aborted"
            )

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Process one stage's replies; return the next stage's requests ({} when done)."""
        stage = self._expect
        if stage is None or self._result is not None:
            raise ProtocolError("receive() called out of order")
        if stage == SecAggKind.ADVERTISE:
            return self._on_advertise(replies)
        if stage == SecAggKind.SHARES:
            return self._on_shares(replies)
        if stage == SecAggKind.MASKED:
            return self._on_masked(replies)
        if stage == SecAggKind.SIGNATURE:
            return self._on_signatures(replies)
        return self._on_unmask(replies)

    def _on_advertise(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, AdvertiseMessage] = self._decode(
            replies, AdvertiseMessage, set(self._u0)
        )
        rejected: set[str] = set()
        for cid, m in msgs.items():
            # A bad signature, or a low-order / equal / duplicated X25519 key, would make the
            # client's neighbours abort: drop that client here instead (a stage-0 dropout).
            if self._cfg.active and not ed25519_verify(
                self._directory(cid),
                m.signature,
                _key_message(
                    self._cfg,
                    self._round,
                    cid,
                    m.c_pk,
                    m.s_pk,
                    self._u0_digest,
                    self._rparams,
                ),
            ):
                rejected.add(cid)
            elif m.c_pk == m.s_pk or not (
                _valid_x25519(m.c_pk) and _valid_x25519(m.s_pk)
            ):
                rejected.add(cid)
        seen: dict[bytes, str] = {}
        for cid in sorted(msgs):
            for pk in (msgs[cid].c_pk, msgs[cid].s_pk):
                if pk in seen:
                    rejected |= {cid, seen[pk]}
                seen[pk] = cid
        self.rejected |= rejected
        msgs = {c: m for c, m in msgs.items() if c not in rejected}
        self._need(len(msgs), "clients advertised valid keys")
        self._keys = msgs
        # The graph seed hashes every (signed) advertised key set, after stage 0.
        self._seed = self._cfg.graph_seed(self._round, self._u0, msgs)
        self._nbrs = self._cfg.neighbours(self._round, self._u0, msgs, self._seed)
        # Clients with too few live neighbours would refuse to share: treat them as dropped.
        live = [
            c
            for c in sorted(msgs)
            if len(self._nbrs[c] & msgs.keys()) >= self._min_live
        ]
        self._need(len(live), "clients have enough live neighbours")
        self._expect = SecAggKind.SHARES
        rel = tuple(msgs[j] for j in sorted(msgs))
        return {
            cid: ShareKeysRequest(self._cfg.params_id, self._round, cid, rel).to_bytes()
            for cid in live
        }

    def _on_shares(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, SharesMessage] = self._decode(
            replies, SharesMessage, set(self._keys)
        )
        for sender in sorted(msgs):
            want = self._nbrs[sender] & self._keys.keys()
            if {r for r, _ in msgs[sender].ciphertexts} != want:
                self.rejected.add(
                    sender
                )  # shares for the wrong parties: a stage-1 dropout
                del msgs[sender]
        self._need(len(msgs), "clients shared keys")
        u2 = frozenset(msgs)
        routed: dict[str, list[tuple[str, bytes]]] = {cid: [] for cid in u2}
        for sender in sorted(msgs):
            for recipient, ct in msgs[sender].ciphertexts:
                if recipient in u2:
                    routed[recipient].append((sender, ct))
        self._u2 = u2
        self._routed = routed
        self._expect = SecAggKind.MASKED
        return {
            cid: MaskRequest(
                self._cfg.params_id, self._round, cid, tuple(routed[cid])
            ).to_bytes()
            for cid in sorted(u2)
        }

    def _holders(self, owner: str) -> set[str]:
        """Clients holding shares of ``owner``'s secrets: its neighbours in U2 that accepted
        its share ciphertext (never ``owner`` itself)."""
        if len(self._u0) == 1:
            return {owner}  # a one-client round (the sum is the input)
        return {
            i
            for i in self._nbrs[owner] & self._u2
            if owner not in self._rejected_by.get(i, ())
        }

    def _on_masked(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        dtype = self._cfg.dtype
        msgs: dict[str, MaskedInput] = {}
        for sender, data in replies.items():
            msg: MaskedInput = self._decode({sender: data}, MaskedInput, self._u2)[
                sender
            ]
            routed_from = {s for s, _ in self._routed[sender]}
            partners = routed_from - set(msg.rejected)
            if (
                msg.masked.dtype != np.dtype(dtype)
                or msg.masked.shape != (self._cfg.size,)
                or not set(msg.rejected) <= routed_from
                or set(msg.missing) != self._nbrs[sender] - partners
                or not self._attestation_ok(sender, msg)
            ):
                # An unusable upload: ignore it (as if the client dropped before uploading).
                self.rejected.add(sender)
                continue
            msgs[sender] = msg
        # A client whose share ciphertext some uploader rejected is treated as dropped at
        # stage 2 (its upload is ignored, its mask key is recovered): the rejecting client
        # did not mask with it, so its pairwise masks would not cancel.
        accused = {j for m in msgs.values() for j in m.rejected}
        self.rejected |= accused & set(msgs)
        self._rejected_by = {c: frozenset(m.rejected) for c, m in msgs.items()}
        acc = np.zeros(self._cfg.size, dtype=dtype)
        u3 = []
        for sender in sorted(msgs):
            if sender in accused:
                continue
            np.add(acc, msgs[sender].masked, out=acc)
            u3.append(sender)
        self._need(len(u3), "masked inputs arrived")
        if len(u3) < self._quorum:
            raise InsufficientParticipantsError(
                f"{len(u3)} masked inputs arrived; unmasking needs {self._quorum}; round aborted"
            )
        self._u3 = tuple(u3)
        self._peers = {
            c: frozenset(s for s, _ in self._routed[c]) - self._rejected_by[c]
            for c in self._u3
        }
        self._attest = {c: (msgs[c].missing, msgs[c].signature) for c in self._u3}
        self._acc = acc
        self._precheck(set(self._u3))
        self._expect = (
            SecAggKind.SIGNATURE if self._cfg.active else SecAggKind.UNMASK_SHARES
        )
        if self._cfg.active:
            mk = self._msg(ConsistencyRequest, survivors=self._u3)
            return {cid: mk(cid) for cid in self._u3}
        return self._unmask_requests(self._u3, ())

    def _attestation_ok(self, sender: str, msg: MaskedInput) -> bool:
        """The sender's signed partner attestation (active variant; see
        :meth:`SecAggClient._check_attestations`)."""
        if not self._cfg.active or len(self._u0) == 1:
            return True
        return ed25519_verify(
            self._directory(sender),
            msg.signature,
            _partner_message(
                self._cfg,
                self._round,
                self._u0_digest + self._seed,
                sender,
                msg.missing,
            ),
        )

    def _unmask_requests(
        self, recipients: Sequence[str], sigs: tuple[tuple[str, bytes], ...]
    ) -> dict[str, bytes]:
        """The last stage's requests: each recipient gets the survivor set, the survivor-set
        signatures and the partner attestations of its surviving neighbours."""
        alive = set(self._u3)
        out = {}
        for cid in sorted(recipients):
            att: tuple[tuple[str, tuple[str, ...], bytes], ...] = ()
            if self._cfg.active:
                att = tuple(
                    (o, *self._attest[o]) for o in sorted(self._nbrs[cid] & alive)
                )
            out[cid] = UnmaskRequest(
                self._cfg.params_id,
                self._round,
                cid,
                self._u3,
                sigs,
                att,
            ).to_bytes()
        return out

    def _needed(self) -> list[str]:
        """Owners whose secret must be reconstructed: every survivor, and each client of
        U2 outside U3 that a survivor masked with."""
        alive = set(self._u3)
        out = list(self._u3)
        out += [
            j
            for j in sorted(self._u2 - alive)
            if any(j in self._peers[i] for i in alive)
        ]
        return out

    def _precheck(self, responders: set[str]) -> None:
        """Abort (before asking for any share) if some secret could not be recovered."""
        for owner in self._needed():
            n = len(self._holders(owner) & responders)
            if n < self._graph.threshold:
                raise InsufficientParticipantsError(
                    f"only {n} live holders of a needed secret, threshold {self._graph.threshold}; round aborted"
                )

    def _on_signatures(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, SignatureMessage] = self._decode(
            replies, SignatureMessage, set(self._u3)
        )
        smsg = _survivor_message(
            self._cfg, self._round, self._u3, self._u0_digest + self._seed
        )
        sigs = []
        for cid in sorted(msgs):
            if not ed25519_verify(self._directory(cid), msgs[cid].signature, smsg):
                # Not counted (as if it had not answered): one client cannot abort the
                # round this late (second review, finding 4).
                self.rejected.add(cid)
                continue
            sigs.append((cid, msgs[cid].signature))
        if len(sigs) < self._quorum:
            raise InsufficientParticipantsError(
                f"{len(sigs)} survivor-set signatures, {self._quorum} needed; round aborted"
            )
        signers = {cid for cid, _ in sigs}
        self._precheck(signers)
        self._expect = SecAggKind.UNMASK_SHARES
        return self._unmask_requests(sorted(signers), tuple(sigs))

    def _on_unmask(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, UnmaskShares] = self._decode(
            replies, UnmaskShares, set(self._u3)
        )
        alive = set(self._u3)
        index = {c: i for i, c in enumerate(self._u0)}
        got: dict[str, dict[int, int]] = {}
        for sender in sorted(msgs):
            m = msgs[sender]
            # A reply with a share its sender cannot hold, or of the wrong kind, is
            # ignored whole (the sender is treated as dropped): one client cannot abort
            # the round after the others revealed (second review, finding 4).
            if any(
                owner not in self._u2
                or sender not in self._holders(owner)
                or which != (_B if owner in alive else _S)
                for owner, which, _ in m.shares
            ):
                self.rejected.add(sender)
                continue
            for owner, _, sh in m.shares:
                got.setdefault(owner, {})[_x_coord(index, sender)] = (
                    _shamir.decode_share(sh)
                )
        t = self._graph.threshold
        needed = self._needed()
        for owner in needed:
            if len(got.get(owner, {})) < t:
                raise InsufficientParticipantsError(
                    f"too few shares arrived to unmask (threshold {t}); round aborted"
                )
        assert self._acc is not None
        acc = self._acc
        seeds: list[tuple[bytes, int]] = []
        for owner in needed:
            secret = _shamir.reconstruct(got[owner], t)
            if owner in alive:
                seeds.append((secret, -1))
                continue
            if x25519_public(secret) != self._keys[owner].s_pk:
                raise ProtocolError(
                    f"shares of {owner!r} do not reconstruct its advertised key"
                )
            s_sk = x25519_key(secret)
            for i in sorted(i for i in alive if owner in self._peers[i]):
                seed = _pair_seed(
                    self._cfg, self._round, ecdh(s_sk, self._keys[i].s_pk), i, owner
                )
                seeds.append((seed, -_pair_sign(i, owner)))
        add_masks(acc, seeds)
        self._acc = None
        self._result = ResultMessage(
            self._cfg.params_id, self._round, "holder", self._u3, acc
        ).to_bytes()
        return {}

    def __repr__(self) -> str:
        return f"SecAggAggregator(round={self._round}, clients={len(self._u0)})"


# -- holder / session / backend ------------------------------------------------------------
class SecAggHolder:
    """Decodes the aggregator's unmasked sum (the server learns the sum by design)."""

    def __init__(self, cfg: _Config) -> None:
        self._cfg = cfg
        self._recovered_rounds: set[int] = set()

    def recover(self, result: bytes) -> Recovered:
        """Check the result's parameters and round, and decode the fixed-point sum.

        Raises:
            ProtocolError: a result of a round this holder already recovered (replay).
        """
        # The header is read unverified first, so that the digest over the (P-word)
        # result is computed once, by ``from_bytes``; a mismatch is reported only after
        # ``open_envelope`` has checked the digest (corrupted bytes stay a
        # DeserializationError).
        h = _wire.peek_header(result)
        ours = h.scheme == Scheme.SECAGG and h.kind == SecAggKind.RESULT
        if not (ours and hmac.compare_digest(h.params_id, self._cfg.params_id)):
            open_envelope(result)
        if not ours:
            raise ProtocolError("not a SecAgg+ result")
        if not hmac.compare_digest(h.params_id, self._cfg.params_id):
            raise ParameterMismatchError(
                "the result was made under different parameters"
            )
        msg = ResultMessage.from_bytes(result)
        if msg.total.dtype != np.dtype(self._cfg.dtype) or msg.total.shape != (
            self._cfg.size,
        ):
            raise ProtocolError("result has the wrong type or size")
        if msg.round_id in self._recovered_rounds:
            raise ProtocolError(f"round {msg.round_id} was already recovered (replay?)")
        # A sum beyond the range the ring was sized for wrapped: refused, never returned
        # as a wrong aggregate (review #11, finding 7).
        vec = self._cfg.encoder.decode_sum(centred(msg.total), len(msg.contributors))
        out = Recovered(vec, msg.contributors)
        self._recovered_rounds.add(msg.round_id)
        return out

    def __repr__(self) -> str:
        return "SecAggHolder()"

    def __reduce__(self) -> NoReturn:
        raise TypeError("result holders cannot be pickled")


class SecAggSession:
    """A SecAgg+ session. In one process it is also the PKI: it makes each client's
    long-term Ed25519 identity key on first use and publishes the public half."""

    def __init__(
        self,
        cfg: _Config,
        layout: Layout,
        noise: NoiseShare | None,
        secret_rng: Rng,
    ) -> None:
        self.backend_name = "secagg"
        self.layout = layout
        self.max_weight = cfg.max_weight
        self._cfg = cfg
        self._noise = noise
        # Long-term secrets (identity keys) only: never the stream the public session
        # nonce came from, so a shared public seed cannot reach them (review finding 6).
        self._secret_rng = secret_rng
        self._identities: dict[str, SecretBytes] = {}
        self._public: dict[str, bytes] = {}
        self._dealt = False  # True for a session loaded from dealt material
        self._holder: SecAggHolder | None = None
        self._aggregated_rounds: set[int] = set()
        self._client_rounds: set[tuple[str, int]] = set()
        self._round_counter = 0

    @property
    def params_id(self) -> bytes:
        """Public fingerprint of the session's parameters."""
        return self._cfg.params_id

    @property
    def ring_bits(self) -> int:
        """Bits of the ring the masked sums live in (32 or 64)."""
        return self._cfg.ring_bits

    def graph(self, n_clients: int) -> GraphParams:
        """The degree and threshold a round with ``n_clients`` uses."""
        return self._cfg.graph(n_clients)

    def unmask_quorum(self, n_clients: int) -> int:
        """Survivors needed to unmask a round of ``n_clients``: ``t + 1`` (a survivor's
        self-mask seed needs ``t`` other live holders), or with the active variant the
        consistency quorum ``max(t + 1, floor((n + C)/2) + 1)`` (capped at ``n``)."""
        return self._cfg.quorum(n_clients)

    def _identity(self, cid: str) -> SecretBytes:
        if cid not in self._identities:
            if self._dealt:
                raise MissingKeyError(
                    f"this process holds no identity key for client {cid!r}"
                )
            sk = SecretBytes(new_ed25519(self._secret_rng), label="secagg identity key")
            self._identities[cid] = sk
            self._public[cid] = ed25519_public(sk.reveal())
        return self._identities[cid]

    def identity_public(self, cid: str) -> bytes:
        """The long-term Ed25519 public key of client ``cid``."""
        pk = self._public.get(cid)
        if pk is None:
            raise ProtocolError(f"no identity key is registered for client {cid!r}")
        return pk

    def next_round_id(self) -> int:
        """A round id this session has not served before (for ``run_round``)."""
        used = self._aggregated_rounds | {r for _, r in self._client_rounds}
        if self._holder is not None:
            used |= self._holder._recovered_rounds
        while self._round_counter in used:
            self._round_counter += 1
        rid = self._round_counter
        self._round_counter += 1
        return rid

    def aggregator(self, round_id: int, client_ids: Sequence[str]) -> SecAggAggregator:
        """The aggregator for one round.

        Raises:
            ProtocolError: this session already ran an aggregator for ``round_id`` (round
                ids are fresh per round: messages of an earlier run would otherwise fit).
        """
        _check_round_id(round_id)
        if round_id in self._aggregated_rounds:
            raise ProtocolError(f"round {round_id} was already aggregated (reuse?)")
        agg = SecAggAggregator(
            self._cfg, round_id, list(client_ids), self.identity_public
        )
        self._aggregated_rounds.add(round_id)
        return agg

    def client(
        self,
        client_id: str,
        round_id: int,
        update: FloatVector,
        *,
        weight: float = 1.0,
        rng: Rng | None = None,
    ) -> SecAggClient:
        """A client for one round, holding ``weight * update``.

        ``rng`` is the stream of this client's per-round secrets (ephemeral keys, self-mask
        seed, Shamir coefficients, rounding); the system CSPRNG by default.

        Raises:
            ProtocolError: this session already made a client ``client_id`` for
                ``round_id`` (a client answers one run of a round only).
        """
        _check_round_id(round_id)
        if (client_id, round_id) in self._client_rounds:
            raise ProtocolError(
                f"client {client_id!r} already took part in round {round_id} (reuse?)"
            )
        if update.shape != (self.layout.size,):
            raise ParameterMismatchError(
                f"client {client_id!r}: update has {update.shape}, layout size is {self.layout.size}"
            )
        w = float(weight)
        if not (math.isfinite(w) and 0 <= w <= self._cfg.max_weight):
            raise ConfigurationError(
                f"weight must be in [0, {self._cfg.max_weight}], got {weight!r}"
            )
        identity = self._identity(client_id) if self._cfg.active else None
        self._client_rounds.add((client_id, round_id))
        return SecAggClient(
            self._cfg,
            client_id,
            round_id,
            update,
            w,
            rng or SystemRng(),
            identity,
            self.identity_public,
            self._noise,
        )

    def servers(self, round_id: int) -> dict[str, Responder]:
        """SecAgg+ has no extra servers."""
        return {}

    def holder(self) -> SecAggHolder:
        """The result holder: the same object for the whole session, so that it
        remembers which rounds it recovered."""
        if self._holder is None:
            self._holder = SecAggHolder(self._cfg)
        return self._holder

    def identity_keys(self) -> list[SecretBytes]:
        """The long-term identity keys this (simulation) session holds."""
        return list(self._identities.values())

    def __repr__(self) -> str:
        return (
            f"SecAggSession(size={self.layout.size}, ring_bits={self._cfg.ring_bits})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecAggSession holds secret material and cannot be pickled")


_MATERIAL_KIND = 12


@dataclass(frozen=True)
class SecAggMaterial:
    """Dealt material, one opaque blob per role (see :meth:`SecAggBackend.deal`)."""

    aggregator: bytes
    holder: bytes
    clients: Mapping[str, bytes]

    def __repr__(self) -> str:
        return f"SecAggMaterial(clients={len(self.clients)})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "SecAggMaterial holds the clients' identity secret keys and cannot be "
            "pickled; write each role's blob to its own secret file instead"
        )

    def __copy__(self) -> NoReturn:
        raise TypeError("SecAggMaterial holds secret keys and cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("SecAggMaterial holds secret keys and cannot be copied")


def _read_material(material: bytes) -> tuple[bytes, dict[str, bytes], bytes]:
    try:
        return _parse_material(material)
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None


def _parse_material(material: bytes) -> tuple[bytes, dict[str, bytes], bytes]:
    h, payload = open_envelope(material)
    if h.scheme != Scheme.SECAGG or h.kind != _MATERIAL_KIND:
        raise DeserializationError()
    r = PayloadReader(payload)
    public, secret = r.blob(), r.blob()
    r.done()
    if len(secret) not in (0, 32):
        raise DeserializationError()
    p = PayloadReader(public)
    nonce = _fixed(p, 32)
    directory = {}
    for _ in range(_count(p)):
        pid = p.text()
        directory[pid] = _fixed(p, 32)
    p.done()
    return nonce, directory, secret


class SecAggBackend:
    """SecAgg+ with dropout recovery (one untrusted aggregator).

    Args:
        bound: largest |value| a client may contribute (before weighting).
        scale_bits: fixed-point fractional bits.
        clip: clip out-of-range values instead of raising.
        dropout_rate: fraction of clients that may drop (``delta``), for ``k`` and ``t``.
        corruption_rate: fraction of clients that may collude with the server (``gamma``).
        sigma: statistical security parameter for the graph bounds.
        eta: correctness parameter (recovery fails w.p. <= 2**-eta at the dropout rate).
        full_graph: use the complete graph (Bonawitz et al. 2017).
        active: Ed25519-signed keys and the consistency-check round (on by default).
    """

    name: ClassVar[str] = "secagg"

    def __init__(
        self,
        *,
        bound: float = 1.0,
        scale_bits: int = 16,
        clip: bool = False,
        dropout_rate: float = 1 / 3,
        corruption_rate: float = 0.1,
        sigma: int = 40,
        eta: int = 20,
        full_graph: bool = False,
        active: bool = True,
    ) -> None:
        FixedPointEncoder(bound, scale_bits)  # validates bound and scale_bits
        for name, v in (
            ("dropout_rate", dropout_rate),
            ("corruption_rate", corruption_rate),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ConfigurationError(f"{name} must be in [0, 1), got {v!r}")
        if dropout_rate + corruption_rate >= 1:
            raise ConfigurationError(
                f"dropout_rate + corruption_rate must be < 1, got {dropout_rate} + {corruption_rate}"
            )
        for name, iv in (("sigma", sigma), ("eta", eta)):
            if isinstance(iv, bool) or not isinstance(iv, int) or not 1 <= iv <= 128:
                raise ConfigurationError(
                    f"{name} must be an int in [1, 128], got {iv!r}"
                )
        for name, b in (("clip", clip), ("full_graph", full_graph), ("active", active)):
            if not isinstance(b, bool):
                raise ConfigurationError(f"{name} must be a bool, got {b!r}")
        self._bound = float(bound)
        self._scale_bits = scale_bits
        self._clip = clip
        self._dropout = float(dropout_rate)
        self._corrupt = float(corruption_rate)
        self._sigma = sigma
        self._eta = eta
        self._full = full_graph
        self._active = active

    @property
    def value_bound(self) -> float | None:
        """Largest |value| a client may contribute (before weighting)."""
        return self._bound

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """See :meth:`privagg.FixedPointEncoder.sum_error_bound`."""
        return FixedPointEncoder(1.0, self._scale_bits).sum_error_bound(
            n_clients, max_abs
        )

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
        secret_rng: Rng | None = None,
    ) -> SecAggSession:
        """A session for ``layout``; checks that sums of ``max_clients`` fit the ring.

        Args:
            rng: stream of the *public* session nonce (a shared public seed is fine here).
            secret_rng: stream of the long-term identity keys this (simulation) session
                makes; the system CSPRNG by default and never derived from ``rng``, so a
                public seed cannot reach a secret. Tests may pass a hazmat
                ``DeterministicRng``.
        """
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        rng = rng or SystemRng()
        return SecAggSession(
            self._config(layout, max_clients, max_weight, noise, rng.random_bytes(32)),
            layout,
            noise,
            secret_rng or SystemRng(),
        )

    def _config(
        self,
        layout: Layout,
        max_clients: int,
        max_weight: float,
        noise: NoiseShare | None,
        nonce: bytes,
    ) -> _Config:
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        # DP noise headroom over every coordinate of every round (review #11, finding 7).
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        encoder = FixedPointEncoder(
            self._bound * max_weight, self._scale_bits, noise_allowance=extra
        )
        need = encoder.sum_bits(max_clients, extra=extra)
        if need > 64:
            raise EncodingOverflowError(
                f"sums need {need} bits, more than the 64-bit ring"
            )
        ring_bits = 32 if need <= 32 else 64
        public = (
            struct.pack(
                ">dIBdIddIIBB",
                self._bound,
                self._scale_bits,
                self._clip,
                max_weight,
                ring_bits,
                self._dropout,
                self._corrupt,
                self._sigma,
                self._eta,
                self._full,
                self._active,
            )
            + struct.pack(">Q", max_clients)
            + nonce
        )
        params_id = fingerprint(b"secagg/v2", public, layout.fingerprint)
        return _Config(
            params_id,
            layout.size,
            encoder,
            self._bound,
            self._clip,
            float(max_weight),
            ring_bits,
            max_clients,
            self._dropout,
            self._corrupt,
            self._sigma,
            self._eta,
            self._full,
            self._active,
        )

    # -- deployment: one process per role -------------------------------------------------
    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
        rng: Rng | None = None,
        secret_rng: Rng | None = None,
    ) -> SecAggMaterial:
        """Make every role's material for a deployment (the operator's one-time step).

        The public part (session nonce, every client's Ed25519 identity public key) goes
        to everyone; each client's material adds its own identity secret key. Nothing
        secret goes to the aggregator or the holder (SecAgg+'s holder has no secret).
        ``rng`` draws the public nonce only; the identity keys come from ``secret_rng``
        (the system CSPRNG by default), never from ``rng``.
        """
        if len(set(party_ids)) != len(party_ids) or not party_ids:
            raise ConfigurationError("party_ids must be non-empty and unique")
        rng = rng or SystemRng()
        nonce = rng.random_bytes(32)
        cfg = self._config(layout, max_clients, max_weight, None, nonce)
        srng = secret_rng or SystemRng()
        secrets = {pid: new_ed25519(srng) for pid in party_ids}
        w = PayloadWriter().blob(nonce).u32(len(party_ids))
        for pid in sorted(party_ids):
            w.text(pid).blob(ed25519_public(secrets[pid]))
        public = w.getvalue()

        def blob(secret: bytes) -> bytes:
            payload = PayloadWriter().blob(public).blob(secret).getvalue()
            sealed: bytes = seal(
                Header(Scheme.SECAGG, _MATERIAL_KIND, cfg.params_id, 0), payload
            )
            return sealed

        return SecAggMaterial(
            blob(b""), blob(b""), {pid: blob(secrets[pid]) for pid in party_ids}
        )

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        rng: Rng | None = None,
    ) -> SecAggSession:
        """A session for one role (``"aggregator"``, ``"client"`` or ``"holder"``) built
        from that role's material only.

        Raises:
            ParameterMismatchError: material dealt for other options or another layout.
            DeserializationError: malformed material.
        """
        nonce, directory, secret = _read_material(material)
        cfg = self._config(layout, max_clients, max_weight, None, nonce)
        if not hmac.compare_digest(open_envelope(material)[0].params_id, cfg.params_id):
            raise ParameterMismatchError(
                "the material was dealt for other parameters or another layout"
            )
        session = SecAggSession(cfg, layout, None, rng or SystemRng())
        session._public = dict(directory)
        session._dealt = True
        if role == "client":
            if party_id is None or party_id not in directory:
                raise ConfigurationError(
                    f"party {party_id!r} is not in the dealt directory"
                )
            if ed25519_public(secret) != directory[party_id]:
                raise ParameterMismatchError(
                    "the identity key does not match the directory"
                )
            session._identities[party_id] = SecretBytes(
                secret, label="secagg identity key"
            )
        elif role not in ("aggregator", "holder"):
            raise ConfigurationError(
                f"role must be aggregator, client or holder, got {role!r}"
            )
        return session

    def __repr__(self) -> str:
        return (
            f"SecAggBackend(bound={self._bound}, scale_bits={self._scale_bits}, "
            f"dropout_rate={self._dropout:.3g}, corruption_rate={self._corrupt:.3g}, "
            f"full_graph={self._full}, active={self._active})"
        )
