"""Rounds, server optimizers, sampling, privacy accounting and bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fedtrain_helpers import small_config, two_clients

import privagg
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig
from fedtrain.data import RawDataset
from fedtrain.errors import (
    EmptyClientDataError,
    LabelMismatchError,
    LayoutMismatchError,
    RankMismatchError,
    UnknownModelError,
)
from fedtrain.privacy import PrivacyBook, epsilon
from fedtrain.server import Federation, ServerOptimizer


def test_server_optimizers() -> None:
    x = {"w": np.zeros(3, np.float32)}
    d = {"w": np.array([1.0, -2.0, 0.0], np.float32)}
    assert np.allclose(
        ServerOptimizer("fedavg", 0.5, (0.9, 0.99), 1e-3).step(x, d)["w"],
        [0.5, -1.0, 0.0],
    )
    adam = ServerOptimizer("fedadam", 0.1, (0.9, 0.99), 1e-3)
    y = adam.step(x, d)["w"]
    m = 0.1 * d["w"]
    v = 0.99 * 1e-6 + 0.01 * d["w"] ** 2
    assert np.allclose(y, 0.1 * m / (np.sqrt(v) + 1e-3), atol=1e-6)
    yogi = ServerOptimizer("fedyogi", 0.1, (0.9, 0.99), 1e-3)
    yogi.step(x, d)
    vy = 1e-6 - 0.01 * d["w"] ** 2 * np.sign(1e-6 - d["w"] ** 2)
    assert np.allclose(yogi.v["w"], vy)
    re = ServerOptimizer("fedadam", 0.1, (0.9, 0.99), 1e-3)
    re.load(adam.arrays())
    assert np.array_equal(re.m["w"], adam.m["w"])


def test_one_round_plain_updates_global(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    fed = Federation(small_config(), two_clients(train), ev)
    g0 = {k: v.copy() for k, v in fed.global_state.items()}
    rec = fed.run_one_round(1)
    assert rec.contributors == ["alice", "bob"] and rec.failed == {}
    assert set(rec.metrics) == {"accuracy", "macro_f1", "majority_accuracy", "loss"}
    assert math.isinf(rec.epsilon)  # no DP guarantee
    assert any(not np.array_equal(g0[k], fed.global_state[k]) for k in g0)
    assert all(".lora_A." not in k for k in fed.global_state)  # ffa: A is never sent
    assert rec.bytes_sent["alice"] > 0
    assert set(rec.timings) >= {
        "local_train",
        "protect",
        "aggregate",
        "recover",
        "apply",
    }


def test_bad_client_update_is_dropped_and_named(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """One client with a wrong layout: named in `failed`; the round equals the good client's alone."""
    train, ev = rt_small
    clients = two_clients(train)

    def tamper(r: int, cid: str, msg: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if cid == "bob":
            k = sorted(msg)[0]
            msg = dict(msg)
            msg[k] = np.zeros((3, 3), np.float32)
        return msg

    fed = Federation(small_config(), clients, ev, fail_hook=tamper)
    torch.manual_seed(
        0
    )  # dropout uses torch's global RNG; alice trains first in both runs
    rec = fed.run_one_round(1)
    assert rec.contributors == ["alice"]
    assert (
        "bob" in rec.failed
        and "LayoutMismatchError" in rec.failed["bob"]
        and "'bob'" in rec.failed["bob"]
    )
    # the same round with alice alone gives the same global state (weights renormalised)
    solo = Federation(small_config(), {"alice": clients["alice"]}, ev)
    torch.manual_seed(0)
    solo.run_one_round(1)
    for k in fed.global_state:
        np.testing.assert_allclose(fed.global_state[k], solo.global_state[k], atol=1e-6)
    with pytest.raises(LayoutMismatchError, match="'mallory'"):
        fed._check_layout("mallory", {"x": np.zeros(2, np.float32)})


def test_bad_inputs_name_the_client(rt_small: tuple[RawDataset, RawDataset]) -> None:
    train, ev = rt_small
    with pytest.raises(EmptyClientDataError, match="'carol'"):
        Federation(small_config(), {"alice": train, "carol": train.head(0)}, ev)
    other = RawDataset("seq_cls", train.examples, ["bad", "good"])
    with pytest.raises(LabelMismatchError, match="'dave'"):
        Federation(small_config(), {"alice": train, "dave": other}, ev)
    bad_ids = RawDataset(
        "seq_cls", [{"text": "x", "label": 5, "key": "k"}], train.label_names
    )
    with pytest.raises(LabelMismatchError, match="'erin'"):
        Federation(small_config(), {"erin": bad_ids}, ev)
    with pytest.raises(RankMismatchError, match="'bob'"):
        Federation(
            small_config(lora=LoraSettings(r=4, mode="flora", client_ranks={"bob": 8})),
            two_clients(train),
            ev,
        )
    with pytest.raises(UnknownModelError):
        Federation(small_config(model="/nonexistent/model-dir"), two_clients(train), ev)


def test_privagg_layout_check_passes_through(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    fed = Federation(small_config(), two_clients(train), ev)
    good = fed._template_message()
    bad = {k: v for k, v in list(good.items())[1:]}
    with pytest.raises(privagg.PrivaggError):
        privagg.run_round(fed.session, {"a": good, "b": bad})
    res = privagg.run_round(fed.session, {"a": good, "b": bad}, isolate_failures=True)
    assert res.contributors == ("a",) and "b" in res.failed


def test_record_level_dp_epsilon_per_round(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0, delta=1e-5)
    cfg = small_config(
        privacy=p, rounds=RoundConfig(rounds=2, local_steps=2, batch_size=8)
    )
    fed = Federation(cfg, two_clients(train), ev)
    e1 = fed.run_one_round(1).epsilon
    e2 = fed.run_one_round(2).epsilon
    # each client: 32 examples, batch 8 -> q = 0.25, 2 steps per round
    want1 = epsilon(noise_multiplier=1.0, sample_rate=0.25, steps=2, delta=1e-5)
    want2 = epsilon(noise_multiplier=1.0, sample_rate=0.25, steps=4, delta=1e-5)
    assert (
        e1 == pytest.approx(want1, rel=1e-3)
        and e2 == pytest.approx(want2, rel=1e-3)
        and 0 < e1 < e2
    )
    assert set(fed.ledger.spent()["per_client"]) == {"alice", "bob"}


def test_client_level_dp_and_budget(rt_small: tuple[RawDataset, RawDataset]) -> None:
    train, ev = rt_small
    p = PrivacyConfig(
        level="client", noise_multiplier=1.0, clip=0.5, target_epsilon=1e9
    )
    cfg = small_config(
        privacy=p,
        rounds=RoundConfig(
            rounds=1, local_steps=1, batch_size=8, sampling="poisson", sample_rate=0.9
        ),
    )
    fed = Federation(cfg, two_clients(train), ev)
    assert fed.min_clients == 1  # floor(q N): shares of std z C / sqrt(1)
    rec = fed.run_one_round(1)
    n = len(rec.contributors)
    if n:
        # n shares of std z C: Gaussian(sqrt(n) z), no amplification claimed
        assert rec.epsilon == pytest.approx(
            epsilon(
                noise_multiplier=math.sqrt(n), sample_rate=1.0, steps=1, delta=1e-5
            ),
            rel=1e-3,
        )
    p2 = PrivacyConfig(
        level="client", noise_multiplier=1.0, clip=0.5, target_epsilon=1e-3
    )
    cfg2 = small_config(
        privacy=p2, rounds=RoundConfig(rounds=1, local_steps=1, batch_size=8)
    )
    fed2 = Federation(cfg2, two_clients(train), ev)
    with pytest.raises(privagg.BudgetExceededError):
        fed2.run_one_round(1)
    assert fed2.ledger.releases() == []  # refused before any release


def test_sampling_poisson_and_fraction(rt_small: tuple[RawDataset, RawDataset]) -> None:
    train, ev = rt_small
    clients = {f"c{i}": train.subset(range(i * 8, i * 8 + 8)) for i in range(8)}
    fed = Federation(
        small_config(
            rounds=RoundConfig(
                rounds=1, local_steps=1, sampling="fraction", sample_rate=0.5
            )
        ),
        clients,
        ev,
    )
    assert all(len(fed._sample()) == 4 for _ in range(5))
    assert len({tuple(fed._sample()) for _ in range(20)}) > 1
    fedp = Federation(
        small_config(
            rounds=RoundConfig(
                rounds=1, local_steps=1, sampling="poisson", sample_rate=0.5
            )
        ),
        clients,
        ev,
    )
    sizes = [len(fedp._sample()) for _ in range(200)]
    assert 3.4 < float(np.mean(sizes)) < 4.6 and len(set(sizes)) > 3


def test_ledger_persists_and_reloads(tmp_path: Path) -> None:
    kw = dict(
        level="record",
        noise_multiplier=1.0,
        delta=1e-5,
        accountant="pld",
        target_epsilon=None,
    )
    book = PrivacyBook(tmp_path, **kw)  # type: ignore[arg-type]
    book.check({"a b/c": (0.1, 3)})
    book.record(1, {"a b/c": (0.1, 3)}, ["a b/c"])
    again = PrivacyBook(tmp_path, **kw)  # type: ignore[arg-type]
    assert again.releases() == [1]
    eps = again.spent()["per_client"]["a b/c"]
    assert eps == pytest.approx(
        epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=1e-5), rel=1e-3
    )
    tight = PrivacyBook(tmp_path / "t", **{**kw, "target_epsilon": eps / 2})  # type: ignore[arg-type]
    with pytest.raises(privagg.BudgetExceededError):
        tight.check({"a": (0.1, 3)})


@pytest.mark.parametrize(
    "backend",
    ["ckks", "secagg", "additive", pytest.param("paillier", marks=pytest.mark.slow)],
)
def test_secure_backend_matches_plain(
    backend: str, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    """Encrypted vs plaintext aggregation of the same training: same state and metric."""
    if backend not in privagg.available_backends():
        pytest.skip(f"privagg backend {backend!r} not available")
    train, ev = rt_small
    states, metrics = [], []
    for be in ("plain", backend):
        fed = Federation(small_config(backend=be), two_clients(train), ev)
        torch.manual_seed(0)
        rec = fed.run_one_round(1)
        assert rec.contributors == ["alice", "bob"], rec.failed
        states.append(fed.global_state)
        metrics.append(rec.metrics["accuracy"])
    for k in states[0]:
        np.testing.assert_allclose(states[1][k], states[0][k], atol=2e-4)
    assert abs(metrics[0] - metrics[1]) <= 0.002
