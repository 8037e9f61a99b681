"""Local client training: plain AdamW steps or DP-SGD on the LoRA parameters.

DP-SGD uses Opacus' ``GradSampleModule`` for per-example gradients of the trainable
(LoRA + head) parameters only, then clips each example's gradient to ``clip``, sums,
adds Gaussian noise ``N(0, (z * clip)^2)`` from a torch Generator seeded from
``os.urandom`` (injectable for tests), and divides by the expected batch size.
Batches are Poisson-sampled with rate ``q = batch_size / n`` as the accountant
assumes. Accounting is done by privagg's accountants (see :mod:`fedtrain.privacy`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as nnf

from fedtrain.lora import LoraHandle
from fedtrain.models import Encoded, collate

__all__ = [
    "DPSGD",
    "LocalResult",
    "autocast",
    "example_losses",
    "make_dp_module",
    "train_local",
]


@dataclass(frozen=True)
class DPSGD:
    """Record-level DP-SGD settings for one client.

    Attributes:
        noise_multiplier: z.
        clip: per-example L2 clip C.
    """

    noise_multiplier: float
    clip: float


@dataclass(frozen=True)
class LocalResult:
    """What a client's local training did.

    Attributes:
        steps: optimizer steps taken.
        sample_rate: Poisson batch sampling rate (DP) or batch/n.
        examples: examples processed.
        loss: mean training loss over the steps.
        seconds: wall time.
    """

    steps: int
    sample_rate: float
    examples: int
    loss: float
    seconds: float


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
        rng: generator for batch sampling (secret-seeded when DP is on).
        dp: DP-SGD settings, or None.
        dp_module: the GradSampleModule from :func:`make_dp_module` (DP only).
        noise_seed: TESTS ONLY: fixed seed for DP noise (default: os.urandom).
        rank: ``flora``: gradients/values beyond this rank are kept at zero.

    Returns:
        A summary of the local training.
    """
    t0 = time.perf_counter()
    n = len(enc)
    names = handle.trainable_names()
    params = [handle.params[k] for k in names]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    handle.model.train()
    losses: list[float] = []
    seen = 0
    q = min(1.0, batch_size / n)
    if dp is None:
        for idx in _batches(n, batch_size, steps, rng):
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
            raise ValueError("DP-SGD needs dp_module (make_dp_module)")
        seed = (
            noise_seed
            if noise_seed is not None
            else int.from_bytes(os.urandom(8), "little")
        )
        gen = torch.Generator(device=device).manual_seed(seed)
        std = dp.noise_multiplier * dp.clip
        for _ in range(steps):
            idx = np.flatnonzero(rng.random(n) < q)
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
                norms = torch.sqrt(
                    sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in gs)
                )
                factor = (dp.clip / (norms + 1e-6)).clamp(max=1.0)
                summed = [torch.einsum("b,b...->...", factor, g) for g in gs]
                losses.append(float(per_ex.detach().mean()))
                seen += len(idx)
                for p in params:
                    p.grad_sample = None  # type: ignore[attr-defined]
            for p, s in zip(params, summed, strict=True):
                noise = torch.normal(
                    0.0, std, size=tuple(p.shape), generator=gen, device=device
                )
                p.grad = ((s + noise) / (q * n)).to(p.dtype)
            if rank is not None:
                handle.apply_rank_mask(rank, grads=True)
            opt.step()
    if rank is not None:
        handle.apply_rank_mask(rank)
    mean_loss = float(np.mean(losses)) if losses else math.nan
    return LocalResult(steps, q, seen, mean_loss, time.perf_counter() - t0)
