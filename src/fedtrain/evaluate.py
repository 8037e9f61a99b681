"""Evaluation: classification accuracy/F1, NER entity F1 and token accuracy, LM loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedtrain.models import Encoded, collate
from fedtrain.train import autocast, example_losses

__all__ = [
    "MAIN_METRIC",
    "evaluate",
    "format_token_report",
    "predict_tokens",
    "token_classification_report",
]

MAIN_METRIC = {"seq_cls": "accuracy", "token_cls": "entity_f1", "causal_lm": "loss"}


@torch.inference_mode()
def predict_tokens(
    model: Any,
    enc: Encoded,
    *,
    device: torch.device,
    batch_size: int = 64,
    bf16: bool = True,
) -> tuple[list[list[int]], list[list[int]]]:
    """Token classification: (predicted, gold) label ids of every scored token.

    Scored tokens are the first sub-word of each word (labels != -100). Batches are
    length-sorted (dynamic padding), so little time goes to padding.
    """
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in enc.input_ids], kind="stable")
    preds: list[list[int]] = [[] for _ in range(len(enc))]
    golds: list[list[int]] = [[] for _ in range(len(enc))]
    try:
        for start in range(0, len(enc), batch_size):
            idx = order[start : start + batch_size].tolist()
            batch = collate(enc, idx, device)
            labels = batch.pop("labels")
            with autocast(device, bf16):
                am = model(**batch).logits.argmax(-1)
            for row, i in enumerate(idx):
                keep = labels[row] != -100
                preds[i] = am[row][keep].tolist()
                golds[i] = labels[row][keep].tolist()
    finally:
        if was_training:
            model.train()
    return preds, golds


def token_classification_report(
    preds: Sequence[Sequence[int]],
    golds: Sequence[Sequence[int]],
    label_names: Sequence[str],
) -> dict[str, Any]:
    """Per-tag token classification report (every scored token, 'O' included).

    Args:
        preds: predicted label ids per sentence.
        golds: gold label ids per sentence.
        label_names: tag names.

    Returns:
        ``{"per_tag": {tag: {precision, recall, f1, support}}, "micro": {...},
        "macro": {...}, "token_accuracy", "all_o_token_accuracy", "entity_f1"}``.
        Token-level micro P = R = F1 = token accuracy (every token has one label);
        macro averages the tags with support.
    """
    from seqeval.metrics import f1_score

    names = list(label_names)
    p = (
        np.concatenate([np.asarray(x, np.int64) for x in preds])
        if preds
        else np.zeros(0, np.int64)
    )
    g = (
        np.concatenate([np.asarray(x, np.int64) for x in golds])
        if golds
        else np.zeros(0, np.int64)
    )
    per: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        tp = float(((p == c) & (g == c)).sum())
        fp = float(((p == c) & (g != c)).sum())
        fn = float(((p != c) & (g == c)).sum())
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[name] = {
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "support": int(tp + fn),
        }
    acc = float((p == g).mean()) if len(g) else math.nan
    with_support = [v for v in per.values() if v["support"] > 0]
    macro = {
        k: float(np.mean([v[k] for v in with_support])) if with_support else math.nan
        for k in ("precision", "recall", "f1")
    }
    o = names.index("O") if "O" in names else 0
    tag_p = [[names[i] for i in x] for x in preds]
    tag_g = [[names[i] for i in x] for x in golds]
    return {
        "per_tag": per,
        "micro": {"precision": acc, "recall": acc, "f1": acc, "support": len(g)},
        "macro": {**macro, "support": len(g)},
        "token_accuracy": acc,
        "all_o_token_accuracy": float((g == o).mean()) if len(g) else math.nan,
        "entity_f1": float(f1_score(tag_g, tag_p, average="micro", zero_division=0)),
    }


def format_token_report(rep: dict[str, Any]) -> str:
    """The report of :func:`token_classification_report` as a text table."""
    lines = [f"{'tag':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    rows = [
        *rep["per_tag"].items(),
        ("micro avg", rep["micro"]),
        ("macro avg", rep["macro"]),
    ]
    for name, v in rows:
        lines.append(
            f"{name:>10} {v['precision']:9.4f} {v['recall']:9.4f} {v['f1']:9.4f} "
            f"{v['support']:9d}"
        )
    lines.append(
        f"token accuracy {rep['token_accuracy']:.4f} (all-'O' "
        f"{rep['all_o_token_accuracy']:.4f}); entity F1 {rep['entity_f1']:.4f}"
    )
    return "\n".join(lines)


def _pooled_base(model: Any) -> Any:
    from fedtrain.models import PooledClassifier

    get = getattr(model, "get_base_model", None)
    base = get() if callable(get) else model
    return base if isinstance(base, PooledClassifier) else None


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
    pooled = _pooled_base(model) if enc.task == "seq_cls" else None
    try:
        if pooled is not None:
            # pooled features are cached until the adapter changes: a round that
            # trained only the head (LP-FT) evaluates without an encoder pass
            feats = pooled.cached_features(enc, device, max(batch_size, 128))
            logits = pooled.classifier(feats).float()
            labels = torch.tensor(enc.labels, dtype=torch.long, device=device)
            losses = example_losses("seq_cls", logits, labels).tolist()
            preds = logits.argmax(-1).tolist()
            golds = labels.tolist()
        for start in range(0, len(enc) if pooled is None else 0, batch_size):
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
