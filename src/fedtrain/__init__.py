"""fedtrain: federated LoRA fine-tuning with privagg-protected adapter aggregation.

Only protected adapter updates leave a client. See ``docs/fedtrain.md``.
"""

from fedtrain.config import (
    LoraMode,
    LoraSettings,
    PrivacyConfig,
    PrivacyLevel,
    RoundConfig,
    RunConfig,
)
from fedtrain.errors import (
    ClientError,
    ConfigError,
    DataError,
    EmptyClientDataError,
    FedtrainError,
    LabelMismatchError,
    LayoutMismatchError,
    RankMismatchError,
    UnknownModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ClientError",
    "ConfigError",
    "DataError",
    "EmptyClientDataError",
    "FedtrainError",
    "LabelMismatchError",
    "LayoutMismatchError",
    "LoraMode",
    "LoraSettings",
    "PrivacyConfig",
    "PrivacyLevel",
    "RankMismatchError",
    "RoundConfig",
    "RunConfig",
    "UnknownModelError",
    "__version__",
]
