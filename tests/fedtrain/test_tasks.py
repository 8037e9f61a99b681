"""NER metrics and the causal-LM task (SmolLM2 GGUF)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fedtrain_helpers import small_config, two_clients

from fedtrain.data import RawDataset, load_rotten_tomatoes, sentiment_instructions
from fedtrain.evaluate import evaluate
from fedtrain.models import encode, load_tokenizer
from fedtrain.server import Federation


def test_ner_alignment_first_subword(
    conll_small: tuple[RawDataset, RawDataset],
) -> None:
    train, _ = conll_small
    tok = load_tokenizer("minilm")
    enc = encode(train.head(5), tok, 64)
    for i, e in enumerate(train.head(5).examples):
        labelled = [t for t in enc.labels[i] if t != -100]
        assert labelled == e["tags"][: len(labelled)]
        assert len(labelled) == len(
            e["tags"]
        )  # short sentences: every word scored once


def test_ner_round_reports_both_f1_kinds(
    conll_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = conll_small
    fed = Federation(small_config(task="token_cls"), two_clients(train), ev)
    m0 = fed.evaluate()
    enc = fed.eval_enc
    gold = np.concatenate(
        [np.array([t for t in lab if t != -100]) for lab in enc.labels]
    )
    assert m0["all_o_token_accuracy"] == pytest.approx(float((gold == 0).mean()))
    rec = fed.run_one_round(1)
    for k in ("entity_f1", "token_accuracy", "all_o_token_accuracy", "loss"):
        assert 0.0 <= rec.metrics[k] or k == "loss"
    assert rec.metrics["all_o_token_accuracy"] == m0["all_o_token_accuracy"]


def test_evaluate_perfect_predictions_give_f1_one(
    conll_small: tuple[RawDataset, RawDataset],
) -> None:
    """seqeval path: a model that returns the gold tags scores 1.0 / 1.0."""
    _, ev = conll_small
    enc = encode(ev.head(8), load_tokenizer("minilm"), 32)

    class Oracle(torch.nn.Module):
        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> object:
            idx = [
                i
                for i in range(len(enc))
                if len(enc.input_ids[i]) <= input_ids.shape[1]
            ]
            logits = torch.zeros((*input_ids.shape, 9))
            for row, i in enumerate(idx[: input_ids.shape[0]]):
                for t, lab in enumerate(enc.labels[i]):
                    logits[row, t, max(lab, 0)] = 10.0
            return type("O", (), {"logits": logits})()

    m = evaluate(
        Oracle(),
        enc,
        label_names=ev.label_names,
        device=torch.device("cpu"),
        batch_size=64,
    )
    assert m["entity_f1"] == pytest.approx(1.0) and m[
        "token_accuracy"
    ] == pytest.approx(1.0)


@pytest.mark.slow
def test_causal_lm_smollm2_round() -> None:
    ds = sentiment_instructions(load_rotten_tomatoes().subset(range(0, 1600, 100)))
    train, ev = ds.head(12), ds.subset(range(12, 16))
    fed = Federation(
        small_config(task="causal_lm", model="smollm2", max_len=48),
        two_clients(train),
        ev,
    )
    assert any("q_proj" in m.name for m in fed.handle.modules)
    rec = fed.run_one_round(1)
    assert rec.contributors == ["alice", "bob"]
    assert np.isfinite(rec.metrics["loss"]) and rec.metrics["perplexity"] > 1.0
