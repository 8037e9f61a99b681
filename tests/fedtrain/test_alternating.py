"""The ``alternating`` LoRA mode (RoLoRA) driven by the round loop.

Round 1 trains and aggregates only B (A shared and frozen), round 2 only A (B shared
and frozen): each round's aggregate is the exact weighted average of the clients'
products, both factors move over two rounds, every backend carries it, DP accounting
is that of any other mode, and a short run learns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fedtrain_helpers import small_config, two_clients

import privagg
from fedtrain.config import LoraMode, LoraSettings, PrivacyConfig, RoundConfig
from fedtrain.data import RawDataset
from fedtrain.lora import effective_delta
from fedtrain.server import Federation

Arrays = dict[str, np.ndarray]
ALT = LoraSettings(r=4, alpha=8.0, mode="alternating")
TWO_ROUNDS = RoundConfig(rounds=2, local_steps=2, batch_size=8, lr=5e-3)


def _recording_federation(
    rt_small: tuple[RawDataset, RawDataset], **kw: object
) -> tuple[Federation, dict[tuple[int, str], Arrays]]:
    """A federation whose clients' uploads are recorded (the hook changes nothing)."""
    sent: dict[tuple[int, str], Arrays] = {}

    def record(r: int, cid: str, msg: Arrays) -> Arrays:
        sent[(r, cid)] = {k: v.copy() for k, v in msg.items()}
        return msg

    train, ev = rt_small
    cfg = small_config(lora=ALT, rounds=TWO_ROUNDS, **kw)
    return Federation(cfg, two_clients(train), ev, fail_hook=record), sent


def test_round_loop_aggregate_is_the_exact_average_of_products(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    fed, sent = _recording_federation(rt_small)
    h = fed.handle
    assert fed.config.lora.mode is LoraMode.ALTERNATING
    # fedit's layout: A, B and the head are global state and in every upload
    assert set(fed.global_state) == set(h.a_names + h.b_names + h.head_names)
    s = fed.config.lora.scaling
    start = {k: v.copy() for k, v in fed.global_state.items()}
    for round_, trained, frozen in (
        (1, h.b_names, h.a_names),
        (2, h.a_names, h.b_names),
    ):
        before = {k: v.copy() for k, v in fed.global_state.items()}
        rec = fed.run_one_round(round_)
        assert rec.contributors == ["alice", "bob"], rec.failed
        assert h.phase == ("B" if round_ == 1 else "A")
        w = fed._weights(rec.contributors)
        local = {
            cid: {k: before[k] + sent[(round_, cid)][k] for k in before}
            for cid in rec.contributors
        }
        for cid in rec.contributors:  # the frozen factor's delta is exactly zero
            assert all(not np.any(sent[(round_, cid)][n]) for n in frozen)
            assert any(np.any(sent[(round_, cid)][n]) for n in trained)
        want = {
            m: sum(w[cid] * effective_delta(local[cid], s)[m] for cid in local)
            for m in effective_delta(before, s)
        }
        got = effective_delta(fed.global_state, s)
        for m in want:
            np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-7)
        # the shared factor stays exactly as it was; the trained one moved
        assert all(np.array_equal(fed.global_state[n], before[n]) for n in frozen)
        assert all(not np.array_equal(fed.global_state[n], before[n]) for n in trained)
        # the model the clients evaluate is the global state
        now = h.get(sorted(fed.global_state))
        assert all(np.array_equal(now[k], fed.global_state[k]) for k in now)
    # (b) over the two rounds both factors changed
    for names in (h.a_names, h.b_names):
        assert all(not np.array_equal(fed.global_state[n], start[n]) for n in names)


def test_local_optimizer_state_kept_per_factor(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    cfg = small_config(
        lora=ALT, rounds=RoundConfig(rounds=3, local_steps=2, batch_size=8, lr=5e-3)
    )
    fed = Federation(cfg, two_clients(train), ev)
    fed.run(export=False)
    steps = {k: float(v) for k, v in fed.client_opt["alice"].items() if "step" in k}
    # B trained in rounds 1 and 3 (4 steps), A in round 2 (2 steps)
    assert {k.split(".", 1)[0] for k in steps} == {"A", "B"}
    assert all(v == 4.0 for k, v in steps.items() if k.startswith("B."))
    assert all(v == 2.0 for k, v in steps.items() if k.startswith("A."))


@pytest.mark.parametrize(
    "backend",
    ["ckks", "secagg", "additive", pytest.param("paillier", marks=pytest.mark.slow)],
)
def test_secure_backends_match_plain(
    backend: str, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    """Round 1 (B) and round 2 (A) under each backend equal the plain aggregate.

    Both rounds start from the same state and optimizer state (the plain run's), so
    that each round's comparison sees the same client uploads: the integer backends'
    fixed-point rounding in round 1 would otherwise be amplified by round 2's AdamW.
    """
    if backend not in privagg.available_backends():
        pytest.skip(f"privagg backend {backend!r} not available")
    train, ev = rt_small
    feds = {
        be: Federation(
            small_config(lora=ALT, rounds=TWO_ROUNDS, backend=be),
            two_clients(train),
            ev,
        )
        for be in ("plain", backend)
    }
    plain, secure = feds["plain"], feds[backend]
    h = plain.handle
    for r, frozen in ((1, h.a_names), (2, h.b_names)):
        before = {n: plain.global_state[n].copy() for n in frozen}
        for fed in feds.values():
            torch.manual_seed(r)  # the same dropout masks in both runs
            rec = fed.run_one_round(r)
            assert rec.contributors == ["alice", "bob"], rec.failed
            # CKKS rounding or ring noise in the frozen coordinates is not applied
            assert all(np.array_equal(fed.global_state[n], before[n]) for n in frozen)
        for k in plain.global_state:
            np.testing.assert_allclose(
                secure.global_state[k], plain.global_state[k], atol=2e-4
            )
        secure.global_state = {k: v.copy() for k, v in plain.global_state.items()}
        secure.client_opt = {
            cid: {k: v.copy() for k, v in st.items()}
            for cid, st in plain.client_opt.items()
        }


def test_record_level_dp_accounting_is_unchanged(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """DP-SGD trains B then A (the Opacus hooks follow the factor); epsilon is that
    of the same plan in ``ffa`` mode."""
    train, ev = rt_small
    p = PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0)
    eps = {}
    for mode in ("ffa", "alternating"):
        lora = LoraSettings(r=4, alpha=8.0, mode=mode)
        fed = Federation(
            small_config(lora=lora, rounds=TWO_ROUNDS, privacy=p),
            two_clients(train),
            ev,
        )
        recs = [fed.run_one_round(r) for r in (1, 2)]
        assert all(r.contributors == ["alice", "bob"] for r in recs), recs[-1].failed
        eps[mode] = recs[-1].epsilon
        if mode == "alternating":
            a = fed.handle.a_names
            b = fed.handle.b_names
            assert all(np.any(fed.global_state[n]) for n in b)
            assert fed.handle.phase == "A"
            assert set(fed.handle.trainable_names()) == set(a + fed.handle.head_names)
    assert math.isfinite(eps["ffa"]) and eps["ffa"] > 0
    assert eps["alternating"] == pytest.approx(eps["ffa"], rel=1e-12)


def test_client_level_dp_on_an_integer_backend(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """Client-level DP (distributed discrete Gaussian, SecAgg+): every round is
    recorded; noise in the frozen factor's coordinates is dropped."""
    if "secagg" not in privagg.available_backends():
        pytest.skip("secagg not available")
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=1.0)
    fed, _ = _recording_federation(rt_small, privacy=p, backend="secagg")
    a0 = {n: fed.global_state[n].copy() for n in fed.handle.a_names}
    rec1 = fed.run_one_round(1)
    assert rec1.contributors == ["alice", "bob"], rec1.failed
    assert all(np.array_equal(fed.global_state[n], a0[n]) for n in a0)
    rec2 = fed.run_one_round(2)
    assert rec2.contributors == ["alice", "bob"], rec2.failed
    assert fed.ledger.counts() and sum(fed.ledger.counts().values()) == 2
    assert 0 < rec1.epsilon < rec2.epsilon < math.inf


@pytest.mark.slow
def test_short_run_learns(
    tmp_path: Path, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    """(c) run_experiment drives the mode (it used to refuse it) and the model
    learns: the evaluation loss falls and the training loss of the last round is
    below the first round's."""
    from fedtrain.experiment import ExperimentSpec, run_experiment

    train, ev = rt_small
    cfg = small_config(
        lora=ALT,
        rounds=RoundConfig(rounds=4, local_steps=6, batch_size=8, lr=5e-3),
    )
    rounds = []
    rep = run_experiment(
        cfg,
        train,
        ev,
        ExperimentSpec(num_clients=2, partition="iid"),
        tmp_path,
        progress=False,
        on_round=rounds.append,
    )
    assert rep["aggregation_mode"] == "alternating"
    assert [r["released"] for r in rep["rounds"]] == [True] * 4
    first, last = rounds[0], rounds[-1]
    assert np.mean(list(last.train_loss.values())) < np.mean(
        list(first.train_loss.values())
    )
    assert rep["rounds"][-1]["metrics"]["loss"] < rep["initial_metrics"]["loss"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
