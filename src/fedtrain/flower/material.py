"""Key material for a deployment: which process holds what, and how it gets there.

In one process a privagg session is a trusted dealer that makes every role. Across
machines each process must build *only its own role* from its own material:

==========  ============================  =============================================
process     role                          material it reads
==========  ============================  =============================================
ServerApp   aggregator                    public parameters only (aggregator file)
SuperNode   client ``party-id``           its own client file (``privagg-material``)
SuperNode   result holder (``holder``)    the holder file (secret key, where any)
SuperNode   server ``party-id``           the public directory and its own key file
            (``privagg-role=server``)     (``privagg-material``, ``privagg-own-key``)
==========  ============================  =============================================

Active SecAgg+ (``Dealing.DIRECTORY``) has no dealer: each client reads its *own*
identity key file (made on its machine by ``privagg keygen --backend secagg``) and the
public-key directory, whose fingerprint it pins; the aggregator and the holder read the
directory only (:func:`load_directory`, :mod:`privagg.identity`).

How a backend is distributed is privagg's to say (:mod:`privagg.distribution`): each
backend declares its :class:`privagg.Dealing` (``NONE``: no keys; ``PUBLIC_SEED``: every
process sets up from the public ``setup_seed`` the ServerApp chose and sent in the
:class:`SessionSpec`; ``DEALER``: :func:`deal` writes one file per role; ``OWN_KEYS``:
each key holder runs :func:`make_own_key` on its own machine, the operator runs
:func:`write_directory` on the public files, and every process reads the directory
(its ``material``) plus, for a key holder, its own key file), and privagg refuses a
backend without the hook (:class:`privagg.UnsupportedError`): a deployment never falls
back to handing one process everybody's secrets. This module only moves bytes: it
writes the blobs to files with mode 0600 and reads a role's files back; it knows no
backend by name. Material files are opaque bytes produced by the backend; no pickle.

A result holder with a secret key never runs in the ServerApp:
:func:`holder_needs_no_secret` is False for every backend whose result holder loads a
secret key (``Dealing.holder_has_secret``: ``DEALER``, ``OWN_KEYS``), and the ServerApp
refuses ``holder="server"`` then.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import privagg
from privagg import (
    Dealing,
    DealtMaterial,
    Distributable,
    Layout,
    Role,
    Session,
    UnsupportedError,
)
from privagg import distribution as _distribution
from privagg.identity import MAX_DIRECTORY_BYTES, IdentityDirectory, load_identity_key
from privagg.keys import Protection

__all__ = [
    "DealtMaterial",
    "DistributableBackend",
    "Role",
    "SessionSpec",
    "deal",
    "directory_fingerprint",
    "holder_needs_no_secret",
    "key_holders",
    "load_directory",
    "load_session",
    "make_own_key",
    "needs_identity_directory",
    "needs_setup_seed",
    "write_directory",
]

OptionValue = bool | int | float | str

#: The distribution hook (kept name): :class:`privagg.Distributable`.
DistributableBackend = Distributable


@dataclass(frozen=True)
class SessionSpec:
    """Public description of a session, sent by the ServerApp with every request.

    Attributes:
        backend: privagg backend name.
        options: the backend's keyword options (public values only).
        max_clients: ``max_clients`` passed to ``backend.setup``.
        max_weight: ``max_weight`` passed to ``backend.setup``.
        setup_seed: hex of a public 32-byte seed for backends whose ``setup`` draws only
            public randomness (see the module docstring); "" otherwise.
    """

    backend: str
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    max_clients: int = 1
    max_weight: float = 1.0
    setup_seed: str = ""

    def to_json(self) -> str:
        """Canonical JSON text."""
        return json.dumps(
            {
                "backend": self.backend,
                "options": dict(self.options),
                "max_clients": self.max_clients,
                "max_weight": self.max_weight,
                "setup_seed": self.setup_seed,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SessionSpec:
        """Parse :meth:`to_json` output.

        Raises:
            privagg.ConfigurationError: malformed text.
        """
        try:
            d = json.loads(text)
            spec = cls(
                backend=str(d["backend"]),
                options={str(k): v for k, v in dict(d["options"]).items()},
                max_clients=int(d["max_clients"]),
                max_weight=float(d["max_weight"]),
                setup_seed=str(d.get("setup_seed", "")),
            )
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            raise privagg.ConfigurationError("malformed session spec") from exc
        for k, v in spec.options.items():
            if not isinstance(v, bool | int | float | str):
                raise privagg.ConfigurationError(
                    f"session option {k!r} must be a scalar, got {type(v).__name__}"
                )
        return spec

    def backend_object(self) -> privagg.Backend:
        """The configured backend (``privagg.get_backend(backend, **options)``)."""
        return privagg.get_backend(self.backend, **dict(self.options))


def _dealing(spec: SessionSpec) -> Dealing:
    return _distribution.dealing(spec.backend_object())


def needs_setup_seed(spec: SessionSpec) -> bool:
    """True if every process must set up from the same public seed."""
    try:
        return _dealing(spec) is Dealing.PUBLIC_SEED
    except UnsupportedError:
        return False  # refused later, with the backend's reason


def needs_identity_directory(spec: SessionSpec) -> bool:
    """True if every process needs the public-key directory (active SecAgg+)."""
    try:
        return _dealing(spec) is Dealing.DIRECTORY
    except (UnsupportedError, privagg.ConfigurationError):
        return False  # refused later, with the backend's reason


def load_directory(path: str | Path, *, pinned: str | None = None) -> IdentityDirectory:
    """Read a public-key directory file and check it against the pinned fingerprint.

    Args:
        path: the directory file (public; any file mode).
        pinned: hex of the fingerprint this process was given out of band; a client
            must pass it (see :func:`load_session`).

    Raises:
        privagg.ConfigurationError: the file cannot be read or is too large.
        privagg.DeserializationError: not a canonical directory file.
        privagg.ParameterMismatchError: another directory than the pinned one.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_DIRECTORY_BYTES + 1)
    except OSError as exc:
        raise privagg.ConfigurationError(
            f"the identity directory {str(path)!r} cannot be read"
        ) from exc
    return IdentityDirectory.from_bytes(data, pinned=pinned or None)


def holder_needs_no_secret(spec: SessionSpec) -> bool:
    """True if the result holder holds no secret, so the ServerApp may recover itself.

    Raises:
        privagg.UnsupportedError: the backend declares that its options cannot be
            distributed (a backend without the hook is simply False).
    """
    backend = spec.backend_object()
    if not isinstance(backend, Distributable):
        return False
    return not backend.dealing().holder_has_secret


def _setup_seed(spec: SessionSpec) -> bytes:
    try:
        seed = bytes.fromhex(spec.setup_seed)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise privagg.ConfigurationError(
            f"backend {spec.backend!r} needs a public 32-byte setup_seed in the spec"
        )
    return seed


def _seeded_setup(spec: SessionSpec, layout: Layout) -> Session:
    """The session every process builds from the spec's public ``setup_seed``
    (:func:`privagg.distribution.public_setup`: the seed draws public values only;
    every secret comes from the system CSPRNG, review #11, finding 6)."""
    return _distribution.public_setup(
        spec.backend_object(),
        layout,
        _setup_seed(spec),
        max_clients=spec.max_clients,
        max_weight=spec.max_weight,
    )


def deal(
    spec: SessionSpec,
    layout: Layout,
    party_ids: Sequence[str],
    out_dir: str | Path,
) -> dict[str, Path]:
    """Generate and write every role's material (the operator's one-time step).

    Args:
        spec: the session spec.
        layout: the update layout.
        party_ids: the client parties.
        out_dir: folder for the files (``aggregator.key``, ``holder.key``,
            ``client-<party>.key``), each written with mode 0600.

    Returns:
        Role key ("aggregator", "holder" or a party id) -> file path; empty for
        backends that need no dealer (nothing to distribute).

    Raises:
        privagg.UnsupportedError: the backend cannot be distributed.
    """
    dealt = _distribution.deal(
        spec.backend_object(),
        layout,
        party_ids,
        max_clients=spec.max_clients,
        max_weight=spec.max_weight,
    )
    if dealt is None:
        return {}
    out = Path(out_dir)
    paths = {
        Role.AGGREGATOR.value: privagg.write_secret_file(
            out / "aggregator.key", dealt.aggregator
        ),
        Role.HOLDER.value: privagg.write_secret_file(out / "holder.key", dealt.holder),
    }
    for pid, blob in dealt.clients.items():
        paths[pid] = privagg.write_secret_file(out / f"client-{pid}.key", blob)
    return paths


def key_holders(spec: SessionSpec) -> dict[str, Role]:
    """Party id -> role of every party that makes its own key (``OWN_KEYS``
    backends; {} otherwise).

    Raises:
        privagg.UnsupportedError: the backend cannot be distributed.
    """
    return _distribution.key_holders(spec.backend_object())


def make_own_key(
    spec: SessionSpec, party_id: str, out_dir: str | Path
) -> tuple[Path, Path]:
    """Make this party's own key, on its own machine (``OWN_KEYS`` backends).

    Args:
        spec: the session spec (backend and options).
        party_id: this key holder's party id (one of :func:`key_holders`).
        out_dir: folder for ``own-<party>.key`` (the secret: stays on this machine,
            mode 0600) and ``own-<party>.pub`` (the public half: send it to the
            operator).

    Returns:
        ``(secret file, public file)``.

    Raises:
        privagg.UnsupportedError: the backend's parties do not make their own keys.
        privagg.ConfigurationError: ``party_id`` makes no key in this backend.
    """
    holders = key_holders(spec)
    if party_id not in holders:
        raise privagg.ConfigurationError(
            f"{party_id!r} makes no key of its own for backend {spec.backend!r} "
            f"(key holders: {sorted(holders)})"
        )
    key = _distribution.own_key(spec.backend_object(), holders[party_id], party_id)
    out = Path(out_dir)
    secret = privagg.write_secret_file(out / f"own-{party_id}.key", key.secret)
    public = privagg.write_secret_file(out / f"own-{party_id}.pub", key.public)
    return secret, public


def write_directory(
    spec: SessionSpec, public_files: Sequence[str | Path], out_path: str | Path
) -> Path:
    """The operator's step for ``OWN_KEYS`` backends: the public directory from every
    key holder's public file (no secret is read or written).

    Args:
        spec: the session spec.
        public_files: every key holder's ``own-<party>.pub``.
        out_path: the directory file to write (mode 0600; it is public: copy it to
            the ServerApp's machine and every SuperNode).

    Returns:
        ``out_path``.

    Raises:
        privagg.ConfigurationError: a key holder missing or repeated.
        privagg.DeserializationError: a file that is not a public key.
    """
    blobs = [privagg.read_secret_file(f) for f in public_files]
    directory = _distribution.make_directory(spec.backend_object(), blobs)
    return privagg.write_secret_file(out_path, directory)


def directory_fingerprint(path: str | Path) -> str:
    """Hex of the fingerprint every process pins for the ``OWN_KEYS`` directory file
    at ``path`` (what the operator publishes out of band after
    :func:`write_directory`; ``privagg directory FILE`` prints it too, and checks
    that the file is a directory).

    The file's bytes are fingerprinted as they are: the fingerprint of another file
    (e.g. a key file) is a pin under which every node refuses the real directory.
    """
    data = privagg.read_secret_file(path)
    return _distribution.directory_fingerprint(data).hex()


def load_session(
    spec: SessionSpec,
    layout: Layout,
    role: Role,
    *,
    party_id: str | None = None,
    material: str | Path | None = None,
    identity_directory: str | Path | None = None,
    directory_fingerprint: str | None = None,
    identity_key: str | Path | None = None,
    identity_protection: Protection | None = None,
    own_key: str | Path | None = None,
    noise: privagg.NoiseShare | None = None,
) -> Session:
    """Build this process's session for one role.

    Args:
        spec: the session spec.
        layout: the update layout.
        role: which role this process plays.
        party_id: the client's party id (``Role.CLIENT``).
        material: path of this role's material file (read only for backends that
            need a dealer), or of the public directory (``OWN_KEYS`` backends).
        identity_directory: path of the public-key directory (active SecAgg+ only).
        directory_fingerprint: hex of the directory's pinned fingerprint, received
            out of band. Active SecAgg+: required for a client (the directory is
            only as good as the pin), checked when given for the other roles.
            ``OWN_KEYS`` backends (additive): required for every role, pinning the
            public key directory given as ``material``
            (:func:`directory_fingerprint`).
        identity_key: path of the client's own identity key file (0600; client of
            active SecAgg+ only).
        identity_protection: how that file is protected
            (``privagg.PasswordProtection`` for ``keygen --password-env``);
            ``NoProtection`` by default.
        own_key: path of this key holder's own key file (``OWN_KEYS`` backends:
            servers and the holder; see :func:`make_own_key`).
        noise: the clients' distributed-DP noise share, or None
            (:func:`privagg.distribution.session_for_role`): every role of the
            session must be given the same one; only a client adds it.

    Returns:
        A session; use only the method of ``role`` (``aggregator``, ``client`` or
        ``holder``).

    Raises:
        privagg.UnsupportedError: a backend without the distribution hook.
        privagg.ConfigurationError: a dealt backend and no material file; active
            SecAgg+ without the directory, or a client without its pin or key file;
            an ``OWN_KEYS`` backend without the pin.
        privagg.ParameterMismatchError: a directory other than the pinned one, or one
            that lists another key for this client.
    """
    backend = spec.backend_object()
    mode = _distribution.dealing(backend)  # refuses before any file is read
    blob: bytes | None = None
    seed: bytes | None = None
    directory: IdentityDirectory | None = None
    identity: privagg.SecretBytes | None = None
    if mode is Dealing.PUBLIC_SEED:
        seed = _setup_seed(spec)
    elif mode is Dealing.DIRECTORY:
        if not identity_directory or not str(identity_directory):
            raise privagg.ConfigurationError(
                f"backend {spec.backend!r} (active) needs the public-key directory "
                f"for role {role.value!r}"
            )
        if role is Role.CLIENT:
            if not directory_fingerprint:
                raise privagg.ConfigurationError(
                    "a client must pin the identity directory's fingerprint (node "
                    "config 'privagg-directory-fingerprint'): an unpinned "
                    "directory could hold the server's keys"
                )
            if not identity_key or not str(identity_key):
                raise privagg.ConfigurationError(
                    "a client of active SecAgg+ needs its own identity key file "
                    "(node config 'privagg-identity-key')"
                )
        directory = load_directory(identity_directory, pinned=directory_fingerprint)
        if role is Role.CLIENT and identity_key:
            identity = load_identity_key(
                privagg.read_secret_file(identity_key), protection=identity_protection
            )
    elif mode in (Dealing.DEALER, Dealing.OWN_KEYS):
        if material is None or not str(material):
            raise privagg.ConfigurationError(
                f"backend {spec.backend!r} needs a material file for role {role.value!r}"
            )
        if mode is Dealing.OWN_KEYS and not directory_fingerprint:
            raise privagg.ConfigurationError(
                f"backend {spec.backend!r}: every role must pin the key directory's "
                "fingerprint (node config 'privagg-directory-fingerprint', run config "
                "'directory-fingerprint'): an unpinned directory could hold another "
                "party's keys"
            )
        blob = privagg.read_secret_file(material)
    secret = None
    if own_key is not None and str(own_key) and mode is Dealing.OWN_KEYS:
        secret = privagg.read_secret_file(own_key)
    return _distribution.session_for_role(
        backend,
        layout,
        role,
        party_id=party_id,
        material=blob,
        setup_seed=seed,
        directory=directory,
        identity=identity,
        secret=secret,
        pinned=directory_fingerprint if mode is Dealing.OWN_KEYS else None,
        max_clients=spec.max_clients,
        max_weight=spec.max_weight,
        noise=noise,
    )
