"""What every additive-sharing role shares: the public configuration, key derivations
and the per-party registers of served rounds."""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privagg.backends import _wire
from privagg.backends._secagg_crypto import (
    ecdh,
    hkdf,
    x25519_key,
)
from privagg.encoding import FixedPointEncoder
from privagg.envelope import (
    Scheme,
)
from privagg.errors import (
    ConfigurationError,
    ParameterMismatchError,
    ProtocolError,
)

# v2: partial sums are sender-authenticated (AuthEncap) and the parameters carry
# min_contributions; v1 messages do not verify under v2 keys.
_DOMAIN = b"privagg/additive/v2/"


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
