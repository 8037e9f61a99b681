"""Multi-server additive secret sharing over ``Z_2**bits`` (secure while one server is honest).

There are ``n_servers`` non-colluding servers. Server 0 is the aggregator (the party that
drives the round); servers ``1 .. n_servers - 1`` are the extra responders of
:meth:`AdditiveSession.servers`. Each client encodes its weighted update ``x`` into the
ring and splits it into ``n_servers`` additive shares:

* for each server ``k >= 1`` a fresh 32-byte seed ``r_k``; that server's share is
  ``PRG(r_k)`` (AES-256-CTR), and only the seed travels, AES-256-GCM-encrypted to the
  server under ``HKDF(X25519(client ephemeral key, server key))``;
* server 0's share is ``x - sum_k PRG(r_k)``, sent to the aggregator as ring words.

Every share alone is uniformly distributed (computationally, for the PRG ones), so any
coalition that misses at least one server learns nothing about ``x``. Each server sums
its shares over the clients that answered; servers ``k >= 1`` encrypt their partial sums
to the result holder, and server 0 forwards them with its own partial sum. The holder
adds the partial sums and decodes. Server 0 sees its partial sum, which is masked by the
others; only the holder (or all servers together) learns the total.

Contributor-set agreement (against a malicious coordinator). Server 0 chooses which
clients every other server sums, so on its own it could ask an honest server for the
sum over one victim and have the holder release that client's update. Therefore:

* each server ``k >= 1`` encrypts its partial sum in the authenticated mode of HPKE
  (RFC 9180 ``AuthEncap``): the AES-256-GCM key is
  ``HKDF(X25519(eph, holder) || X25519(server k, holder))`` over a context that holds
  params_id, the round id, the server id, the SHA-256 of the sorted contributor list it
  summed, the ephemeral key and both static public keys; the contributor digest is also
  the associated data. Only server ``k`` and the holder can compute the static term, so
  a partial sum that opens is server ``k``'s statement "I summed exactly this list in
  this round"; the coordinator can neither forge one nor re-label one;
* the holder opens every partial sum against the one contributor list of the result, so
  it releases only if *all* servers summed the same set, and refuses lists shorter than
  ``min_contributions`` (an honest server refuses to sum such a list in the first place);
* every server and the holder serve a round id at most once (per session object), so
  the coordinator cannot obtain two partial sums of one round over different subsets.

No new trust is needed: the keys are the servers' and the holder's existing X25519 keys,
already fingerprinted in params_id. Clients are not authenticated in this backend, so a
coordinator that can inject clients of its own (Sybils) still meets any
``min_contributions`` with them; see ``docs/backends/additive.md``.

A client that does not answer is simply not in the sum (exact for the others); a server
that does not answer aborts the round.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn, Self

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.backends import _wire
from privagg.backends._ringcode import add_masks, centred, encode_to_ring
from privagg.backends._secagg_crypto import (
    aead_decrypt,
    aead_encrypt,
    ecdh,
    hkdf,
    new_x25519,
    x25519_key,
    x25519_public,
)
from privagg.encoding import FixedPointEncoder, noise_headroom
from privagg.envelope import (
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    register_message,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    InsufficientParticipantsError,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.keys import SecretKey, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, Recovered, Responder, check_setup_args

__all__ = [
    "AdditiveAggregator",
    "AdditiveBackend",
    "AdditiveClient",
    "AdditiveHolder",
    "AdditiveKind",
    "AdditiveServer",
    "AdditiveSession",
    "ClientShares",
    "PartialSum",
    "ResultMessage",
    "ServerRequest",
    "ShareRequest",
]

# v2: partial sums are sender-authenticated (AuthEncap) and the parameters carry
# min_contributions; v1 messages do not verify under v2 keys.
_DOMAIN = b"privagg/additive/v2/"


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


def _ring_array(r: PayloadReader) -> npt.NDArray[np.unsignedinteger]:
    a = r.array()
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
    """Client -> aggregator: server 0's share, and an encrypted seed for each other server."""

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
            _ring_array(r),
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
    """Server k -> aggregator: its partial sum, encrypted to the result holder."""

    KIND: ClassVar[int] = AdditiveKind.PARTIAL
    contributors: tuple[str, ...] = ()
    ephemeral_pk: bytes = b""
    ciphertext: bytes = b""

    def _write(self, w: PayloadWriter) -> None:
        _wire.write_ids(w, self.contributors)
        w.blob(self.ephemeral_pk).blob(self.ciphertext)

    @classmethod
    def _read(
        cls, params_id: bytes, round_id: int, party: str, r: PayloadReader
    ) -> Self:
        return cls(
            params_id, round_id, party, _wire.read_ids(r), _wire.fixed(r, 32), r.blob()
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
    partials: tuple[tuple[str, bytes, bytes], ...] = ()

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


# -- shared configuration --------------------------------------------------------------------
@dataclass(frozen=True)
class _Config:
    params_id: bytes
    size: int
    encoder: FixedPointEncoder
    value_bound: float
    clip: bool
    max_weight: float
    ring_bits: int
    max_clients: int
    server_ids: tuple[str, ...]  # servers 1..n-1 (server 0 is the aggregator)
    server_pks: tuple[bytes, ...]
    holder_pk: bytes
    min_contributions: int

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def check(self, data: bytes, round_id: int, kind: int, who: str) -> None:
        h = _wire.peek_header(data)
        if h.scheme != Scheme.ADDITIVE:
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
                f"{who}: unexpected message kind {h.kind} (expected {kind})"
            )


_SEED_CT_LEN = 32 + 16  # AES-256-GCM of a 32-byte seed
_PROBE_KEY = x25519_key(hashlib.sha256(b"privagg/additive/v1/probe").digest())


def _valid_x25519(pk: bytes) -> bool:
    """False for a low-order (unusable) X25519 public key."""
    try:
        ecdh(_PROBE_KEY, pk)
    except ProtocolError:
        return False
    return True


def _ctx(cfg: _Config, round_id: int, *parts: str) -> bytes:
    out = cfg.params_id + round_id.to_bytes(8, "big")
    for p in parts:
        b = p.encode("utf-8")
        out += struct.pack(">I", len(b)) + b
    return out


def _ids_digest(ids: Sequence[str]) -> bytes:
    h = hashlib.sha256()
    for i in ids:
        b = i.encode("utf-8")
        h.update(struct.pack(">I", len(b)) + b)
    return h.digest()


def _partial_key(
    cfg: _Config,
    round_id: int,
    server_id: str,
    contributors: Sequence[str],
    epk: bytes,
    dh_ephemeral: bytes,
    dh_static: bytes,
) -> tuple[bytes, bytes]:
    """AES-256-GCM key and associated data of server ``server_id``'s partial sum.

    HPKE ``AuthEncap`` (RFC 9180, section 4.1) in this module's HKDF framing: the key
    material is ``X25519(eph, holder) || X25519(server, holder)``, and the context binds
    params_id, the round, the server id, the digest of the (sorted) contributor list, the
    ephemeral key and both static public keys. Only the server and the holder know the
    static term, so a partial sum that decrypts was made by that server for exactly this
    round and contributor list (the coordinator can neither forge nor re-label one).
    """
    server_pk = cfg.server_pks[cfg.server_ids.index(server_id)]
    ctx = (
        _ctx(cfg, round_id, server_id)
        + _ids_digest(contributors)
        + epk
        + cfg.holder_pk
        + server_pk
    )
    key = hkdf(
        dh_ephemeral + dh_static,
        salt=cfg.params_id,
        info=_DOMAIN + b"partial-key" + ctx,
    )
    return key, _DOMAIN + b"partial" + ctx


def _check_round_id(round_id: int) -> None:
    if (
        isinstance(round_id, bool)
        or not isinstance(round_id, int)
        or not 0 <= round_id < 1 << 64
    ):
        raise ConfigurationError(
            f"round_id must be an int in [0, 2**64), got {round_id!r}"
        )


class _RoundRegister:
    """The round ids one party (a server, the holder) has served, each at most once.

    One register per party and session object, shared by the role objects the session
    makes for it: a fresh role object for an old round id is refused too.
    """

    __slots__ = ("_lock", "_rounds", "_who")

    def __init__(self, who: str) -> None:
        self._who = who
        self._rounds: set[int] = set()
        self._lock = threading.Lock()

    def __contains__(self, round_id: object) -> bool:
        return round_id in self._rounds

    @property
    def rounds(self) -> frozenset[int]:
        """The round ids served so far."""
        return frozenset(self._rounds)

    def check(self, round_id: int) -> None:
        """Raise unless ``round_id`` is still unserved."""
        if round_id in self._rounds:
            raise ProtocolError(
                f"{self._who} already served round {round_id} (replay or reused round id?)"
            )

    def claim(self, round_id: int) -> None:
        """Mark ``round_id`` served (after :meth:`check`), just before releasing; the
        check and the mark are one atomic step (concurrent handlers of one round)."""
        with self._lock:
            self.check(round_id)
            self._rounds.add(round_id)

    def __repr__(self) -> str:
        return f"_RoundRegister({self._who}, served={len(self._rounds)})"


# Role objects built directly (one process per role, no session object shared between
# requests) share one register per (params_id, party) in this process, so a fresh role
# object for an already served round is refused too (second review, finding 1). The
# register lives in memory: a restarted process must rotate keys (docs/backends/additive.md).
_REGISTERS: dict[tuple[bytes, str], _RoundRegister] = {}
_REGISTERS_LOCK = threading.Lock()


def _process_register(params_id: bytes, who: str) -> _RoundRegister:
    with _REGISTERS_LOCK:
        reg = _REGISTERS.get((params_id, who))
        if reg is None:
            reg = _REGISTERS[(params_id, who)] = _RoundRegister(who)
        return reg


# -- roles -------------------------------------------------------------------------------------
class AdditiveClient:
    """A client: splits its encoded update into one additive share per server."""

    def __init__(
        self,
        cfg: _Config,
        party_id: str,
        round_id: int,
        update: FloatVector,
        weight: float,
        rng: Rng,
        noise: NoiseShare | None,
    ) -> None:
        self._cfg = cfg
        self._id = party_id
        self._round = round_id
        self._update = update
        self._weight = weight
        self._rng = rng
        self._noise = noise
        self._answered = False

    @property
    def party_id(self) -> str:
        """This client's id."""
        return self._id

    def handle(self, request: bytes) -> bytes:
        """Answer the share request."""
        cfg = self._cfg
        cfg.check(request, self._round, AdditiveKind.REQUEST, f"client {self._id!r}")
        req = ShareRequest.from_bytes(request)
        if req.party != self._id:
            raise ProtocolError(
                f"client {self._id!r} got a request addressed to {req.party!r}"
            )
        if self._answered:
            raise ProtocolError("this client already contributed to this round")
        eph = x25519_key(new_x25519(self._rng))
        epk = x25519_public(eph.private_bytes_raw())
        seeds = []
        masks = []
        for sid, spk in zip(cfg.server_ids, cfg.server_pks, strict=True):
            seed = self._rng.random_bytes(32)
            masks.append((seed, -1))
            ctx = _ctx(cfg, self._round, self._id, sid)
            key = hkdf(
                ecdh(eph, spk),
                salt=cfg.params_id,
                info=_DOMAIN + b"seed-key" + ctx + epk,
            )
            seeds.append((sid, aead_encrypt(key, seed, _DOMAIN + b"seed" + ctx + epk)))
        # Server 0's share: the encoding minus every seed's expansion, in one blocked pass.
        share0 = encode_to_ring(
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
        self._answered = True
        self._update = np.zeros(0)
        return ClientShares(
            cfg.params_id, self._round, self._id, epk, share0, tuple(seeds)
        ).to_bytes()

    def __repr__(self) -> str:
        return f"AdditiveClient(client={self._id!r}, round={self._round})"


class AdditiveServer:
    """Server ``k >= 1``: decrypts its seeds, sums their expansions, encrypts the sum to the holder."""

    def __init__(
        self,
        cfg: _Config,
        server_id: str,
        round_id: int,
        key: SecretKey[bytes],
        rng: Rng,
        served: _RoundRegister | None = None,
    ) -> None:
        self._cfg = cfg
        self._id = server_id
        self._round = round_id
        self._key = key
        self._rng = rng
        self._served = (
            served
            if served is not None
            else _process_register(cfg.params_id, server_id)
        )
        self._answered = False

    @property
    def party_id(self) -> str:
        """This server's id."""
        return self._id

    def handle(self, request: bytes) -> bytes:
        """Sum this server's shares of the listed contributors.

        Raises:
            ProtocolError: a request for another round or server, a second request, or
                a round this server (this session's register) already served.
            InsufficientParticipantsError: fewer than ``min_contributions`` entries (an
                honest server never sums so few: with server 0's share that would reveal
                their updates).
            DeserializationError: a listed entry this server cannot decrypt.
        """
        cfg = self._cfg
        cfg.check(
            request, self._round, AdditiveKind.SERVER_REQUEST, f"server {self._id!r}"
        )
        req = ServerRequest.from_bytes(request)
        if req.party != self._id:
            raise ProtocolError(
                f"server {self._id!r} got a request addressed to {req.party!r}"
            )
        if self._answered:
            raise ProtocolError("this server already answered this round")
        self._served.check(self._round)
        if len(req.entries) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"server {self._id!r}: asked to sum {len(req.entries)} client(s), "
                f"at least min_contributions={cfg.min_contributions} required"
            )
        sk = x25519_key(self._key.unsafe_material())
        acc = np.zeros(cfg.size, dtype=cfg.dtype)
        masks = []
        contributors = tuple(sorted(e[0] for e in req.entries))
        # The coordinator sends every server the same accepted entries; a listed entry this
        # server cannot decrypt aborts (DeserializationError / ProtocolError) rather than
        # being dropped silently, which would make the servers sum different client sets.
        for cid, epk, ct in req.entries:
            ctx = _ctx(cfg, self._round, cid, self._id)
            key = hkdf(
                ecdh(sk, epk),
                salt=cfg.params_id,
                info=_DOMAIN + b"seed-key" + ctx + epk,
            )
            seed = aead_decrypt(key, ct, _DOMAIN + b"seed" + ctx + epk)
            if len(seed) != 32:
                raise DeserializationError()
            masks.append((seed, 1))
        add_masks(acc, masks)
        eph = x25519_key(new_x25519(self._rng))
        epk = x25519_public(eph.private_bytes_raw())
        key, aad = _partial_key(
            cfg,
            self._round,
            self._id,
            contributors,
            epk,
            ecdh(eph, cfg.holder_pk),
            ecdh(sk, cfg.holder_pk),
        )
        ct = aead_encrypt(
            key, acc.astype(acc.dtype.newbyteorder("<"), copy=False).tobytes(), aad
        )
        self._served.claim(self._round)
        self._answered = True
        return PartialSum(
            cfg.params_id, self._round, self._id, contributors, epk, ct
        ).to_bytes()

    def __repr__(self) -> str:
        return f"AdditiveServer({self._id!r}, round={self._round})"


class AdditiveAggregator:
    """The coordinator, which is also server 0."""

    def __init__(self, cfg: _Config, round_id: int, client_ids: Sequence[str]) -> None:
        if len(set(client_ids)) != len(client_ids):
            raise ConfigurationError("client ids must be unique")
        if set(client_ids) & set(cfg.server_ids):
            raise ConfigurationError("client ids must differ from the server ids")
        if len(client_ids) > cfg.max_clients:
            raise ConfigurationError(
                f"{len(client_ids)} clients, but the session was set up for max_clients={cfg.max_clients}"
            )
        self._cfg = cfg
        self._round = round_id
        self._clients = tuple(client_ids)
        self._stage = 0
        self._contributors: tuple[str, ...] = ()
        #: clients whose shares were unusable (skipped, not in the sum), for reporting
        self.rejected: set[str] = set()
        self._partial0: npt.NDArray[np.unsignedinteger] | None = None
        self._result: bytes | None = None

    def start(self) -> dict[str, bytes]:
        """Ask every client for its shares."""
        if self._stage:
            raise ProtocolError("round already started")
        self._stage = 1
        return {
            c: ShareRequest(self._cfg.params_id, self._round, c).to_bytes()
            for c in self._clients
        }

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Stage 1: sum server 0's shares and relay the seeds; stage 2: collect partial sums."""
        if self._stage == 1:
            return self._on_shares(replies)
        if self._stage == 2:
            return self._on_partials(replies)
        raise ProtocolError("receive() called out of order")

    def _on_shares(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        cfg = self._cfg
        expected = set(self._clients)
        acc = np.zeros(cfg.size, dtype=cfg.dtype)
        per_server: dict[str, list[tuple[str, bytes, bytes]]] = {
            s: [] for s in cfg.server_ids
        }
        accepted: list[str] = []
        for sender in sorted(replies):
            data = replies[sender]
            if sender not in expected:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
            cfg.check(data, self._round, AdditiveKind.SHARES, f"reply of {sender!r}")
            msg = ClientShares.from_bytes(data)
            if msg.party != sender:
                raise ProtocolError(
                    f"client {sender!r} sent a reply labelled {msg.party!r}"
                )
            # Content checks: a client whose entry is unusable (share of the wrong type or
            # size, a server not addressed, a low-order ephemeral key, a seed ciphertext of
            # the wrong length) is skipped and reported, not allowed to abort the round.
            # Every server then gets the same list of accepted entries.
            seeds = dict(msg.seeds)
            if (
                msg.share0.dtype != np.dtype(cfg.dtype)
                or msg.share0.shape != (cfg.size,)
                or set(seeds) != set(cfg.server_ids)
                or len(seeds) != len(msg.seeds)
                or any(len(ct) != _SEED_CT_LEN for ct in seeds.values())
                or not _valid_x25519(msg.ephemeral_pk)
            ):
                self.rejected.add(sender)
                continue
            np.add(acc, msg.share0, out=acc)
            accepted.append(sender)
            for sid in cfg.server_ids:
                per_server[sid].append((sender, msg.ephemeral_pk, seeds[sid]))
        if len(accepted) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"{len(accepted)} client(s) contributed, at least "
                f"min_contributions={cfg.min_contributions} required"
            )
        self._contributors = tuple(sorted(accepted))
        self._partial0 = acc
        if not cfg.server_ids:
            return self._finish(())
        self._stage = 2
        return {
            sid: ServerRequest(
                cfg.params_id, self._round, sid, tuple(per_server[sid])
            ).to_bytes()
            for sid in cfg.server_ids
        }

    def _on_partials(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        cfg = self._cfg
        missing = set(cfg.server_ids) - set(replies)
        if missing:
            raise InsufficientParticipantsError(
                f"server(s) {sorted(missing)} did not answer; round aborted"
            )
        parts = []
        for sid in cfg.server_ids:
            data = replies[sid]
            cfg.check(data, self._round, AdditiveKind.PARTIAL, f"reply of {sid!r}")
            msg = PartialSum.from_bytes(data)
            if msg.party != sid:
                raise ProtocolError(
                    f"server {sid!r} sent a reply labelled {msg.party!r}"
                )
            if msg.contributors != self._contributors:
                raise ProtocolError(f"server {sid!r} summed a different set of clients")
            parts.append((sid, msg.ephemeral_pk, msg.ciphertext))
        unexpected = set(replies) - set(cfg.server_ids)
        if unexpected:
            raise ProtocolError(
                f"reply from unexpected party {sorted(unexpected)[0]!r}"
            )
        return self._finish(tuple(parts))

    def _finish(self, parts: tuple[tuple[str, bytes, bytes], ...]) -> dict[str, bytes]:
        assert self._partial0 is not None
        self._result = ResultMessage(
            self._cfg.params_id,
            self._round,
            "holder",
            self._contributors,
            self._partial0,
            parts,
        ).to_bytes()
        self._partial0 = None
        self._stage = 3
        return {}

    @property
    def done(self) -> bool:
        """True once every partial sum is in."""
        return self._result is not None

    def result(self) -> bytes:
        """Server 0's partial sum and the others' encrypted partial sums."""
        if self._result is None:
            raise ProtocolError("the round has not finished")
        return self._result

    def __repr__(self) -> str:
        return f"AdditiveAggregator(round={self._round}, clients={len(self._clients)})"


class AdditiveHolder:
    """Authenticates and decrypts the servers' partial sums and adds them.

    It releases a sum only if every server ``k >= 1`` proved (by the authenticated
    encryption of its partial sum) that it summed exactly the result's contributor list,
    that list has at least ``min_contributions`` clients, and the round id was not
    recovered before by this session's holder.
    """

    def __init__(
        self,
        cfg: _Config,
        key: SecretKey[bytes],
        recovered: _RoundRegister | None = None,
    ) -> None:
        self._cfg = cfg
        self._key = key
        self._recovered = (
            recovered
            if recovered is not None
            else _process_register(cfg.params_id, "the holder")
        )

    def recover(self, result: bytes) -> Recovered:
        """Combine the partial sums into the float sum.

        Raises:
            ParameterMismatchError: a result of another session.
            ProtocolError: a result that lacks a server's partial sum, or a round id this
                holder already recovered.
            InsufficientParticipantsError: fewer than ``min_contributions`` contributors.
            DeserializationError: a partial sum that does not authenticate as its
                server's sum over exactly the result's contributor list (forged,
                re-labelled, or the servers summed different sets), or is malformed.
        """
        cfg = self._cfg
        # The header is read unverified first, so that the digest over the (P-word)
        # result is computed once, by ``from_bytes``; a mismatch is reported only after
        # ``open_envelope`` has checked the digest (corrupted bytes stay a
        # DeserializationError).
        h = _wire.peek_header(result)
        ours = h.scheme == Scheme.ADDITIVE and h.kind == AdditiveKind.RESULT
        if not (ours and hmac.compare_digest(h.params_id, cfg.params_id)):
            open_envelope(result)
        if not ours:
            raise ProtocolError("not an additive-sharing result")
        if not hmac.compare_digest(h.params_id, cfg.params_id):
            raise ParameterMismatchError(
                "the result was made under different parameters or keys"
            )
        msg = ResultMessage.from_bytes(result)
        if msg.partial0.dtype != np.dtype(cfg.dtype) or msg.partial0.shape != (
            cfg.size,
        ):
            raise ProtocolError("result has the wrong type or size")
        if {p[0] for p in msg.partials} != set(cfg.server_ids):
            raise ProtocolError("the result does not carry every server's partial sum")
        self._recovered.check(msg.round_id)
        if len(msg.contributors) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"the result has {len(msg.contributors)} contributor(s), at least "
                f"min_contributions={cfg.min_contributions} required"
            )
        if list(msg.contributors) != sorted(msg.contributors):
            raise ProtocolError(
                "the result's contributor list is not in canonical order"
            )
        acc = msg.partial0  # decoded into a fresh array: add in place
        sk = x25519_key(self._key.unsafe_material())
        # Every partial sum is opened against the result's one contributor list: all of
        # them open only if every server summed exactly that set (and made the sum).
        for sid, epk, ct in msg.partials:
            spk = cfg.server_pks[cfg.server_ids.index(sid)]
            key, aad = _partial_key(
                cfg,
                msg.round_id,
                sid,
                msg.contributors,
                epk,
                ecdh(sk, epk),
                ecdh(sk, spk),
            )
            raw = aead_decrypt(key, ct, aad)
            dt = np.dtype(cfg.dtype).newbyteorder("<")
            if (
                len(raw) != cfg.size * dt.itemsize
            ):  # also catches a length frombuffer rejects
                raise DeserializationError()
            part = np.frombuffer(raw, dtype=dt)
            np.add(acc, part, out=acc)
        self._recovered.claim(msg.round_id)
        vec = cfg.encoder.decode_sum(centred(acc), len(msg.contributors))
        return Recovered(vec, msg.contributors)

    def __repr__(self) -> str:
        return "AdditiveHolder(<key hidden>)"


class AdditiveSession:
    """An additive-sharing session. In one process it holds every server's key and the
    holder's key (a trusted dealer); across machines each party keeps its own."""

    def __init__(
        self,
        cfg: _Config,
        layout: Layout,
        server_keys: dict[str, SecretKey[bytes]],
        holder_key: SecretKey[bytes],
        noise: NoiseShare | None,
        rng: Rng,
    ) -> None:
        self.backend_name = "additive"
        self.layout = layout
        self.max_weight = cfg.max_weight
        self._cfg = cfg
        self._server_keys = server_keys
        self._holder_key = holder_key
        self._noise = noise
        self._rng = rng
        # Round ids each party served, per session object (see _RoundRegister).
        self._served = {
            sid: _RoundRegister(f"server {sid!r}") for sid in cfg.server_ids
        }
        self._recovered = _RoundRegister("the holder")
        self._aggregated: set[int] = set()
        self._round_counter = 0

    @property
    def params_id(self) -> bytes:
        """Public fingerprint of the parameters and every server's and the holder's key."""
        return self._cfg.params_id

    @property
    def ring_bits(self) -> int:
        """Bits of the ring (32 or 64)."""
        return self._cfg.ring_bits

    @property
    def min_contributions(self) -> int:
        """Fewest clients a server sums and the holder releases."""
        return self._cfg.min_contributions

    def next_round_id(self) -> int:
        """A round id this session has not used before (for ``run_round``).

        A counter, skipping every id this session's coordinator, servers or holder has
        already used. Ids of other sessions do not matter: their messages carry another
        params_id (fresh keys per setup) and are refused.
        """
        used = set(self._aggregated) | self._recovered.rounds
        for reg in self._served.values():
            used |= reg.rounds
        while self._round_counter in used:
            self._round_counter += 1
        rid = self._round_counter
        self._round_counter += 1
        return rid

    def aggregator(
        self, round_id: int, client_ids: Sequence[str]
    ) -> AdditiveAggregator:
        """The coordinator (server 0) for one round.

        Raises:
            ProtocolError: this session already ran a coordinator for ``round_id``.
        """
        _check_round_id(round_id)
        if round_id in self._aggregated:
            raise ProtocolError(f"round {round_id} was already aggregated (reuse?)")
        agg = AdditiveAggregator(self._cfg, round_id, list(client_ids))
        self._aggregated.add(round_id)
        return agg

    def client(
        self,
        client_id: str,
        round_id: int,
        update: FloatVector,
        *,
        weight: float = 1.0,
        rng: Rng | None = None,
    ) -> AdditiveClient:
        """A client for one round, holding ``weight * update``."""
        _check_round_id(round_id)
        if update.shape != (self.layout.size,):
            raise ParameterMismatchError(
                f"client {client_id!r}: update has {update.shape}, layout size is {self.layout.size}"
            )
        w = float(weight)
        if not (math.isfinite(w) and 0 <= w <= self._cfg.max_weight):
            raise ConfigurationError(
                f"weight must be in [0, {self._cfg.max_weight}], got {weight!r}"
            )
        return AdditiveClient(
            self._cfg, client_id, round_id, update, w, rng or SystemRng(), self._noise
        )

    def servers(self, round_id: int) -> dict[str, Responder]:
        """Servers 1 .. n_servers - 1 (each refuses a round id it already served)."""
        _check_round_id(round_id)
        return {
            sid: AdditiveServer(
                self._cfg,
                sid,
                round_id,
                self._server_keys[sid],
                self._rng,
                self._served[sid],
            )
            for sid in self._cfg.server_ids
        }

    def holder(self) -> AdditiveHolder:
        """The result holder (refuses a round id this session's holder recovered)."""
        return AdditiveHolder(self._cfg, self._holder_key, self._recovered)

    def secret_keys(self) -> list[SecretKey[bytes]]:
        """Every secret key this (simulation) session holds."""
        return [*self._server_keys.values(), self._holder_key]

    def __repr__(self) -> str:
        return f"AdditiveSession(size={self.layout.size}, servers={len(self._cfg.server_ids) + 1})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("AdditiveSession holds secret keys and cannot be pickled")


class AdditiveBackend:
    """Additive secret sharing among ``n_servers`` non-colluding servers.

    Args:
        bound: largest |value| a client may contribute (before weighting).
        scale_bits: fixed-point fractional bits.
        clip: clip out-of-range values instead of raising.
        n_servers: number of servers (>= 2), the aggregator being server 0.
        min_contributions: fewest clients a server sums and the holder releases (>= 1,
            default 2). With 1, a malicious coordinator can have one client's update
            released as "the aggregate"; set it explicitly only if that is acceptable.
    """

    name: ClassVar[str] = "additive"

    def __init__(
        self,
        *,
        bound: float = 1.0,
        scale_bits: int = 16,
        clip: bool = False,
        n_servers: int = 2,
        min_contributions: int = 2,
    ) -> None:
        FixedPointEncoder(bound, scale_bits)
        if (
            isinstance(n_servers, bool)
            or not isinstance(n_servers, int)
            or not 2 <= n_servers <= 64
        ):
            raise ConfigurationError(
                f"n_servers must be an int in [2, 64], got {n_servers!r}"
            )
        if not isinstance(clip, bool):
            raise ConfigurationError(f"clip must be a bool, got {clip!r}")
        if (
            isinstance(min_contributions, bool)
            or not isinstance(min_contributions, int)
            or not 1 <= min_contributions <= (1 << 32) - 1
        ):
            raise ConfigurationError(
                f"min_contributions must be an int >= 1, got {min_contributions!r}"
            )
        self._bound = float(bound)
        self._scale_bits = scale_bits
        self._clip = clip
        self._n_servers = n_servers
        self._min_contributions = min_contributions

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
    ) -> AdditiveSession:
        """Make the servers' and the holder's keys; check that sums fit the ring.

        Raises:
            ConfigurationError: ``max_clients`` below ``min_contributions`` (no round
                could ever be released), or bad arguments.
            EncodingOverflowError: the sums would not fit the 64-bit ring.
        """
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        if max_clients < self._min_contributions:
            raise ConfigurationError(
                f"max_clients={max_clients} is below min_contributions="
                f"{self._min_contributions}: no round could be released (set "
                f"min_contributions explicitly to accept fewer contributors)"
            )
        rng = rng or SystemRng()
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
        server_ids = tuple(f"server-{k}" for k in range(1, self._n_servers))
        server_sks = [new_x25519(rng) for _ in server_ids]
        server_pks = tuple(x25519_public(sk) for sk in server_sks)
        holder_sk = new_x25519(rng)
        holder_pk = x25519_public(holder_sk)
        public = (
            struct.pack(
                ">dIBdIQI",
                self._bound,
                self._scale_bits,
                self._clip,
                max_weight,
                ring_bits,
                max_clients,
                self._min_contributions,
            )
            + b"".join(server_pks)
            + holder_pk
        )
        params_id = fingerprint(b"additive/v2", public, layout.fingerprint)
        cfg = _Config(
            params_id,
            layout.size,
            encoder,
            self._bound,
            self._clip,
            float(max_weight),
            ring_bits,
            max_clients,
            server_ids,
            server_pks,
            holder_pk,
            self._min_contributions,
        )
        keys = {
            sid: SecretKey(
                "additive", sk, public_fingerprint=fingerprint(b"additive/server", pk)
            )
            for sid, sk, pk in zip(server_ids, server_sks, server_pks, strict=True)
        }
        hkey = SecretKey(
            "additive",
            holder_sk,
            public_fingerprint=fingerprint(b"additive/holder", holder_pk),
        )
        return AdditiveSession(cfg, layout, keys, hkey, noise, rng)

    def __repr__(self) -> str:
        return (
            f"AdditiveBackend(bound={self._bound}, scale_bits={self._scale_bits}, "
            f"n_servers={self._n_servers}, min_contributions={self._min_contributions})"
        )
