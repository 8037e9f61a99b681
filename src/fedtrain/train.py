"""Local client training: plain AdamW steps or DP-SGD on the LoRA parameters.

DP-SGD uses Opacus' ``GradSampleModule`` for per-example gradients of the trainable
(LoRA + head) parameters only, then clips each example's gradient to ``clip``, sums,
adds Gaussian noise ``N(0, (z * clip)^2)`` and divides by the expected batch size.
Batches are Poisson-sampled with rate ``q = batch_size / n`` as the accountant
assumes. Both the noise and the Poisson sampling decisions come from privagg's
CSPRNG stream (:class:`privagg.SystemRng`: the OS CSPRNG, AES-256-CTR-expanded;
Box-Muller Gaussians via :func:`privagg.dp.sample_gaussian`), never from torch's or
numpy's PRNGs; a fixed AES-CTR stream (``DeterministicRng``) is used in test mode
only. Accounting is done by privagg's accountants (see :mod:`fedtrain.privacy`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from fedtrain.errors import ConfigError
from fedtrain.lora import LoraHandle
from fedtrain.models import Encoded, collate
from privagg import Rng, SystemRng
from privagg.dp import sample_gaussian
from privagg.hazmat import DeterministicRng, uniform01

__all__ = [
    "DPSGD",
    "LocalResult",
    "autocast",
    "example_losses",
    "load_optimizer_state",
    "make_dp_module",
    "optimizer_state_arrays",
    "train_local",
]


@dataclass(frozen=True)
class DPSGD:
    """Record-level DP-SGD settings for one client.

    Attributes:
        noise_multiplier: z, the multiplier the accountant sees.
        clip: per-example L2 clip C of the whole trainable gradient or, when
            ``head_clip`` is set, of the LoRA group alone.
        head_clip: if set, group-wise clipping: the LoRA factors and the task head
            are clipped separately (to ``clip`` and ``head_clip``) and each group
            gets Gaussian noise of std ``z * sqrt(2) * C_g``. Scaling each group by
            its own noise makes this one Gaussian mechanism with unit noise and
            sensitivity ``sqrt(sum_g C_g**2 / (2 z**2 C_g**2)) = 1/z``: the
            noise multiplier is still exactly z, so accounting is unchanged. It
            pays off when the groups' gradient norms differ by orders of magnitude
            (a fresh head ~1, LoRA factors ~0.1): flat clipping would give the small
            group noise sized for the large one.
    """

    noise_multiplier: float
    clip: float
    head_clip: float | None = None

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and self.clip > 0):
            raise ConfigError("DP-SGD needs noise_multiplier > 0 and clip > 0")
        if self.head_clip is not None and not self.head_clip > 0:
            raise ConfigError(f"head_clip must be > 0, got {self.head_clip!r}")


@dataclass(frozen=True)
class LocalResult:
    """What a client's local training did.

    Attributes:
        steps: optimizer steps taken.
        sample_rate: Poisson batch sampling rate (DP) or batch/n.
        examples: examples processed.
        loss: mean training loss over the steps.
        seconds: wall time.
        opt_state: the local optimizer's state after training (flat name -> array;
            see :func:`optimizer_state_arrays`), to resume it in the client's next
            round.
    """

    steps: int
    sample_rate: float
    examples: int
    loss: float
    seconds: float
    opt_state: dict[str, np.ndarray] = field(default_factory=dict)


def optimizer_state_arrays(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Flatten an optimizer's per-parameter state to ``"{index}.{key}" -> array``."""
    sd = opt.state_dict()["state"]
    out: dict[str, np.ndarray] = {}
    for idx, st in sd.items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                out[f"{idx}.{key}"] = val.detach().cpu().numpy().copy()
            else:
                out[f"{idx}.{key}"] = np.asarray(val, dtype=np.float64)
    return out


def load_optimizer_state(
    opt: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]
) -> None:
    """Restore :func:`optimizer_state_arrays` output into a freshly built optimizer."""
    if not arrays:
        return
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, arr in arrays.items():
        idx, key = name.split(".", 1)
        val = np.array(arr)
        if key == "step":  # a scalar (safetensors may hand it back as shape (1,))
            val = val.reshape(())
        state.setdefault(int(idx), {})[key] = torch.from_numpy(val)
    sd["state"] = state
    opt.load_state_dict(sd)


def autocast(
    device: torch.device, bf16: bool
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled, otherwise a no-op context."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def example_losses(
    task: str, logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-example loss (mean over the example's labelled tokens for token tasks).

    Args:
        task: the task.
        logits: model logits.
        labels: labels (-100 = ignored).

    Returns:
        A (batch,) float32 tensor.
    """
    logits = logits.float()
    if task == "seq_cls":
        return nnf.cross_entropy(logits, labels, reduction="none")
    if task == "causal_lm":
        logits = logits[:, :-1]
        labels = labels[:, 1:]
    tok = nnf.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        reduction="none",
        ignore_index=-100,
    )
    tok = tok.view(labels.shape)
    valid = (labels != -100).float()
    return (tok * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def make_dp_module(handle: LoraHandle) -> Any:
    """Wrap the peft model in Opacus' GradSampleModule (once per run).

    The model must be in train mode as a whole tree: transformers 5 returns
    ``from_pretrained`` models in eval mode, and peft's ``modules_to_save`` copy of
    the head inherits it, so Opacus' forward hook skips it while its backward hook
    fires ("No activations detected for Linear"). :func:`fedtrain.lora.build_lora`
    calls ``model.train()``.
    """
    from opacus import GradSampleModule

    handle.model.train()
    return GradSampleModule(handle.model, batch_first=True, loss_reduction="sum")


def _clip_groups(
    names: list[str], heads: set[str], dp: DPSGD
) -> list[tuple[list[int], float, float]]:
    """Clip groups as (parameter indices, clip norm, noise std)."""
    z = dp.noise_multiplier
    if dp.head_clip is None:
        return [(list(range(len(names))), dp.clip, z * dp.clip)]
    lora = [i for i, k in enumerate(names) if k not in heads]
    head = [i for i, k in enumerate(names) if k in heads]
    parts = [(g, c) for g, c in ((lora, dp.clip), (head, dp.head_clip)) if g]
    k = math.sqrt(len(parts))  # K groups: std z*sqrt(K)*C_g keeps the multiplier z
    return [(g, c, z * k * c) for g, c in parts]


def _batches(
    n: int, batch_size: int, steps: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > n:
            order, pos = rng.permutation(n), 0
        yield order[pos : pos + batch_size]
        pos += batch_size


def _head_steps(
    handle: LoraHandle,
    enc: Encoded,
    opt: torch.optim.Optimizer,
    *,
    steps: int,
    batch_size: int,
    device: torch.device,
    rng: np.random.Generator,
    dp: DPSGD | None,
    dp_rng: Rng | None,
) -> tuple[list[float], int]:
    """LP-FT head-only steps (``LoraSettings.head_steps``) on cached features.

    The adapter is frozen during these steps, so the pooled features are a fixed
    function of each record: they are computed once
    (:meth:`fedtrain.lora.LoraHandle.pooled_features`) and the linear head's
    per-example gradients are exact and closed-form (``e_i x_i^T`` and ``e_i``,
    ``e_i = softmax - onehot``). Under DP-SGD each step is the same release as a
    full step: a Poisson batch (rate ``q = batch_size / n``), each example's head
    gradient clipped to ``head_clip`` (or ``clip``), Gaussian noise of std
    ``z * C`` on every head coordinate, divided by ``q n``; only the head is
    released (the adapter gets no gradient), so the multiplier is exactly z and
    the accounting is unchanged.

    Returns:
        (per-step mean losses, examples seen).
    """
    if enc.task != "seq_cls":
        raise ConfigError("head_steps apply to seq_cls only")
    feats = handle.pooled_features(enc, device)
    n = len(enc)
    y = torch.tensor(enc.labels, dtype=torch.long, device=device)
    w_name = [k for k in handle.head_names if k.endswith("weight")]
    b_name = [k for k in handle.head_names if k.endswith("bias")]
    if len(w_name) != 1 or len(b_name) > 1:
        raise ConfigError(f"head_steps need one linear head, got {handle.head_names}")
    w = handle.params[w_name[0]]
    b = handle.params[b_name[0]] if b_name else None
    q = min(1.0, batch_size / n)
    losses: list[float] = []
    seen = 0
    order = _batches(n, batch_size, steps, rng) if dp is None else None
    for _ in range(steps):
        if order is not None:
            idx = next(order)
        else:
            assert dp is not None and dp_rng is not None
            idx = np.flatnonzero(uniform01(dp_rng, n) < q)
        opt.zero_grad(set_to_none=True)
        gw = torch.zeros_like(w, dtype=torch.float32)
        gb = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device)
        if len(idx):
            it = torch.as_tensor(idx, device=device)
            x = feats[it]
            with torch.no_grad():
                logits = x @ w.detach().float().T
                if b is not None:
                    logits = logits + b.detach().float()
                loss = nnf.cross_entropy(logits, y[it], reduction="none")
                e = torch.softmax(logits, -1)
                e[torch.arange(len(idx), device=device), y[it]] -= 1.0
                if dp is not None:
                    c_h = dp.head_clip if dp.head_clip is not None else dp.clip
                    sq = x.pow(2).sum(1) + (1.0 if b is not None else 0.0)
                    norms = e.norm(dim=1) * torch.sqrt(sq)
                    e = e * (c_h / (norms + 1e-6)).clamp(max=1.0)[:, None]
                else:
                    e = e / len(idx)
                gw = e.T @ x
                gb = e.sum(0)
            losses.append(float(loss.mean()))
            seen += len(idx)
        if dp is not None:
            assert dp_rng is not None
            c_h = dp.head_clip if dp.head_clip is not None else dp.clip
            k = w.numel() + (b.numel() if b is not None else 0)
            flat = sample_gaussian(dp.noise_multiplier * c_h, k, rng=dp_rng)
            noise = torch.from_numpy(flat).to(device=device, dtype=torch.float32)
            gw = (gw + noise[: w.numel()].reshape(w.shape)) / (q * n)
            gb = (gb + noise[w.numel() :]) / (q * n)
        w.grad = gw.to(w.dtype)
        if b is not None:
            b.grad = gb.to(b.dtype)
        opt.step()
    return losses, seen


def train_local(
    handle: LoraHandle,
    enc: Encoded,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    device: torch.device,
    bf16: bool,
    rng: np.random.Generator,
    dp: DPSGD | None = None,
    dp_module: Any = None,
    noise_seed: int | None = None,
    rank: int | None = None,
    head_lr: float | None = None,
    optimizer: str = "adamw",
    dp_rng: Rng | None = None,
    opt_state: Mapping[str, np.ndarray] | None = None,
) -> LocalResult:
    """Train the adapter currently loaded in ``handle`` on one client's data.

    Args:
        handle: the LoRA handle (adapter already set to the client's start point).
        enc: the client's encoded data.
        steps: optimizer steps.
        batch_size: batch size (expected size under DP Poisson sampling).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        device: device.
        bf16: bf16 autocast on CUDA.
        rng: generator for the (non-secret) batch order without DP.
        dp: DP-SGD settings, or None.
        dp_module: the GradSampleModule from :func:`make_dp_module` (DP only).
        noise_seed: TESTS ONLY: a fixed AES-CTR stream (``DeterministicRng``) for the
            DP noise and Poisson sampling, when ``dp_rng`` is not given.
        rank: ``flora``: gradients/values beyond this rank are kept at zero.
        head_lr: learning rate of the task head (default: ``lr``). A freshly
            initialised head on small pooled features needs a larger step than the
            LoRA factors, most of all under DP-SGD (see docs/fedtrain.md).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9). Under DP-SGD the noise is
            isotropic and large: Adam rescales every coordinate to a step of about
            ``lr`` whatever its signal, so noise-only coordinates random-walk; SGD
            keeps their steps proportional to the (small) noise.
        dp_rng: the DP randomness (Poisson batch decisions and Gaussian noise);
            default :class:`privagg.SystemRng` (OS CSPRNG, AES-CTR-expanded).
        opt_state: the optimizer state this client ended its previous round with
            (:attr:`LocalResult.opt_state`), or None for a fresh optimizer.

    Returns:
        A summary of the local training.
    """
    t0 = time.perf_counter()
    n = len(enc)
    names = handle.trainable_names()
    params = [handle.params[k] for k in names]
    heads = set(handle.head_names)
    param_groups: list[dict[str, Any]] = [
        {"params": [handle.params[k] for k in names if k not in heads], "lr": lr},
        {
            "params": [handle.params[k] for k in names if k in heads],
            "lr": lr if head_lr is None else head_lr,
        },
    ]
    active = [g for g in param_groups if g["params"]]
    opt: torch.optim.Optimizer
    if optimizer == "adamw":
        opt = torch.optim.AdamW(active, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(active, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ConfigError(f"unknown optimizer {optimizer!r} (adamw, sgd)")
    if opt_state:
        load_optimizer_state(opt, opt_state)
    handle.model.train()
    losses: list[float] = []
    seen = 0
    q = min(1.0, batch_size / n)
    # LP-FT: the round's first head_steps train the head alone on cached features
    n_head = min(steps, handle.settings.head_steps)
    if n_head:
        if dp is not None and dp_rng is None:
            dp_rng = SystemRng() if noise_seed is None else DeterministicRng(noise_seed)
        h_loss, h_seen = _head_steps(
            handle, enc, opt, steps=n_head, batch_size=batch_size, device=device,
            rng=rng, dp=dp, dp_rng=dp_rng,
        )  # fmt: skip
        losses.extend(h_loss)
        seen += h_seen
    rest = steps - n_head
    if dp is None:
        for idx in _batches(n, batch_size, rest, rng):
            batch = collate(enc, idx.tolist(), device)
            labels = batch.pop("labels")
            with autocast(device, bf16):
                logits = handle.model(**batch).logits
            loss = example_losses(enc.task, logits, labels).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if rank is not None:
                handle.apply_rank_mask(rank, grads=True)
            opt.step()
            losses.append(float(loss.detach()))
            seen += len(idx)
    else:
        if dp_module is None:
            raise ConfigError("DP-SGD needs dp_module (make_dp_module)")
        if dp_rng is None:
            dp_rng = SystemRng() if noise_seed is None else DeterministicRng(noise_seed)
        groups = _clip_groups(names, set(handle.head_names), dp)
        sizes = [int(p.numel()) for p in params]
        for _ in range(rest):
            idx = np.flatnonzero(uniform01(dp_rng, n) < q)
            opt.zero_grad(set_to_none=True)
            summed = [torch.zeros_like(p) for p in params]
            if len(idx):
                batch = collate(enc, idx.tolist(), device)
                labels = batch.pop("labels")
                with autocast(device, bf16):
                    logits = dp_module(**batch).logits
                per_ex = example_losses(enc.task, logits, labels)
                per_ex.sum().backward()  # type: ignore[no-untyped-call]
                gs = [p.grad_sample.float() for p in params]  # type: ignore[attr-defined]
                for members, c_g, _ in groups:
                    sq = [
                        gs[i].reshape(gs[i].shape[0], -1).pow(2).sum(1) for i in members
                    ]
                    norms = torch.sqrt(torch.stack(sq).sum(0))
                    factor = (c_g / (norms + 1e-6)).clamp(max=1.0)
                    for i in members:
                        summed[i] = torch.einsum("b,b...->...", factor, gs[i])
                losses.append(float(per_ex.detach().mean()))
                seen += len(idx)
                for p in params:
                    p.grad_sample = None  # type: ignore[attr-defined]
            for members, _, std in groups:
                # one CSPRNG draw per group: N(0, std^2) per coordinate, float64
                flat = sample_gaussian(std, sum(sizes[i] for i in members), rng=dp_rng)
                pos = 0
                for i in members:
                    p = params[i]
                    noise = torch.from_numpy(
                        flat[pos : pos + sizes[i]].reshape(tuple(p.shape))
                    ).to(device=device, dtype=torch.float32)
                    pos += sizes[i]
                    p.grad = ((summed[i] + noise) / (q * n)).to(p.dtype)
            if rank is not None:
                handle.apply_rank_mask(rank, grads=True)
            opt.step()
    if rank is not None:
        handle.apply_rank_mask(rank)
    mean_loss = float(np.mean(losses)) if losses else math.nan
    return LocalResult(
        steps,
        q,
        seen,
        mean_loss,
        time.perf_counter() - t0,
        optimizer_state_arrays(opt),
    )
