"""Client identities for active SecAgg+ across machines: own keys, one public directory.

Active SecAgg+ signs every client's key advertisement and survivor set with the
client's long-term Ed25519 *identity key*, and every party checks those signatures
against a *public-key directory* (party id -> Ed25519 public key). In a deployment:

1. each client makes its own identity key on its own machine (``privagg keygen
   --backend secagg --party-id P``: ``secagg-identity-P.key``, 0600, never leaves the
   machine, and ``secagg-identity-P.pub``, a public JSON record);
2. the operator collects the ``.pub`` records and builds the directory
   (:meth:`IdentityDirectory.build`, or ``privagg directory``), a canonical JSON file
   with a fresh random nonce; its :attr:`~IdentityDirectory.fingerprint` is published
   to every client *out of band* (read out on a call, signed mail, the consortium's
   wiki): each client pins it in its own configuration;
3. each client loads the directory with the pinned fingerprint
   (:meth:`IdentityDirectory.from_bytes` with ``pinned=``) and builds its role from its
   own identity key and the directory (:func:`privagg.distribution.session_for_role`
   with ``directory=`` and ``identity=``); the aggregator and the result holder build
   theirs from the directory alone. No process ever holds another party's secret.

The directory's fingerprint is bound into the session's ``params_id``, so processes
holding different directories cannot exchange a single message, and a new directory
(a key rotated, a party added, or only a new nonce) is a new session.

The pin is what makes the directory trustworthy: whoever hands it over (the
operator, or an untrusted server) cannot substitute a key without changing the
fingerprint every client checks. A client also refuses a directory without its own
entry, or whose entry is not its own key.

The directory file is a parser of untrusted bytes: anything but the canonical form
:meth:`IdentityDirectory.to_bytes` writes is refused with
:class:`~privagg.errors.DeserializationError` (so one directory has one byte string
and one fingerprint), at most :data:`MAX_DIRECTORY_BYTES` bytes and
:data:`MAX_PARTIES` parties. Every key, in a directory or a public record, must be a
canonically encoded Ed25519 point on the curve and not of small order
(``cryptography``'s verifier accepts such keys, and under the identity point one fixed
signature verifies on every message).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from privagg._pin import check_pin, parse_pin
from privagg._rng import Rng, SystemRng
from privagg.backends._primitives import ed25519_public
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    ParameterMismatchError,
)
from privagg.keys import NoProtection, Protection, SecretBytes, fingerprint

__all__ = [
    "DIRECTORY_FORMAT",
    "IDENTITY_PUBLIC_FORMAT",
    "IDENTITY_SCHEME",
    "MAX_DIRECTORY_BYTES",
    "MAX_PARTIES",
    "IdentityDirectory",
    "check_public_key",
    "identity_fingerprint",
    "load_identity_key",
    "parse_public_record",
]

#: ``format`` field of a directory file.
DIRECTORY_FORMAT = "privagg/secagg-directory/v1"
#: ``format`` field of one client's public record (``privagg keygen --backend secagg``).
IDENTITY_PUBLIC_FORMAT = "privagg/secagg-identity-public/v1"
#: scheme of an exported identity secret key (:class:`privagg.SecretKey`).
IDENTITY_SCHEME = "secagg-identity"
#: largest directory file accepted, in bytes.
MAX_DIRECTORY_BYTES = 16 << 20
#: most parties a directory may list.
MAX_PARTIES = 100_000

_IDENTITY_FP_DOMAIN = b"secagg/identity-public-key"
_DIRECTORY_FP_DOMAIN = b"secagg/identity-directory/v1"
_PARTY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{64}")
_MAX_RECORD_BYTES = 4096


def identity_fingerprint(public_key: bytes) -> bytes:
    """The public fingerprint of one identity public key (as ``keygen`` prints it)."""
    return fingerprint(_IDENTITY_FP_DOMAIN, public_key)


def _check_party(party_id: object) -> str:
    if not isinstance(party_id, str) or not _PARTY_ID.fullmatch(party_id):
        raise ConfigurationError(
            "a party id is 1-64 characters of A-Z a-z 0-9 . _ - "
            "(not starting with . _ -)"
        )
    return party_id


# Curve25519's field prime and Edwards d; the y coordinates of the 8 points of small
# order (identity, order 2, two of order 4 with y = 0, four of order 8 with y = +-c).
_P = 2**255 - 19
_D = (-121665 * pow(121666, -1, _P)) % _P
_C8 = int.from_bytes(
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    "little",
)
_SMALL_ORDER_Y = frozenset({0, 1, _P - 1, _C8, _P - _C8})


def check_public_key(key: object) -> bytes:
    """``key`` if it is an acceptable Ed25519 identity public key: 32 bytes, canonical
    encoding, on the curve, not of small order (the checks a directory and a public
    record apply; for a key received from elsewhere, e.g. a pinned result holder's).
    Review r2: ``cryptography``'s Ed25519 accepts all three, and under the identity
    point the signature ``R = identity, S = 0`` verifies on every message.

    Public-value checks only (no secret is touched): ``y < p``, ``y`` not that of one
    of the 8 small-order points (so ``x = 0``, whose sign bit could be set, is gone
    too), ``(y^2 - 1) / (d y^2 + 1)`` a square mod ``p`` (Euler's criterion).

    Raises:
        ConfigurationError: any other value.
    """
    if not isinstance(key, bytes) or len(key) != 32:
        raise ConfigurationError("an Ed25519 public key is 32 bytes")
    enc = int.from_bytes(key, "little")
    y = enc & ((1 << 255) - 1)
    if y >= _P:
        raise ConfigurationError("an Ed25519 public key not in canonical encoding")
    if y in _SMALL_ORDER_Y:
        raise ConfigurationError("an Ed25519 public key of small order")
    y2 = y * y % _P
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P  # nonzero: y = +-1 refused above
    if pow(x2, (_P - 1) // 2, _P) != 1:
        raise ConfigurationError("an Ed25519 public key not on the curve")
    return key


def _strict_json(data: bytes, limit: int) -> Any:
    """JSON from bytes, refusing duplicate object keys, non-UTF-8, NaN and depth."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise DeserializationError("duplicate JSON key")
            out[k] = v
        return out

    def no_constant(name: str) -> Any:
        raise DeserializationError("non-finite number")

    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > limit:
        raise DeserializationError("too large or not bytes")
    try:
        return json.loads(
            bytes(data).decode("utf-8"),
            object_pairs_hook=pairs,
            parse_constant=no_constant,
        )
    except DeserializationError:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise DeserializationError("not JSON") from None


@dataclass(frozen=True, repr=False)
class IdentityDirectory:
    """A public-key directory: party id -> Ed25519 public key, and a nonce.

    Build one with :meth:`build` (the operator) and read one with :meth:`from_bytes`
    (everyone else, with the pinned fingerprint). Public values only.

    Attributes:
        nonce: 32 random bytes chosen when the directory was built.
        keys: party id -> 32-byte Ed25519 public key (unique ids and unique keys).
    """

    nonce: bytes
    keys: Mapping[str, bytes]

    def __post_init__(self) -> None:
        if not isinstance(self.nonce, bytes) or len(self.nonce) != 32:
            raise ConfigurationError("the directory nonce is 32 bytes")
        if not self.keys:
            raise ConfigurationError("an identity directory lists at least one party")
        if len(self.keys) > MAX_PARTIES:
            raise ConfigurationError(f"at most {MAX_PARTIES} parties")
        seen: set[bytes] = set()
        for pid, key in self.keys.items():
            _check_party(pid)
            check_public_key(key)
            if key in seen:
                raise ConfigurationError(
                    f"two parties share one identity key (party {pid!r})"
                )
            seen.add(key)
        object.__setattr__(self, "keys", dict(sorted(self.keys.items())))

    # -- making one ----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        records: Iterable[bytes | str | Mapping[str, Any]],
        *,
        rng: Rng | None = None,
    ) -> IdentityDirectory:
        """The directory of the clients' public records (``.pub`` files of ``keygen``).

        Args:
            records: each client's public record (file bytes, text or parsed JSON).
            rng: draws the directory's nonce (the system CSPRNG by default).

        Raises:
            ConfigurationError: a malformed record, a party id twice, or one key for
                two parties.
        """
        keys: dict[str, bytes] = {}
        for rec in records:
            pid, key = parse_public_record(rec)
            if pid in keys:
                raise ConfigurationError(f"party {pid!r} appears twice")
            keys[pid] = key
        return cls((rng or SystemRng()).random_bytes(32), keys)

    # -- the file --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The canonical file (UTF-8 JSON, sorted, one party per line)."""
        lines = [
            "{",
            f'  "format": "{DIRECTORY_FORMAT}",',
            f'  "nonce": "{self.nonce.hex()}",',
            '  "parties": [',
        ]
        items = list(self.keys.items())
        for i, (pid, key) in enumerate(items):
            comma = "," if i + 1 < len(items) else ""
            lines.append(
                f'    {{"ed25519_public_key": "{key.hex()}", "party_id": "{pid}"}}{comma}'
            )
        lines += ["  ]", "}", ""]
        return "\n".join(lines).encode("utf-8")

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 fingerprint of the canonical file: what clients pin (32 bytes)."""
        return fingerprint(_DIRECTORY_FP_DOMAIN, self.to_bytes())

    @classmethod
    def from_bytes(
        cls, data: bytes, *, pinned: str | bytes | None = None
    ) -> IdentityDirectory:
        """Parse a directory file and, if given, check it against the pinned fingerprint.

        Args:
            data: the file's bytes (untrusted).
            pinned: the fingerprint this process was told out of band (32 bytes or its
                hex). A client must pass it.

        Raises:
            DeserializationError: anything but a canonical directory file.
            ParameterMismatchError: a valid directory with another fingerprint.
            ConfigurationError: a malformed ``pinned``.
        """
        if pinned is not None:
            parse_pin(pinned)  # a malformed pin fails before the file is parsed
        d = _strict_json(data, MAX_DIRECTORY_BYTES)
        try:
            if not isinstance(d, dict) or set(d) != {"format", "nonce", "parties"}:
                raise DeserializationError()
            if d["format"] != DIRECTORY_FORMAT or not isinstance(d["parties"], list):
                raise DeserializationError()
            if len(d["parties"]) > MAX_PARTIES:
                raise DeserializationError()
            keys: dict[str, bytes] = {}
            for entry in d["parties"]:
                if not isinstance(entry, dict) or set(entry) != {
                    "party_id",
                    "ed25519_public_key",
                }:
                    raise DeserializationError()
                pid = _check_party(entry["party_id"])
                if pid in keys:
                    raise DeserializationError("a party id twice")
                keys[pid] = _hex32(entry["ed25519_public_key"])
            directory = cls(_hex32(d["nonce"]), keys)
        except DeserializationError:
            raise
        except ConfigurationError:  # an invalid field value, a key twice
            raise DeserializationError("malformed identity directory") from None
        if not hmac.compare_digest(directory.to_bytes(), bytes(data)):
            raise DeserializationError("not in canonical form")
        if pinned is not None:
            check_pin(directory.fingerprint, pinned, "identity directory")
        return directory

    # -- use -------------------------------------------------------------------------------
    @property
    def parties(self) -> tuple[str, ...]:
        """The party ids, sorted."""
        return tuple(self.keys)

    def public_key(self, party_id: str) -> bytes:
        """The identity public key of ``party_id``.

        Raises:
            ConfigurationError: the directory does not list it.
        """
        key = self.keys.get(party_id)
        if key is None:
            raise ConfigurationError(f"party {party_id!r} is not in the directory")
        return key

    def check_identity(self, party_id: str, identity: SecretBytes) -> None:
        """Check that ``identity`` is the key the directory lists for ``party_id``.

        Raises:
            ConfigurationError: the directory lacks ``party_id``.
            ParameterMismatchError: the directory lists another key for it (a
                substituted directory, or the wrong key file).
        """
        if not hmac.compare_digest(
            ed25519_public(identity.reveal()), self.public_key(party_id)
        ):
            raise ParameterMismatchError(
                f"the directory's key for party {party_id!r} is not this identity key"
            )

    def __repr__(self) -> str:
        return (
            f"IdentityDirectory(parties={len(self.keys)}, "
            f"fingerprint={self.fingerprint.hex()[:16]}...)"
        )


def _hex32(value: object) -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise DeserializationError()
    return bytes.fromhex(value)


def parse_public_record(record: bytes | str | Mapping[str, Any]) -> tuple[str, bytes]:
    """``(party id, public key)`` from one ``secagg-identity-P.pub`` record.

    The record's ``fingerprint`` field must match its key (a copy error shows here).

    Raises:
        ConfigurationError: a malformed record.
    """
    try:
        if isinstance(record, str):
            record = record.encode("utf-8")
        rec = (
            _strict_json(bytes(record), _MAX_RECORD_BYTES)
            if isinstance(record, bytes | bytearray)
            else record
        )
        if not isinstance(rec, Mapping) or rec.get("format") != IDENTITY_PUBLIC_FORMAT:
            raise DeserializationError()
        pid = _check_party(rec.get("party_id"))
        key = check_public_key(_hex32(rec.get("ed25519_public_key")))
        fp = _hex32(rec.get("fingerprint"))
    except (DeserializationError, ConfigurationError):
        raise ConfigurationError(
            f"not a SecAgg+ identity public record ({IDENTITY_PUBLIC_FORMAT})"
        ) from None
    if not hmac.compare_digest(fp, identity_fingerprint(key)):
        raise ConfigurationError(
            f"party {pid!r}: the record's fingerprint does not match its key"
        )
    return pid, key


def load_identity_key(
    data: bytes, *, protection: Protection | None = None
) -> SecretBytes:
    """A client's identity secret key from its key file (``privagg keygen``'s ``.key``).

    Args:
        data: the file's bytes (read it with :func:`privagg.read_secret_file`).
        protection: :class:`~privagg.PasswordProtection` for a password-protected
            file; ``NoProtection()`` by default.

    Raises:
        DeserializationError: not an identity key file, or a file whose recorded
            public fingerprint does not match the key inside.
    """
    scheme, public_fp, secret = (protection or NoProtection()).unwrap(data)
    if scheme != IDENTITY_SCHEME or len(secret) != 32:
        raise DeserializationError("not a SecAgg+ identity key file")
    if not hmac.compare_digest(public_fp, identity_fingerprint(ed25519_public(secret))):
        raise DeserializationError("the identity key file is inconsistent")
    return SecretBytes(secret, label="secagg identity key")
