"""Errors of the Flower runtime's own decisions (client policy, release register).

Each is a :class:`fedtrain.errors.FedtrainError` (fedtrain made the decision) and also
the privagg error a caller of the ClientApp already handles
(``handle_envelope`` documents :class:`privagg.PrivaggError`), so existing
``except privagg.ConfigurationError`` / ``except privagg.ProtocolError`` code keeps
working. Messages name public values only (option names and values, round ids, file
paths), never key material, seeds or plaintext.
"""

from __future__ import annotations

from fedtrain.errors import FedtrainError
from privagg import ConfigurationError, ProtocolError

__all__ = [
    "AlreadyReleasedError",
    "PolicyError",
    "ReleaseRegisterError",
]


class PolicyError(FedtrainError, ConfigurationError):
    """The ServerApp asked for a session weaker than this node's local policy allows.

    Raised by the ClientApp before it computes, encrypts or sends anything for the
    round.
    """


class AlreadyReleasedError(FedtrainError, ProtocolError):
    """The result holder already released this round (one release per round)."""


class ReleaseRegisterError(FedtrainError, ConfigurationError):
    """The holder's release register is unreadable or malformed: nothing is released."""
