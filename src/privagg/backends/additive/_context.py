"""What every additive-sharing role shares: the public configuration, key derivations
and the per-party registers of served rounds."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from privagg.backends._masking import RingConfig, ids_digest, kdf_context, party_field
from privagg.backends._primitives import (
    hkdf,
)
from privagg.envelope import (
    Scheme,
)
from privagg.errors import (
    ProtocolError,
)

# v2: partial sums are sender-authenticated (AuthEncap) and the parameters carry
# min_contributions; v1 messages do not verify under v2 keys.
_DOMAIN = b"privagg/additive/v2/"


# -- shared configuration --------------------------------------------------------------------
@dataclass(frozen=True)
class _Config(RingConfig):
    """Public parameters of a session (identical for every role)."""

    SCHEME: ClassVar[Scheme] = Scheme.ADDITIVE

    server_ids: tuple[str, ...]  # servers 1..n-1 (server 0 is the aggregator)
    server_pks: tuple[bytes, ...]
    holder_pk: bytes
    min_contributions: int


_SEED_CT_LEN = 32 + 16  # AES-256-GCM of a 32-byte seed


def _ctx(cfg: _Config, round_id: int, *parties: str) -> bytes:
    return kdf_context(cfg.params_id, round_id, *(party_field(p) for p in parties))


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
        + ids_digest(contributors)
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
