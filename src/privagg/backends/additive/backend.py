"""The additive-sharing session and backend."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import ClassVar, NoReturn

from privagg._rng import Rng, SystemRng
from privagg.backends._masking import (
    RingBackend,
    RingOptions,
    RingSession,
    check_client_update,
    check_round_id,
)
from privagg.backends._primitives import (
    MASK_PRG,
    new_x25519,
    x25519_public,
)
from privagg.backends.additive._context import (
    _Config,
    _RoundRegister,
)
from privagg.backends.additive.roles import (
    AdditiveAggregator,
    AdditiveClient,
    AdditiveHolder,
    AdditiveServer,
)
from privagg.distribution import Dealing
from privagg.errors import (
    ConfigurationError,
    ProtocolError,
)
from privagg.keys import SecretKey, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, Responder, check_setup_args


class AdditiveSession(RingSession[_Config]):
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
    def min_contributions(self) -> int:
        """Fewest clients a server sums and the holder releases."""
        return self._cfg.min_contributions

    def _used_round_ids(self) -> set[int]:
        used = set(self._aggregated) | self._recovered.rounds
        for reg in self._served.values():
            used |= reg.rounds
        return used

    def aggregator(
        self, round_id: int, client_ids: Sequence[str]
    ) -> AdditiveAggregator:
        """The coordinator (server 0) for one round.

        Raises:
            ProtocolError: this session already ran a coordinator for ``round_id``.
        """
        check_round_id(round_id)
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
        check_round_id(round_id)
        w = check_client_update(
            client_id, update, self.layout.size, weight, self._cfg.max_weight
        )
        return AdditiveClient(
            self._cfg, client_id, round_id, update, w, rng or SystemRng(), self._noise
        )

    def servers(self, round_id: int) -> dict[str, Responder]:
        """Servers 1 .. n_servers - 1 (each refuses a round id it already served)."""
        check_round_id(round_id)
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


class AdditiveBackend(RingBackend):
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
        self._ring = RingOptions(bound, scale_bits, clip)  # validates the three
        if (
            isinstance(n_servers, bool)
            or not isinstance(n_servers, int)
            or not 2 <= n_servers <= 64
        ):
            raise ConfigurationError(
                f"n_servers must be an int in [2, 64], got {n_servers!r}"
            )
        if (
            isinstance(min_contributions, bool)
            or not isinstance(min_contributions, int)
            or not 1 <= min_contributions <= (1 << 32) - 1
        ):
            raise ConfigurationError(
                f"min_contributions must be an int >= 1, got {min_contributions!r}"
            )
        self._n_servers = n_servers
        self._min_contributions = min_contributions

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
        ring = self._ring
        encoder, ring_bits = ring.size_ring(layout.size, max_clients, max_weight, noise)
        server_ids = tuple(f"server-{k}" for k in range(1, self._n_servers))
        server_sks = [new_x25519(rng) for _ in server_ids]
        server_pks = tuple(x25519_public(sk) for sk in server_sks)
        holder_sk = new_x25519(rng)
        holder_pk = x25519_public(holder_sk)
        public = (
            struct.pack(
                ">dIBdIQI",
                ring.bound,
                ring.scale_bits,
                ring.clip,
                max_weight,
                ring_bits,
                max_clients,
                self._min_contributions,
            )
            + b"".join(server_pks)
            + holder_pk
        )
        params_id = fingerprint(b"additive/v3", MASK_PRG, public, layout.fingerprint)
        cfg = _Config(
            params_id,
            layout.size,
            encoder,
            ring.bound,
            ring.clip,
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

    def dealing(self) -> Dealing:
        """``DEALER``: the servers' and the holder's X25519 keys must be made once and
        handed out. This backend has no ``deal``/``load_role`` yet, so
        :func:`privagg.distribution.dealing` refuses it for deployments."""
        return Dealing.DEALER

    def __repr__(self) -> str:
        return (
            f"AdditiveBackend(bound={self._ring.bound}, scale_bits={self._ring.scale_bits}, "
            f"n_servers={self._n_servers}, min_contributions={self._min_contributions})"
        )
