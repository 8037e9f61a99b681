"""The privagg exception hierarchy.

Every failure raised by privagg derives from :class:`PrivaggError`, so a caller can
catch all of them at once. Where a failure is also a classic Python category (a bad
value, an overflow) the exception inherits from that built-in too, so ``except
ValueError`` keeps working.

Messages name the parameter and the offending *public* value. They never contain
plaintext values, keys, seeds or shares.
"""

from __future__ import annotations

import enum

__all__ = [
    "BudgetExceededError",
    "ConfigurationError",
    "DeserializationError",
    "EncodingOverflowError",
    "FormatVersionError",
    "InsufficientParticipantsError",
    "MissingKeyError",
    "ParameterMismatchError",
    "PrivaggError",
    "ProtocolError",
    "UnsupportedError",
    "UnsupportedEventError",
    "UnsupportedReason",
]


class PrivaggError(Exception):
    """Root of every error raised by privagg."""


class ConfigurationError(PrivaggError, ValueError):
    """A parameter or input is invalid (bad poly degree, clip <= 0, NaN in an update)."""


class UnsupportedReason(enum.Enum):
    """Why an operation is not supported."""

    BACKEND_UNAVAILABLE = "backend_unavailable"
    OPERATION = "operation"
    EVENT = "event"
    PARAMETERS = "parameters"


class UnsupportedError(PrivaggError):
    """The operation is valid in general but not supported here.

    Attributes:
        reason: the machine-readable reason.
    """

    def __init__(
        self, message: str, reason: UnsupportedReason = UnsupportedReason.OPERATION
    ):
        super().__init__(message)
        self.reason = reason


class UnsupportedEventError(UnsupportedError):
    """An accountant cannot handle a DP event; ``event`` names the offending sub-event."""

    def __init__(self, message: str, event: object | None = None):
        super().__init__(message, UnsupportedReason.EVENT)
        self.event = event


class MissingKeyError(PrivaggError):
    """The operation needs a key this party does not hold (secret, Galois, relin)."""


class ParameterMismatchError(PrivaggError, ValueError):
    """Inputs were produced under different parameters, keys or layouts."""


class EncodingOverflowError(PrivaggError, OverflowError):
    """A value lies outside the encodable range, or a sum could wrap around."""


class DeserializationError(PrivaggError):
    """Bytes could not be decoded.

    Deliberately opaque: the message does not say which check failed, so a peer
    probing the decoder learns nothing beyond "rejected".
    """

    def __init__(self, message: str = "malformed or tampered message") -> None:
        super().__init__(message)


class FormatVersionError(DeserializationError):
    """Bytes of another privagg format version (an envelope made by an older or newer
    privagg, e.g. format 1 with its BLAKE2b digest).

    The version is public (it is in the clear in every envelope header), so unlike its
    parent this error says which versions met.

    Attributes:
        found: the format version of the bytes.
        supported: the one this privagg reads.
    """

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"privagg envelope format {found}, this privagg reads format {supported} "
            "(re-create the message or file with one privagg version on both sides)"
        )
        self.found = found
        self.supported = supported


class ProtocolError(PrivaggError):
    """A protocol rule was broken: wrong stage, duplicate contributor, replayed message."""


class InsufficientParticipantsError(ProtocolError):
    """Too few parties survived for the protocol to complete (survivors < threshold)."""


class BudgetExceededError(PrivaggError):
    """Releasing would spend more privacy budget than allowed."""
