"""Additive sharing across processes: each key holder makes its own key (``OWN_KEYS``).

The secrets of this backend are the X25519 keys of servers ``1 .. n-1`` and of the
result holder. No party needs anybody else's secret, so there is no dealer: each key
holder runs ``own_key`` on its own machine and publishes the public blob; an operator
assembles the public directory from the public blobs; every process loads its role
from the directory and, for a key holder, its own secret blob. Three sealed formats
(privagg envelopes, scheme ``ADDITIVE``; no pickle):

* public key  (kind 16): ``text(role) text(party) blob(x25519 pk)``;
* own key     (kind 17): ``text(role) text(party) blob(pk) blob(sk)`` (0600 file only);
* directory   (kind 18): ``u32 n, n x (text(party) text(role) blob(pk))``, sorted.

The directory is public but not self-authenticating: every process pins its SHA-256
fingerprint (:func:`privagg.distribution.directory_fingerprint`, published by the
operator out of band), and the session's params_id binds every key it lists.

The header's params_id is a fingerprint of the public content, so a blob altered in
transit fails the envelope digest, and a public blob cannot be confused with a secret
one (different kinds).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from privagg.backends import _wire
from privagg.backends._masking import valid_x25519
from privagg.backends._primitives import x25519_public
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
    ParameterMismatchError,
)
from privagg.keys import fingerprint

PUBLIC_KEY_KIND = 16
OWN_KEY_KIND = 17
DIRECTORY_KIND = 18


def _key_id(role: str, party: str, pk: bytes) -> bytes:
    return fingerprint(b"additive/own-key", role.encode(), party.encode(), pk)


_P25519 = 2**255 - 19


def _usable_key(pk: bytes) -> bool:
    """A canonical X25519 public key (u < 2^255 - 19, top bit clear, as every key
    :func:`x25519_public` makes) of large order. X25519 ignores the top bit and reduces
    u mod p, so a non-canonical encoding names the same key under other bytes (and so
    another params_id): refused in key material."""
    return int.from_bytes(pk, "little") < _P25519 and valid_x25519(pk)


def _open(blob: bytes, kind: int) -> tuple[bytes, PayloadReader]:
    h, payload = open_envelope(blob)
    if h.scheme != Scheme.ADDITIVE or h.kind != kind or h.round_id != 0:
        raise DeserializationError()
    return h.params_id, PayloadReader(payload)


def seal_own_key(role: str, party: str, sk: bytes) -> tuple[bytes, bytes]:
    """``(public blob, secret blob)`` of one key holder's X25519 key ``sk``."""
    pk = x25519_public(sk)
    kid = _key_id(role, party, pk)
    public = seal(
        Header(Scheme.ADDITIVE, PUBLIC_KEY_KIND, kid, 0),
        PayloadWriter().text(role).text(party).blob(pk).getvalue(),
    )
    secret = seal(
        Header(Scheme.ADDITIVE, OWN_KEY_KIND, kid, 0),
        PayloadWriter().text(role).text(party).blob(pk).blob(sk).getvalue(),
    )
    return public, secret


def read_public_key(blob: bytes) -> tuple[str, str, bytes]:
    """``(role, party, pk)`` of a public blob.

    Raises:
        DeserializationError: not an additive public key, a non-canonical or low-order
            key, or a header that does not fingerprint the content.
    """
    try:
        kid, r = _open(blob, PUBLIC_KEY_KIND)
        role, party, pk = r.text(), r.text(), _wire.fixed(r, 32)
        r.done()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if not _usable_key(pk) or not hmac.compare_digest(kid, _key_id(role, party, pk)):
        raise DeserializationError()
    return role, party, pk


def read_own_key(blob: bytes) -> tuple[str, str, bytes]:
    """``(role, party, sk)`` of a secret blob, checked against its own public key.

    Raises:
        DeserializationError: not an additive own-key blob (e.g. a public blob or the
            directory), or a secret that does not match the public key it names.
    """
    try:
        kid, r = _open(blob, OWN_KEY_KIND)
        role, party, pk, sk = r.text(), r.text(), _wire.fixed(r, 32), _wire.fixed(r, 32)
        r.done()
        ok = hmac.compare_digest(x25519_public(sk), pk) and hmac.compare_digest(
            kid, _key_id(role, party, pk)
        )
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if not ok:
        raise DeserializationError()
    return role, party, sk


def seal_directory(public_keys: Sequence[bytes], expected: Mapping[str, str]) -> bytes:
    """The directory of every key holder's public key.

    Args:
        public_keys: the public blobs.
        expected: party id -> role of every key holder.

    Raises:
        ConfigurationError: a key holder missing, given twice, unknown, or in the wrong
            role.
        DeserializationError: a malformed public blob.
    """
    entries: dict[str, tuple[str, bytes]] = {}
    for blob in public_keys:
        role, party, pk = read_public_key(blob)
        if party in entries:
            raise ConfigurationError(f"two public keys for party {party!r}")
        if expected.get(party) != role:
            raise ConfigurationError(
                f"party {party!r} ({role}) is not a key holder of this backend"
            )
        entries[party] = (role, pk)
    missing = sorted(set(expected) - set(entries))
    if missing:
        raise ConfigurationError(f"no public key for {missing}")
    return directory_blob(entries)


def directory_blob(entries: Mapping[str, tuple[str, bytes]]) -> bytes:
    """The canonical directory file of ``party -> (role, pk)`` (deterministic: one set
    of keys has one file, hence one fingerprint)."""
    w = PayloadWriter().u32(len(entries))
    parts = []
    for party in sorted(entries):
        role, pk = entries[party]
        w.text(party).text(role).blob(pk)
        parts += [party.encode(), role.encode(), pk]
    did = fingerprint(b"additive/directory", *parts)
    sealed: bytes = seal(Header(Scheme.ADDITIVE, DIRECTORY_KIND, did, 0), w.getvalue())
    return sealed


def check_directory_file(blob: bytes) -> None:
    """Refuse anything but a directory envelope (e.g. a key file given as the
    directory), without reading its entries: checked before the file's fingerprint is
    compared with the pin, so that a key file is never reported by a digest of it.

    Raises:
        DeserializationError: not an intact additive directory envelope.
    """
    _open(blob, DIRECTORY_KIND)


def parse_directory(blob: bytes) -> dict[str, tuple[str, bytes]]:
    """Party id -> ``(role, X25519 public key)`` of a canonical directory file, whatever
    key holders it lists (the CLI shows any directory; :func:`read_directory` checks
    them against a backend's).

    Raises:
        DeserializationError: malformed or non-canonical, or not a directory.
    """
    try:
        did, r = _open(blob, DIRECTORY_KIND)
        out: dict[str, tuple[str, bytes]] = {}
        parts: list[bytes] = []
        last: str | None = None
        for _ in range(_wire.count(r)):
            party, role, pk = r.text(), r.text(), _wire.fixed(r, 32)
            if last is not None and party <= last:  # sorted, no repeats
                raise DeserializationError()
            last = party
            out[party] = (role, pk)
            parts += [party.encode(), role.encode(), pk]
        r.done()
    except DeserializationError:
        raise
    except Exception:
        raise DeserializationError() from None
    if any(not _usable_key(pk) for _, pk in out.values()) or not hmac.compare_digest(
        did, fingerprint(b"additive/directory", *parts)
    ):
        raise DeserializationError()
    return out


def read_directory(blob: bytes, expected: Mapping[str, str]) -> dict[str, bytes]:
    """Party id -> X25519 public key, for exactly the ``expected`` key holders.

    Only the canonical encoding :func:`seal_directory` writes is accepted (entries in
    party order, the header fingerprinting them, canonical keys), so one set of keys
    has one directory file.

    Raises:
        DeserializationError: malformed or non-canonical, or not a directory (e.g. a
            secret blob).
        ParameterMismatchError: a directory for another set of key holders (another
            ``n_servers``).
    """
    out = parse_directory(blob)
    if {p: role for p, (role, _) in out.items()} != dict(expected):
        raise ParameterMismatchError(
            "the directory lists other key holders than this backend's servers and "
            "holder (another n_servers?)"
        )
    return {p: pk for p, (_, pk) in out.items()}
