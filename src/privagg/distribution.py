"""Distribution: how each role of a backend gets to its own process.

In one process a session is a trusted dealer that makes every role. Across machines
each process must build *only its own role* from its own material. Every backend that
can run across processes implements :class:`Distributable` and declares, through
:meth:`Distributable.dealing`, which of three ways it takes:

================  ===================================================================
:class:`Dealing`  what each process does
================  ===================================================================
``NONE``          no key material: every process runs ``setup`` with the same options
                  (``plain``: its ``params_id`` is a fingerprint of the layout).
``PUBLIC_SEED``   no long-term secret: every process runs
                  :meth:`PublicSeeded.public_setup` from one *public* 32-byte seed, so
                  all agree on ``params_id``; any secret comes from the system CSPRNG
                  (SecAgg+ with ``active=False``).
``DEALER``        a dealer runs :meth:`Distributable.deal` once and hands each role its
                  own blob; each process runs :meth:`Distributable.load_role` on its
                  blob only (``ckks``, ``paillier``).
``DIRECTORY``     no dealer: each client makes its own long-term identity key on its
                  own machine, the operator distributes a public-key directory
                  (:class:`privagg.identity.IdentityDirectory`, pinned by its
                  fingerprint), and each process runs
                  :meth:`DirectoryKeyed.directory_role` with the directory and, for a
                  client, its own identity key (SecAgg+ with ``active=True``).
``OWN_KEYS``      no dealer: each party that holds a secret key (a server, the result
                  holder) makes it on its own machine (:func:`own_key`) and publishes
                  only the public half; an operator builds the *public* directory
                  from the public halves (:func:`make_directory`); every process
                  loads its role from the directory, pinned by its fingerprint
                  (:func:`directory_fingerprint`), plus, for a key holder, its own
                  secret (:meth:`SelfKeyed.load_role`). Nobody ever holds two
                  parties' secrets (``additive``).
================  ===================================================================

``DIRECTORY`` and ``OWN_KEYS`` are one idea with two key kinds: a *directory of the
parties' own public keys* (Ed25519 identity keys, X25519 encryption keys), public but
not self-authenticating, so every process that loads one pins its SHA-256 fingerprint,
received out of band, compares it in constant time (a mismatch is a
:class:`~privagg.errors.ParameterMismatchError`, no pin a
:class:`~privagg.errors.ConfigurationError`), and the session's ``params_id`` binds
the directory (the identity directory's fingerprint, which covers its nonce; every
key of the canonical own-keys directory). Whoever hands a process its directory file (a coordinator, a
server operator) thus cannot substitute keys.

A backend without the hook (or one that declares, by raising
:class:`~privagg.errors.UnsupportedError` from ``dealing``, that its current options
cannot be distributed yet) is refused: a deployment never falls back to handing one
process everybody's secrets. :func:`session_for_role` and :func:`deal` are the whole
protocol for a deployment tool, which only moves the blobs (``fedtrain.flower.material``
writes and reads them as 0600 files). Material blobs are opaque bytes made by the
backend; no pickle.

**Distributed DP noise.** ``session_for_role(..., noise=share)`` gives the role the
clients' :class:`~privagg.NoiseShare`, exactly as ``Backend.setup(noise=share)`` gives
it to a one-process session: a client adds its share after encoding, before
protection; every role sizes the ring (or slots, or CKKS headroom) for it, and CKKS,
Paillier, SecAgg+ and additive bind it in ``params_id`` (its type, its ``stddev`` and
its headroom). So *every* process of a session must be given the same share (none, or
one with the same type and ``stddev``); a process given another one, or none where
the others have one, gets another ``params_id``, and the first message it exchanges
with the others is refused (:class:`~privagg.errors.ParameterMismatchError`;
``tests/privagg/test_masking_noise_binding.py``, ``test_distribution_noise.py``).
Plain ignores the share. A session without a share keeps the ``params_id`` of earlier
releases. The binding is a header check; a relay that rewrites every message's
header between clients and aggregator is refused where the protocol authenticates
``params_id``: active SecAgg+ (signatures), additive (seed encryption) and, since
SecAgg+ v4, passive SecAgg+ (the self-mask seed commitments), at its last stage
(``test_masking_noise_binding.py``). The share is public
configuration (a distribution and its scale), not a secret: only the clients draw
from it. Key material never depends on it, so
:func:`deal` and :func:`own_key` take none. A ``noise`` that is not a
:class:`~privagg.NoiseShare` is a :class:`~privagg.errors.ConfigurationError`; a
backend whose role loader takes no ``noise`` is refused with
:class:`~privagg.errors.UnsupportedError` when one is given; a share whose headroom
does not fit raises what ``setup`` raises (``ConfigurationError``,
``EncodingOverflowError``).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, runtime_checkable

from privagg._pin import check_pin, parse_pin
from privagg._signature import accepts_keyword
from privagg.envelope import open_envelope
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    UnsupportedError,
    UnsupportedReason,
)
from privagg.identity import IdentityDirectory
from privagg.keys import SecretBytes, fingerprint
from privagg.layout import Layout
from privagg.protocols import Backend, NoiseShare, Session, check_noise_share

__all__ = [
    "DealtMaterial",
    "Dealing",
    "DirectoryKeyed",
    "Distributable",
    "OwnKey",
    "PublicSeeded",
    "Role",
    "SelfKeyed",
    "deal",
    "dealing",
    "directory_fingerprint",
    "key_holders",
    "make_directory",
    "own_key",
    "public_setup",
    "session_for_role",
]


class Role(enum.StrEnum):
    """The roles a process can hold."""

    AGGREGATOR = "aggregator"
    CLIENT = "client"
    HOLDER = "holder"
    SERVER = "server"
    """An extra responder of the protocol (``Session.servers``): an additive server."""


class Dealing(enum.Enum):
    """How a backend's roles are distributed (see the module docstring)."""

    NONE = "none"
    PUBLIC_SEED = "public-seed"
    DEALER = "dealer"
    DIRECTORY = "directory"
    OWN_KEYS = "own-keys"

    @property
    def needs_dealer(self) -> bool:
        """True if a dealer must make and hand out key material."""
        return self is Dealing.DEALER

    @property
    def holder_has_secret(self) -> bool:
        """True if the result holder loads a secret key, so it must run in its own
        process (``DEALER`` and ``OWN_KEYS``)."""
        return self in (Dealing.DEALER, Dealing.OWN_KEYS)


class _Unshareable:
    """Refuses pickling and copying: the object holds secret key material, which
    must go to its own 0600 file (:func:`privagg.write_secret_file`), nowhere else."""

    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds secret key material and cannot be pickled; "
            "write each secret blob to its own secret file instead"
        )

    def __copy__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds secret key material and cannot be copied"
        )

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds secret key material and cannot be copied"
        )


@dataclass(frozen=True, repr=False, eq=False)
class DealtMaterial(_Unshareable):
    """What a dealer produces: one opaque blob per role.

    It holds secrets (the holder's secret key, clients' keys), so it cannot be pickled
    or copied (``TypeError``: write each blob to its own 0600 file instead, e.g. with
    :func:`privagg.write_secret_file`), and its repr shows only a fingerprint of the
    public aggregator material and the number of clients.

    Attributes:
        aggregator: public parameters for the aggregator.
        holder: the result holder's material (its secret key, where there is one).
        clients: party id -> that client's material.
    """

    aggregator: bytes
    holder: bytes
    clients: Mapping[str, bytes]

    def _public_fingerprint(self) -> str:
        try:  # a privagg envelope: the fingerprint its header names (public)
            return open_envelope(self.aggregator)[0].params_id[:8].hex()
        except DeserializationError:
            return hashlib.blake2b(self.aggregator, digest_size=8).hexdigest()

    def __repr__(self) -> str:
        return (
            f"DealtMaterial(aggregator_fp={self._public_fingerprint()}, "
            f"clients={len(self.clients)}, holder's material hidden)"
        )

    __str__ = __repr__


@dataclass(frozen=True, repr=False, eq=False)
class OwnKey(_Unshareable):
    """A key pair one party made on its own machine (``OWN_KEYS`` backends).

    ``public`` is published (the operator puts it in the directory); ``secret`` is this
    party's own blob: write it to a 0600 file on its machine and nowhere else. Like
    :class:`DealtMaterial` it cannot be pickled or copied, and its repr shows only the
    party and a fingerprint of the public half.

    Attributes:
        role: the role that uses the key (``Role.SERVER`` or ``Role.HOLDER``).
        party_id: the party that made it (``"server-1"``, ``"holder"``).
        public: the public blob (self-describing: names the role and the party).
        secret: the secret blob (names the role and the party too, so a file made for
            one party refuses to act as another).
    """

    role: Role
    party_id: str
    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        fp = hashlib.blake2b(self.public, digest_size=8).hexdigest()
        return (
            f"OwnKey(role={self.role.value}, party={self.party_id!r}, public_fp={fp}, "
            "secret hidden)"
        )

    __str__ = __repr__


@runtime_checkable
class Distributable(Protocol):
    """The hook a backend implements to run its roles in separate processes.

    ``dealing`` declares how (and raises :class:`~privagg.errors.UnsupportedError`
    where the backend's current options cannot be distributed); ``deal`` makes every
    role's material once (``DEALER`` backends); ``load_role`` rebuilds, in another
    process, a session that can make only ``role``'s objects. The aggregator's material
    never contains client secrets nor the holder's secret key.
    """

    def dealing(self) -> Dealing:
        """How this backend's roles are distributed."""
        ...

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
    ) -> DealtMaterial:
        """Generate the material of every role."""
        ...

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> Session:
        """A session for one role, from that role's material only (``noise``: the
        clients' DP noise share, as for ``Backend.setup``)."""
        ...


@runtime_checkable
class PublicSeeded(Protocol):
    """A backend whose every process sets up from one public seed (``PUBLIC_SEED``)."""

    def public_setup(
        self,
        layout: Layout,
        seed: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> Session:
        """A session whose *public* parameters come from ``seed`` alone."""
        ...


@runtime_checkable
class DirectoryKeyed(Protocol):
    """A backend whose clients hold their own identity keys (``DIRECTORY``)."""

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
    ) -> Session:
        """A session for one role from the public directory (and, for a client, its
        own identity secret key only)."""
        ...


@runtime_checkable
class SelfKeyed(Protocol):
    """A backend whose key holders make their own keys (``OWN_KEYS``).

    ``key_holders`` names the parties that make a key; each runs ``own_key`` on its own
    machine; the operator runs ``directory`` on the public halves (no secret involved);
    ``load_role`` builds a role from the directory and, for a key holder, its own
    secret blob (a key holder's blob for party X refuses to act as party Y).
    """

    def key_holders(self) -> Mapping[str, Role]:
        """Party id -> role, for every party that makes its own key."""
        ...

    def own_key(self, role: str, party_id: str) -> OwnKey:
        """Make ``party_id``'s key pair (on that party's machine)."""
        ...

    def directory(self, public_keys: Sequence[bytes]) -> bytes:
        """The public directory from every key holder's public blob."""
        ...

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
        pinned: str | bytes | None = None,
        noise: NoiseShare | None = None,
    ) -> Session:
        """A session for one role from the directory (``material``), which must have
        the ``pinned`` fingerprint (:func:`directory_fingerprint`; required, refused
        when missing), and, for a key holder, its own ``secret`` blob."""
        ...


def _hook(backend: Backend) -> Distributable:
    if not isinstance(backend, Distributable):
        raise UnsupportedError(
            f"backend {backend.name!r} has no deal/load_role hook: its key material "
            "cannot be distributed to separate processes yet",
            UnsupportedReason.OPERATION,
        )
    return backend


def dealing(backend: Backend) -> Dealing:
    """How ``backend``'s roles are distributed.

    Raises:
        UnsupportedError: the backend has no distribution hook, or its options cannot
            be distributed yet (the backend says why).
    """
    return _hook(backend).dealing()


def deal(
    backend: Backend,
    layout: Layout,
    party_ids: Sequence[str],
    *,
    max_clients: int,
    max_weight: float = 1.0,
) -> DealtMaterial | None:
    """Every role's material (``DEALER`` backends), or None: nothing to distribute.

    Raises:
        UnsupportedError: as :func:`dealing`.
    """
    hook = _hook(backend)
    if not hook.dealing().needs_dealer:
        return None
    return hook.deal(layout, party_ids, max_clients=max_clients, max_weight=max_weight)


def _self_keyed(backend: Backend) -> SelfKeyed:
    hook = _hook(backend)
    if hook.dealing() is not Dealing.OWN_KEYS or not isinstance(hook, SelfKeyed):
        raise UnsupportedError(
            f"backend {backend.name!r} does not let its parties make their own keys "
            "(its dealing is not OWN_KEYS)",
            UnsupportedReason.OPERATION,
        )
    return hook


def key_holders(backend: Backend) -> dict[str, Role]:
    """Party id -> role of every party that makes its own key ({} unless
    ``OWN_KEYS``).

    Raises:
        UnsupportedError: as :func:`dealing`.
    """
    if dealing(backend) is not Dealing.OWN_KEYS:
        return {}
    return dict(_self_keyed(backend).key_holders())


def own_key(backend: Backend, role: Role | str, party_id: str) -> OwnKey:
    """Make one key holder's key pair, on its own machine (``OWN_KEYS`` backends).

    Raises:
        UnsupportedError: the backend is not ``OWN_KEYS``.
        ConfigurationError: ``party_id`` makes no key, or not for ``role``.
    """
    return _self_keyed(backend).own_key(Role(role).value, party_id)


def make_directory(backend: Backend, public_keys: Sequence[bytes]) -> bytes:
    """The public directory from every key holder's public blob (``OWN_KEYS``).

    The operator's step: it sees public blobs only.

    Raises:
        UnsupportedError: the backend is not ``OWN_KEYS``.
        ConfigurationError: a key holder is missing or given twice.
        DeserializationError: a malformed public blob.
    """
    return _self_keyed(backend).directory(public_keys)


_OWN_KEYS_DIRECTORY_FP = b"privagg/own-keys-directory/v1"


def directory_fingerprint(directory: bytes) -> bytes:
    """SHA-256 fingerprint of an ``OWN_KEYS`` directory file (32 bytes): what every
    process pins (its hex is what the operator publishes out of band).

    The directory file is canonical (one set of public keys has one file), so this is a
    fingerprint of the keys it lists. An identity directory (``DIRECTORY``) has its own:
    :attr:`privagg.identity.IdentityDirectory.fingerprint`.
    """
    if not isinstance(directory, bytes | bytearray | memoryview):
        raise ConfigurationError("a directory is bytes")
    return fingerprint(_OWN_KEYS_DIRECTORY_FP, bytes(directory))


def public_setup(
    backend: Backend,
    layout: Layout,
    seed: bytes,
    *,
    max_clients: int,
    max_weight: float = 1.0,
    noise: NoiseShare | None = None,
) -> Session:
    """The session every process of a ``PUBLIC_SEED`` backend builds from ``seed``
    (``noise``: the clients' DP noise share, see the module docstring).

    Raises:
        UnsupportedError: the backend has no public-seeded setup, or one that takes no
            noise share and ``noise`` is given.
        ConfigurationError: ``seed`` is not 32 bytes, or ``noise`` is not a
            :class:`~privagg.NoiseShare`.
    """
    if not isinstance(backend, PublicSeeded):
        raise UnsupportedError(
            f"backend {backend.name!r} has no public-seeded setup",
            UnsupportedReason.OPERATION,
        )
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ConfigurationError(
            f"backend {backend.name!r} needs a public 32-byte setup seed"
        )
    return backend.public_setup(
        layout,
        seed,
        max_clients=max_clients,
        max_weight=max_weight,
        **_noise_kw(backend, backend.public_setup, noise),
    )


def _noise_kw(
    backend: Backend, loader: object, noise: NoiseShare | None
) -> dict[str, NoiseShare]:
    """``{"noise": noise}`` for a role loader, or {} without noise (a loader written
    before noise shares were distributed is called as before).

    Raises:
        ConfigurationError: ``noise`` is not a :class:`~privagg.NoiseShare`.
        UnsupportedError: ``noise`` is given and the loader takes none: the roles
            would silently run without it.
    """
    check_noise_share(noise)
    if noise is None:
        return {}
    if not callable(loader) or not accepts_keyword(loader, "noise"):
        raise UnsupportedError(
            f"backend {backend.name!r} cannot load a role with a DP noise share "
            "(its role loader takes no noise=): refusing to run without the noise",
            UnsupportedReason.OPERATION,
        )
    return {"noise": noise}


def session_for_role(
    backend: Backend,
    layout: Layout,
    role: Role | str,
    *,
    party_id: str | None = None,
    material: bytes | None = None,
    setup_seed: bytes | None = None,
    directory: IdentityDirectory | None = None,
    identity: SecretBytes | None = None,
    secret: bytes | None = None,
    pinned: str | bytes | None = None,
    max_clients: int,
    max_weight: float = 1.0,
    noise: NoiseShare | None = None,
) -> Session:
    """This process's session for one role, whatever the backend's :class:`Dealing`.

    Args:
        backend: the configured backend.
        layout: the update layout.
        role: which role this process plays.
        party_id: the client's party id (``Role.CLIENT``).
        material: this role's blob from :func:`deal` (``DEALER`` backends), or the
            public directory (``OWN_KEYS`` backends).
        setup_seed: the public 32-byte seed (``PUBLIC_SEED`` backends only).
        directory: the public-key directory, loaded with its pinned fingerprint
            (``DIRECTORY`` backends only).
        identity: a client's own identity secret key (``DIRECTORY`` backends, role
            ``client`` only; never given to another role).
        secret: this party's own secret blob from :func:`own_key` (``OWN_KEYS``
            backends, key holders only).
        pinned: the directory's fingerprint received out of band (32 bytes or 64
            hex characters): required for every role of an ``OWN_KEYS`` backend
            (:func:`directory_fingerprint` of ``material``); for a ``DIRECTORY``
            backend, checked against ``directory.fingerprint`` when given.
        max_clients: as given to :func:`deal`.
        max_weight: as given to :func:`deal`.
        noise: the clients' distributed-DP noise share, or None: passed to the
            backend's role loader for every :class:`Dealing` with the semantics of
            ``Backend.setup(noise=...)`` (a client adds it; every role sizes for
            it). Every role of the session must be given the same share (see the
            module docstring).

    Returns:
        A session; use only the method of ``role``.

    Raises:
        UnsupportedError: as :func:`dealing`; or ``noise`` given to a backend whose
            role loader takes none.
        ParameterMismatchError: a directory whose fingerprint is not ``pinned``.
        ConfigurationError: an unknown role, a ``DEALER`` or ``OWN_KEYS`` backend
            without material or (``OWN_KEYS``) without ``pinned``, a ``PUBLIC_SEED`` backend without a 32-byte seed, or a
            ``DIRECTORY`` backend without a directory (or a client without its
            identity key, or another role given one), or a ``noise`` that is not a
            :class:`~privagg.NoiseShare` (refused before any material is read).
        EncodingOverflowError: the sums plus the noise headroom do not fit (as
            ``Backend.setup`` with the same ``noise``).
    """
    check_noise_share(noise)
    hook = _hook(backend)
    mode = hook.dealing()
    try:
        role = Role(role)
    except ValueError:
        raise ConfigurationError(
            f"role must be aggregator, client, holder or server, got {role!r}"
        ) from None
    if mode is Dealing.NONE:
        return backend.setup(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
    if mode is Dealing.PUBLIC_SEED:
        return public_setup(
            backend,
            layout,
            setup_seed or b"",
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
        )
    if mode is Dealing.DIRECTORY:
        if pinned is not None and directory is not None:
            check_pin(directory.fingerprint, pinned, "identity directory")
        return _directory_role(
            backend,
            layout,
            role,
            party_id,
            directory,
            identity,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
        )
    if material is None:
        raise ConfigurationError(
            f"backend {backend.name!r} needs its material for role {role.value!r}"
        )
    if mode is Dealing.OWN_KEYS:
        parse_pin(pinned)  # no pin: refused before the material is read
        keyed = _self_keyed(backend)
        session = keyed.load_role(
            layout,
            role.value,
            party_id,
            material,
            max_clients=max_clients,
            max_weight=max_weight,
            secret=secret,
            pinned=pinned,
            **_noise_kw(backend, keyed.load_role, noise),
        )
        # The hook checks the pin (after checking that the file is a directory, so a
        # key file given by mistake is not reported by its fingerprint); checked again
        # here so that no OWN_KEYS backend can skip it.
        check_pin(directory_fingerprint(material), pinned, "own-keys directory")
        return session
    return hook.load_role(
        layout,
        role.value,
        party_id,
        material,
        max_clients=max_clients,
        max_weight=max_weight,
        **_noise_kw(backend, hook.load_role, noise),
    )


def _directory_role(
    backend: Backend,
    layout: Layout,
    role: Role,
    party_id: str | None,
    directory: IdentityDirectory | None,
    identity: SecretBytes | None,
    *,
    max_clients: int,
    max_weight: float,
    noise: NoiseShare | None,
) -> Session:
    if not isinstance(backend, DirectoryKeyed):
        raise UnsupportedError(
            f"backend {backend.name!r} declares identity-directory distribution but "
            "has no directory_role",
            UnsupportedReason.OPERATION,
        )
    if directory is None:
        raise ConfigurationError(
            f"backend {backend.name!r} needs the public-key directory for role "
            f"{role.value!r}"
        )
    if role is Role.CLIENT:
        if identity is None or party_id is None:
            raise ConfigurationError(
                f"backend {backend.name!r}: a client needs its party id and its own "
                "identity key"
            )
    elif identity is not None:
        raise ConfigurationError(
            f"role {role.value!r} holds no identity key: refusing to load one"
        )
    return backend.directory_role(
        layout,
        role.value,
        directory,
        party_id=party_id,
        identity=identity,
        max_clients=max_clients,
        max_weight=max_weight,
        **_noise_kw(backend, backend.directory_role, noise),
    )
