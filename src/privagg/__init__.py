"""privagg: secure aggregation and differential privacy for federated learning.

Recipes (the front door)::

    import privagg
    total = privagg.secure_sum(updates, backend="ckks")        # dict name -> array

    backend = privagg.get_backend("paillier", bound=1.0)
    session = backend.setup(privagg.Layout.from_arrays(updates[0]), max_clients=10)
    result = privagg.run_round(session, {"a": upd_a, "b": upd_b})

Everything that can fail raises a subclass of :class:`privagg.PrivaggError`.
Low-level pieces (raw backends, deterministic RNGs for tests) live in
:mod:`privagg.hazmat`.
"""

from typing import TYPE_CHECKING

from privagg._rng import Rng, SystemRng
from privagg.distribution import (
    Dealing,
    DealtMaterial,
    Distributable,
    OwnKey,
    Role,
    SelfKeyed,
    session_for_role,
)
from privagg.encoding import EncodedVector, FixedPointEncoder
from privagg.envelope import FORMAT_VERSION, Scheme, from_bytes
from privagg.errors import (
    BudgetExceededError,
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    FormatVersionError,
    InsufficientParticipantsError,
    MissingKeyError,
    ParameterMismatchError,
    PrivaggError,
    ProtocolError,
    UnsupportedError,
    UnsupportedEventError,
    UnsupportedReason,
)
from privagg.keys import (
    NoProtection,
    PasswordProtection,
    SecretBytes,
    SecretKey,
    read_secret_file,
    write_secret_file,
)
from privagg.layout import Layout, TensorSpec
from privagg.protocols import (
    AggregatorRole,
    Backend,
    BoundOption,
    ClientRole,
    FixedPointBackend,
    HolderRole,
    NoiseShare,
    Recovered,
    Session,
    fixed_point_scale,
    protects_inputs,
    value_bound_option,
)
from privagg.registry import available_backends, get_backend, register_backend
from privagg.simulation import RoundResult, run_round, secure_sum

if TYPE_CHECKING:
    from privagg.backends.secagg import SetupRequest

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``privagg.dp`` is imported on first use: it pulls in scipy and dp-accounting.
    if name in ("dp", "hazmat"):
        import importlib

        return importlib.import_module(f"privagg.{name}")
    if name == "SetupRequest":
        # SecAgg+'s stage-0 message, for a client's policy check before it joins a
        # round; imported on first use (it loads the SecAgg+ backend).
        from privagg.backends.secagg import SetupRequest

        return SetupRequest
    raise AttributeError(f"module 'privagg' has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "AggregatorRole",
    "Backend",
    "BudgetExceededError",
    "ClientRole",
    "ConfigurationError",
    "Dealing",
    "DealtMaterial",
    "DeserializationError",
    "Distributable",
    "EncodedVector",
    "EncodingOverflowError",
    "BoundOption",
    "FixedPointBackend",
    "FixedPointEncoder",
    "FormatVersionError",
    "HolderRole",
    "InsufficientParticipantsError",
    "Layout",
    "MissingKeyError",
    "NoProtection",
    "NoiseShare",
    "OwnKey",
    "ParameterMismatchError",
    "PasswordProtection",
    "PrivaggError",
    "ProtocolError",
    "Recovered",
    "Role",
    "Rng",
    "RoundResult",
    "Scheme",
    "SecretBytes",
    "SecretKey",
    "SelfKeyed",
    "Session",
    "SetupRequest",
    "SystemRng",
    "TensorSpec",
    "UnsupportedError",
    "UnsupportedEventError",
    "UnsupportedReason",
    "__version__",
    "available_backends",
    "fixed_point_scale",
    "protects_inputs",
    "value_bound_option",
    "from_bytes",
    "get_backend",
    "read_secret_file",
    "register_backend",
    "run_round",
    "secure_sum",
    "session_for_role",
    "write_secret_file",
]
