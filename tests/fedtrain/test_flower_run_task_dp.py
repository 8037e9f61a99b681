"""Record-level DP (and client sampling) in the ``fedtrain`` Flower task (#14).

The same short run (MiniLM, 3 clients, 2 rounds, the tiny data of
``test_flower_run_task``) on :class:`fedtrain.server.Federation` and over the fake Grid
(the real ServerApp loop, the real ClientApp handler): the privacy ledgers must be the
same (every client's records, epsilon), and, with the run's ``test_seed`` (the same
AES-CTR stream per ``("dpsgd", round, client)`` in both runtimes: DP-SGD noise and
Poisson batches), the final adapter too. Then a ServerApp killed and restarted from
``checkpoint-dir`` must end with the uninterrupted run's ledger (killed between
rounds), or with the abandoned round charged (killed after the holder released a
round, before the ServerApp recorded it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import RecordDict
from test_flower_run_task import (  # noqa: F401 (autouse fixture)
    _inprocess,
    _max_diff,
    _run,
    _task_identity,
    flower_setup,
)

from fedtrain.flower import run_task, server_app
from fedtrain.flower.transport import unpack
from fedtrain.privacy import PrivacyBook

pytestmark = pytest.mark.slow

RECORD = {"level": "record", "noise_multiplier": 1.0, "clip": 1.0, "delta": 1e-5}


def _ledger(book: PrivacyBook) -> dict[str, list[dict[str, Any]]]:
    """Every ledger file's records, without the run id (a random per-process tag)
    and the wall-clock time of recording."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(book.folder.glob("*.json")):
        records = json.loads(f.read_text(encoding="utf-8"))["records"]
        for r in records:
            r["metadata"].pop("run_id")
            r.pop("unix_time")
        out[f.name] = records
    return out


def _server_restarts() -> None:
    """A new ServerApp process: no cached server-side model (clients keep theirs)."""
    for key in [k for k in run_task._CACHE if k[1] == "server"]:
        del run_task._CACHE[key]


class _CrashError(Exception):
    """The ServerApp process dies here."""


class _CrashingTask(run_task.ServerRunTask):
    """Dies in ``broadcast`` of training round ``at`` (nothing of it sent yet), or
    in ``apply`` of training round ``at`` before anything is recorded (the holder
    has released the round's sum)."""

    def __init__(self, run_config: Mapping[str, Any], where: str, at: int) -> None:
        super().__init__(run_config)
        self.where, self.at = where, at

    def broadcast(self, round_id: int) -> RecordDict:
        if self.where == "broadcast" and self.train_round + 1 == self.at:
            raise _CrashError
        return super().broadcast(round_id)

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, Any],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        if self.where == "apply" and self.train_round == self.at:
            raise _CrashError
        return super().apply(round_id, aggregate, contributors)


def _dp_run(**extra: Any) -> dict[str, Any]:
    """The tiny run on ``plain`` with record-level DP (12 examples per client, batch
    4: q = 1/3, 2 local steps) and a test seed; ``extra`` overrides."""
    privacy = {**RECORD, **extra.pop("privacy", {})}
    return _run("seq_cls", "plain", privacy=privacy, test_seed=11, **extra)


def test_record_dp_same_ledger_and_adapter_on_both_runtimes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = _dp_run()
    fed, initial, res = _inprocess(d)
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    assert task.book is not None
    want, got = _ledger(fed.ledger), _ledger(task.book)
    assert len(want) == 3 and all(len(r) == 2 for r in want.values())
    assert got == want
    assert task.book.spent() == fed.ledger.spent()
    assert summary["epsilon"] == res.rounds[-1].epsilon > 0
    assert [r["epsilon"] for r in summary["rounds"]] == [r.epsilon for r in res.rounds]
    # same seeded DP-SGD noise and Poisson batches: the same adapter
    diff = _max_diff(fed.global_state, task.global_state)
    print(f"\nrecord-level DP: max |adapter diff| = {diff:.3e}")
    assert diff <= 1e-6
    assert _max_diff(fed.global_state, initial) > 1e-4


def _flower_dp(
    d: dict[str, Any], ck: Path, crash: tuple[str, int] | None
) -> tuple[run_task.ServerRunTask, dict[str, Any]]:
    """Run ``d`` with ``checkpoint-dir`` ``ck``; with ``crash``, the ServerApp dies
    there once and a fresh one (same run config, same nodes) resumes the run."""
    run_task._CACHE.clear()
    grid, run_config, settings = flower_setup(d, "{}", **{"checkpoint-dir": str(ck)})
    if crash is not None:
        with pytest.raises(_CrashError):
            server_app.run(grid, settings, _CrashingTask(run_config, *crash))  # type: ignore[arg-type]
        _server_restarts()
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    return task, summary


def test_resumed_serverapp_keeps_the_privacy_ledger(tmp_path: Path) -> None:
    d = _dp_run()
    whole, s_whole = _flower_dp(d, tmp_path / "whole", None)
    between, s_between = _flower_dp(d, tmp_path / "between", ("broadcast", 2))
    assert whole.book is not None and between.book is not None
    assert whole.book.folder == tmp_path / "whole" / "privacy"
    assert s_between["resumed"] is True
    # killed between rounds: nothing lost, nothing counted twice, same training
    assert _ledger(between.book) == _ledger(whole.book)
    assert s_between["epsilon"] == s_whole["epsilon"]
    assert _max_diff(between.global_state, whole.global_state) <= 1e-6
    # killed after round 2's sum was released, before the ServerApp recorded it:
    # the resumed run charges round 2 for every client it was sent to, then runs
    # one more round (training round 3) to complete 2 rounds
    mid, s_mid = _flower_dp(d, tmp_path / "mid", ("apply", 2))
    assert mid.book is not None
    ledger = _ledger(mid.book)
    for name, records in ledger.items():
        assert [r["metadata"]["fl_round"] for r in records] == [1, 2, 3], name
        assert records[:1] == _ledger(whole.book)[name][:1]
        assert records[1]["metadata"]["in_sum"] is False  # charged, not recorded
    check_resumed_after_release(d, s_mid, s_whole, tmp_path / "mid", ledger)


def check_resumed_after_release(
    d: dict[str, Any],
    s_mid: Mapping[str, Any],
    s_whole: Mapping[str, Any],
    ck: Path,
    ledger: dict[str, list[dict[str, Any]]],
) -> None:
    """A run killed after round 2's release and resumed from ``ck``: round 2 is
    possibly released (charged), one more round ran, epsilon is above the
    uninterrupted run's, and a second resume of the finished run charges nothing."""
    assert [e["status"] for e in s_mid["releases"]] == [
        "applied",
        "possibly-released",
        "applied",
    ]
    assert s_mid["epsilon"] > s_whole["epsilon"]
    again, _ = _flower_dp(d, ck, None)
    assert again.book is not None and _ledger(again.book) == ledger


def test_deleted_ledger_refuses_resume(tmp_path: Path) -> None:
    """The checkpoint saw releases the ledger no longer holds: refuse (epsilon would
    be under-reported)."""
    from fedtrain.errors import PrivacyRecordError

    d = _dp_run(rounds={"rounds": 1})
    task, _ = _flower_dp(d, tmp_path / "ck", None)
    assert task.book is not None
    for f in task.book.folder.glob("*.json"):
        f.unlink()
    with pytest.raises(PrivacyRecordError, match="under-report"):
        _flower_dp(d, tmp_path / "ck", None)
    np.testing.assert_equal(task.train_round, 1)


def _party(cid: str) -> str:
    """In-process client id ``client<i>`` -> its Flower party id ``client-<i>``."""
    return f"client-{cid[len('client') :]}"


@pytest.mark.parametrize(
    ("backend", "options", "extra", "tol"),
    [
        (
            "plain",
            "{}",
            {
                "privacy": RECORD,
                "rounds": {"sampling": "fraction", "sample_rate": 0.67},
            },
            1e-6,
        ),
        (
            "secagg",
            '{"active": false}',
            {
                "rounds": {
                    "rounds": 3,
                    "sampling": "poisson",
                    "sample_rate": 0.6,
                    "optimizer": "sgd",
                }
            },
            # fixed point at scale 2**16: each round's sum of up to 3 values is off
            # by up to 3 * 0.5 / 2**16 before the division by the contributors'
            # weight (>= 2/3 here), about 3.4e-5 a round, over 3 rounds (measured
            # 7.6e-5 to 8.4e-5). Local SGD, not AdamW: AdamW's first steps move
            # every parameter by about lr whatever its gradient's size, so a
            # rounding-sized change in a tiny gradient moves a value by up to lr
            # (measured 1.6e-4 to 4.7e-4 with AdamW)
            2e-4,
        ),
    ],
)
def test_sampling_same_clients_ledger_and_adapter_on_both_runtimes(
    backend: str,
    options: str,
    extra: dict[str, Any],
    tol: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ServerApp samples Federation's clients (same seed, round and draw), sends
    the round (SecAgg+ included) to them only, and accounts as in-process."""
    import privagg

    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} not available")
    d = _run("seq_cls", backend, test_seed=11, **extra)
    if options != "{}":
        d["backend_options"] = json.loads(options)
    fed, initial, res = _inprocess(d)
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(d, options)
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    sampled = [[_party(c) for c in r.sampled] for r in res.rounds]
    print(f"\n{backend}: sampled per round {sampled}")
    assert any(len(s) < 3 for s in sampled)  # the sampling did leave clients out
    assert [r["contributors"] for r in summary["rounds"]] == sampled
    assert [r.contributors for r in res.rounds] == [list(r.sampled) for r in res.rounds]
    # every request of a round went to its sampled clients only
    node_party = {n: ctx.node_config["party-id"] for n, ctx in grid.contexts.items()}
    for rec, want in zip(summary["rounds"], sampled, strict=True):
        to = {
            node_party[m.metadata.dst_node_id]
            for m in grid.sent
            if unpack(m.content).round_id == rec["round"]
        }
        assert to == set(want), (rec["round"], to, want)
    diff = _max_diff(fed.global_state, task.global_state)
    print(f"{backend}: max |adapter diff| = {diff:.3e}")
    assert diff <= tol
    assert _max_diff(fed.global_state, initial) > 10 * tol
    mtol = 1e-6 if backend == "plain" else 1e-3
    assert [r["metrics"] for r in summary["rounds"]] == [
        pytest.approx(r.metrics, abs=mtol) for r in res.rounds
    ]
    if d.get("privacy"):
        assert task.book is not None
        assert _ledger(task.book) == _ledger(fed.ledger)
        # each client is charged once per round it was sampled in
        per_client = {
            r["metadata"]["client"]: 0
            for recs in _ledger(task.book).values()
            for r in recs
        }
        for recs in _ledger(task.book).values():
            for r in recs:
                per_client[r["metadata"]["client"]] += 1
        assert per_client == {
            c: sum(c in r.sampled for r in res.rounds)
            for c in fed.client_ids
            if any(c in r.sampled for r in res.rounds)
        }


def test_twelve_clients_same_slots_and_sampling_as_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12 clients: Federation sorts its client ids (``client10`` before ``client2``)
    and numbers slots (batch order, ``flora`` slots) in that order; the Flower task
    must use the same slots and sample the same clients."""
    d = _run(
        "seq_cls",
        "plain",
        test_seed=11,
        data={"max_train": 96},
        federation={"num_clients": 12},
        rounds={"sampling": "fraction", "sample_rate": 0.5},
    )
    fed, initial, res = _inprocess(d)
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    sampled = [[_party(c) for c in r.sampled] for r in res.rounds]
    assert all(len(s) == 6 for s in sampled)
    assert [sorted(r["contributors"]) for r in summary["rounds"]] == [
        sorted(s) for s in sampled
    ]
    diff = _max_diff(fed.global_state, task.global_state)
    print(f"\n12 clients: max |adapter diff| = {diff:.3e}")
    assert diff <= 1e-6
    assert _max_diff(fed.global_state, initial) > 1e-4


def test_budget_refuses_a_round_before_its_first_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round that could exceed ``target_epsilon`` is refused before anything of it
    is sent (as in-process, before training); nothing is recorded."""
    import privagg

    d = _dp_run(
        rounds={"rounds": 1},
        privacy={**RECORD, "target_epsilon": 1e-3},
    )
    monkeypatch.setattr(run_task, "_CACHE", {})
    grid, run_config, settings = flower_setup(d, "{}")
    task = run_task.ServerRunTask(run_config)
    with pytest.raises(privagg.BudgetExceededError, match="target_epsilon"):
        server_app.run(grid, settings, task)  # type: ignore[arg-type]
    assert task.book is not None and task.book.releases() == []
    assert all(unpack(m.content).round_id == 0 for m in grid.sent)  # hello only
