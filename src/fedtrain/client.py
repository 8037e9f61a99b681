"""The client step: one client's local update, shared by both runtimes.

Used by the in-process :class:`fedtrain.server.Federation` and by the Flower
ClientApp's ``lora`` task (:mod:`fedtrain.flower.lora_task`). One call of
:func:`local_update`, on a :class:`fedtrain.lora.LoraHandle` already set to the
client's start point:

1. ``handle.begin_round(round)``: the ``alternating`` mode picks the factor this round
   trains (B in odd rounds, A in even rounds) and sets ``requires_grad``;
2. local training (:func:`fedtrain.train.train_local`): AdamW/SGD steps, or record-level
   DP-SGD (per-example clipping, Gaussian noise and Poisson batches from privagg's
   CSPRNG) when ``dp`` is given; its semantics are those of ``train_local``;
3. the upload (:func:`fedtrain.lora.client_message`): the mode's deltas against the
   global state;
4. optional L2 clipping of the whole upload (:func:`clip_update`, through
   :func:`privagg.dp.clip_l2`): the client-level DP clip ``C``, or ``update_clip``.

Under client-level DP the noise is added later by privagg, after fixed-point encoding
(the session's noise share), not here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedtrain.config import LoraMode, LoraSettings, RunConfig
from fedtrain.lora import LoraHandle, build_lora, client_message
from fedtrain.models import Encoded, load_model
from fedtrain.train import DPSGD, LocalResult, make_dp_module, train_local
from privagg import Rng
from privagg.dp import clip_l2

__all__ = [
    "ClientUpdate",
    "LocalTraining",
    "apply_global",
    "batch_rng",
    "build_handle",
    "clip_update",
    "dp_module_for",
    "initial_state",
    "load_client_start",
    "local_update",
]

Update = dict[str, npt.NDArray[np.float32]]

# Shrinks the clip so that the float32 result is certainly within C (the sensitivity
# the ledger records and the backends' per-coordinate bound).
_CLIP_MARGIN = 1e-6


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains locally (public settings, the same for every client).

    Attributes:
        batch_size: batch size (the expected size under DP-SGD's Poisson sampling).
        lr: learning rate of the LoRA factors.
        device: the torch device.
        weight_decay: weight decay.
        head_lr: learning rate of the task head (None: ``lr``).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9).
        bf16: bf16 autocast on CUDA.
    """

    batch_size: int
    lr: float
    device: torch.device
    weight_decay: float = 0.0
    head_lr: float | None = None
    optimizer: str = "adamw"
    bf16: bool = False

    @classmethod
    def from_config(cls, config: RunConfig, device: torch.device) -> LocalTraining:
        """The local training settings of a run configuration."""
        ro = config.rounds
        return cls(
            ro.batch_size, ro.lr, device, ro.weight_decay, ro.head_lr, ro.optimizer,
            config.bf16,
        )  # fmt: skip


@dataclass(frozen=True)
class ClientUpdate:
    """One client's local update.

    Attributes:
        message: what the client uploads (before weighting and protection), clipped.
        result: what local training did (steps, loss, timing).
        opt_state: the client's local optimizer state to keep for its next round
            (``alternating``: one state per factor, keys prefixed ``A.`` / ``B.``).
        clip_scale: the factor clipping applied (1.0: not clipped).
    """

    message: Update
    result: LocalResult
    opt_state: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    clip_scale: float = 1.0


def clip_update(
    message: Mapping[str, npt.NDArray[np.floating]], clip: float | None
) -> tuple[Update, float]:
    """Clip a whole upload to L2 norm ``clip`` with :func:`privagg.dp.clip_l2`.

    The bound is shrunk by a factor ``1 - 1e-6`` so that the float32 result is
    certainly within ``clip``. A message with a non-finite value is returned as is:
    the round's layout check names it (a NaN/Inf update never reaches privagg).

    Args:
        message: name -> array.
        clip: the L2 bound, or None (no clipping).

    Returns:
        ``(clipped float32 message, scale applied)``.
    """
    names = list(message)
    msg32 = {k: np.asarray(message[k], np.float32) for k in names}
    if clip is None or not all(np.all(np.isfinite(v)) for v in msg32.values()):
        return msg32, 1.0
    flat = np.concatenate([v.astype(np.float64).ravel() for v in msg32.values()])
    clipped, scale = clip_l2(flat, clip * (1 - _CLIP_MARGIN))
    if scale >= 1.0:
        return msg32, 1.0
    out: Update = {}
    pos = 0
    for k in names:
        v = msg32[k]
        out[k] = clipped[pos : pos + v.size].reshape(v.shape).astype(np.float32)
        pos += v.size
    return out, scale


def build_handle(
    config: RunConfig, label_names: list[str], device: torch.device
) -> LoraHandle:
    """The run's model with its LoRA adapter, as every runtime builds it.

    ``torch.manual_seed(config.seed)`` first (non-secret: head init, dropout masks),
    then the model and adapter on ``device``; the base model's dropout is set to
    ``model_dropout`` (None: 0 under DP, the model's own otherwise).
    """
    c = config
    torch.manual_seed(c.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        base = load_model(c.model, c.task, label_names=label_names, device=device)
        handle = build_lora(base, c.task, c.lora, seed=c.seed)
    handle.model.to(device)
    rate = c.model_dropout
    if rate is None and c.privacy.level != "none":
        rate = 0.0
    if rate is not None:
        for name, mod in handle.model.named_modules():
            if isinstance(mod, torch.nn.Dropout) and "lora_dropout" not in name:
                mod.p = rate
    return handle


def initial_state(handle: LoraHandle, mode: LoraMode | str) -> dict[str, np.ndarray]:
    """The global state a run starts from: what the mode's server keeps."""
    h = handle
    if mode == "ffa":
        return h.get(sorted(h.b_names + h.head_names))
    if mode in ("fedit", "alternating"):
        return h.get(sorted(h.a_names + h.b_names + h.head_names))
    return h.get(h.head_names)


def batch_rng(seed: int, round_: int, slot: int) -> np.random.Generator:
    """The (non-secret) batch-order generator of client ``slot`` in round ``round_``.

    Derived from the run's public ``seed``, the round and the client's slot only, so a
    client's batch order does not depend on which other clients trained before it:
    both runtimes (in-process and Flower, where clients run apart) draw the same order.
    """
    return np.random.default_rng([seed, 1, round_, slot])


def apply_global(
    handle: LoraHandle,
    settings: LoraSettings,
    state: Mapping[str, npt.NDArray[np.floating]],
) -> None:
    """Put the global adapter ``state`` into the handle's model.

    ``flora``: the state holds the merged delta; it is merged into the base weights,
    A is re-drawn from the shared ``a_seed`` with B = 0 (the adapter adds nothing) and
    the head is set. Other modes: the adapter and head values are set.
    """
    if settings.mode == LoraMode.FLORA:
        handle.set_merged_delta(dict(state))
        handle.init_a(settings.a_seed)
        handle.set({n: state[n] for n in handle.head_names})
    else:
        handle.set(dict(state))


def load_client_start(
    handle: LoraHandle,
    settings: LoraSettings,
    state: Mapping[str, npt.NDArray[np.floating]],
    *,
    round_: int,
    slot: int,
    client_id: str,
) -> None:
    """Set the handle to a client's start point for round ``round_``.

    ``flora``: on top of the global model (:func:`apply_global`), the client's A is
    drawn from ``a_seed + 7919 round + 104729 slot`` at its own rank, B = 0, and the
    head is set. Other modes: the global adapter values.
    """
    if settings.mode == LoraMode.FLORA:
        handle.init_a(
            settings.a_seed + 7919 * round_ + 104729 * slot,
            rank=settings.rank_of(client_id),
        )
        handle.set({n: state[n] for n in handle.head_names})
    else:
        handle.set(dict(state))


def _phase_prefix(handle: LoraHandle) -> str:
    """``alternating``: optimizer state is kept per factor (other modes: one)."""
    return f"{handle.phase}." if handle.settings.mode == LoraMode.ALTERNATING else ""


def dp_module_for(handle: LoraHandle, current: Any = None) -> Any:
    """The Opacus module for the handle's current trainable parameters.

    Opacus hooks the modules that have trainable parameters when it wraps the model,
    so when the trainable set changes (``alternating``: A and B take turns) the
    wrapper is rebuilt; otherwise ``current`` is returned unchanged.

    Args:
        handle: the LoRA handle.
        current: the module from an earlier call (or None).

    Returns:
        A GradSampleModule whose hooks match ``handle.trainable_names()``.
    """
    names = tuple(handle.trainable_names())
    if current is not None and getattr(current, "_fedtrain_names", None) == names:
        return current
    if current is not None:
        current.remove_hooks()
    module = make_dp_module(handle)
    module._fedtrain_names = names
    return module


def local_update(
    handle: LoraHandle,
    enc: Encoded,
    global_state: Mapping[str, npt.NDArray[np.float32]],
    *,
    mode: LoraMode | str,
    round_: int,
    steps: int,
    training: LocalTraining,
    rng: np.random.Generator,
    dp: DPSGD | None = None,
    dp_module: Any = None,
    dp_rng: Rng | None = None,
    clip: float | None = None,
    opt_state: Mapping[str, npt.NDArray[Any]] | None = None,
    slot: int = 0,
    n_slots: int = 1,
    rank: int | None = None,
    r_max: int | None = None,
) -> ClientUpdate:
    """Train locally from the handle's current adapter and build the clipped upload.

    Args:
        handle: the LoRA handle, already set to this client's start point.
        enc: the client's encoded data.
        global_state: the global state the client started from.
        mode: the LoRA aggregation mode.
        round_: the round (1-based; ``alternating`` picks its factor from it).
        steps: local optimizer steps.
        training: the local training settings.
        rng: generator of the (non-secret) batch order without DP.
        dp: record-level DP-SGD settings, or None.
        dp_module: DP only: the GradSampleModule (:func:`dp_module_for`).
        dp_rng: DP only: the randomness of Poisson batches and noise (default: the
            OS CSPRNG).
        clip: L2 clip of the whole upload (client-level DP's C, or ``update_clip``).
        opt_state: the state :attr:`ClientUpdate.opt_state` returned in this
            client's previous round (None: a fresh optimizer).
        slot: ``flora``: the client's slot.
        n_slots: ``flora``: the number of slots.
        rank: ``flora``: the client's rank (values beyond it stay zero).
        r_max: ``flora``: the adapter's maximum rank.

    Returns:
        The client's update.
    """
    handle.begin_round(round_)
    prefix = _phase_prefix(handle)
    start: dict[str, npt.NDArray[Any]] | None = None
    if opt_state is not None:
        start = {
            k[len(prefix) :]: v for k, v in opt_state.items() if k.startswith(prefix)
        }
    res = train_local(
        handle,
        enc,
        steps=steps,
        batch_size=training.batch_size,
        lr=training.lr,
        head_lr=training.head_lr,
        optimizer=training.optimizer,
        weight_decay=training.weight_decay,
        device=training.device,
        bf16=training.bf16,
        rng=rng,
        dp=dp,
        dp_module=dp_module,
        dp_rng=dp_rng,
        rank=rank,
        opt_state=start,
    )
    kept = {k: v for k, v in (opt_state or {}).items() if not k.startswith(prefix)}
    kept.update({prefix + k: v for k, v in res.opt_state.items()})
    msg = client_message(
        str(mode),
        handle.get(),
        global_state,
        slot=slot,
        n_slots=n_slots,
        rank=rank,
        r_max=r_max,
    )
    clipped, scale = clip_update(msg, clip)
    return ClientUpdate(clipped, res, kept, scale)
