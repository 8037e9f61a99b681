"""Local training and DP-SGD (Opacus per-example gradients on peft LoRA)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedtrain.config import LoraSettings
from fedtrain.data import RawDataset
from fedtrain.lora import build_lora
from fedtrain.models import collate, encode, load_model, load_tokenizer
from fedtrain.train import DPSGD, example_losses, make_dp_module, train_local

CPU = torch.device("cpu")


def test_opacus_cause_is_eval_mode_head_copy(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """transformers 5 returns models in eval mode; peft's head copy inherits it."""
    from opacus import GradSampleModule
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from fedtrain.models import resolve_model

    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("minilm").path, num_labels=2
    )
    assert not base.training  # the root cause
    pm = get_peft_model(base, LoraConfig(r=2, task_type="SEQ_CLS"))
    ids = torch.randint(100, 1000, (3, 8))
    gsm = GradSampleModule(pm)
    out = gsm(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.tensor([0, 1, 0]),
    )
    with pytest.raises(ValueError, match="No activations detected"):
        out.loss.backward()
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("minilm").path, num_labels=2
    )
    pm = get_peft_model(base, LoraConfig(r=2, task_type="SEQ_CLS"))
    pm.train()  # the fix: the whole tree in train mode
    gsm = GradSampleModule(pm)
    out = gsm(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        labels=torch.tensor([0, 1, 0]),
    )
    out.loss.backward()
    assert all(p.grad_sample.shape[0] == 3 for p in gsm.parameters() if p.requires_grad)


@pytest.mark.parametrize("task", ["seq_cls", "token_cls"])
def test_per_example_grads_match_autograd(
    task: str,
    rt_small: tuple[RawDataset, RawDataset],
    conll_small: tuple[RawDataset, RawDataset],
) -> None:
    ds = (rt_small if task == "seq_cls" else conll_small)[0].head(3)
    tok = load_tokenizer("minilm")
    enc = encode(ds, tok, 24)
    h = build_lora(
        load_model("minilm", task, label_names=ds.label_names),
        task,
        LoraSettings(r=2, mode="fedit"),
    )
    h.model.config.hidden_dropout_prob = 0.0
    for mod in h.model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    with torch.no_grad():  # non-zero B so A also gets gradient
        for n in h.b_names:
            h.params[n].normal_(0, 0.1)
    gsm = make_dp_module(h)
    params = [h.params[n] for n in h.trainable_names()]
    batch = collate(enc, [0, 1, 2], CPU)
    labels = batch.pop("labels")
    example_losses(task, gsm(**batch).logits, labels).sum().backward()
    per = [p.grad_sample.clone() for p in params]
    for p in params:
        p.grad_sample = None
        p.grad = None
    for i in range(3):
        b = collate(enc, [i], CPU)
        lab = b.pop("labels")
        g = torch.autograd.grad(
            example_losses(task, h.model(**b).logits, lab).sum(), params
        )
        for k, gi in enumerate(g):
            torch.testing.assert_close(per[k][i], gi, atol=1e-5, rtol=1e-4)
    for p in params:
        p.grad_sample = None


def test_train_local_plain_and_dp(rt_small: tuple[RawDataset, RawDataset]) -> None:
    train, _ = rt_small
    enc = encode(train, load_tokenizer("minilm"), 32)
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=train.label_names),
        "seq_cls",
        LoraSettings(r=2),
    )
    a_before = h.get(h.a_names)
    b_before = h.get(h.b_names)
    res = train_local(
        h,
        enc,
        steps=2,
        batch_size=8,
        lr=1e-2,
        weight_decay=0.0,
        device=CPU,
        bf16=True,
        rng=np.random.default_rng(0),
    )
    assert res.steps == 2 and res.examples == 16 and np.isfinite(res.loss)
    after = h.get()
    assert all(np.array_equal(after[n], a_before[n]) for n in a_before)  # FFA: A frozen
    assert any(not np.array_equal(after[n], b_before[n]) for n in b_before)
    gsm = make_dp_module(h)
    kw = dict(
        steps=2,
        batch_size=8,
        lr=1e-2,
        weight_decay=0.0,
        device=CPU,
        bf16=False,
        dp=DPSGD(1.0, 0.5),
        dp_module=gsm,
    )
    h.set(after)
    torch.manual_seed(0)  # dropout draws from torch's global RNG
    r1 = train_local(h, enc, rng=np.random.default_rng(1), noise_seed=3, **kw)  # type: ignore[arg-type]
    s1 = h.get()
    h.set(after)
    torch.manual_seed(0)
    train_local(h, enc, rng=np.random.default_rng(1), noise_seed=3, **kw)  # type: ignore[arg-type]
    s2 = h.get()
    h.set(after)
    torch.manual_seed(0)
    train_local(h, enc, rng=np.random.default_rng(1), noise_seed=4, **kw)  # type: ignore[arg-type]
    s3 = h.get()
    assert r1.sample_rate == pytest.approx(8 / 64)
    assert all(np.array_equal(s1[n], s2[n]) for n in s1)  # injected seed: reproducible
    assert any(not np.array_equal(s1[n], s3[n]) for n in s1)  # the noise matters
    assert all(np.array_equal(s1[n], a_before[n]) for n in a_before)


def test_group_clipping_noise_and_clip_per_group(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """Group-wise DP-SGD: each group is clipped to its own norm and noised with
    std z*sqrt(2)*C_g, so the accountant's multiplier stays z."""
    from fedtrain.train import _clip_groups

    train, _ = rt_small
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=train.label_names),
        "seq_cls",
        LoraSettings(r=2),
    )
    names = h.trainable_names()
    flat = _clip_groups(names, set(h.head_names), DPSGD(0.8, 0.5))
    assert flat == [(list(range(len(names))), 0.5, pytest.approx(0.4))]
    groups = _clip_groups(names, set(h.head_names), DPSGD(0.8, 0.1, head_clip=2.0))
    (lora, c_l, s_l), (head, c_h, s_h) = groups
    assert {names[i] for i in head} == set(h.head_names)
    assert {names[i] for i in lora} == set(names) - set(h.head_names)
    assert (c_l, c_h) == (0.1, 2.0)
    assert s_l == pytest.approx(0.8 * math.sqrt(2) * 0.1)
    assert s_h == pytest.approx(0.8 * math.sqrt(2) * 2.0)
    # the combined mechanism has unit-noise sensitivity 1/z: multiplier exactly z
    sens = math.sqrt(sum((c / s) ** 2 for _, c, s in groups))
    assert sens == pytest.approx(1 / 0.8)
    # no head (causal LM): one group, no sqrt(2) inflation
    lora_only = [n for n in names if n not in h.head_names]
    assert _clip_groups(lora_only, set(), DPSGD(0.8, 0.1, head_clip=2.0)) == [
        (list(range(len(lora_only))), 0.1, pytest.approx(0.08))
    ]
    with pytest.raises(ValueError, match="head_clip"):
        DPSGD(1.0, 1.0, head_clip=0.0)
    with pytest.raises(ValueError):
        DPSGD(0.0, 1.0)


def test_group_clipped_step_bounds_each_group(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """With negligible noise, one DP step moves each group by at most lr-scaled
    clipped gradients; SGD and per-group learning rates are honoured."""
    train, _ = rt_small
    enc = encode(train, load_tokenizer("minilm"), 32)
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=train.label_names),
        "seq_cls",
        LoraSettings(r=2),
    )
    gsm = make_dp_module(h)
    before = h.get()
    lr, head_lr, c_l, c_h = 0.5, 0.05, 1e-3, 1e-2
    res = train_local(
        h,
        enc,
        steps=1,
        batch_size=len(enc),  # q = 1: every example, divisor = n
        lr=lr,
        head_lr=head_lr,
        optimizer="sgd",
        weight_decay=0.0,
        device=CPU,
        bf16=False,
        rng=np.random.default_rng(0),
        dp=DPSGD(1e-9, c_l, head_clip=c_h),
        dp_module=gsm,
        noise_seed=0,
    )
    assert res.examples == len(enc)
    after = h.get()

    def moved(keys: list[str]) -> float:
        return math.sqrt(sum(float(np.sum((after[k] - before[k]) ** 2)) for k in keys))

    lora_keys = [k for k in h.trainable_names() if k not in h.head_names]
    # mean of per-example gradients clipped to C_g has norm <= C_g
    assert 0 < moved(lora_keys) <= lr * c_l * (1 + 1e-4)
    assert 0 < moved(h.head_names) <= head_lr * c_h * (1 + 1e-4)
    with pytest.raises(ValueError, match="optimizer"):
        train_local(
            h,
            enc,
            steps=1,
            batch_size=4,
            lr=1e-3,
            optimizer="lion",
            weight_decay=0.0,
            device=CPU,
            bf16=False,
            rng=np.random.default_rng(0),
        )
