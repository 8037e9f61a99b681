"""Client-level DP in the ``fedtrain`` Flower task (#14).

The same short run (MiniLM, 3 clients, 2 rounds, the tiny data of
``test_flower_run_task``) with ``privacy.level = "client"`` on
:class:`fedtrain.server.Federation` and over the fake Grid (the real ServerApp loop,
the real ClientApp handler, every privagg role loaded through
``privagg.distribution.session_for_role``):

* the privacy ledgers are the same record for record, and so is epsilon;
* every privagg role (aggregator, each client) is loaded with the noise share
  ``Federation`` sets its session up with, and each client draws from it every round;
* with the noise draw replaced by zeros in both runtimes (the only thing that cannot
  be the same: in-process one seeded stream feeds every client, over Flower each node
  draws from its own secret seed), the final adapters agree: ``plain`` within 1e-6
  (float rounding), passive SecAgg+ within its fixed-point tolerance (see the bound);
* with the real draw, the aggregate the ServerApp recovers is the clients' clipped
  updates plus noise of the planned standard deviation;
* a round with fewer than ``min_clients`` sampled clients, or contributions, releases
  nothing (as in-process);
* the refusal of client-level DP over Flower is gone; bad combinations still get
  typed errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_flower_run_task import (  # noqa: F401 (autouse fixture)
    _inprocess,
    _max_diff,
    _run,
    _task_identity,
    flower_setup,
    with_additive_servers,
    with_dealt_keys,
    with_identities,
)
from test_flower_run_task_dp import _flower_dp, _ledger, check_resumed_after_release

import privagg
from fedtrain.errors import ConfigError
from fedtrain.flower import material, run_task, server_app
from fedtrain.flower.run_task import FlowerRun
from fedtrain.flower.transport import unpack
from privagg.dp import DiscreteGaussianShare

CLIENT = {
    "level": "client",
    "noise_multiplier": 1.0,
    "clip": 0.5,
    "delta": 1e-5,
    "min_clients": 2,
}


def _client_run(backend: str = "plain", **extra: Any) -> dict[str, Any]:
    """The tiny run with client-level DP (every client sampled each round, noise
    sized for 2 contributors, updates clipped to L2 <= 0.5) and a test seed."""
    privacy = {**CLIENT, **extra.pop("privacy", {})}
    return _run("seq_cls", backend, privacy=privacy, test_seed=11, **extra)


def _zero_noise(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Both samplers of the share return zeros; each call is logged as (kind,
    stddev)."""
    calls: list[tuple[str, float]] = []

    def encoded(self: Any, n: int, *, scale: float, rng: Any = None) -> Any:
        calls.append(("encoded", self.stddev))
        return np.zeros(n, dtype=np.int64)

    def real(self: Any, n: int, *, rng: Any = None) -> Any:
        calls.append(("real", self.stddev))
        return np.zeros(n, dtype=np.float64)

    monkeypatch.setattr(DiscreteGaussianShare, "sample_encoded", encoded)
    monkeypatch.setattr(DiscreteGaussianShare, "sample_real", real)
    return calls


def _spy_sessions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every Flower role loaded: (role, noise it was given)."""
    loaded: list[tuple[str, Any]] = []
    real = material.load_session

    def spy(spec: Any, layout: Any, role: Any, **kw: Any) -> Any:
        loaded.append((str(role.value), kw.get("noise")))
        return real(spec, layout, role, **kw)

    from fedtrain.flower import client_app

    monkeypatch.setattr(client_app, "load_session", spy)
    monkeypatch.setattr(server_app, "load_session", spy)
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "options", "tol"),
    [
        ("plain", "{}", 1e-6),
        # fixed point at scale 2**16 with stochastic rounding, each client drawing
        # its rounding from its own stream (in-process one seeded stream, over
        # Flower each node's secret seed): a round's sum of 3 clipped updates is off
        # by less than 3 / 2**16 = 4.6e-5 per coordinate, 1.5e-5 after the division
        # by the 3 contributors; the next round's local AdamW steps start from
        # adapters that differ by that much, and AdamW's normalised first steps can
        # turn a tiny gradient change into a change of up to lr = 1e-2 in a
        # near-zero-gradient coordinate. 2e-4 is the bound the record-level SecAgg+
        # parity test uses for the same effect (measured here: 3.6e-5 to 1.2e-4 over
        # ten runs)
        ("secagg", '{"active": false, "bound": 0.5}', 2e-4),
        # keyed backends, dealt to the nodes, the secret key on a holder node: CKKS's
        # approximate arithmetic and Paillier's fixed point (the same AdamW effect)
        ("ckks", '{"preset": "test-fast", "threads": 1}', 2e-4),
        ("paillier", '{"key_bits": 2048, "bound": 0.5}', 2e-4),
        # active SecAgg+: each node its own identity key, the pinned directory
        ("secagg", '{"active": true, "bound": 0.5}', 2e-4),
        # additive: two aggregation-server nodes and a holder node, own keys
        ("additive", '{"n_servers": 3, "bound": 0.5}', 2e-4),
    ],
)
def test_client_dp_same_ledger_and_adapter_on_both_runtimes(
    backend: str,
    options: str,
    tol: float,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} not available")
    d = _client_run(backend)
    if options != "{}":
        d["backend_options"] = json.loads(options)
    calls = _zero_noise(monkeypatch)
    fed, initial, res = _inprocess(d)
    assert fed.client_dp is not None
    share = fed.client_dp.share
    assert share.stddev == pytest.approx(1.0 * 0.5 / math.sqrt(2))
    kind = "real" if backend in ("plain", "ckks") else "encoded"
    assert calls == [(kind, share.stddev)] * 6  # 3 clients x 2 rounds
    calls.clear()
    monkeypatch.setattr(run_task, "_CACHE", {})
    monkeypatch.setattr(run_task, "_CLIENT_DP", {})
    loaded = _spy_sessions(monkeypatch)
    grid, run_config, settings = flower_setup(d, options)
    task = run_task.ServerRunTask(run_config)
    roles = {"aggregator", "client"}
    if backend in ("ckks", "paillier"):
        grid, settings = with_dealt_keys(grid, run_config, settings, task, tmp_path)
        roles.add("holder")
    elif json.loads(options).get("active"):
        grid, settings = with_identities(grid, settings, tmp_path)
    elif backend == "additive":
        grid, settings = with_additive_servers(grid, run_config, settings, tmp_path)
        roles |= {"server", "holder"}
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    # every role got Federation's share (same type, stddev, dimension and rounds)
    assert {r for r, _ in loaded} == roles
    want = fed.client_dp.session_noise()
    assert all(n == want for _, n in loaded), loaded[:2]
    # each client drew its share each round (SecAgg+ replays its role at each stage)
    assert {c for c in calls} == {(kind, share.stddev)}
    assert len(calls) >= 6
    # the same ledger, record for record, and the same epsilon
    assert task.book is not None
    want_ledger, got_ledger = _ledger(fed.ledger), _ledger(task.book)
    assert [len(r) for r in want_ledger.values()] == [2]  # one federation ledger
    assert got_ledger == want_ledger
    assert task.book.spent() == fed.ledger.spent()
    eps = [r.epsilon for r in res.rounds]
    assert summary["epsilon"] == eps[-1] > 0
    assert [r["epsilon"] for r in summary["rounds"]] == eps
    assert [r["contributors"] for r in summary["rounds"]] == [
        [f"client-{i}" for i in range(3)]
    ] * 2
    diff = _max_diff(fed.global_state, task.global_state)
    print(f"\nclient-level DP, {backend}: max |adapter diff| = {diff:.3e}")
    assert diff <= tol
    assert _max_diff(fed.global_state, initial) > 10 * tol


def test_recovered_sum_carries_the_planned_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real draws: the ServerApp's recovered sum minus the clients' clipped updates
    is Gaussian with std ``sqrt(3) z C / sqrt(min_clients)`` (plain: float shares)."""
    d = _client_run("plain", rounds={"rounds": 1})
    monkeypatch.setattr(run_task, "_CACHE", {})
    monkeypatch.setattr(run_task, "_CLIENT_DP", {})
    updates: dict[str, np.ndarray] = {}
    real_update = run_task.client_update

    def capture(party: str, *args: Any) -> Any:
        up = real_update(party, *args)
        updates[party] = np.concatenate(
            [np.ravel(np.asarray(v, np.float64)) for _, v in sorted(up.arrays.items())]
        )
        assert up.weight == 1.0
        return up

    monkeypatch.setattr(run_task, "client_update", capture)
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    sums: list[np.ndarray] = []
    real_apply = task.apply

    def apply(
        round_id: int, aggregate: Mapping[str, Any], contributors: tuple[str, ...]
    ) -> dict[str, Any]:
        sums.append(
            np.concatenate(
                [
                    np.ravel(np.asarray(v, np.float64))
                    for _, v in sorted(aggregate.items())
                ]
            )
        )
        return real_apply(round_id, aggregate, contributors)

    monkeypatch.setattr(task, "apply", apply)
    server_app.run(grid, settings, task)  # type: ignore[arg-type]
    assert len(updates) == 3 and len(sums) == 1
    for u in updates.values():  # clipped to L2 <= C
        assert float(np.linalg.norm(u)) <= 0.5 + 1e-6
    noise = sums[0] - sum(updates.values())
    want = math.sqrt(3) * 1.0 * 0.5 / math.sqrt(2)
    print(
        f"\nnoise over Flower: std {np.std(noise):.4f} (planned {want:.4f}), "
        f"{noise.size} values"
    )
    assert noise.size > 1000
    assert float(np.std(noise)) == pytest.approx(want, rel=0.05)
    assert abs(float(np.mean(noise))) < 5 * want / math.sqrt(noise.size)


def test_client_level_is_accepted_and_bad_combinations_are_typed() -> None:
    """The refusal is gone; what Federation refuses is refused over Flower too, with
    a typed error, before any model is loaded."""
    d = _client_run("secagg")
    fr = FlowerRun.from_run_config(run_task.run_config_entry(d))
    assert fr.config.privacy.level == "client"
    # flora cannot carry client-level DP (RunConfig's own check)
    bad = _client_run(lora={"mode": "flora"})
    with pytest.raises(ConfigError, match="flora"):
        FlowerRun.from_run_config(run_task.run_config_entry(bad))
    # min_clients above the federation
    many = _client_run(privacy={"min_clients": 4})
    many_cfg = run_task.run_config_entry(many)
    layout = privagg.Layout.from_arrays({"w": np.zeros(4)})
    with pytest.raises(ConfigError, match="min_clients"):
        run_task.session_noise(many_cfg, privagg.get_backend("plain"), layout)
    # the session's bound below the clip, given or (none given) by default
    for opts, match in [
        ({"active": False, "bound": 0.25}, "below the client clip"),
        ({"active": False}, None),
    ]:
        cfg = {**run_task.run_config_entry(d), "backend-options": json.dumps(opts)}
        default = privagg.get_backend("secagg", active=False).value_bound
        if match is None and default is not None and default >= 0.5:
            continue  # the default bound covers the clip: nothing to refuse
        with pytest.raises(ConfigError, match=match or "below the client clip"):
            run_task.ServerRunTask(cfg)
    # not JSON
    with pytest.raises(privagg.ConfigurationError, match="backend-options"):
        run_task.ServerRunTask(
            {**run_task.run_config_entry(d), "backend-options": "{nope"}
        )


def test_session_noise_is_none_without_client_level() -> None:
    layout = privagg.Layout.from_arrays({"w": np.zeros(4)})
    plain = privagg.get_backend("plain")
    for level in ("none", "record"):
        priv = {"level": level}
        if level == "record":
            priv.update(noise_multiplier=1.0, clip=1.0)
        d = _run("seq_cls", "plain", privacy=priv)
        assert (
            run_task.session_noise(run_task.run_config_entry(d), plain, layout) is None
        )
    d = _client_run()
    share = run_task.session_noise(run_task.run_config_entry(d), plain, layout)
    assert share is not None and share.stddev == pytest.approx(0.5 / math.sqrt(2))


def test_too_few_clients_release_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in-process: a round that samples fewer than ``min_clients`` clients sends
    nothing; a sum of fewer than ``min_clients`` contributions (a node silent) is
    neither recorded nor applied."""
    monkeypatch.setattr(run_task, "_CACHE", {})
    monkeypatch.setattr(run_task, "_CLIENT_DP", {})
    # one client sampled (fraction 1/3), noise sized for 2: nothing sent
    d = _client_run(rounds={"rounds": 1, "sample_rate": 0.34})
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    before = {k: v.copy() for k, v in task.global_state.items()}
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    assert summary["rounds"][0]["skipped"] == "no client sampled"
    assert all(unpack(m.content).round_id == 0 for m in grid.sent)  # hello only
    assert task.book is not None and task.book.releases() == []
    assert _max_diff(task.global_state, before) == 0.0
    # all three sampled, noise sized for 3, one node silent: 2 contributions
    d = _client_run(rounds={"rounds": 1}, privacy={"min_clients": 3})
    grid, run_config, settings = flower_setup(d, "{}")
    grid.silent.add(102)
    task = run_task.ServerRunTask(run_config)
    before = {k: v.copy() for k, v in task.global_state.items()}
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    rec = summary["rounds"][0]
    assert rec["contributors"] == ["client-0", "client-1"]
    assert "fewer than min_clients=3" in rec["skipped"]
    assert task.book is not None and task.book.releases() == []
    assert summary["epsilon"] == 0.0
    assert _max_diff(task.global_state, before) == 0.0


@pytest.mark.slow
def test_client_dp_resumed_serverapp_keeps_the_privacy_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client level, ServerApp killed and restarted (``checkpoint-dir``): between
    rounds, nothing is lost or counted twice; after round 2's sum was released and
    before it was recorded, the resumed run charges that round (a sum of
    ``min_clients`` shares, the worst case the ServerApp would have applied) and runs
    one more training round; a second resume of the finished run charges nothing."""
    monkeypatch.setattr(run_task, "_CLIENT_DP", {})
    d = _client_run("plain")
    whole, s_whole = _flower_dp(d, tmp_path / "whole", None)
    between, s_between = _flower_dp(d, tmp_path / "between", ("broadcast", 2))
    assert whole.book is not None and between.book is not None
    assert s_between["resumed"] is True
    want = _ledger(whole.book)
    assert [len(r) for r in want.values()] == [2]  # one federation ledger, 2 rounds
    assert _ledger(between.book) == want
    assert s_between["epsilon"] == s_whole["epsilon"] > 0
    mid, s_mid = _flower_dp(d, tmp_path / "mid", ("apply", 2))
    assert mid.book is not None
    ledger = _ledger(mid.book)
    (records,) = ledger.values()
    assert [r["metadata"]["fl_round"] for r in records] == [1, 2, 3]
    assert records[:1] == next(iter(want.values()))[:1]
    # the applied rounds hold 3 shares (z sqrt(3/2)); the round in flight is charged
    # as the worst case, a sum of min_clients = 2 shares (z itself)
    meta = [r["metadata"] for r in records]
    assert [m["num_contributors"] for m in meta] == [3, 2, 3]
    assert [r["event"]["noise_multiplier"] for r in records] == pytest.approx(
        [math.sqrt(1.5), 1.0, math.sqrt(1.5)]
    )
    check_resumed_after_release(d, s_mid, s_whole, tmp_path / "mid", ledger)


@pytest.mark.slow
def test_client_dp_calibrated_from_target_epsilon_on_both_runtimes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``privacy.calibrate`` with ``target_epsilon``: the ServerApp and every node
    calibrate the same noise multiplier as ``Federation`` (no data, no model: public
    parameters only), so the ledger and epsilon are the same and end within the
    target."""
    d = _client_run(
        "plain",
        privacy={"calibrate": True, "target_epsilon": 20.0, "noise_multiplier": 99.0},
    )
    calls = _zero_noise(monkeypatch)
    fed, _initial, res = _inprocess(d)
    assert fed.client_dp is not None
    z = fed.client_dp.noise_multiplier
    assert z != 99.0  # calibrated, not the configured value
    calls.clear()
    monkeypatch.setattr(run_task, "_CACHE", {})
    monkeypatch.setattr(run_task, "_CLIENT_DP", {})
    loaded = _spy_sessions(monkeypatch)
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    share = fed.client_dp.session_noise()
    assert loaded and all(n == share for _, n in loaded)
    assert {c for c in calls} == {("real", fed.client_dp.share.stddev)}
    assert task.book is not None
    assert _ledger(task.book) == _ledger(fed.ledger)
    eps = [r.epsilon for r in res.rounds]
    assert [r["epsilon"] for r in summary["rounds"]] == eps
    assert 0 < summary["epsilon"] <= 20.0
