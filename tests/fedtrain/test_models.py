"""Pooling choice, sentence-transformers detection, adapter + head reload."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtrain.checkpoint import export_adapter
from fedtrain.config import LoraSettings
from fedtrain.data import RawDataset
from fedtrain.errors import DataError
from fedtrain.lora import build_lora
from fedtrain.models import (
    PooledClassifier,
    collate,
    detect_pooling,
    encode,
    load_adapter_model,
    load_model,
    load_tokenizer,
    model_pooling,
    resolve_model,
    with_pooling,
    write_model_sidecar,
)
from fedtrain.train import train_local

LABELS = ["negative", "positive"]


def _st_dir(tmp: Path, cfg: dict[str, bool], modules: bool = True) -> Path:
    (tmp / "1_Pooling").mkdir(parents=True)
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if modules:
        (tmp / "modules.json").write_text(
            json.dumps(
                [
                    {
                        "idx": 0,
                        "path": "",
                        "type": "sentence_transformers.models.Transformer",
                    },
                    {
                        "idx": 1,
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                ]
            )
        )
    return tmp


def test_detect_pooling_from_the_model_files(tmp_path: Path) -> None:
    assert detect_pooling(resolve_model("minilm").path) == "mean"
    assert (
        detect_pooling(str(_st_dir(tmp_path / "a", {"pooling_mode_cls_token": True})))
        == "cls"
    )
    assert (
        detect_pooling(
            str(
                _st_dir(
                    tmp_path / "b", {"pooling_mode_mean_tokens": True}, modules=False
                )
            )
        )
        == "mean"
    )
    assert (
        detect_pooling(str(_st_dir(tmp_path / "c", {"pooling_mode_max_tokens": True})))
        is None
    )
    (tmp_path / "plain").mkdir()
    assert detect_pooling(str(tmp_path / "plain")) is None
    assert detect_pooling(str(tmp_path / "missing")) is None


def test_pooling_choice_and_auto_default() -> None:
    auto = load_model("minilm", "seq_cls", label_names=LABELS)
    assert isinstance(auto, PooledClassifier) and auto.pooling == "mean"
    assert auto.prefix == "bert"  # adapter names match BertForSequenceClassification
    assert torch.count_nonzero(auto.classifier.weight) == 0  # zero-initialised head
    for p in ("cls", "pooler", "mean"):
        m = load_model("minilm", "seq_cls", label_names=LABELS, pooling=p)
        assert model_pooling(m) == p
    with pytest.raises(DataError):
        load_model("minilm", "seq_cls", label_names=LABELS, pooling="max")
    # re-pointing through the LoRA settings
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=LABELS),
        "seq_cls",
        LoraSettings(r=2, pooling="cls"),
    )
    assert model_pooling(h.model) == "cls"
    assert {"classifier.weight", "classifier.bias"} == set(h.head_names)
    assert any(n.startswith("bert.encoder.layer.0.") for n in h.params)


def test_mean_pooling_ignores_padding(rt_small: tuple[RawDataset, RawDataset]) -> None:
    tok = load_tokenizer("minilm")
    enc = encode(rt_small[0].head(6), tok, 48)
    m = load_model("minilm", "seq_cls", label_names=LABELS).eval()
    lens = [len(x) for x in enc.input_ids]
    short = int(np.argmin(lens))
    with torch.no_grad():
        both = collate(enc, list(range(6)), torch.device("cpu"))
        both.pop("labels")
        batched = m.pool(**both)[short]
        one = collate(enc, [short], torch.device("cpu"))
        one.pop("labels")
        alone = m.pool(**one)[0]
        out = m.encoder_model(input_ids=one["input_ids"]).last_hidden_state[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, out.mean(0), atol=1e-5, rtol=1e-4)
    # a native model is re-wrapped around its encoder
    nat = load_model("minilm", "seq_cls", label_names=LABELS, pooling="pooler")
    assert with_pooling(nat, "mean").pooling == "mean"


def test_exported_adapter_and_head_reload_with_identical_predictions(
    tmp_path: Path, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    tok = load_tokenizer("minilm")
    train, ev = rt_small
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=LABELS),
        "seq_cls",
        LoraSettings(r=4, alpha=8.0, mode="ffa", head_steps=3),
    )
    enc_tr = encode(train, tok, 48)
    train_local(
        h,
        enc_tr,
        steps=5,
        batch_size=16,
        lr=5e-3,
        head_lr=5e-2,
        weight_decay=0.0,
        device=torch.device("cpu"),
        bf16=False,
        rng=np.random.default_rng(0),
    )
    state = h.get()
    assert any(np.abs(state[n]).max() > 0 for n in h.b_names)  # LoRA steps ran
    assert np.abs(state["classifier.weight"]).max() > 0  # head steps ran
    enc = encode(ev, tok, 48)
    batch = collate(enc, list(range(len(enc))), torch.device("cpu"))
    batch.pop("labels")
    h.model.eval()
    with torch.no_grad():
        want = h.model(**batch).logits
    glob = h.get(sorted(h.b_names + h.head_names))
    dest = export_adapter(h, glob, tmp_path / "adapter", mode="ffa")
    write_model_sidecar(
        dest, model="minilm", task="seq_cls", pooling="mean", label_names=LABELS
    )
    re = load_adapter_model(dest)
    assert model_pooling(re) == "mean"
    with torch.no_grad():
        got = re(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    with pytest.raises(DataError):
        load_adapter_model(tmp_path)


def test_head_steps_cache_features_and_keep_the_adapter_frozen(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    from fedtrain.train import DPSGD, make_dp_module

    tok = load_tokenizer("minilm")
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=LABELS),
        "seq_cls",
        LoraSettings(r=2, head_steps=4),
    )
    enc = encode(rt_small[0], tok, 32)
    f1 = h.pooled_features(enc, torch.device("cpu"))
    assert h.pooled_features(enc, torch.device("cpu")) is f1  # cached
    before = h.get(h.b_names)
    res = train_local(
        h,
        enc,
        steps=4,
        batch_size=16,
        lr=1e-3,
        head_lr=0.5,
        optimizer="sgd",
        weight_decay=0.0,
        device=torch.device("cpu"),
        bf16=False,
        rng=np.random.default_rng(0),
        dp=DPSGD(noise_multiplier=1.0, clip=1.0),
        dp_module=make_dp_module(h),
        noise_seed=7,
    )
    assert res.steps == 4 and res.examples > 0
    after = h.get(h.b_names)
    assert all(np.array_equal(before[n], after[n]) for n in before)
    assert np.abs(h.get(["classifier.weight"])["classifier.weight"]).max() > 0
    assert h.pooled_features(enc, torch.device("cpu")) is f1  # adapter unchanged
