"""Where a client's update comes from: a closed table of tasks, chosen by run config.

A task turns "round ``r`` starts, here is what the ServerApp sent" into the client's
float arrays and weight. The ClientApp calls it once per round (at the round's first
request) and keeps the flattened vector in its node-local state for later stages.

* ``"synthetic"``: deterministic pseudo-random arrays from the party id and round, in the
  layout the ServerApp sent. For deployment tests: the expected sum is computable
  anywhere with :func:`synthetic_update`.
* ``"lora"``: local LoRA training with fedtrain (:mod:`fedtrain.flower.lora_task`),
  imported only when asked for (it needs torch).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Context, RecordDict

from privagg import ConfigurationError, Layout

__all__ = [
    "LocalUpdate",
    "TaskFn",
    "get_task",
    "parse_shapes",
    "synthetic_sum",
    "synthetic_update",
]


@dataclass(frozen=True)
class LocalUpdate:
    """A client's update for one round.

    Attributes:
        arrays: tensor name -> float array, in the round's layout.
        weight: the weight the client applies before protection.
    """

    arrays: Mapping[str, npt.NDArray[np.floating]]
    weight: float


TaskFn = Callable[[str, int, Layout, RecordDict, Context], LocalUpdate]
"""(party id, round id, layout, first request's content, context) -> LocalUpdate."""


def parse_shapes(text: str) -> Layout:
    """Parse ``"name:dtype:3x4,other:float64:5"`` into a Layout (``""`` dims: 0-d).

    Args:
        text: comma-separated ``name:dtype:dims`` entries.

    Returns:
        The layout.

    Raises:
        privagg.ConfigurationError: malformed text.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        for item in text.split(","):
            name, dtype, dims = item.strip().split(":")
            shape = tuple(int(d) for d in dims.split("x")) if dims else ()
            arrays[name] = np.zeros(shape, dtype=np.dtype(dtype))
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"malformed shapes {text!r}") from exc
    return Layout.from_arrays(arrays)


def synthetic_update(
    party_id: str, round_id: int, layout: Layout
) -> dict[str, npt.NDArray[np.floating]]:
    """Deterministic test arrays in [-1, 1) for ``party_id`` in ``round_id``.

    Not secret and not random in any cryptographic sense: test data only.

    Args:
        party_id: the client's party id.
        round_id: the round.
        layout: names, shapes and dtypes to produce.

    Returns:
        Tensor name -> array.
    """
    seed = hashlib.sha256(f"synthetic/{party_id}/{round_id}".encode()).digest()
    gen = np.random.default_rng(int.from_bytes(seed[:16], "big"))
    zeros = layout.unflatten(np.zeros(layout.size))
    return {
        name: gen.uniform(-1.0, 1.0, size=z.shape).astype(z.dtype)
        for name, z in zeros.items()
    }


def synthetic_sum(
    layout: Layout, weights: Mapping[str, float], round_id: int
) -> npt.NDArray[np.float64]:
    """The exact weighted sum of the synthetic updates of ``weights``' parties.

    Args:
        layout: the round's layout.
        weights: party id -> weight.
        round_id: the round.

    Returns:
        Sum of ``weight * update`` as a flat float64 vector (layout order).
    """
    total = np.zeros(layout.size, dtype=np.float64)
    for pid, w in weights.items():
        total += w * layout.flatten(synthetic_update(pid, round_id, layout))
    return total


def _synthetic(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    weight = float(context.node_config.get("privagg-weight", 1.0))
    return LocalUpdate(synthetic_update(party_id, round_id, layout), weight)


def _lora(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    from fedtrain.flower import lora_task

    return lora_task.client_update(party_id, round_id, layout, content, context)


_TASKS: dict[str, TaskFn] = {"synthetic": _synthetic, "lora": _lora}


def get_task(name: str) -> TaskFn:
    """The task function called ``name``.

    Raises:
        privagg.ConfigurationError: unknown task.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown task {name!r}; known: {sorted(_TASKS)}"
        ) from None
