"""Errors of the Flower runtime's own decisions (run and node config, protocol order,
client policy, release register).

Each is a :class:`fedtrain.errors.FedtrainError` (fedtrain made the decision) and also
the privagg error a caller of the ClientApp already handles
(``handle_envelope`` documents :class:`privagg.PrivaggError`), so existing
``except privagg.ConfigurationError`` / ``except privagg.ProtocolError`` code keeps
working. Messages name public values only (option names and values, round ids, file
paths), never key material, seeds or plaintext.
"""

from __future__ import annotations

from fedtrain.errors import FedtrainError
from privagg import ConfigurationError, InsufficientParticipantsError, ProtocolError

__all__ = [
    "AlreadyReleasedError",
    "FlowerConfigError",
    "FlowerProtocolError",
    "NotEnoughNodesError",
    "PolicyError",
    "ReleaseRegisterError",
]


class FlowerConfigError(FedtrainError, ConfigurationError):
    """A run config, node config or task setting the Flower runtime cannot use."""


class FlowerProtocolError(FedtrainError, ProtocolError):
    """A message out of order, addressed to another party, or otherwise malformed."""


class NotEnoughNodesError(FedtrainError, InsufficientParticipantsError):
    """Fewer SuperNodes connected or announced a party id than the run needs."""


class PolicyError(FlowerConfigError):
    """The ServerApp asked for a session weaker than this node's local policy allows.

    Raised by the ClientApp before it computes, encrypts or sends anything for the
    round.
    """


class AlreadyReleasedError(FlowerProtocolError):
    """The result holder already released this round (one release per round)."""


class ReleaseRegisterError(FlowerConfigError):
    """The holder's release register is unreadable or malformed: nothing is released."""
