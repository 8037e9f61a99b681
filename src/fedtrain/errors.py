"""The fedtrain exception hierarchy.

Every failure raised by fedtrain itself derives from :class:`FedtrainError`. Errors
caused by one client carry ``client_id`` and name it in the message. Errors raised
by privagg (``privagg.PrivaggError`` and subclasses) pass through unwrapped.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ConfigError",
    "DataError",
    "EmptyClientDataError",
    "FedtrainError",
    "LabelMismatchError",
    "LayoutMismatchError",
    "PrivacyRecordError",
    "RankMismatchError",
    "UnknownModelError",
]


class FedtrainError(Exception):
    """Root of every error raised by fedtrain."""


class ConfigError(FedtrainError, ValueError):
    """A configuration value is invalid."""


class DataError(FedtrainError, ValueError):
    """A dataset could not be loaded or is malformed."""


class UnknownModelError(FedtrainError, ValueError):
    """A model name or path could not be resolved or loaded."""


class ClientError(FedtrainError):
    """A failure attributable to one client.

    Attributes:
        client_id: the client at fault.
    """

    def __init__(self, client_id: str, message: str) -> None:
        super().__init__(f"client {client_id!r}: {message}")
        self.client_id = client_id


class EmptyClientDataError(ClientError, ValueError):
    """A client has no training examples."""


class LabelMismatchError(ClientError, ValueError):
    """A client's label set is not the federation's label set."""


class RankMismatchError(ClientError, ValueError):
    """A client's LoRA rank does not match what the aggregation mode requires."""


class LayoutMismatchError(ClientError, ValueError):
    """A client's update has the wrong names, shapes or dtypes."""


class PrivacyRecordError(FedtrainError):
    """The privacy ledgers do not match the run they should account for.

    Raised when a checkpoint names more recorded releases than the ledgers hold (a
    ledger was deleted, replaced or truncated): resuming would under-report epsilon.
    """
