"""The additive-sharing session and backend."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import ClassVar, NoReturn

from privagg._pin import check_pin, parse_pin
from privagg._rng import Rng, SystemRng
from privagg.backends._masking import (
    RingBackend,
    RingOptions,
    RingSession,
    check_client_update,
    check_round_id,
)
from privagg.backends._primitives import (
    new_x25519,
    x25519_public,
)
from privagg.backends.additive._context import (
    _Config,
    _RoundRegister,
)
from privagg.backends.additive._material import (
    check_directory_file,
    read_directory,
    read_own_key,
    seal_directory,
    seal_own_key,
)
from privagg.backends.additive.roles import (
    AdditiveAggregator,
    AdditiveClient,
    AdditiveHolder,
    AdditiveServer,
)
from privagg.distribution import (
    Dealing,
    DealtMaterial,
    OwnKey,
    Role,
    directory_fingerprint,
)
from privagg.errors import (
    ConfigurationError,
    MissingKeyError,
    ParameterMismatchError,
    ProtocolError,
    UnsupportedError,
    UnsupportedReason,
)
from privagg.keys import SecretKey, fingerprint
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, Responder, check_setup_args


class AdditiveSession(RingSession[_Config]):
    """An additive-sharing session. In one process it holds every server's key and the
    holder's key (a trusted dealer); across machines each party keeps its own (a
    session from :meth:`AdditiveBackend.load_role` holds at most one key)."""

    def __init__(
        self,
        cfg: _Config,
        layout: Layout,
        server_keys: dict[str, SecretKey[bytes]],
        holder_key: SecretKey[bytes] | None,
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
        """Servers 1 .. n_servers - 1 whose key this session holds (all of them in one
        process; only its own in a server's process); each refuses a round id it
        already served."""
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
            if sid in self._server_keys
        }

    def holder(self) -> AdditiveHolder:
        """The result holder (refuses a round id this session's holder recovered).

        Raises:
            MissingKeyError: this session does not hold the holder's key (a role
                loaded from the public directory, or a server's).
        """
        if self._holder_key is None:
            raise MissingKeyError(
                "this additive session does not hold the holder's key"
            )
        return AdditiveHolder(self._cfg, self._holder_key, self._recovered)

    def secret_keys(self) -> list[SecretKey[bytes]]:
        """Every secret key this session holds (all of them in a simulation)."""
        keys = list(self._server_keys.values())
        return keys if self._holder_key is None else [*keys, self._holder_key]

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
        rng = rng or SystemRng()
        server_ids = self._server_ids()
        server_sks = {sid: new_x25519(rng) for sid in server_ids}
        holder_sk = new_x25519(rng)
        pks = {sid: x25519_public(sk) for sid, sk in server_sks.items()}
        pks["holder"] = x25519_public(holder_sk)
        return self._session(
            layout, max_clients, max_weight, noise, rng, pks, server_sks, holder_sk
        )

    def _server_ids(self) -> tuple[str, ...]:
        return tuple(f"server-{k}" for k in range(1, self._n_servers))

    def _session(
        self,
        layout: Layout,
        max_clients: int,
        max_weight: float,
        noise: NoiseShare | None,
        rng: Rng,
        public_keys: Mapping[str, bytes],
        server_sks: Mapping[str, bytes],
        holder_sk: bytes | None,
    ) -> AdditiveSession:
        """A session over the given public keys, holding the given secret keys."""
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        if max_clients < self._min_contributions:
            raise ConfigurationError(
                f"max_clients={max_clients} is below min_contributions="
                f"{self._min_contributions}: no round could be released (set "
                f"min_contributions explicitly to accept fewer contributors)"
            )
        ring = self._ring
        sizing = ring.size_session(layout.size, max_clients, max_weight, noise)
        encoder, ring_bits = sizing.encoder, sizing.ring_bits
        server_ids = self._server_ids()
        server_pks = tuple(public_keys[sid] for sid in server_ids)
        holder_pk = public_keys["holder"]
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
        # params_id binds the pinned directory: the directory is canonical (one file
        # per set of keys), its parties and roles are fixed by n_servers, and every key
        # it lists is in ``public``, so two directories that a backend accepts give two
        # params_ids (tests/privagg/test_directory_pinning.py). Binding its fingerprint
        # again would add no input and change the v3 transcripts. The noise share is
        # bound after these parts, only when there is one (#14): a session without
        # noise keeps the params_id of earlier releases.
        params_id = sizing.params_id(b"additive/v3", public, layout.fingerprint)
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
                "additive",
                sk,
                public_fingerprint=fingerprint(b"additive/server", public_keys[sid]),
            )
            for sid, sk in server_sks.items()
        }
        hkey = (
            None
            if holder_sk is None
            else SecretKey(
                "additive",
                holder_sk,
                public_fingerprint=fingerprint(b"additive/holder", holder_pk),
            )
        )
        return AdditiveSession(cfg, layout, keys, hkey, noise, rng)

    # -- deployment: each key holder makes its own key ----------------------------------
    def dealing(self) -> Dealing:
        """``OWN_KEYS``: no dealer. Each server ``k >= 1`` and the result holder make
        their own X25519 key on their own machine (:meth:`own_key`) and publish only
        the public half; the operator assembles the public directory
        (:meth:`directory`); every process loads its role from the directory and, for
        a key holder, its own secret (:meth:`load_role`). Server 0 (the aggregator)
        and the clients hold no long-term secret. A dealer would have held every
        server's key at once, i.e. been every server: the non-collusion assumption
        this backend rests on would then rest on the dealer too.
        """
        return Dealing.OWN_KEYS

    def key_holders(self) -> dict[str, Role]:
        """``{"server-1": SERVER, ..., "holder": HOLDER}``: who makes its own key."""
        out = dict.fromkeys(self._server_ids(), Role.SERVER)
        out["holder"] = Role.HOLDER
        return out

    def own_key(self, role: str, party_id: str, *, rng: Rng | None = None) -> OwnKey:
        """Make one key holder's X25519 key, on its own machine.

        Args:
            role: ``"server"`` or ``"holder"``.
            party_id: ``"server-k"`` (1 <= k < n_servers) or ``"holder"``.
            rng: randomness for the key (default: the system CSPRNG).

        Raises:
            ConfigurationError: ``party_id`` is not a key holder in ``role``.
        """
        holders = self.key_holders()
        if holders.get(party_id) != role:
            raise ConfigurationError(
                f"{party_id!r} makes no {role!r} key in this backend; key holders: "
                f"{sorted(holders)}"
            )
        sk = new_x25519(rng or SystemRng())
        public, secret = seal_own_key(role, party_id, sk)
        return OwnKey(Role(role), party_id, public, secret)

    def directory(self, public_keys: Sequence[bytes]) -> bytes:
        """The public directory from every key holder's public blob (no secret in,
        none out: the operator's step).

        Raises:
            ConfigurationError: a key holder missing, repeated or unknown.
            DeserializationError: a malformed public blob.
        """
        expected = {p: r.value for p, r in self.key_holders().items()}
        return seal_directory(public_keys, expected)

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
    ) -> DealtMaterial:
        """Refused: this backend has no dealer (see :meth:`dealing`).

        Raises:
            UnsupportedError: always.
        """
        raise UnsupportedError(
            "the additive backend has no dealer: each server and the result holder "
            "make their own key (own_key) and the operator builds the public "
            "directory (directory)",
            UnsupportedReason.OPERATION,
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
        secret: bytes | None = None,
        rng: Rng | None = None,
        pinned: str | bytes | None = None,
        noise: NoiseShare | None = None,
    ) -> AdditiveSession:
        """A session for one role, from the public directory and (key holders) its own
        secret blob only.

        Args:
            layout: the update layout.
            role: ``"aggregator"`` (server 0), ``"client"``, ``"server"`` or
                ``"holder"``.
            party_id: the client's or server's party id (``"holder"`` or None for the
                holder).
            material: the public directory (:meth:`directory`).
            max_clients: as every other process uses.
            max_weight: as every other process uses.
            secret: the key holder's own secret blob (:meth:`own_key`); refused for
                the aggregator and the clients, which hold no secret.
            rng: randomness for the server's ephemeral keys (default: the OS).
            pinned: the directory's fingerprint (32 bytes or 64 hex characters,
                :func:`privagg.distribution.directory_fingerprint`), received out of
                band. Required for every role: whoever hands a process its directory
                could otherwise substitute the servers' or the holder's keys.
            noise: the clients' DP noise share, as for :meth:`setup`: every role
                must be given the same one (it sizes the ring); only a client adds it.

        Returns:
            A session; only ``role``'s method is usable (``holder()`` raises
            :class:`~privagg.MissingKeyError` outside the holder; ``servers()`` has
            only the server's own entry in a server's process, none elsewhere).

        Raises:
            ConfigurationError: no ``pinned`` (or a malformed one), an unknown role, a
                missing or foreign party id, a missing secret for a key holder, or a
                secret for a role without one.
            DeserializationError: malformed material, or a secret blob given as the
                directory.
            ParameterMismatchError: a directory whose fingerprint is not the pinned
                one, a secret blob made for another party or role, or one whose key is
                not the directory's key for this party.
        """
        parse_pin(pinned)  # no pin: refused before the material is read
        holders = self.key_holders()
        expected = {p: r.value for p, r in holders.items()}
        # Not a directory (e.g. a key file given by mistake): DeserializationError
        # before anything derived from the file (its fingerprint) is reported.
        check_directory_file(material)
        check_pin(directory_fingerprint(material), pinned, "additive key directory")
        pks = read_directory(material, expected)
        server_sks: dict[str, bytes] = {}
        holder_sk: bytes | None = None
        if role in ("aggregator", "client"):
            if secret is not None:
                raise ConfigurationError(
                    f"an additive {role} holds no secret key; it was given one"
                )
            if role == "client" and (not party_id or party_id in holders):
                raise ConfigurationError(
                    f"an additive client role needs its own party id, got {party_id!r}"
                )
        elif role in ("server", "holder"):
            me = "holder" if role == "holder" and party_id is None else party_id
            if me is None or holders.get(me) != Role(role):
                raise ConfigurationError(
                    f"an additive {role} role needs its party id ({sorted(holders)}), "
                    f"got {party_id!r}"
                )
            if secret is None:
                raise ConfigurationError(
                    f"the additive {role} {me!r} needs its own secret key file"
                )
            key_role, key_party, sk = read_own_key(secret)
            if (key_role, key_party) != (role, me):
                raise ParameterMismatchError(
                    f"the secret key was made for {key_role} {key_party!r}, not for "
                    f"{role} {me!r}"
                )
            if x25519_public(sk) != pks[me]:
                raise ParameterMismatchError(
                    f"the secret key of {me!r} is not the one in the directory"
                )
            if role == "server":
                server_sks[me] = sk
            else:
                holder_sk = sk
        else:
            raise ConfigurationError(
                f"role must be aggregator, client, server or holder, got {role!r}"
            )
        return self._session(
            layout,
            max_clients,
            max_weight,
            noise,
            rng or SystemRng(),
            pks,
            server_sks,
            holder_sk,
        )

    def __repr__(self) -> str:
        return (
            f"AdditiveBackend(bound={self._ring.bound}, scale_bits={self._ring.scale_bits}, "
            f"n_servers={self._n_servers}, min_contributions={self._min_contributions})"
        )
