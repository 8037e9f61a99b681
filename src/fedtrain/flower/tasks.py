"""The one table of Flower tasks: where a client's update comes from, and what the
ServerApp does with the sum.

A task has a client side (a :data:`~fedtrain.flower.interfaces.TaskFn`: "round ``r``
starts, here is what the ServerApp sent" -> the client's float arrays and weight; the
ClientApp calls it once per round, at the round's first request, and keeps the
flattened vector in its node-local state for later stages) and a server side (a
:class:`~fedtrain.flower.interfaces.ServerTask`). Both are chosen by the run config's
``task`` from the single table below:

* ``"synthetic"``: deterministic pseudo-random arrays from the party id and round, in the
  layout the ServerApp sent, and a server side that records each recovered sum. For
  deployment tests: the expected sum is computable anywhere with
  :func:`synthetic_update`.
* ``"lora"``: local LoRA training with fedtrain (:mod:`fedtrain.flower.lora_task`),
  imported only when asked for (it needs torch).
* ``"fedtrain"``: a whole :class:`fedtrain.config.RunConfig` run (every task, LoRA mode,
  server optimizer and weighting, evaluation and export;
  :mod:`fedtrain.flower.run_task`), imported only when asked for.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Context, RecordDict

from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.interfaces import (
    LocalUpdate,
    ServerTask,
    ServerTaskFactory,
    SessionNoiseFn,
    TaskFn,
)
from fedtrain.flower.policy import DPFloors
from privagg import Backend, Layout, NoiseShare

__all__ = [
    "DEFAULT_SHAPES",
    "LocalUpdate",
    "SyntheticServerTask",
    "Task",
    "TaskFn",
    "check_dp_floors_of",
    "get_server_task",
    "get_session_noise",
    "get_task",
    "parse_shapes",
    "synthetic_sum",
    "synthetic_update",
]

DEFAULT_SHAPES = "weight:float32:3x4,bias:float64:4"
"""The ``synthetic`` task's layout when the run config names no ``shapes``."""


MAX_SHAPES_VALUES = 1 << 31
"""The most values a ``shapes`` run-config entry may describe (2**31)."""


def parse_shapes(text: str) -> Layout:
    """Parse ``"name:dtype:3x4,other:float64:5"`` into a Layout (``""`` dims: 0-d).

    Args:
        text: comma-separated ``name:dtype:dims`` entries.

    Returns:
        The layout.

    Raises:
        FlowerConfigError: malformed text (a ``privagg.ConfigurationError``).
    """
    if len(text) > 10_000:
        raise FlowerConfigError("shapes text longer than 10,000 characters")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    try:
        for item in text.split(","):
            name, dtype, dims = item.strip().split(":")
            shape = tuple(int(d) for d in dims.split("x")) if dims else ()
            if any(d < 0 for d in shape) or len(shape) > 32:
                raise ValueError("negative dimension or too many dimensions")
            total += math.prod(shape)
            if total > MAX_SHAPES_VALUES:
                raise ValueError(f"more than {MAX_SHAPES_VALUES} values in all")
            # a broadcast view: the layout needs only the shape and dtype, so nothing
            # of the claimed size is allocated
            arrays[name] = np.broadcast_to(np.zeros((), dtype=np.dtype(dtype)), shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise FlowerConfigError(f"malformed shapes {text[:200]!r}: {exc}") from exc
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


class SyntheticServerTask:
    """The ``synthetic`` task's server side: records each round's recovered sum.

    Args:
        shapes: the layout, as :func:`parse_shapes` reads it.
    """

    def __init__(self, shapes: str = DEFAULT_SHAPES) -> None:
        self._layout = parse_shapes(shapes)

    def layout(self) -> Layout:
        """The layout of the synthetic updates."""
        return self._layout

    def broadcast(self, round_id: int) -> RecordDict | None:
        """Nothing is broadcast."""
        return None

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, npt.NDArray[np.floating]],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        """The recovered sum, as JSON-able lists."""
        return {"aggregate": {k: np.asarray(v).tolist() for k, v in aggregate.items()}}

    def summary(self) -> dict[str, Any]:
        """Nothing to summarise."""
        return {}


def _synthetic_server(run_config: Mapping[str, Any]) -> ServerTask:
    return SyntheticServerTask(str(run_config.get("shapes", DEFAULT_SHAPES)))


def _lora(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    from fedtrain.flower import lora_task

    return lora_task.client_update(party_id, round_id, layout, content, context)


def _lora_server(run_config: Mapping[str, Any]) -> ServerTask:
    from fedtrain.flower import lora_task

    return lora_task.ServerLoraTask(run_config)


def _run(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    from fedtrain.flower import run_task

    return run_task.client_update(party_id, round_id, layout, content, context)


def _run_server(run_config: Mapping[str, Any]) -> ServerTask:
    from fedtrain.flower import run_task

    return run_task.ServerRunTask(run_config)


def _run_noise(
    run_config: Mapping[str, Any],
    backend: Backend,
    layout: Layout,
    node_config: Mapping[str, Any],
) -> NoiseShare | None:
    from fedtrain.flower import run_task

    return run_task.session_noise(run_config, backend, layout, node_config)


@dataclass(frozen=True)
class Task:
    """One row of the task table.

    Attributes:
        client: the client side (called by the ClientApp at a round's first request).
        server: builds the server side from the run config (called by the ServerApp).
        noise: the distributed-DP noise share every node loads its privagg role with
            (client-level DP), or None: the task's sessions carry no noise.
        dp: the task can run with differential privacy and checks the node's DP
            floors itself (:class:`fedtrain.flower.policy.DPFloors`); False: the task
            has no DP, and a node whose floors ask for DP refuses it
            (:func:`check_dp_floors_of`).
    """

    client: TaskFn
    server: ServerTaskFactory
    noise: SessionNoiseFn | None = None
    dp: bool = False


_TASKS: dict[str, Task] = {
    "synthetic": Task(_synthetic, _synthetic_server),
    "lora": Task(_lora, _lora_server),
    "fedtrain": Task(_run, _run_server, _run_noise, dp=True),
}


def _row(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise FlowerConfigError(
            f"unknown task {name!r}; known: {sorted(_TASKS)}"
        ) from None


def get_task(name: str) -> TaskFn:
    """The client side of the task called ``name``.

    Raises:
        FlowerConfigError: unknown task (a ``privagg.ConfigurationError``).
    """
    return _row(name).client


def get_session_noise(name: str) -> SessionNoiseFn | None:
    """How a node of the task called ``name`` gets its session's noise share (None:
    the task's sessions carry no noise).

    Raises:
        FlowerConfigError: unknown task (a ``privagg.ConfigurationError``).
    """
    return _row(name).noise


def check_dp_floors_of(name: str, node_config: Mapping[str, Any]) -> None:
    """Refuse the task called ``name`` if it has no differential privacy and the node
    config's DP floors ask for it (a task with DP checks them itself, with the run's
    parameters).

    Raises:
        PolicyError: a task without DP on a node whose ``fedtrain-require-dp``,
            ``fedtrain-min-noise-multiplier`` (> 0) or ``fedtrain-max-epsilon`` is set;
            or a malformed floor.
        FlowerConfigError: unknown task (a ``privagg.ConfigurationError``).
    """
    if not _row(name).dp:
        DPFloors.from_node_config(node_config).check_no_dp(f"task {name!r}")


def get_server_task(name: str, run_config: Mapping[str, Any]) -> ServerTask:
    """The server side of the task called ``name``, built from the run config.

    Raises:
        FlowerConfigError: unknown task (a ``privagg.ConfigurationError``).
    """
    return _row(name).server(run_config)
