"""Key material for a deployment: which process holds what, and how it gets there.

In one process a privagg session is a trusted dealer that makes every role. Across
machines each process must build *only its own role* from its own material:

==========  ============================  =============================================
process     role                          material it reads
==========  ============================  =============================================
ServerApp   aggregator                    public parameters only (aggregator file)
SuperNode   client ``party-id``           its own client file (``privagg-material``)
SuperNode   result holder (``holder``)    the holder file (secret key, CKKS/Paillier)
==========  ============================  =============================================

This module is the only place that looks at a backend's *name*:

* ``"plain"`` has no keys: every process builds the same public session from the layout
  (its ``params_id`` is a fingerprint of the layout), so nothing is distributed.
* ``"secagg"`` with ``active=False`` (SecAgg+ against an honest-but-curious server) has no
  long-term secrets: ``setup`` draws only a *public* 32-byte session nonce, and every
  per-round secret is made by the client itself during the round. Every process runs
  ``setup`` with the same public ``setup_seed`` (chosen by the ServerApp, sent in the
  :class:`SessionSpec`) as its *public* stream (``rng=``), so all agree on
  ``params_id``; any secret the session could make (identity keys) comes from
  ``secret_rng=SystemRng()``, passed explicitly, never from the public seed. The active
  variant needs each client's Ed25519 identity key and a public-key directory
  distributed; privagg's ``SecAggBackend.deal``/``load_role`` can make them, but this
  module does not wire them into a deployment yet: refused.
* ``"paillier"``: its public API already separates the keys (``keygen``,
  ``session(layout, public_key, secret_key=None)``, key export/import), wrapped here as
  the hook: clients and aggregator get the public key, the holder the secret key too.
* Any other backend is distributed through the optional :class:`DistributableBackend`
  hook (``deal`` once, ``load_role`` in each process). A backend without the hook raises
  :class:`privagg.UnsupportedError` here: a deployment never falls back to handing one
  process everybody's secrets. ``"ckks"`` takes this generic path
  (``CkksBackend.deal`` / ``load_role``): clients and the aggregator get the public
  context (parameters + public key), the holder the secret context (exported with an
  explicit ``NoProtection``: the file's 0600 mode protects it). Its ``load_role``
  refuses secret material for the aggregator and client roles, so the ServerApp never
  loads the secret key even if pointed at the holder's file.

Whatever the backend, a result holder with a secret key (CKKS, Paillier, any backend
with the hook) never runs in the ServerApp: :func:`holder_needs_no_secret` is True only
for keyless and public-seeded backends, and the ServerApp refuses ``holder="server"``
otherwise.

:func:`deal` is the "dealer" step: run by the operator (or a test), it writes one file per
role with mode 0600. Material files are opaque bytes produced by the backend; no pickle.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import privagg
from privagg import Layout, Session, SystemRng, UnsupportedError, UnsupportedReason
from privagg.hazmat import DeterministicRng

__all__ = [
    "DealtMaterial",
    "DistributableBackend",
    "Role",
    "SessionSpec",
    "deal",
    "holder_needs_no_secret",
    "load_session",
    "needs_setup_seed",
]

_KEYLESS = frozenset({"plain"})
_PUBLIC_SEEDED = frozenset({"secagg"})

OptionValue = bool | int | float | str


class Role(enum.StrEnum):
    """The roles a process can hold."""

    AGGREGATOR = "aggregator"
    CLIENT = "client"
    HOLDER = "holder"


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
        except (ValueError, KeyError, TypeError) as exc:
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


@dataclass(frozen=True, repr=False)
class DealtMaterial:
    """What a dealer produces: one opaque blob per role.

    It holds secrets (the holder's secret key, clients' keys), so it cannot be pickled
    or copied (``__reduce__`` raises ``TypeError``: write each blob to its own 0600 file
    with :func:`deal` instead), and its repr shows only a fingerprint of the public
    aggregator material, blob sizes and the number of clients.

    Attributes:
        aggregator: public parameters for the aggregator.
        holder: the result holder's material (its secret key, where there is one).
        clients: party id -> that client's material.
    """

    aggregator: bytes
    holder: bytes
    clients: Mapping[str, bytes]

    def __repr__(self) -> str:
        fp = hashlib.blake2b(self.aggregator, digest_size=8).hexdigest()
        return (
            f"DealtMaterial(aggregator_fp={fp}, holder=<{len(self.holder)} bytes>, "
            f"clients={len(self.clients)})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError("DealtMaterial holds secret key material and cannot be pickled")


@runtime_checkable
class DistributableBackend(Protocol):
    """The hook a keyed backend implements to run across machines.

    ``deal`` generates keys once; ``load_role`` rebuilds, in another process, a session
    that can make only ``role``'s objects. The aggregator's material must not contain
    client secrets nor the holder's secret key. Implemented by
    ``privagg.backends.secagg.SecAggBackend`` and ``privagg.backends.ckks.CkksBackend``;
    Paillier gets it from :class:`_PaillierAdapter`.
    """

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float,
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
        max_weight: float,
    ) -> Session:
        """A session for one role, from that role's material only."""
        ...


class _PaillierAdapter:
    """The hook for privagg's Paillier backend, from its public key-handling API.

    Clients and the aggregator get the public key; the holder gets the public key and
    the secret key (exported with ``NoProtection``: the file's 0600 mode protects it).
    """

    def __init__(self, backend: Any) -> None:
        self._be = backend

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float,
    ) -> DealtMaterial:
        self._be.session_check(layout, max_clients=max_clients, max_weight=max_weight)
        public, secret = self._be.keygen()
        pub = bytes(public.to_bytes())
        sk = bytes(secret.to_bytes(protection=privagg.NoProtection()))
        holder = len(pub).to_bytes(4, "big") + pub + sk
        return DealtMaterial(pub, holder, dict.fromkeys(party_ids, pub))

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float,
    ) -> Session:
        from privagg.backends.paillier import PaillierPublicKey, load_secret_key

        secret = None
        if role == Role.HOLDER:
            n = int.from_bytes(material[:4], "big")
            material, secret = material[4 : 4 + n], load_secret_key(material[4 + n :])
        session: Session = self._be.session(
            layout,
            PaillierPublicKey.from_bytes(material),
            secret,
            max_clients=max_clients,
            max_weight=max_weight,
        )
        return session


def needs_setup_seed(spec: SessionSpec) -> bool:
    """True if every process must run ``setup`` from the same public seed."""
    return spec.backend in _PUBLIC_SEEDED


def holder_needs_no_secret(spec: SessionSpec) -> bool:
    """True if the result holder holds no secret, so the ServerApp may recover itself."""
    return spec.backend in _KEYLESS or _public_seeded_ok(spec)


def _public_seeded_ok(spec: SessionSpec) -> bool:
    if spec.backend not in _PUBLIC_SEEDED:
        return False
    if spec.options.get("active", True) is not False:
        raise UnsupportedError(
            "active SecAgg+ needs each client's Ed25519 identity key and a public-key "
            "directory distributed, which privagg has no hook for yet; use "
            'backend-options {"active": false} (honest-but-curious server)',
            UnsupportedReason.OPERATION,
        )
    return True


def _seeded_setup(spec: SessionSpec, layout: Layout) -> Session:
    try:
        seed = bytes.fromhex(spec.setup_seed)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise privagg.ConfigurationError(
            f"backend {spec.backend!r} needs a public 32-byte setup_seed in the spec"
        )
    # The seed is public on purpose: ``rng`` draws only the public session nonce from
    # it. Every secret the session may make (SecAgg+ identity keys) comes from
    # ``secret_rng``, the system CSPRNG, passed explicitly so that no default and no
    # public seed can ever reach one (review #11, finding 6). Each process therefore gets
    # the same params_id and its own, unreproducible secrets.
    from privagg.backends.secagg import SecAggBackend

    backend = spec.backend_object()
    if not isinstance(backend, SecAggBackend):  # _PUBLIC_SEEDED names secagg only
        raise UnsupportedError(
            f"backend {spec.backend!r} has no public-seeded setup",
            UnsupportedReason.OPERATION,
        )
    return backend.setup(
        layout,
        max_clients=spec.max_clients,
        max_weight=spec.max_weight,
        rng=DeterministicRng(seed),
        secret_rng=SystemRng(),
    )


def _distributable(spec: SessionSpec) -> DistributableBackend:
    backend = spec.backend_object()
    if spec.backend == "paillier" and not isinstance(backend, DistributableBackend):
        return _PaillierAdapter(backend)
    if not isinstance(backend, DistributableBackend):
        raise UnsupportedError(
            f"backend {spec.backend!r} has no deal/load_role hook: its key material "
            "cannot be distributed to separate processes yet",
            UnsupportedReason.OPERATION,
        )
    return backend


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
        keyless backends (nothing to distribute).

    Raises:
        privagg.UnsupportedError: the backend cannot be distributed.
    """
    if spec.backend in _KEYLESS or _public_seeded_ok(spec):
        return {}
    dealt = _distributable(spec).deal(
        layout, party_ids, max_clients=spec.max_clients, max_weight=spec.max_weight
    )
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


def load_session(
    spec: SessionSpec,
    layout: Layout,
    role: Role,
    *,
    party_id: str | None = None,
    material: str | Path | None = None,
) -> Session:
    """Build this process's session for one role.

    Args:
        spec: the session spec.
        layout: the update layout.
        role: which role this process plays.
        party_id: the client's party id (``Role.CLIENT``).
        material: path of this role's material file (ignored for keyless backends).

    Returns:
        A session; use only the method of ``role`` (``aggregator``, ``client`` or
        ``holder``).

    Raises:
        privagg.UnsupportedError: a keyed backend without the distribution hook.
        privagg.ConfigurationError: a keyed backend and no material file.
    """
    if spec.backend in _KEYLESS:
        return spec.backend_object().setup(
            layout, max_clients=spec.max_clients, max_weight=spec.max_weight
        )
    if _public_seeded_ok(spec):
        return _seeded_setup(spec, layout)
    backend = _distributable(spec)
    if material is None or not str(material):
        raise privagg.ConfigurationError(
            f"backend {spec.backend!r} needs a material file for role {role.value!r}"
        )
    blob = privagg.read_secret_file(material)
    return backend.load_role(
        layout,
        role.value,
        party_id,
        blob,
        max_clients=spec.max_clients,
        max_weight=spec.max_weight,
    )
