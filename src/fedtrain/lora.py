"""LoRA adapters on a shared base model, and the four federated aggregation modes.

One base model is loaded once and wrapped by peft with a single adapter; simulated
clients are served by copying adapter values in and out (no reloading per client).

Stable names: a parameter's name with peft's ``base_model.model.`` prefix, the
adapter name ``.default`` and ``modules_to_save.`` removed, e.g.
``bert.encoder.layer.0.attention.self.query.lora_B.weight`` or ``classifier.weight``
(the same keys peft writes in ``adapter_model.safetensors``, minus the prefix).

Aggregation modes (``w_k`` normalised client weights, ``s`` = alpha / r):

* ``fedit``: A and B averaged separately. The model gets ``s avg(B_k) avg(A_k)``,
  which is NOT ``avg(s B_k A_k)``: the common, inexact baseline.
* ``ffa`` (FFA-LoRA): A is initialised from a shared public seed and frozen; only B
  (and the task head) is trained and sent. ``s avg(B_k) A = avg(s B_k A)``: exact,
  and half the upload of ``fedit``.
* ``flora`` (FLoRA stacking): each client trains a fresh LoRA of its own rank r_k
  each round; its A and B go into its own slot of stacked matrices, so the sum of
  the stacked uploads carries every ``(w_k B_k, w_k A_k)`` and the server forms
  ``sum_k s (w_k B_k)(w_k A_k) / w_k = sum_k w_k s B_k A_k`` exactly, merged into the
  base weights. NOTE: slots do not overlap, so the aggregate reveals every client's
  individual product; secure aggregation hides nothing in this mode (see docs).
* ``alternating`` (RoLoRA, Chen et al. 2024): both factors are trained, one at a
  time: in odd rounds only B (A shared and frozen), in even rounds only A (B shared
  and frozen). ``s avg(B_k) A = avg(s B_k A)`` and ``s B avg(A_k) = avg(s B A_k)``:
  exact for a linear secure sum in every round. The upload has fedit's layout (the
  frozen factor's delta is exactly zero), so the session layout never changes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtrain.config import LoraSettings
from fedtrain.errors import ConfigError, LayoutMismatchError, RankMismatchError

__all__ = [
    "LoraHandle",
    "aggregate_delta",
    "alternating_phase",
    "build_lora",
    "client_message",
    "effective_delta",
    "flora_products",
    "module_names",
]

_TASK_TYPES = {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}


def alternating_phase(round_: int) -> str:
    """``alternating`` mode: the factor trained in round ``round_`` (1-based).

    Odd rounds train B (as FFA-LoRA does first: B starts at zero), even rounds A.
    """
    return "B" if round_ % 2 == 1 else "A"


def _stable(name: str) -> str:
    name = name.removeprefix("base_model.model.")
    name = name.replace(".default.", ".").replace("modules_to_save.", "")
    return name


def module_names(state_names: Sequence[str]) -> list[str]:
    """Return the LoRA module prefixes present in a set of stable names."""
    return sorted({n.rsplit(".lora_", 1)[0] for n in state_names if ".lora_" in n})


def _a_init(shape: tuple[int, int], seed: int, index: int) -> torch.Tensor:
    """Kaiming-uniform(a=sqrt 5) init of a LoRA A matrix from a public seed."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))
    bound = 1.0 / math.sqrt(shape[1])
    return (torch.rand(shape, generator=g, dtype=torch.float32) * 2 - 1) * bound


@dataclass
class _LoraModule:
    name: str
    a: torch.nn.Parameter
    b: torch.nn.Parameter
    base: torch.nn.Linear


class LoraHandle:
    """A peft LoRA model plus name-stable numpy access to its adapter.

    Attributes:
        model: the ``peft.PeftModel``.
        settings: the LoRA settings.
        params: stable name -> trainable-or-frozen adapter parameter (A, B, head).
        modules: LoRA modules in stable-name order.
        head_names: names of the task-head parameters (modules_to_save).
    """

    def __init__(self, model: Any, settings: LoraSettings) -> None:
        self.model = model
        self.settings = settings
        self.params: dict[str, torch.nn.Parameter] = {}
        for n, p in model.named_parameters():
            if ".lora_" in n or ("modules_to_save" in n):
                self.params[_stable(n)] = p
        self.head_names = sorted(n for n in self.params if ".lora_" not in n)
        self.modules: list[_LoraModule] = []
        for mname, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                st = _stable(mname + ".")[:-1]
                self.modules.append(
                    _LoraModule(
                        st,
                        mod.lora_A["default"].weight,
                        mod.lora_B["default"].weight,
                        mod.base_layer,
                    )
                )
        self.modules.sort(key=lambda m: m.name)
        if not self.modules:
            raise ConfigError("no LoRA modules were created: check target_modules")
        self._w0: dict[str, torch.Tensor] | None = None
        self.phase = "B"  # alternating mode: the factor trained this round

    def begin_round(self, round_: int) -> None:
        """Start round ``round_`` (1-based): ``alternating`` picks its factor.

        Other modes ignore it. Sets ``requires_grad`` accordingly.
        """
        if self.settings.mode == "alternating":
            self.phase = alternating_phase(round_)
            self.set_trainable()

    def pooled_features(
        self, enc: Any, device: torch.device, batch_size: int = 128
    ) -> torch.Tensor:
        """The (n, hidden) pooled features of an encoded ``seq_cls`` dataset.

        Cached per dataset until the adapter changes
        (:meth:`fedtrain.models.PooledClassifier.cached_features`).

        Raises:
            ConfigError: the model has no pooled head (see ``LoraSettings.pooling``).
        """
        from fedtrain.models import PooledClassifier

        base = self.model.get_base_model()
        if not isinstance(base, PooledClassifier):
            raise ConfigError(
                "head_steps need a pooled sequence classifier "
                "(seq_cls with pooling mean, cls or pooler)"
            )
        return base.cached_features(enc, device, batch_size)

    @property
    def a_names(self) -> list[str]:
        """Stable names of the LoRA A matrices."""
        return [m.name + ".lora_A.weight" for m in self.modules]

    @property
    def b_names(self) -> list[str]:
        """Stable names of the LoRA B matrices."""
        return [m.name + ".lora_B.weight" for m in self.modules]

    def trainable_names(self) -> list[str]:
        """Names trained locally in this mode (FFA freezes A; ``alternating``
        trains the factor of :attr:`phase`)."""
        if self.settings.mode == "ffa":
            return sorted(self.b_names + self.head_names)
        if self.settings.mode == "alternating":
            factor = self.b_names if self.phase == "B" else self.a_names
            return sorted(factor + self.head_names)
        return sorted(self.b_names + self.a_names + self.head_names)

    def set_trainable(self) -> None:
        """Set requires_grad: only this mode's trainable adapter parameters."""
        train = set(self.trainable_names())
        for p in self.model.parameters():
            p.requires_grad_(False)
        for n, p in self.params.items():
            p.requires_grad_(n in train)

    def get(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copy adapter values out as float32 numpy arrays.

        Args:
            names: which names (default: all adapter parameters).

        Returns:
            name -> array.
        """
        names = sorted(self.params) if names is None else names
        return {n: self.params[n].detach().float().cpu().numpy().copy() for n in names}

    @torch.no_grad()
    def set(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy values into adapter parameters.

        Raises:
            LayoutMismatchError: unknown name or wrong shape (client ``"server"``).
        """
        for n, v in state.items():
            p = self.params.get(n)
            if p is None or tuple(p.shape) != tuple(np.shape(v)):
                raise LayoutMismatchError(
                    "server",
                    f"adapter entry {n!r} {np.shape(v)} does not fit the model",
                )
            p.copy_(torch.as_tensor(np.asarray(v), dtype=p.dtype))

    @torch.no_grad()
    def init_a(self, seed: int, *, rank: int | None = None) -> None:
        """Initialise every A from a public seed and zero every B.

        Args:
            seed: public seed (shared by all clients).
            rank: if given, rows of A beyond ``rank`` are zeroed (flora).
        """
        for i, m in enumerate(self.modules):
            m.a.copy_(_a_init((int(m.a.shape[0]), int(m.a.shape[1])), seed, i))
            m.b.zero_()
        if rank is not None:
            self.apply_rank_mask(rank)

    @torch.no_grad()
    def apply_rank_mask(self, rank: int, *, grads: bool = False) -> None:
        """Zero A rows / B columns beyond ``rank`` (values, or gradients if ``grads``)."""
        for m in self.modules:
            if rank > m.a.shape[0]:
                raise RankMismatchError(
                    "server", f"rank {rank} exceeds adapter rank {m.a.shape[0]}"
                )
            ta, tb = (m.a.grad, m.b.grad) if grads else (m.a, m.b)
            if ta is not None:
                ta[rank:, :] = 0
            if tb is not None:
                tb[:, rank:] = 0

    @torch.no_grad()
    def set_merged_delta(self, delta_w: Mapping[str, np.ndarray]) -> None:
        """Set base weights of the LoRA modules to W0 + delta (flora's global model).

        Args:
            delta_w: module name + ``.delta_w`` -> dense (out, in) array.
        """
        if self._w0 is None:
            self._w0 = {m.name: m.base.weight.detach().clone() for m in self.modules}
        for m in self.modules:
            d = delta_w.get(m.name + ".delta_w")
            w = self._w0[m.name]
            m.base.weight.copy_(
                w
                if d is None
                else w + torch.as_tensor(d, dtype=w.dtype, device=w.device)
            )

    def init_head(self, seed: int, std: float = 0.02) -> None:
        """Deterministically initialise the task head (normal(0, std), zero bias;
        ``std=0``: all zero)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n in self.head_names:
                p = self.params[n]
                if n.endswith("bias") or std == 0:
                    p.zero_()
                else:
                    p.copy_(torch.randn(tuple(p.shape), generator=g) * std)
                # peft keeps an untouched original copy of the head; mirror it so that
                # disabling the adapter is well defined.
        for n, p in self.model.named_parameters():
            if "original_module" in n:
                key = _stable(n.replace("original_module.", ""))
                if key in self.params:
                    with torch.no_grad():
                        p.copy_(self.params[key])


def build_lora(
    base_model: Any, task: str, settings: LoraSettings, *, seed: int = 0
) -> LoraHandle:
    """Wrap a base model with one peft LoRA adapter for federated training.

    Args:
        base_model: the transformers model.
        task: ``seq_cls``, ``token_cls`` or ``causal_lm``.
        settings: LoRA settings (in ``flora`` mode ``r`` is the maximum rank).
        seed: seed for the task-head initialisation (public).

    Returns:
        The handle; A is initialised from ``settings.a_seed``, B is zero; a pooled
        ``seq_cls`` head (:class:`fedtrain.models.PooledClassifier`) starts at
        zero, a native head at normal(0, 0.02).

    Raises:
        ConfigError: unknown task or no module matched.
    """
    from peft import LoraConfig, get_peft_model

    from fedtrain.models import PooledClassifier, with_pooling

    if task not in _TASK_TYPES:
        raise ConfigError(f"unknown task {task!r}")
    if task == "seq_cls":
        base_model = with_pooling(base_model, settings.pooling)
    pooled = isinstance(base_model, PooledClassifier)
    r = settings.r
    if settings.client_ranks:
        r = max(r, *settings.client_ranks.values())
    cfg = LoraConfig(
        r=r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules)
        if settings.target_modules
        else None,
        task_type=_TASK_TYPES[task],
    )
    try:
        model = get_peft_model(base_model, cfg)
    except ValueError as exc:
        raise ConfigError(f"could not attach LoRA: {exc}") from exc
    model.train()  # the whole tree: see docs/fedtrain.md (Opacus finding)
    h = LoraHandle(model, settings)
    h.init_a(settings.a_seed)
    if task != "causal_lm":
        h.init_head(seed, std=0.0 if pooled else 0.02)
    h.set_trainable()
    return h


# --------------------------------------------------------------------- aggregation


def _slot_of(name: str) -> tuple[str, str] | None:
    m = re.match(r"^(.*)\.lora_([AB])\.stack$", name)
    return (m.group(1), m.group(2)) if m else None


def client_message(
    mode: str,
    local: Mapping[str, np.ndarray],
    global_: Mapping[str, np.ndarray],
    *,
    slot: int = 0,
    n_slots: int = 1,
    rank: int | None = None,
    r_max: int | None = None,
) -> dict[str, np.ndarray]:
    """Build what a client uploads (before weighting and protection).

    Args:
        mode: ``ffa``, ``fedit``, ``flora`` or ``alternating``.
        local: the client's adapter after local training (stable names).
        global_: the global state the client started from (``ffa``/``fedit``: the
            adapter entries; ``flora``: head entries).
        slot: ``flora``: the client's slot.
        n_slots: ``flora``: number of slots.
        rank: ``flora``: the client's rank.
        r_max: ``flora``: the adapter's (maximum) rank.

    Returns:
        ``ffa``: deltas of B and head; ``fedit`` and ``alternating``: deltas of A,
        B, head (``alternating``: the frozen factor's are zero); ``flora``:
        stacked ``<module>.lora_A.stack`` (n_slots*r_max, in) and
        ``<module>.lora_B.stack`` (out, n_slots*r_max) with the client's factors in
        its slot, plus head deltas.
    """
    heads = [n for n in global_ if ".lora_" not in n and not n.endswith(".delta_w")]
    out = {n: (local[n] - global_[n]).astype(np.float32) for n in heads}
    if mode in ("ffa", "fedit", "alternating"):
        keep = ("lora_B",) if mode == "ffa" else ("lora_A", "lora_B")
        for n in global_:
            if any(f".{k}." in n for k in keep):
                out[n] = (local[n] - global_[n]).astype(np.float32)
        return out
    if mode != "flora":
        raise ConfigError(f"unknown aggregation mode {mode!r}")
    assert rank is not None and r_max is not None
    for mod in module_names(list(local)):
        a = local[mod + ".lora_A.weight"]
        b = local[mod + ".lora_B.weight"]
        sa = np.zeros((n_slots * r_max, a.shape[1]), dtype=np.float32)
        sb = np.zeros((b.shape[0], n_slots * r_max), dtype=np.float32)
        sa[slot * r_max : slot * r_max + rank] = a[:rank]
        sb[:, slot * r_max : slot * r_max + rank] = b[:, :rank]
        out[mod + ".lora_A.stack"] = sa
        out[mod + ".lora_B.stack"] = sb
    return out


def flora_products(
    summed: Mapping[str, np.ndarray],
    slot_weights: Mapping[int, float],
    r_max: int,
    scaling: float,
) -> dict[str, np.ndarray]:
    """Recover ``sum_k w_k s B_k A_k`` per module from the summed stacked upload.

    Args:
        summed: the weighted sum of flora messages.
        slot_weights: slot -> the weight that client applied (contributors only).
        r_max: the per-slot width.
        scaling: LoRA scaling s.

    Returns:
        ``<module>.delta_w`` -> dense (out, in) sum.
    """
    out: dict[str, np.ndarray] = {}
    for n in summed:
        parsed = _slot_of(n)
        if parsed is None or parsed[1] != "A":
            continue
        mod = parsed[0]
        sa = summed[mod + ".lora_A.stack"].astype(np.float64)
        sb = summed[mod + ".lora_B.stack"].astype(np.float64)
        acc = np.zeros((sb.shape[0], sa.shape[1]))
        for slot, w in slot_weights.items():
            if w <= 0:
                continue
            cols = slice(slot * r_max, (slot + 1) * r_max)
            acc += sb[:, cols] @ sa[cols] / w
        out[mod + ".delta_w"] = (scaling * acc).astype(np.float32)
    return out


def aggregate_delta(
    mode: str,
    summed: Mapping[str, np.ndarray],
    total_weight: float,
    *,
    slot_weights: Mapping[int, float] | None = None,
    r_max: int | None = None,
    scaling: float = 1.0,
    phase: str | None = None,
) -> dict[str, np.ndarray]:
    """Turn a recovered weighted sum into the average delta on the global state.

    Args:
        mode: aggregation mode.
        summed: ``sum_k w_k message_k`` from privagg.
        total_weight: the contributors' total weight (renormalises dropouts).
        slot_weights: ``flora``: slot -> weight of each contributor.
        r_max: ``flora``: slot width.
        scaling: ``flora``: LoRA scaling.
        phase: ``alternating``: the factor trained this round (``"A"`` or ``"B"``).
            The frozen factor's entries are left out of the result, so it stays
            exactly as it was: its coordinates of the sum are zero from every
            client, but may carry DP noise or CKKS rounding, and a FedAdam/FedYogi
            momentum must not move it (post-processing of the release). None: every
            entry is returned.

    Returns:
        The average delta keyed like the global state (``alternating`` with a
        ``phase``: without the frozen factor).
    """
    if not total_weight > 0:
        raise ConfigError("no contributor weight: nothing to aggregate")
    if mode == "flora":
        assert slot_weights is not None and r_max is not None
        out = flora_products(summed, slot_weights, r_max, scaling)
        out = {k: v / total_weight for k, v in out.items()}
        for n, v in summed.items():
            if _slot_of(n) is None:
                out[n] = (v / total_weight).astype(np.float32)
        return out
    skip = None
    if mode == "alternating" and phase is not None:
        if phase not in ("A", "B"):
            raise ConfigError(f"alternating phase must be 'A' or 'B', got {phase!r}")
        skip = ".lora_A." if phase == "B" else ".lora_B."
    return {
        n: (np.asarray(v, dtype=np.float64) / total_weight).astype(np.float32)
        for n, v in summed.items()
        if skip is None or skip not in n
    }


def effective_delta(
    state: Mapping[str, np.ndarray], scaling: float
) -> dict[str, np.ndarray]:
    """Return ``s B A`` per LoRA module of an adapter state (float64)."""
    out = {}
    for mod in module_names(list(state)):
        out[mod] = scaling * (
            state[mod + ".lora_B.weight"].astype(np.float64)
            @ state[mod + ".lora_A.weight"].astype(np.float64)
        )
    return out
