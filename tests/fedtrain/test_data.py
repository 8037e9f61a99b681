from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedtrain.data import (
    CONLL_LABELS,
    RawDataset,
    conll_default_path,
    load_conll,
    load_csv,
    load_hf_dataset,
    load_jsonl,
    partition,
    partition_by_key,
    partition_dirichlet,
    partition_iid,
    sentiment_instructions,
)
from fedtrain.errors import DataError


def test_conll_full_train_documents() -> None:
    ds = load_conll(conll_default_path("train"))
    assert ds.task == "token_cls" and ds.label_names == list(CONLL_LABELS)
    assert len(ds) == 14041  # CoNLL-2003 English train sentences
    assert len(set(ds.keys())) == 946  # documents
    first = ds.examples[0]
    assert first["tokens"][:2] == ["EU", "rejects"]
    assert [CONLL_LABELS[t] for t in first["tags"][:3]] == ["B-ORG", "O", "B-MISC"]


def test_conll_bad_tag(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("EU NNP B-NP B-XYZ\n\n")
    with pytest.raises(DataError, match="B-XYZ"):
        load_conll(f)


def test_rotten_tomatoes(rt_all: RawDataset) -> None:
    assert rt_all.label_names == ["negative", "positive"]
    labels = rt_all.labels_for_skew()
    assert len(rt_all) == 12808 and labels.sum() == 7403
    assert all(e["key"] for e in rt_all.examples[:50])
    lm = sentiment_instructions(rt_all.head(3))
    assert lm.task == "causal_lm" and lm.examples[0]["response"] in (
        " positive",
        " negative",
    )


def test_csv_and_jsonl(tmp_path: Path) -> None:
    c = tmp_path / "d.csv"
    c.write_text("text,label,src\ngood,pos,a\nbad,neg,b\nok,pos,a\n")
    ds = load_csv(c, key_column="src")
    assert ds.label_names == ["neg", "pos"] and [e["label"] for e in ds.examples] == [
        1,
        0,
        1,
    ]
    assert ds.keys() == ["a", "b", "a"]
    with pytest.raises(DataError, match="column 'nope'"):
        load_csv(c, text_column="nope")
    j = tmp_path / "d.jsonl"
    j.write_text(
        "\n".join(json.dumps(r) for r in [{"tokens": ["A", "b"], "tags": ["B-X", "O"]}])
        + "\n"
    )
    tok = load_jsonl(j, task="token_cls")
    assert tok.label_names == ["B-X", "O"] and tok.examples[0]["tags"] == [0, 1]
    j2 = tmp_path / "bad.jsonl"
    j2.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError, match="response"):
        load_jsonl(j2, task="causal_lm")


def test_hf_without_datasets_is_clear() -> None:
    import importlib.util

    if importlib.util.find_spec("datasets") is not None:
        pytest.skip("datasets is installed")
    with pytest.raises(DataError, match="'datasets' package"):
        load_hf_dataset("rotten_tomatoes", task="seq_cls")


def test_partitioners() -> None:
    parts = partition_iid(103, 4, 0)
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(103)) and {len(p) for p in parts} <= {25, 26}
    assert partition_iid(103, 4, np.random.default_rng(0)) == parts

    y = np.array([0] * 500 + [1] * 500)
    skew = partition_dirichlet(y, 4, 0.1, 1)
    assert sorted(i for p in skew for i in p) == list(range(1000))
    fracs = [float(y[p].mean()) for p in skew]
    assert max(fracs) - min(fracs) > 0.5  # strongly label-skewed
    iidish = partition_dirichlet(y, 4, 1000.0, 1)
    assert max(abs(float(y[p].mean()) - 0.5) for p in iidish) < 0.1

    keys = [f"m{i % 37}" for i in range(400)]
    byk = partition_by_key(keys, 5, 3)
    owner = {}
    for k, p in enumerate(byk):
        for i in p:
            assert owner.setdefault(keys[i], k) == k  # a key never spans clients
    assert max(map(len, byk)) - min(map(len, byk)) <= 15
    with pytest.raises(DataError):
        partition_by_key(["a", "b"], 3, 0)


def test_partition_conll_by_document(
    conll_small: tuple[RawDataset, RawDataset],
) -> None:
    train, _ = conll_small
    parts = partition(train, 2, "key", 0)
    docs = [set(p.keys()) for p in parts]
    assert not docs[0] & docs[1]
    with pytest.raises(DataError, match="unknown partition"):
        partition(train, 2, "random", 0)
