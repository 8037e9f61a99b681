"""Evaluation: classification accuracy/F1, NER entity F1 and token accuracy, LM loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedtrain.models import Encoded, collate
from fedtrain.train import autocast, example_losses

__all__ = ["MAIN_METRIC", "evaluate"]

MAIN_METRIC = {"seq_cls": "accuracy", "token_cls": "entity_f1", "causal_lm": "loss"}


@torch.no_grad()
def evaluate(
    model: Any,
    enc: Encoded,
    *,
    label_names: Sequence[str],
    device: torch.device,
    batch_size: int = 64,
    bf16: bool = True,
) -> dict[str, float]:
    """Evaluate a model on an encoded dataset.

    Args:
        model: the (peft) model.
        enc: the encoded evaluation data.
        label_names: label names (tag names for NER).
        device: device.
        batch_size: evaluation batch size.
        bf16: bf16 autocast on CUDA.

    Returns:
        ``seq_cls``: ``accuracy``, ``macro_f1``, ``majority_accuracy`` (the
        baseline that always predicts the most frequent label), ``loss``. ``token_cls``:
        ``entity_f1`` (seqeval micro, entity level), ``token_accuracy`` (all
        first-sub-word tokens, 'O' included), ``all_o_token_accuracy`` (the
        baseline that predicts 'O' everywhere), ``loss``. ``causal_lm``: ``loss``
        (mean per-example token NLL) and ``perplexity``.
    """
    was_training = model.training
    model.eval()
    losses: list[float] = []
    preds: list[Any] = []
    golds: list[Any] = []
    try:
        for start in range(0, len(enc), batch_size):
            idx = list(range(start, min(len(enc), start + batch_size)))
            batch = collate(enc, idx, device)
            labels = batch.pop("labels")
            with autocast(device, bf16):
                logits = model(**batch).logits
            losses.extend(example_losses(enc.task, logits, labels).tolist())
            if enc.task == "seq_cls":
                preds.extend(logits.argmax(-1).tolist())
                golds.extend(labels.tolist())
            elif enc.task == "token_cls":
                am = logits.argmax(-1)
                for row in range(len(idx)):
                    keep = labels[row] != -100
                    preds.append(am[row][keep].tolist())
                    golds.append(labels[row][keep].tolist())
    finally:
        if was_training:
            model.train()
    loss = float(np.mean(losses)) if losses else math.nan
    if enc.task == "seq_cls":
        p, g = np.array(preds), np.array(golds)
        f1s = []
        for c in range(len(label_names)):
            tp = float(((p == c) & (g == c)).sum())
            fp = float(((p == c) & (g != c)).sum())
            fn = float(((p != c) & (g == c)).sum())
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return {
            "accuracy": float((p == g).mean()),
            "macro_f1": float(np.mean(f1s)),
            "majority_accuracy": float(np.bincount(g).max() / len(g))
            if len(g)
            else math.nan,
            "loss": loss,
        }
    if enc.task == "token_cls":
        from seqeval.metrics import f1_score

        names = list(label_names)
        o = names.index("O") if "O" in names else 0
        flat_p = (
            np.concatenate([np.array(x, dtype=np.int64) for x in preds])
            if preds
            else np.zeros(0)
        )
        flat_g = (
            np.concatenate([np.array(x, dtype=np.int64) for x in golds])
            if golds
            else np.zeros(0)
        )
        tag_p = [[names[i] for i in x] for x in preds]
        tag_g = [[names[i] for i in x] for x in golds]
        return {
            "entity_f1": float(
                f1_score(tag_g, tag_p, average="micro", zero_division=0)
            ),
            "token_accuracy": float((flat_p == flat_g).mean())
            if len(flat_g)
            else math.nan,
            "all_o_token_accuracy": float((flat_g == o).mean())
            if len(flat_g)
            else math.nan,
            "loss": loss,
        }
    return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0)))}
