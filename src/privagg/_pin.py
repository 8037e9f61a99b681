"""Pinning a public-key directory by its fingerprint (both self-keyed modes).

A directory of parties' own public keys is only as trustworthy as the channel that
delivered it: whoever hands a process its directory file could substitute keys. So
every process is told the directory's SHA-256 fingerprint out of band (the *pin*) and
refuses any other directory. One helper for the identity directory (active SecAgg+,
``Dealing.DIRECTORY``) and the own-keys directory (additive, ``Dealing.OWN_KEYS``).
"""

from __future__ import annotations

import hmac
import re

from privagg.errors import ConfigurationError, ParameterMismatchError

_HEX32 = re.compile(r"[0-9a-f]{64}")


def parse_pin(pinned: object) -> bytes:
    """A pinned fingerprint as 32 bytes, from its 64-hex-character text or bytes.

    Raises:
        ConfigurationError: no pin (None or empty), or a malformed one.
    """
    if pinned is None or pinned == "" or pinned == b"":
        raise ConfigurationError(
            "the directory's fingerprint must be pinned (received out of band): an "
            "unpinned directory could hold anybody's keys"
        )
    if isinstance(pinned, str):
        text = pinned.strip().lower()
        if not _HEX32.fullmatch(text):
            raise ConfigurationError(
                "a pinned directory fingerprint is 64 hex characters"
            )
        return bytes.fromhex(text)
    if not isinstance(pinned, bytes) or len(pinned) != 32:
        raise ConfigurationError("a pinned directory fingerprint is 32 bytes")
    return pinned


def check_pin(actual: bytes, pinned: object, what: str) -> None:
    """Refuse ``what`` unless its fingerprint ``actual`` is the pinned one (constant
    time).

    Raises:
        ConfigurationError: no pin, or a malformed one.
        ParameterMismatchError: another fingerprint than the pinned one.
    """
    want = parse_pin(pinned)
    if not hmac.compare_digest(actual, want):
        raise ParameterMismatchError(
            f"the {what}'s fingerprint is not the pinned one "
            f"(got {actual.hex()[:16]}...): refusing its keys"
        )
