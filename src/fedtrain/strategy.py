"""The server step: turn a recovered secure sum into the new global adapter.

Shared by both runtimes: the in-process :class:`fedtrain.server.Federation` and the
Flower ServerApp's ``lora`` task (:mod:`fedtrain.flower.lora_task`). One round's server
step is :func:`server_step`: the recovered weighted sum becomes the average delta on
the global state (:func:`fedtrain.lora.aggregate_delta`, mode-specific: ``flora``
rebuilds the exact products, ``alternating`` keeps the frozen factor frozen), then a
:class:`Strategy` applies it (Reddi et al. 2021, "Adaptive Federated Optimization"):

* :class:`FedAvg`: ``x += lr * d``;
* :class:`FedAdam`: ``m = b1 m + (1-b1) d``, ``v = b2 v + (1-b2) d^2``,
  ``x += lr m / (sqrt(v) + tau)``;
* :class:`FedYogi`: as FedAdam with ``v = v - (1-b2) d^2 sign(v - d^2)``.

Everything here is post-processing of the released sum: nothing in this module touches
a client's data, so it never changes what the privacy ledger records.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from fedtrain.config import LoraMode
from fedtrain.errors import ConfigError
from fedtrain.lora import aggregate_delta

__all__ = [
    "FedAdam",
    "FedAvg",
    "FedYogi",
    "ServerOptimizer",
    "Strategy",
    "make_strategy",
    "server_step",
]

State = dict[str, npt.NDArray[np.float32]]


class Strategy(Protocol):
    """How the server applies an average client delta to the global state."""

    name: ClassVar[str]

    def step(
        self,
        state: Mapping[str, npt.NDArray[np.float32]],
        delta: Mapping[str, npt.NDArray[np.floating]],
    ) -> State:
        """Return the new global state after applying ``delta`` (``state`` is kept)."""
        ...

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """The strategy's state for a checkpoint (empty when it has none)."""
        ...

    def load(self, arrays: Mapping[str, npt.NDArray[np.floating]]) -> None:
        """Restore the state written by :meth:`arrays` (other keys are ignored)."""
        ...


class FedAvg:
    """``x += lr * delta`` (stateless).

    Args:
        lr: the server learning rate (1.0: plain FedAvg of the client deltas).
    """

    name: ClassVar[str] = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(
        self,
        state: Mapping[str, npt.NDArray[np.float32]],
        delta: Mapping[str, npt.NDArray[np.floating]],
    ) -> State:
        """Return ``state + lr * delta`` (float32)."""
        out = dict(state)
        for k, d in delta.items():
            d32 = np.asarray(d, np.float32)
            x = out.get(k, np.zeros_like(d32))
            out[k] = (x + self.lr * d32).astype(np.float32)
        return out

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """FedAvg keeps no state."""
        return {}

    def load(self, arrays: Mapping[str, npt.NDArray[np.floating]]) -> None:
        """FedAvg keeps no state: nothing to restore."""


class FedAdam:
    """FedAdam: Adam moments over rounds on the average delta.

    Args:
        lr: server learning rate.
        betas: ``(b1, b2)``.
        tau: adaptivity epsilon; ``v`` starts at ``tau**2``.

    Attributes:
        m: first moments, by state name.
        v: second moments, by state name.
    """

    name: ClassVar[str] = "fedadam"

    def __init__(
        self, lr: float, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3
    ) -> None:
        self.lr, self.betas, self.tau = lr, betas, tau
        self.m: dict[str, npt.NDArray[np.float32]] = {}
        self.v: dict[str, npt.NDArray[np.float32]] = {}

    def _second_moment(
        self, v: npt.NDArray[np.floating], d2: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.floating]:
        b2 = self.betas[1]
        out: npt.NDArray[np.floating] = b2 * v + (1 - b2) * d2
        return out

    def step(
        self,
        state: Mapping[str, npt.NDArray[np.float32]],
        delta: Mapping[str, npt.NDArray[np.floating]],
    ) -> State:
        """Update the moments with ``delta`` and return the new state."""
        out = dict(state)
        b1 = self.betas[0]
        for k, d in delta.items():
            d32 = np.asarray(d, np.float32)
            x = out.get(k, np.zeros_like(d32))
            m = self.m.get(k, np.zeros_like(d32))
            v = self.v.get(k, np.full_like(d32, self.tau**2))
            m_new = b1 * m + (1 - b1) * d32
            v_new = self._second_moment(v, d32 * d32)
            self.m[k] = m_new.astype(np.float32)
            self.v[k] = v_new.astype(np.float32)
            step = self.lr * m_new / (np.sqrt(v_new) + self.tau)
            out[k] = (x + step).astype(np.float32)
        return out

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """Moments for the checkpoint (``opt.m.<name>``, ``opt.v.<name>``)."""
        return {
            **{f"opt.m.{k}": v for k, v in self.m.items()},
            **{f"opt.v.{k}": v for k, v in self.v.items()},
        }

    def load(self, arrays: Mapping[str, npt.NDArray[np.floating]]) -> None:
        """Restore moments from :meth:`arrays` output."""
        self.m = {
            k[6:]: np.asarray(v, np.float32)
            for k, v in arrays.items()
            if k.startswith("opt.m.")
        }
        self.v = {
            k[6:]: np.asarray(v, np.float32)
            for k, v in arrays.items()
            if k.startswith("opt.v.")
        }


class FedYogi(FedAdam):
    """FedYogi: FedAdam with Yogi's additive second-moment update."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(
        self, v: npt.NDArray[np.floating], d2: npt.NDArray[np.floating]
    ) -> npt.NDArray[np.floating]:
        b2 = self.betas[1]
        out: npt.NDArray[np.floating] = v - (1 - b2) * d2 * np.sign(v - d2)
        return out


def make_strategy(
    kind: str, lr: float, betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3
) -> FedAvg | FedAdam:
    """The strategy called ``kind`` (``fedavg``, ``fedadam``, ``fedyogi``).

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind == FedAvg.name:
        return FedAvg(lr)
    if kind == FedAdam.name:
        return FedAdam(lr, betas, tau)
    if kind == FedYogi.name:
        return FedYogi(lr, betas, tau)
    raise ConfigError(
        f"server_opt must be one of fedavg, fedadam, fedyogi, got {kind!r}"
    )


class ServerOptimizer:
    """FedAvg / FedAdam / FedYogi chosen by name (the pre-0.2 front door).

    Kept so that existing code keeps working; new code builds a :class:`Strategy`
    directly or with :func:`make_strategy`. ``m`` and ``v`` are the moments of the
    adaptive strategies (empty for FedAvg).
    """

    def __init__(
        self, kind: str, lr: float, betas: tuple[float, float], tau: float
    ) -> None:
        self.kind, self.lr, self.betas, self.tau = kind, lr, betas, tau
        self.strategy = make_strategy(kind, lr, betas, tau)

    @property
    def m(self) -> dict[str, npt.NDArray[np.float32]]:
        """First moments (adaptive strategies)."""
        return self.strategy.m if isinstance(self.strategy, FedAdam) else {}

    @property
    def v(self) -> dict[str, npt.NDArray[np.float32]]:
        """Second moments (adaptive strategies)."""
        return self.strategy.v if isinstance(self.strategy, FedAdam) else {}

    def step(
        self,
        state: Mapping[str, npt.NDArray[np.float32]],
        delta: Mapping[str, npt.NDArray[np.floating]],
    ) -> State:
        """Return the new global state after applying ``delta``."""
        return self.strategy.step(state, delta)

    def arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        """Moments for the checkpoint."""
        return self.strategy.arrays()

    def load(self, arrays: Mapping[str, npt.NDArray[np.floating]]) -> None:
        """Restore moments from :meth:`arrays` output."""
        self.strategy.load(arrays)


def server_step(
    strategy: Strategy,
    global_state: Mapping[str, npt.NDArray[np.float32]],
    summed: Mapping[str, npt.NDArray[np.floating]],
    total_weight: float,
    *,
    mode: LoraMode | str,
    phase: str | None = None,
    slot_weights: Mapping[int, float] | None = None,
    r_max: int | None = None,
    scaling: float = 1.0,
) -> State:
    """One round's server step: average the recovered sum, apply it.

    Args:
        strategy: FedAvg, FedAdam or FedYogi.
        global_state: the global state before the round.
        summed: the recovered ``sum_k w_k message_k``.
        total_weight: the contributors' total weight.
        mode: the LoRA aggregation mode.
        phase: ``alternating``: the factor trained this round (``"A"``/``"B"``).
        slot_weights: ``flora``: slot -> weight of each contributor.
        r_max: ``flora``: the slot width.
        scaling: ``flora``: the LoRA scaling.

    Returns:
        The new global state.

    Raises:
        ConfigError: no contributor weight.
    """
    delta = aggregate_delta(
        mode,
        summed,
        total_weight,
        slot_weights=slot_weights,
        r_max=r_max,
        scaling=scaling,
        phase=phase,
    )
    return strategy.step(global_state, delta)
