"""Exactness of the four LoRA aggregation modes against avg(s B_k A_k)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtrain.config import LoraSettings
from fedtrain.lora import (
    LoraHandle,
    aggregate_delta,
    alternating_phase,
    build_lora,
    client_message,
    effective_delta,
    flora_products,
)
from fedtrain.models import load_model


@pytest.fixture(scope="module")
def handles() -> dict[str, LoraHandle]:
    out = {}
    for mode in ("ffa", "fedit", "flora", "alternating"):
        base = load_model("minilm", "seq_cls", label_names=["neg", "pos"])
        out[mode] = build_lora(base, "seq_cls", LoraSettings(r=4, alpha=8.0, mode=mode))
    return out


def _clients(
    h: LoraHandle, mode: str, k: int, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """Simulated local results: B (and A unless FFA) moved away from the start."""
    start = h.get()
    out = []
    for _ in range(k):
        s = {n: v.copy() for n, v in start.items()}
        for n in s:
            if (
                ".lora_B." in n
                or n in h.head_names
                or (mode != "ffa" and ".lora_A." in n)
            ):
                s[n] = s[n] + rng.normal(0, 0.05, s[n].shape).astype(np.float32)
        out.append(s)
    return out


def _target(
    clients: list[dict[str, np.ndarray]], w: np.ndarray, s: float
) -> dict[str, np.ndarray]:
    effs = [effective_delta(c, s) for c in clients]
    return {m: sum(wk * e[m] for wk, e in zip(w, effs, strict=True)) for m in effs[0]}


def _weighted_sum(
    msgs: list[dict[str, np.ndarray]], w: np.ndarray
) -> dict[str, np.ndarray]:
    return {
        n: sum(wk * m[n].astype(np.float64) for wk, m in zip(w, msgs, strict=True))
        for n in msgs[0]
    }


W = np.array([0.5, 0.3, 0.2])


def test_ffa_is_exact_and_sends_only_b(handles: dict[str, LoraHandle]) -> None:
    h = handles["ffa"]
    s = h.settings.scaling
    assert all(not h.params[n].requires_grad for n in h.a_names)
    assert all(h.params[n].requires_grad for n in h.b_names)
    glob = h.get(sorted(h.b_names + h.head_names))
    clients = _clients(h, "ffa", 3, np.random.default_rng(0))
    msgs = [client_message("ffa", c, glob) for c in clients]
    assert not any(".lora_A." in n for n in msgs[0])
    delta = aggregate_delta("ffa", _weighted_sum(msgs, W), float(W.sum()))
    new = {**h.get(), **{n: glob[n] + delta[n] for n in glob}}
    got = effective_delta(new, s)
    want = _target(clients, W, s)
    for m in want:
        np.testing.assert_allclose(got[m], want[m], atol=1e-6)
    # half the upload of fedit (A is as large as B here: d_in = d_out)
    fedit_glob = h.get()
    fedit_msg = client_message(
        "fedit", clients[0], {k: v for k, v in fedit_glob.items()}
    )
    lora_ffa = sum(v.size for n, v in msgs[0].items() if ".lora_" in n)
    lora_fedit = sum(v.size for n, v in fedit_msg.items() if ".lora_" in n)
    assert lora_fedit == 2 * lora_ffa


def test_fedit_is_inexact(handles: dict[str, LoraHandle]) -> None:
    h = handles["fedit"]
    s = h.settings.scaling
    glob = h.get()
    clients = _clients(h, "fedit", 3, np.random.default_rng(1))
    msgs = [client_message("fedit", c, glob) for c in clients]
    delta = aggregate_delta("fedit", _weighted_sum(msgs, W), float(W.sum()))
    new = {n: glob[n] + delta[n] for n in glob}
    got = effective_delta(new, s)
    want = _target(clients, W, s)
    err = max(float(np.abs(got[m] - want[m]).max()) for m in want)
    scale = max(float(np.abs(want[m]).max()) for m in want)
    assert err > 1e-3 * scale  # avg(B) avg(A) != avg(B A)
    # ... and it equals the separate averages exactly
    m0 = next(iter(want))
    a = sum(w * c[m0 + ".lora_A.weight"] for w, c in zip(W, clients, strict=True))
    b = sum(w * c[m0 + ".lora_B.weight"] for w, c in zip(W, clients, strict=True))
    np.testing.assert_allclose(got[m0], s * b @ a, atol=1e-6)


def test_flora_is_exact_with_heterogeneous_ranks(
    handles: dict[str, LoraHandle],
) -> None:
    h = handles["flora"]
    s = h.settings.scaling
    r_max = 4
    ranks = [4, 2, 1]
    rng = np.random.default_rng(2)
    glob = h.get(h.head_names)
    clients = []
    for k, rk in enumerate(ranks):
        h.init_a(100 + k, rank=rk)
        c = h.get()
        for m in [mm.name for mm in h.modules]:
            b = rng.normal(0, 0.05, c[m + ".lora_B.weight"].shape).astype(np.float32)
            b[:, rk:] = 0
            c[m + ".lora_B.weight"] = b
        clients.append(c)
    msgs = [
        client_message("flora", c, glob, slot=k, n_slots=3, rank=rk, r_max=r_max)
        for k, (c, rk) in enumerate(zip(clients, ranks, strict=True))
    ]
    summed = _weighted_sum(msgs, W)
    delta = aggregate_delta(
        "flora",
        summed,
        float(W.sum()),
        slot_weights=dict(enumerate(W.tolist())),
        r_max=r_max,
        scaling=s,
    )
    want = _target(clients, W, s)
    for m in want:
        np.testing.assert_allclose(delta[m + ".delta_w"], want[m], atol=1e-6)
    # a dropped client: renormalise by the contributors' weight
    two = _weighted_sum(msgs[:2], W[:2])
    d2 = aggregate_delta(
        "flora",
        two,
        float(W[:2].sum()),
        slot_weights={0: W[0], 1: W[1]},
        r_max=r_max,
        scaling=s,
    )
    w2 = _target(clients[:2], W[:2] / W[:2].sum(), s)
    for m in w2:
        np.testing.assert_allclose(d2[m + ".delta_w"], w2[m], atol=1e-6)
    assert set(flora_products(summed, {0: 1.0}, r_max, s)) == {
        m + ".delta_w" for m in want
    }


def test_shared_seed_a_is_identical_across_models() -> None:
    hs = [
        build_lora(
            load_model("minilm", "seq_cls", label_names=["a", "b"]),
            "seq_cls",
            LoraSettings(r=2, a_seed=5),
        )
        for _ in range(2)
    ]
    a0, a1 = hs[0].get(hs[0].a_names), hs[1].get(hs[1].a_names)
    for n in a0:
        np.testing.assert_array_equal(a0[n], a1[n])
        assert np.abs(a0[n]).max() > 0
    assert all(np.all(v == 0) for v in hs[0].get(hs[0].b_names).values())


def _moved(
    h: LoraHandle, start: dict[str, np.ndarray], k: int, rng: np.random.Generator
) -> list[dict[str, np.ndarray]]:
    """Simulated local results: only what the handle trains this round moves."""
    train = set(h.trainable_names())
    out = []
    for _ in range(k):
        s = {n: v.copy() for n, v in start.items()}
        for n in train:
            s[n] = s[n] + rng.normal(0, 0.05, s[n].shape).astype(np.float32)
        out.append(s)
    return out


def test_alternating_is_exact_and_trains_both_factors(
    handles: dict[str, LoraHandle],
) -> None:
    h = handles["alternating"]
    s = h.settings.scaling
    rng = np.random.default_rng(3)
    assert [alternating_phase(r) for r in (1, 2, 3, 4)] == ["B", "A", "B", "A"]
    glob = h.get(sorted(h.a_names + h.b_names + h.head_names))
    a0 = {n: glob[n].copy() for n in h.a_names}
    for round_, factor, frozen in ((1, "B", "A"), (2, "A", "B"), (3, "B", "A")):
        h.begin_round(round_)
        assert all(
            h.params[n].requires_grad for n in getattr(h, f"{factor.lower()}_names")
        )
        assert not any(
            h.params[n].requires_grad for n in getattr(h, f"{frozen.lower()}_names")
        )
        assert all(h.params[n].requires_grad for n in h.head_names)
        clients = _moved(h, glob, 3, rng)
        msgs = [client_message("alternating", c, glob) for c in clients]
        # the layout never changes (fedit's), the frozen factor's delta is exactly 0
        assert set(msgs[0]) == set(glob)
        for m in msgs:
            assert all(not np.any(m[n]) for n in m if f".lora_{frozen}." in n)
        delta = aggregate_delta("alternating", _weighted_sum(msgs, W), float(W.sum()))
        new = {n: glob[n] + delta[n] for n in glob}
        got = effective_delta(new, s)
        want = _target(clients, W, s)
        for m in want:
            np.testing.assert_allclose(got[m], want[m], atol=1e-6)
        # a dropped client: renormalised by the contributors' weight, still exact
        d2 = aggregate_delta(
            "alternating", _weighted_sum(msgs[:2], W[:2]), float(W[:2].sum())
        )
        got2 = effective_delta({n: glob[n] + d2[n] for n in glob}, s)
        want2 = _target(clients[:2], W[:2] / W[:2].sum(), s)
        for m in want2:
            np.testing.assert_allclose(got2[m], want2[m], atol=1e-6)
        glob = new
    # both factors were trained: A moved (round 2) and B moved (rounds 1, 3)
    assert any(np.abs(glob[n] - a0[n]).max() > 1e-3 for n in h.a_names)
    assert all(np.abs(glob[n]).max() > 1e-3 for n in h.b_names)
    h.begin_round(1)
