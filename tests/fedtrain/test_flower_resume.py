"""The ServerApp restarted mid-run, and the holder restarted (issue #14, faults).

In process, over the fake Grid of ``test_flower_transport.py`` (the real ClientApp
handler, one Flower ``Context`` per node, which outlives a ServerApp restart as a
SuperNode does). A crash is an exception raised out of the ServerApp's loop at a chosen
point; the restarted ServerApp is a fresh :func:`server_app.run` with the same run
config (``checkpoint-dir`` included) and a fresh task object.

What must hold: the run completes ``rounds`` rounds; no round id is run twice (each
active SecAgg+ client's round register lists every round id it joined exactly once, and
the per-node register would refuse a second join anyway); the ServerApp's release
ledger charges every completed round once and every round abandoned mid-flight as
possibly released (so it covers everything the holder's register says it released);
every completed round's aggregate is the weighted sum of its contributors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from tests.fedtrain.test_flower_active_secagg import (
    SHAPES,
    WEIGHTS,
    check_sum,
    make_identities,
    node_configs,
)
from tests.fedtrain.test_flower_faults import _dealt
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
    holder_identity,
)

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.errors import FlowerConfigError, FlowerProtocolError
from fedtrain.flower.resume import RunCheckpoint
from fedtrain.flower.tasks import parse_shapes, synthetic_sum
from fedtrain.flower.transport import unpack

pytestmark = pytest.mark.slow

SECAGG = "secagg" in privagg.available_backends()
CKKS = "ckks" in privagg.available_backends()
FIRST = 1000


class _CrashError(Exception):
    """The ServerApp process dies here (not a privagg error: nothing handles it)."""


@pytest.fixture(autouse=True)
def _fresh_holder_cache() -> Iterator[None]:
    client_app._HOLDERS.clear()
    yield
    client_app._HOLDERS.clear()


class _Task(server_app._SyntheticTask):
    """The synthetic task; crashes in ``broadcast`` (between rounds: nothing of the
    round sent yet) or in ``apply`` (mid-round: after the holder released it)."""

    def __init__(self, crash: tuple[str, int] | None = None) -> None:
        super().__init__(SHAPES)
        self.crash = crash

    def broadcast(self, round_id: int) -> RecordDict | None:
        if self.crash == ("broadcast", round_id):
            raise _CrashError
        return super().broadcast(round_id)

    def apply(
        self,
        round_id: int,
        aggregate: Mapping[str, np.ndarray],
        contributors: tuple[str, ...],
    ) -> dict[str, Any]:
        if self.crash == ("apply", round_id):
            raise _CrashError
        return super().apply(round_id, aggregate, contributors)


class _CrashingGrid(FakeGrid):
    """A fake Grid whose ServerApp dies while pushing ``(round id, stage)``."""

    crash_at: tuple[int, int] | None = None

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        for msg in messages:
            env = unpack(msg.content)
            if (env.round_id, int(env.meta.get("stage", "-1"))) == self.crash_at:
                self.crash_at = None
                raise _CrashError
        return super().push_messages(messages)


def _registered(path: Path) -> list[int]:
    """Every round id a register file lists (all params ids), with repeats."""
    data = json.loads(path.read_text())
    return sorted(r for rounds in data["released"].values() for r in rounds)


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("identities")
    directory, pin = make_identities(folder, sorted(WEIGHTS))
    return folder, directory, pin


def _active_grid(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> tuple[_CrashingGrid, server_app.RunSettings]:
    """4 active SecAgg+ clients, each with its own round register, and a result holder
    node with a release register; 3 rounds from round id FIRST, checkpointed."""
    folder, directory, pin = identities
    configs = node_configs(folder, directory, pin)
    for c in configs.values():
        c["privagg-round-register"] = str(tmp_path / f"{c['party-id']}.rounds")
    ident, holder_key = holder_identity(tmp_path / "holder-identity")
    configs[200] = {
        "privagg-holder": True,
        "privagg-holder-register": str(tmp_path / "holder.released"),
        "privagg-identity-directory": str(directory),
        "privagg-identity-directory-fingerprint": pin,
        **ident,
    }
    settings = server_app.RunSettings(
        backend="secagg",
        backend_options={"active": True},
        shapes=SHAPES,
        rounds=3,
        min_nodes=5,
        stage_timeout=1.0,
        holder="node",
        holder_key=holder_key,
        identity_directory=str(directory),
        first_round_id=FIRST,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    return _CrashingGrid(configs), settings


def _run(
    grid: FakeGrid, settings: server_app.RunSettings, task: _Task
) -> dict[str, Any]:
    out: dict[str, Any] = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    return out


def _check_resumed(
    summary: Mapping[str, Any],
    tmp_path: Path,
    *,
    abandoned: list[int],
) -> None:
    """3 completed rounds, correct sums; round ids each joined once; the ledger
    charges each completed round once and each abandoned round as possibly released;
    it covers every release in the holder's register."""
    assert summary["resumed"] is True
    completed = [rec["round"] for rec in summary["rounds"]]
    assert len(completed) == 3 and len(set(completed)) == 3
    assert not set(completed) & set(abandoned)
    started = sorted(completed + abandoned)
    assert started == list(range(FIRST, FIRST + len(started)))  # the counter went on
    for rec in summary["rounds"]:
        assert rec["contributors"] == sorted(WEIGHTS)
        check_sum(rec, WEIGHTS)
    ledger = summary["releases"]
    assert [e["n"] for e in ledger] == list(range(1, len(ledger) + 1))
    assert sorted(e["round"] for e in ledger) == started  # none lost, none twice
    for e in ledger:
        status = "possibly-released" if e["round"] in abandoned else "applied"
        assert e["status"] == status
    for party in WEIGHTS:  # no client joined a round id twice
        joined = _registered(tmp_path / f"{party}.rounds")
        assert joined == sorted(set(joined))
        assert sorted(completed) == [r for r in joined if r not in abandoned]
        assert set(joined) <= set(started)
    released = _registered(tmp_path / "holder.released")
    assert len(released) == len(set(released))
    assert set(completed) <= set(released) <= set(started)


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_fault_serverapp_restarted_between_rounds_resumes(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """The ServerApp dies after round 1 was checkpointed, before round 2's first
    request: the restarted one goes on at round 2, nothing abandoned."""
    grid, settings = _active_grid(identities, tmp_path)
    with pytest.raises(_CrashError):
        _run(grid, settings, _Task(crash=("broadcast", FIRST + 1)))
    summary = _run(grid, settings, _Task())
    _check_resumed(summary, tmp_path, abandoned=[])
    assert [rec["round"] for rec in summary["rounds"]] == [FIRST, FIRST + 1, FIRST + 2]
    # the summary's first round is the one the first process ran (from the checkpoint)
    assert summary["rounds"][0]["contributors"] == sorted(WEIGHTS)


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
@pytest.mark.parametrize("where", ["stage-0", "stage-2", "stage-4", "after-release"])
def test_fault_serverapp_restarted_mid_round_never_reruns_it(
    identities: tuple[Path, Path, str], tmp_path: Path, where: str
) -> None:
    """The ServerApp dies in round 2: while sending stage 0, 2 or 4 (the clients hold
    the round's keys; at stage 4 some may have sent their shares), or after the holder
    released the sum but before it was applied. The restarted one charges round 2 as
    possibly released and goes on at a new round id; no client joins round 2 again."""
    grid, settings = _active_grid(identities, tmp_path)
    task = _Task()
    if where == "after-release":
        task.crash = ("apply", FIRST + 1)
    else:
        grid.crash_at = (FIRST + 1, int(where.removeprefix("stage-")))
    with pytest.raises(_CrashError):
        _run(grid, settings, task)
    summary = _run(grid, settings, _Task())
    _check_resumed(summary, tmp_path, abandoned=[FIRST + 1])
    for party in WEIGHTS:  # round 2 was joined (stage 0 went out) unless it died there
        joined = _registered(tmp_path / f"{party}.rounds")
        assert (FIRST + 1 in joined) == (where != "stage-0")
    released = _registered(tmp_path / "holder.released")
    assert (FIRST + 1 in released) == (where == "after-release")
    # a restart of the restarted ServerApp, after the run completed: nothing to do
    again = _run(grid, settings, _Task())
    assert again["rounds"] == summary["rounds"]
    assert again["releases"] == summary["releases"]


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_fault_rerunning_a_round_without_the_checkpoint_is_refused_by_the_nodes(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """Without the checkpoint (an operator who forces round id FIRST + 1 again after
    the crash), the clients' round registers refuse the round: a typed abort, no
    second set of round keys and no second aggregate."""
    grid, settings = _active_grid(identities, tmp_path)
    with pytest.raises(_CrashError):
        _run(grid, settings, _Task(crash=("apply", FIRST + 1)))
    forced = dataclasses.replace(
        settings, checkpoint_dir="", first_round_id=FIRST + 1, rounds=1
    )
    fresh = FakeGrid({n: dict(c.node_config) for n, c in grid.contexts.items()})
    with pytest.raises(privagg.InsufficientParticipantsError):  # a new Flower run
        _run(fresh, forced, _Task())
    assert _registered(tmp_path / "holder.released").count(FIRST + 1) == 1


_PLAIN_NODES: dict[int, dict[str, object]] = {
    100 + i: {
        "party-id": f"client-{i}",
        "privagg-weight": w,
        "privagg-backends": "plain",
    }
    for i, w in enumerate([0.5, 1.0])
}


def test_fault_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    """A checkpoint folder is bound to its run: another backend, options, layout,
    task or number of rounds is refused (typed), never mixed in."""
    nodes = _PLAIN_NODES
    settings = server_app.RunSettings(
        shapes=SHAPES,
        rounds=2,
        min_nodes=2,
        stage_timeout=1.0,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    done = _run(FakeGrid(nodes), settings, _Task())
    assert done["resumed"] is False and len(done["releases"]) == 2
    for change in (
        {"rounds": 3},
        {"backend": "secagg", "backend_options": {"active": False}},
        {"shapes": "weight:float32:2x2"},
        {"task": "other"},
    ):
        other = dataclasses.replace(settings, **change)  # type: ignore[arg-type]
        with pytest.raises(FlowerConfigError, match="another run"):
            server_app.run(
                FakeGrid(nodes),  # type: ignore[arg-type]
                other,
                server_app._SyntheticTask(other.shapes),  # (task name: settings only)
            )
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(FlowerConfigError, match="checkpoint"):
        _run(FakeGrid(nodes), settings, _Task())


def test_checkpoint_keeps_the_task_state(tmp_path: Path) -> None:
    """A task with ``state()`` / ``load_state()`` (the LoRA task's global adapter) is
    restored from the checkpoint on resume."""

    class _Stateful(_Task):
        def __init__(self) -> None:
            super().__init__()
            self.total = np.zeros(3)

        def state(self) -> dict[str, np.ndarray]:
            return {"total": self.total}

        def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
            self.total = np.array(arrays["total"])

        def apply(
            self,
            round_id: int,
            aggregate: Mapping[str, np.ndarray],
            contributors: tuple[str, ...],
        ) -> dict[str, Any]:
            self.total = self.total + np.asarray(aggregate["bias"], dtype=np.float64)
            return super().apply(round_id, aggregate, contributors)

    nodes = _PLAIN_NODES
    settings = server_app.RunSettings(
        shapes=SHAPES,
        rounds=3,
        min_nodes=2,
        stage_timeout=1.0,
        first_round_id=5,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    first = _Stateful()
    first.crash = ("broadcast", 7)
    with pytest.raises(_CrashError):
        _run(FakeGrid(nodes), settings, first)
    second = _Stateful()
    _run(FakeGrid(nodes), settings, second)
    layout = parse_shapes(SHAPES)
    want = sum(
        layout.unflatten(synthetic_sum(layout, {"client-0": 0.5, "client-1": 1.0}, r))[
            "bias"
        ]
        for r in (5, 6, 7)
    )
    np.testing.assert_allclose(second.total, want, atol=1e-12)


@pytest.mark.skipif(not CKKS, reason="ckks backend not available")
def test_fault_holder_restarted_keeps_its_release_register(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """CKKS, keys dealt to files. The ServerApp dies after the holder released round
    2; the holder process restarts too (its in-process cache is gone, fresh Flower
    contexts). A ServerApp that re-runs round 2 (no checkpoint) gets a refusal from
    the holder's register: a typed abort, no second aggregate of round 2. The resumed
    ServerApp goes on at round 3 and completes; its ledger charges round 2 once."""
    options: dict[str, material.OptionValue] = {"preset": "test-fast", "threads": 1}
    setup = _dealt("ckks", options, tmp_path / "keys")
    nodes, weights, layout = setup.nodes, setup.weights, parse_shapes(SHAPES)
    settings = dataclasses.replace(
        setup.settings,
        rounds=3,
        first_round_id=FIRST,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    with pytest.raises(_CrashError):
        _run(FakeGrid(nodes), settings, _Task(crash=("apply", FIRST + 1)))
    register = tmp_path / "keys" / "holder.key.released"
    assert _registered(register) == [FIRST, FIRST + 1]
    client_app._HOLDERS.clear()  # the holder process restarted
    forced = dataclasses.replace(
        settings, checkpoint_dir="", first_round_id=FIRST + 1, rounds=1
    )
    caplog.set_level(logging.WARNING)  # whatever level an earlier test left
    with pytest.raises(FlowerProtocolError, match="result holder failed round"):
        _run(FakeGrid(nodes), forced, _Task())
    # the holder's reason is logged (quoted), not carried by the error (review r4)
    assert "already released" in caplog.text
    client_app._HOLDERS.clear()
    summary = _run(FakeGrid(nodes), settings, _Task())
    assert [r["round"] for r in summary["rounds"]] == [FIRST, FIRST + 2, FIRST + 3]
    assert [(e["round"], e["status"]) for e in summary["releases"]] == [
        (FIRST, "applied"),
        (FIRST + 1, "possibly-released"),
        (FIRST + 2, "applied"),
        (FIRST + 3, "applied"),
    ]
    assert _registered(register) == [FIRST, FIRST + 1, FIRST + 2, FIRST + 3]
    tol = setup.tolerance
    for rec in summary["rounds"]:
        want = layout.unflatten(synthetic_sum(layout, weights, rec["round"]))
        for name, w in want.items():
            np.testing.assert_allclose(
                np.asarray(rec["aggregate"][name], dtype=np.float64),
                w,
                rtol=0,
                atol=tol + 4 * float(np.finfo(w.dtype).eps),
            )


def test_run_checkpoint_refuses_out_of_order_use(tmp_path: Path) -> None:
    ck = RunCheckpoint.open(
        tmp_path, {"backend": "plain"}, spec="{}", first_round_id=3, task=None
    )
    with pytest.raises(FlowerConfigError):
        ck.begin(4, None)
    ck.begin(3, None)
    with pytest.raises(FlowerConfigError):
        ck.begin(4, None)  # 3 still in flight
    with pytest.raises(FlowerConfigError):
        ck.complete({"round": 4, "contributors": []}, None)
    ck.complete({"round": 3, "contributors": ["a"]}, None)
    back = RunCheckpoint.open(
        tmp_path, {"backend": "plain"}, spec="{}", first_round_id=99, task=None
    )
    assert back.resumed and back.next_round_id == 4 and back.completed == 1
    assert back.releases == [
        {"n": 1, "round": 3, "status": "applied", "contributors": ["a"]}
    ]
