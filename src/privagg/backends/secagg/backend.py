"""The SecAgg+ result holder, session and backend (setup, dealing and loading)."""

from __future__ import annotations

import hmac
import struct
import threading
from collections.abc import Sequence
from typing import ClassVar, NoReturn

from privagg._rng import DeterministicRng, Rng, SystemRng
from privagg.backends import _wire
from privagg.backends._graph import (
    GraphParams,
)
from privagg.backends._masking import (
    RingBackend,
    RingOptions,
    RingSession,
    check_client_update,
    check_round_id,
    decode_total,
    open_result,
)
from privagg.backends._primitives import (
    ed25519_public,
    new_ed25519,
)
from privagg.backends.secagg._context import (
    _Config,
)
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.backends.secagg.client import SecAggClient
from privagg.backends.secagg.messages import (
    ResultMessage,
    SecAggKind,
)
from privagg.distribution import Dealing, DealtMaterial
from privagg.envelope import (
    Header,
    PayloadReader,
    PayloadWriter,
    Scheme,
    open_envelope,
    seal,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    MissingKeyError,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.identity import IdentityDirectory
from privagg.keys import SecretBytes
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, Recovered, Responder, check_setup_args


# -- holder / session / backend ------------------------------------------------------------
class SecAggHolder:
    """Decodes the aggregator's unmasked sum (the server learns the sum by design)."""

    def __init__(self, cfg: _Config) -> None:
        self._cfg = cfg
        self._recovered_rounds: set[int] = set()
        self._lock = threading.Lock()

    def recover(self, result: bytes) -> Recovered:
        """Check the result's parameters and round, and decode the fixed-point sum.

        Raises:
            ProtocolError: a result of a round this holder already recovered (replay).
        """
        open_result(
            self._cfg,
            result,
            SecAggKind.RESULT,
            what="a SecAgg+ result",
            other="parameters",
        )
        msg = ResultMessage.from_bytes(result)
        if not self._cfg.check_ring_array(msg.total):
            raise ProtocolError("result has the wrong type or size")
        if msg.round_id in self._recovered_rounds:
            raise ProtocolError(f"round {msg.round_id} was already recovered (replay?)")
        vec = decode_total(self._cfg, msg.total, len(msg.contributors))
        with self._lock:  # check and record at once: one release per round id, even
            if msg.round_id in self._recovered_rounds:  # for concurrent calls
                raise ProtocolError(
                    f"round {msg.round_id} was already recovered (replay?)"
                )
            self._recovered_rounds.add(msg.round_id)
        return Recovered(vec, msg.contributors)

    def __repr__(self) -> str:
        return "SecAggHolder()"

    def __reduce__(self) -> NoReturn:
        raise TypeError("result holders cannot be pickled")


class SecAggSession(RingSession[_Config]):
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

    def _used_round_ids(self) -> set[int]:
        used = self._aggregated_rounds | {r for _, r in self._client_rounds}
        if self._holder is not None:
            used |= self._holder._recovered_rounds
        return used

    def aggregator(self, round_id: int, client_ids: Sequence[str]) -> SecAggAggregator:
        """The aggregator for one round.

        Raises:
            ProtocolError: this session already ran an aggregator for ``round_id`` (round
                ids are fresh per round: messages of an earlier run would otherwise fit).
        """
        check_round_id(round_id)
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
        check_round_id(round_id)
        if (client_id, round_id) in self._client_rounds:
            raise ProtocolError(
                f"client {client_id!r} already took part in round {round_id} (reuse?)"
            )
        w = check_client_update(
            client_id, update, self.layout.size, weight, self._cfg.max_weight
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


#: The dealt material of SecAgg+ (kept name): privagg's one :class:`DealtMaterial`.
SecAggMaterial = DealtMaterial


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
    nonce = _wire.fixed(p, 32)
    directory = {}
    for _ in range(_wire.count(p)):
        pid = p.text()
        directory[pid] = _wire.fixed(p, 32)
    p.done()
    return nonce, directory, secret


def _role_session(
    cfg: _Config,
    layout: Layout,
    role: str,
    party_id: str | None,
    directory: dict[str, bytes],
    secret: bytes,
    secret_rng: Rng,
    noise: NoiseShare | None = None,
) -> SecAggSession:
    """The session of one role, given the public directory and the client's key
    (``noise``: the clients' DP noise share; only the client role adds it)."""
    session = SecAggSession(cfg, layout, noise, secret_rng)
    session._public = dict(directory)
    session._dealt = True
    if role == "client":
        if len(secret) != 32:
            raise MissingKeyError("this client's material holds no identity key")
        if party_id is None or party_id not in directory:
            raise ConfigurationError(f"party {party_id!r} is not in the directory")
        if ed25519_public(secret) != directory[party_id]:
            raise ParameterMismatchError(
                "the identity key does not match the directory"
            )
        session._identities[party_id] = SecretBytes(secret, label="secagg identity key")
    elif role not in ("aggregator", "holder"):
        raise ConfigurationError(
            f"role must be aggregator, client or holder, got {role!r}"
        )
    return session


class SecAggBackend(RingBackend):
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
        self._ring = RingOptions(bound, scale_bits, clip)  # validates the three
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
        for name, b in (("full_graph", full_graph), ("active", active)):
            if not isinstance(b, bool):
                raise ConfigurationError(f"{name} must be a bool, got {b!r}")
        self._dropout = float(dropout_rate)
        self._corrupt = float(corruption_rate)
        self._sigma = sigma
        self._eta = eta
        self._full = full_graph
        self._active = active

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
        ring = self._ring
        sizing = ring.size_session(layout.size, max_clients, max_weight, noise)
        encoder, ring_bits = sizing.encoder, sizing.ring_bits
        public = (
            struct.pack(
                ">dIBdIddIIBB",
                ring.bound,
                ring.scale_bits,
                ring.clip,
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
        # the noise share is bound after these parts, and only when there is one: a
        # session without noise keeps the params_id of earlier releases (#14)
        params_id = sizing.params_id(b"secagg/v5", public, layout.fingerprint)
        return _Config(
            params_id,
            layout.size,
            encoder,
            ring.bound,
            ring.clip,
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
    def dealing(self) -> Dealing:
        """How the roles are distributed: ``PUBLIC_SEED`` with ``active=False``,
        ``DIRECTORY`` with ``active=True``.

        The passive variant has no long-term secret: every process runs
        :meth:`public_setup` from one public seed. The active variant needs each
        client's Ed25519 identity key, made on its own machine, and a public-key
        directory pinned by its fingerprint (:mod:`privagg.identity`): each process
        runs :meth:`directory_role`. (:meth:`deal` / :meth:`load_role`, where one
        dealer makes every identity key, remain for tests and single-operator setups.)
        """
        return Dealing.DIRECTORY if self._active else Dealing.PUBLIC_SEED

    def public_setup(
        self,
        layout: Layout,
        seed: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> SecAggSession:
        """The session every process builds from one *public* 32-byte ``seed``.

        The seed draws only the public session nonce, so every process gets the same
        ``params_id``. Every secret the session may make (identity keys) comes from the
        system CSPRNG, passed explicitly, so that no default and no public seed can
        ever reach one (review #11, finding 6): each process gets its own,
        unreproducible secrets. ``noise`` is the clients' DP noise share, as for
        :meth:`setup`: every role must be given the same one (it sizes the ring).
        """
        return self.setup(
            layout,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
            rng=DeterministicRng(seed),
            secret_rng=SystemRng(),
        )

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
        rng: Rng | None = None,
        secret_rng: Rng | None = None,
    ) -> DealtMaterial:
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

        return DealtMaterial(
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
        noise: NoiseShare | None = None,
    ) -> SecAggSession:
        """A session for one role (``"aggregator"``, ``"client"`` or ``"holder"``) built
        from that role's material only.

        ``noise``: the clients' DP noise share, as for :meth:`setup`: every role must be
        given the same one. The material is dealt without a share (key material never
        depends on it) and is checked against the session's options without one; the
        session's ``params_id`` then binds the share (#14), so a role given another
        share than its peers' is refused at the first message they exchange.

        Raises:
            ParameterMismatchError: material dealt for other options or another layout.
            DeserializationError: malformed material.
        """
        nonce, directory, secret = _read_material(material)
        dealt = self._config(layout, max_clients, max_weight, None, nonce)
        if not hmac.compare_digest(
            open_envelope(material)[0].params_id, dealt.params_id
        ):
            raise ParameterMismatchError(
                "the material was dealt for other parameters or another layout"
            )
        cfg = (
            dealt
            if noise is None
            else self._config(layout, max_clients, max_weight, noise, nonce)
        )
        return _role_session(
            cfg, layout, role, party_id, directory, secret, rng or SystemRng(), noise
        )

    def directory_role(
        self,
        layout: Layout,
        role: str,
        directory: IdentityDirectory,
        *,
        party_id: str | None = None,
        identity: SecretBytes | None = None,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> SecAggSession:
        """A session for one role of active SecAgg+ from the public-key directory (and,
        for a client, its own identity key): no dealer, nobody holds another's secret.
        ``noise``: the clients' DP noise share, as for :meth:`setup` (every role gets
        the same one; only a client adds it).

        The directory's fingerprint is the session nonce, so ``params_id`` binds it:
        processes holding different directories cannot exchange messages.

        Raises:
            ConfigurationError: ``active=False``, an unknown role, a client without
                its identity key or not in the directory, another role given a key.
            ParameterMismatchError: the directory lists another key for the client.
        """
        if not self._active:
            raise ConfigurationError("identity directories are for active SecAgg+")
        if (identity is not None) != (role == "client"):
            raise ConfigurationError("exactly the client role holds an identity key")
        cfg = self._config(
            layout, max_clients, max_weight, noise, directory.fingerprint
        )
        secret = b"" if identity is None else identity.reveal()
        return _role_session(
            cfg,
            layout,
            role,
            party_id,
            dict(directory.keys),
            secret,
            SystemRng(),
            noise,
        )

    def __repr__(self) -> str:
        return (
            f"SecAggBackend(bound={self._ring.bound}, scale_bits={self._ring.scale_bits}, "
            f"dropout_rate={self._dropout:.3g}, corruption_rate={self._corrupt:.3g}, "
            f"full_graph={self._full}, active={self._active})"
        )
