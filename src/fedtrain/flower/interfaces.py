"""The two sides of a Flower task, as types (no task is defined here).

A task has a client side, a :data:`TaskFn` that turns "round ``r`` starts, here is what
the ServerApp sent" into the client's :class:`LocalUpdate`, and a server side, a
:class:`ServerTask` that gives the layout, what to broadcast, and applies each round's
recovered sum. :mod:`fedtrain.flower.tasks` holds the one table of tasks; the tasks'
modules (e.g. :mod:`fedtrain.flower.lora_task`) import these types from here, so no
task module imports the table (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from flwr.app import Context, RecordDict

from privagg import Backend, Layout, NoiseShare

__all__ = [
    "LocalUpdate",
    "NoisyTask",
    "SamplingTask",
    "ServerTask",
    "ServerTaskFactory",
    "SessionNoiseFn",
    "TaskFn",
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


class ServerTask(Protocol):
    """What the ServerApp does around each secure sum (the task's server side)."""

    def layout(self) -> Layout:
        """Layout of every client's update."""
        ...

    def broadcast(self, round_id: int) -> RecordDict | None:
        """Records sent to every client with the round's first request (or None)."""
        ...

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, npt.NDArray[np.floating]],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        """Use the recovered sum; return JSON-able facts about the round."""
        ...

    def summary(self) -> dict[str, Any]:
        """JSON-able facts about the whole run."""
        ...


@runtime_checkable
class SamplingTask(Protocol):
    """A server task that picks each round's clients (optional for a ServerTask)."""

    def participants(self, round_id: int, clients: Sequence[str]) -> list[str]:
        """The clients of round ``round_id`` (a subset of ``clients``), called once
        per round before its :meth:`ServerTask.broadcast`; the round's aggregation
        (e.g. SecAgg+'s key agreement and masks) is set up for them only."""
        ...


ServerTaskFactory = Callable[[Mapping[str, Any]], ServerTask]
"""The Flower run config -> the task's server side."""

SessionNoiseFn = Callable[
    [Mapping[str, Any], Backend, Layout, Mapping[str, Any]], NoiseShare | None
]
"""(run config, the session's backend, layout, node config) -> the clients'
distributed-DP noise share every role of the privagg session is loaded with (None: no
noise). A node computes it from its own run config, never from what the ServerApp
sends, and refuses a run below its node config's DP floors
(:class:`fedtrain.flower.policy.DPFloors`) before computing it."""


@runtime_checkable
class NoisyTask(Protocol):
    """A server task whose privagg session carries a distributed-DP noise share
    (optional for a ServerTask; client-level DP)."""

    def session_noise(self, backend: Backend, layout: Layout) -> NoiseShare | None:
        """The noise share of the session on ``backend`` (the same one the task's
        :data:`SessionNoiseFn` gives every node), or None."""
        ...
