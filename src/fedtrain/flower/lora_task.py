"""The ``lora`` task: federated LoRA fine-tuning (FedAvg of adapter deltas) over Flower.

Built from fedtrain's training pieces (``models``, ``lora``, ``train``, ``data``):

* ServerApp (:class:`ServerLoraTask`): loads the base model with the LoRA adapter (same
  public seeds as every client), keeps the *global* adapter state (``ffa`` mode: the B
  matrices and the task head), sends it with each round's first request as an
  ``ArrayRecord`` (public: the model is what the federation trains), and applies the
  securely aggregated mean delta with the server step the in-process runtime uses
  (:func:`fedtrain.strategy.server_step` with :class:`fedtrain.strategy.FedAvg`):
  ``global += sum_k delta_k / |contributors|``.
* ClientApp (:func:`client_update`): loads the same model, sets the global state, and
  runs the in-process runtime's client step (:func:`fedtrain.client.local_update`):
  ``lora-steps`` AdamW steps on its own partition, the delta
  (``fedtrain.lora.client_message``) clipped to L2 norm ``lora-clip`` with
  :func:`privagg.dp.clip_l2`, weight 1. The delta is protected by the privagg backend
  before it leaves the ClientApp.

Data: the offline Rotten Tomatoes corpus, split IID into ``num-partitions`` parts with a
public seed; a node takes part ``partition-id`` (node config) and uses its first
``lora-rows`` examples. Run config keys: ``lora-model``, ``lora-rows``, ``lora-steps``,
``lora-rank``, ``lora-lr``, ``lora-batch``, ``lora-max-len``, ``lora-clip``, ``seed``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict

from fedtrain.client import LocalTraining, local_update
from fedtrain.config import LoraMode, LoraSettings
from fedtrain.data import load_rotten_tomatoes, partition_iid
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.interfaces import LocalUpdate
from fedtrain.flower.settings import settings_from_config
from fedtrain.lora import LoraHandle, build_lora, client_message
from fedtrain.models import encode, load_model, load_tokenizer
from fedtrain.strategy import FedAvg, server_step
from privagg import Layout

__all__ = ["GLOBAL_RECORD", "LoraRunSpec", "ServerLoraTask", "client_update"]

GLOBAL_RECORD = "fedtrain.global"
"""Key of the ArrayRecord carrying the global adapter state in a round's first request."""

_MODE = LoraMode.FFA
_DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class LoraRunSpec:
    """The ``lora`` task's settings (public), read from the run config."""

    model: str = "minilm"
    rows: int = 64
    steps: int = 2
    rank: int = 4
    lr: float = 5e-3
    batch: int = 8
    max_len: int = 48
    clip: float = 1.0
    seed: int = 0

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> LoraRunSpec:
        """Read the ``lora-*`` keys and ``seed`` (missing keys take defaults)."""
        return settings_from_config(cls, cfg, prefix="lora-", unprefixed=("seed",))


def _handle(spec: LoraRunSpec, label_names: list[str]) -> LoraHandle:
    base = load_model(spec.model, "seq_cls", label_names=label_names, device=_DEVICE)
    return build_lora(
        base, "seq_cls", LoraSettings(r=spec.rank, mode=_MODE), seed=spec.seed
    )


def _global_names(h: LoraHandle) -> list[str]:
    return sorted(h.b_names + h.head_names)


def _to_record(state: Mapping[str, npt.NDArray[np.floating]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


class ServerLoraTask:
    """Server side of the ``lora`` task (see the module docstring).

    Args:
        run_config: the Flower run config.
    """

    def __init__(self, run_config: Mapping[str, Any]) -> None:
        self.spec = LoraRunSpec.from_run_config(run_config)
        self.label_names = list(load_rotten_tomatoes().label_names)
        self.handle = _handle(self.spec, self.label_names)
        self.global_state = self.handle.get(_global_names(self.handle))
        self.initial = {k: v.copy() for k, v in self.global_state.items()}
        template = client_message(_MODE, self.global_state, self.global_state)
        self._layout = Layout.from_arrays(template)
        self._strategy = FedAvg(1.0)

    def layout(self) -> Layout:
        """The layout of a client's delta."""
        return self._layout

    def broadcast(self, round_id: int) -> RecordDict | None:
        """The global adapter state, sent with the round's first request."""
        return RecordDict({GLOBAL_RECORD: _to_record(self.global_state)})

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, npt.NDArray[np.floating]],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        """FedAvg: add the mean of the contributors' deltas to the global state."""
        n = len(contributors)
        if n == 0:
            raise FlowerConfigError("no contributor to average")
        sq = sum(
            float(np.sum(np.square(np.asarray(t, dtype=np.float64) / n)))
            for t in aggregate.values()
        )
        self.global_state = server_step(
            self._strategy, self.global_state, aggregate, float(n), mode=_MODE
        )
        self.handle.set(self.global_state)
        return {"mean_delta_norm": math.sqrt(sq), "n_params": self._layout.size}

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """The global adapter state (what a ServerApp checkpoint keeps)."""
        return {k: np.asarray(v) for k, v in self.global_state.items()}

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Restore the global adapter from a checkpoint.

        Raises:
            FlowerConfigError: the arrays are not this task's adapter.
        """
        if set(arrays) != set(self.global_state) or any(
            np.shape(arrays[k]) != np.shape(v) for k, v in self.global_state.items()
        ):
            raise FlowerConfigError("the checkpoint's adapter is not this task's")
        self.global_state = {
            k: np.asarray(arrays[k], dtype=v.dtype).copy()
            for k, v in self.global_state.items()
        }
        self.handle.set(self.global_state)

    def summary(self) -> dict[str, Any]:
        """How far the global adapter moved during the run."""
        sq = sum(
            float(np.sum((self.global_state[k].astype(np.float64) - v) ** 2))
            for k, v in self.initial.items()
        )
        return {"global_change_norm": math.sqrt(sq), "task": "lora"}


def client_update(
    party_id: str, round_id: int, layout: Layout, content: RecordDict, context: Context
) -> LocalUpdate:
    """Train locally from the broadcast global state; return the clipped delta.

    Args:
        party_id: this client's party id.
        round_id: the round.
        layout: the round's layout (checked against the delta).
        content: the round's first request (carries the global state).
        context: the node's Flower context (``partition-id``, ``num-partitions``).

    Returns:
        The delta (``ffa``: B matrices and head) and weight 1.

    Raises:
        privagg.ConfigurationError: no global state in the request, or bad node config.
    """
    spec = LoraRunSpec.from_run_config(context.run_config)
    try:
        record = content.array_records[GLOBAL_RECORD]
    except KeyError:
        raise FlowerConfigError(
            "the round's first request carries no global state"
        ) from None
    global_state = {k: arr.numpy() for k, arr in record.items()}
    part = int(context.node_config.get("partition-id", -1))
    n_parts = int(context.node_config.get("num-partitions", 0))
    if not 0 <= part < n_parts:
        raise FlowerConfigError("node config needs partition-id in [0, num-partitions)")
    data = load_rotten_tomatoes()
    idx = partition_iid(len(data), n_parts, spec.seed)[part][: spec.rows]
    tokenizer = load_tokenizer(spec.model)
    enc = encode(data.subset(idx), tokenizer, spec.max_len)
    handle = _handle(spec, list(data.label_names))
    handle.set(global_state)
    update = local_update(
        handle,
        enc,
        global_state,
        mode=_MODE,
        round_=round_id,
        steps=spec.steps,
        training=LocalTraining(batch_size=spec.batch, lr=spec.lr, device=_DEVICE),
        rng=np.random.default_rng(int.from_bytes(os.urandom(8), "little")),
        clip=spec.clip,
    )
    layout.check(update.message, who=f"client {party_id!r}")
    return LocalUpdate(update.message, 1.0)
