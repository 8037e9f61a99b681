"""fedtrain on Flower's deployment engine: privagg rounds between a ServerApp and ClientApps.

* :mod:`fedtrain.flower.transport`: routes privagg role bytes over Flower Messages.
* :mod:`fedtrain.flower.server_app` / :mod:`fedtrain.flower.client_app`: the apps
  (``fedtrain.flower.server_app:app``, ``fedtrain.flower.client_app:app``).
* :mod:`fedtrain.flower.material`: which process holds which key material.
* :mod:`fedtrain.flower.policy`: the client's local minimum policy (node config only)
  against the untrusted ServerApp; :mod:`fedtrain.flower.release`: the result holder's
  one-release-per-round register; :mod:`fedtrain.flower.errors`: their typed errors.
* :mod:`fedtrain.flower.tasks`: the one table of tasks (each a client side and a server
  side; the types are in :mod:`fedtrain.flower.interfaces`): synthetic test data, or
  local LoRA training (:mod:`fedtrain.flower.lora_task`, which runs fedtrain's own
  client and server steps, :mod:`fedtrain.client` and :mod:`fedtrain.strategy`).
* :mod:`fedtrain.flower.launch`: a local SuperLink + SuperNodes deployment (tests,
  ``python -m fedtrain.flower.launch`` demo).
* :mod:`fedtrain.flower.simulation`: the same apps on Flower's simulation runtime
  (many virtual clients on one machine; ``python -m fedtrain.flower.simulation``).

See ``docs/flower.md``.
"""

from fedtrain.flower.errors import AlreadyReleasedError, PolicyError
from fedtrain.flower.material import Role, SessionSpec, deal, load_session
from fedtrain.flower.policy import ClientPolicy
from fedtrain.flower.release import ReleaseRegister
from fedtrain.flower.transport import (
    DriveResult,
    Envelope,
    Exchange,
    GridExchange,
    drive_aggregator,
    pack,
    unpack,
)

__all__ = [
    "AlreadyReleasedError",
    "ClientPolicy",
    "DriveResult",
    "Envelope",
    "Exchange",
    "GridExchange",
    "PolicyError",
    "ReleaseRegister",
    "Role",
    "SessionSpec",
    "deal",
    "drive_aggregator",
    "load_session",
    "pack",
    "unpack",
]
