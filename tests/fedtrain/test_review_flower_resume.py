"""Outside review of the ServerApp checkpoint/resume and the holder's reply check (#14).

Attacks on :mod:`fedtrain.flower.resume` (crafted, torn or edited checkpoint files;
a checkpoint that moves the next round id back over a used round id or drops a
release; a write that fails at each step) and on
:func:`fedtrain.flower.transport.recovery_check` (what it binds, and that it is a
digest, not an authenticator).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
)

import fedtrain.checkpoint as ckpt_mod
from fedtrain.errors import FedtrainError
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.resume import RunCheckpoint
from fedtrain.flower.transport import recovery_check

ID = {"backend": "plain"}
FIRST = 10


class _StateTask:
    """A stateful task (one array)."""

    def __init__(self) -> None:
        self.w = np.zeros(3)

    def state(self) -> dict[str, np.ndarray]:
        return {"w": self.w}

    def load_state(self, arrays: Any) -> None:
        self.w = np.asarray(arrays["w"]).copy()


def _open(folder: Path, task: object = None) -> RunCheckpoint:
    return RunCheckpoint.open(folder, ID, spec="{}", first_round_id=FIRST, task=task)


def _two_rounds(folder: Path) -> dict[str, Any]:
    """Round 10 completed, round 11 in flight; the meta.json written."""
    ck = _open(folder)
    ck.begin(FIRST, None)
    ck.complete({"round": FIRST, "contributors": ["a"]}, None)
    ck.begin(FIRST + 1, None)
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    return meta


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(key, value)


def _pop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.pop(key)


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no-spec": _pop("spec"),
    "no-releases": _pop("releases"),
    "no-in-flight": _pop("in_flight"),
    "spec-not-str": _set("spec", 5),
    "next-str": _set("next_round_id", "x"),
    "next-float": _set("next_round_id", 12.5),
    "next-bool": _set("next_round_id", True),
    "next-moved-back": _set("next_round_id", FIRST),  # would re-run round 10
    "next-moved-far-back": _set("next_round_id", FIRST - 5),
    "next-skips-ahead": _set("next_round_id", FIRST + 7),  # ids never charged
    "first-moved": _set("first_round_id", FIRST + 1),
    "first-null": _set("first_round_id", None),
    "in-flight-dropped": _set("in_flight", None),  # round 11 never charged
    "in-flight-str": _set("in_flight", "11"),
    "in-flight-old": _set("in_flight", FIRST),
    "in-flight-list": _set("in_flight", [1]),
    "rounds-int": _set("rounds", 5),
    "rounds-str": _set("rounds", "abc"),
    "rounds-bad-record": _set("rounds", [5]),
    "rounds-extra": _set(
        "rounds", [{"round": FIRST, "contributors": []}, {"round": 11}]
    ),
    "releases-dropped": _set("releases", []),  # a lost release
    "releases-garbage": _set("releases", [1, 2]),
    "releases-renumbered": lambda m: m["releases"][0].__setitem__("n", 7),
    "releases-bad-status": lambda m: m["releases"][0].__setitem__("status", "x"),
    "releases-duplicated": lambda m: m.__setitem__(
        "releases", m["releases"] + [dict(m["releases"][0], n=2)]
    ),
    "releases-extra-key": lambda m: m["releases"][0].__setitem__("eps", 0),
    "releases-status-downgraded": lambda m: m["releases"][0].__setitem__(
        "status", "possibly-released"
    ),
}


def test_review_unedited_checkpoint_resumes(tmp_path: Path) -> None:
    """The reference: the checkpoint as written resumes, charging the round in flight."""
    _two_rounds(tmp_path)
    back = _open(tmp_path)
    assert back.resumed and back.next_round_id == FIRST + 2 and back.in_flight is None
    assert [(e["n"], e["round"], e["status"]) for e in back.releases] == [
        (1, FIRST, "applied"),
        (2, FIRST + 1, "possibly-released"),
    ]
    again = _open(tmp_path)  # the charge was saved: resuming twice charges once
    assert again.releases == back.releases


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_review_edited_checkpoint_fails_closed(tmp_path: Path, edit: str) -> None:
    """An edited or torn meta.json (missing or mistyped fields, a next round id moved
    back over a used id, a dropped release or round in flight) is refused with
    FlowerConfigError, never resumed and never a KeyError/TypeError/ValueError.
    Before the review fix, next-moved-back, releases-dropped, in-flight-dropped,
    next-bool, next-float, rounds-str and others were resumed."""
    meta = _two_rounds(tmp_path)
    edited = copy.deepcopy(meta)
    EDITS[edit](edited)
    (tmp_path / "meta.json").write_text(json.dumps(edited))
    before = (tmp_path / "meta.json").read_bytes()
    with pytest.raises(FlowerConfigError):
        _open(tmp_path)
    assert (tmp_path / "meta.json").read_bytes() == before  # nothing rewritten


def test_review_round_id_reuse_via_checkpoint_is_refused(tmp_path: Path) -> None:
    """A completed checkpoint whose next round id is moved back to a completed round's
    id (with the ledger otherwise intact) cannot hand that id out again."""
    ck = _open(tmp_path)
    ck.begin(FIRST, None)
    ck.complete({"round": FIRST, "contributors": ["a"]}, None)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["next_round_id"] = FIRST
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FlowerConfigError, match="round ids"):
        _open(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"\x80\x04\x95pickle", b"\xff" * 8 + b"{}"]
)
def test_review_garbage_state_file_is_typed(tmp_path: Path, content: bytes) -> None:
    """A torn or crafted state file (including pickle bytes) is a typed error (it was
    a raw safetensors SafetensorError before the review fix); never unpickled."""
    _two_rounds(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path / meta["state_file"]).write_bytes(content)
    with pytest.raises(FedtrainError):
        ckpt_mod.load_checkpoint(tmp_path)
    with pytest.raises(FlowerConfigError):
        _open(tmp_path)


@pytest.mark.parametrize(
    "name", ["../meta.json", "/etc/passwd", "", ".", 5, "state-r9999.safetensors"]
)
def test_review_state_file_name_cannot_escape(tmp_path: Path, name: Any) -> None:
    _two_rounds(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["state_file"] = name
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FlowerConfigError):
        _open(tmp_path)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', "[" * 100000])
def test_review_unreadable_meta_is_typed(tmp_path: Path, text: str) -> None:
    (tmp_path / "meta.json").write_text(text)
    with pytest.raises(FlowerConfigError):
        _open(tmp_path)


def _fail_write(
    monkeypatch: pytest.MonkeyPatch, name: str, *, after: int = 0
) -> list[str]:
    """Make the ``after``-th+1 atomic write of ``name`` fail (disk full) before the
    replace: the temp file is written and removed, the destination untouched."""
    real = ckpt_mod.atomic_write_bytes
    seen: list[str] = []

    def write(path: Any, data: bytes) -> None:
        p = Path(path)
        if p.name == name:
            seen.append(p.name)
            if len(seen) > after:
                raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "atomic_write_bytes", write)
    return seen


@pytest.mark.parametrize("name", ["meta.json", "state-r0001.safetensors"])
def test_review_write_fails_in_begin_round_not_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Disk full while ``begin`` saves: begin raises (so no request of the round goes
    out) and the folder still holds the previous checkpoint, which resumes at the same
    round id with the ledger intact."""
    task = _StateTask()
    ck = _open(tmp_path, task)
    ck.begin(FIRST, task)
    task.w = np.ones(3)
    ck.complete({"round": FIRST, "contributors": ["a"]}, task)
    _fail_write(monkeypatch, name)
    with pytest.raises(OSError):
        ck.begin(FIRST + 1, task)
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    task2 = _StateTask()
    back = _open(tmp_path, task2)
    assert back.next_round_id == FIRST + 1 and back.in_flight is None
    assert [e["round"] for e in back.releases] == [FIRST]
    np.testing.assert_array_equal(task2.w, np.ones(3))


@pytest.mark.parametrize("name", ["meta.json", "state-r0001.safetensors"])
def test_review_write_fails_in_complete_round_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Disk full while ``complete`` saves (after the holder released the round): the
    previous checkpoint (round in flight) remains, so the resumed run charges the round
    as possibly released and never re-runs it; the old task state is kept."""
    task = _StateTask()
    ck = _open(tmp_path, task)
    ck.begin(FIRST, task)
    task.w = np.ones(3)
    _fail_write(monkeypatch, name)
    with pytest.raises(OSError):
        ck.complete({"round": FIRST, "contributors": ["a"]}, task)
    monkeypatch.undo()
    task2 = _StateTask()
    back = _open(tmp_path, task2)
    assert back.next_round_id == FIRST + 1 and back.completed == 0
    assert back.releases == [
        {"n": 1, "round": FIRST, "status": "possibly-released", "contributors": None}
    ]
    np.testing.assert_array_equal(task2.w, np.zeros(3))


def test_review_write_fails_while_charging_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while ``open`` saves the charge of the abandoned round: open raises,
    the round stays in flight on disk, and the next open charges it (once)."""
    _two_rounds(tmp_path)
    _fail_write(monkeypatch, "meta.json")
    with pytest.raises(OSError):
        _open(tmp_path)
    monkeypatch.undo()
    back = _open(tmp_path)
    assert [(e["round"], e["status"]) for e in back.releases] == [
        (FIRST, "applied"),
        (FIRST + 1, "possibly-released"),
    ]


def test_review_checkpoint_files_are_private_json_and_safetensors(
    tmp_path: Path,
) -> None:
    """Only meta.json (JSON) and one safetensors state file, each mode 0600 (mkstemp),
    no temp files left; the meta holds only the documented public fields."""
    task = _StateTask()
    ck = _open(tmp_path, task)
    ck.begin(FIRST, task)
    ck.complete({"round": FIRST, "contributors": ["a"]}, task)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["meta.json", "state-r0001.safetensors"]
    for n in names:
        assert stat.S_IMODE(os.stat(tmp_path / n).st_mode) & 0o077 == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert set(meta) == {
        "format",
        "round",
        "state_file",
        "serverapp",
        "identity",
        "spec",
        "first_round_id",
        "next_round_id",
        "in_flight",
        "rounds",
        "releases",
    }


def test_review_recovery_check_binds_round_aggregate_vector_contributors() -> None:
    """A replayed reply from an earlier round (round id patched to the current one)
    fails the check: it is bound to the round id and the aggregate requested; any
    change of vector or contributor list (including a length-shifting split) too."""
    agg1, agg2 = b"aggregate-round-1", b"aggregate-round-2"
    vec, who = np.arange(4.0).tobytes(), '["a", "b"]'
    old = recovery_check(1, agg1, vec, who)
    assert old == recovery_check(1, agg1, vec, who)
    assert old != recovery_check(2, agg1, vec, who)  # round patched
    assert old != recovery_check(2, agg2, vec, who)  # replayed into round 2
    assert old != recovery_check(1, agg1, vec[:-1], who)
    assert old != recovery_check(1, agg1, vec, '["a"]')
    assert recovery_check(1, b"ab", b"c", "") != recovery_check(1, b"a", b"bc", "")


def test_review_recovery_check_is_a_digest_not_a_mac() -> None:
    """What the check value does NOT give: it is an unkeyed SHA-256 of values the
    sender of the reply knows (the request it answers and its own reply), so anyone who
    can write a reply (a malicious holder, an unauthenticated channel) computes a valid
    one for a forged vector. The docs must call it a damage/misrouting check only
    (docs/flower.md says so since the review)."""
    # no key: every input is in the request the holder answers or in its own reply
    assert list(inspect.signature(recovery_check).parameters) == [
        "round_id",
        "aggregate",
        "vector",
        "contributors",
    ]
    doc = (Path(__file__).parents[2] / "docs" / "flower.md").read_text()
    assert "not an authenticator" in doc


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit",
    [
        {"max_weight": 100.0},
        {"max_clients": 99},
        {"backend": "secagg"},
        {"options": {"x": 1}},
        {"setup_seed": "00" * 32},  # a seed for a backend that draws none
        None,  # unreadable spec text
    ],
)
def test_review_edited_session_spec_in_checkpoint_is_refused(
    tmp_path: Path, edit: dict[str, Any] | None
) -> None:
    """The checkpoint's session spec may differ from the run's only in the public setup
    seed: one edited (another backend, bound, options) is refused typed before any
    request is sent; before the review fix it was used as the resumed run's spec
    (the run identity compares backend and options only outside the spec)."""
    from tests.fedtrain.test_flower_active_secagg import SHAPES
    from tests.fedtrain.test_flower_resume import _PLAIN_NODES, _run, _Task

    from fedtrain.flower import server_app

    settings = server_app.RunSettings(
        shapes=SHAPES,
        rounds=2,
        min_nodes=2,
        stage_timeout=1.0,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    done = _run(FakeGrid(_PLAIN_NODES), settings, _Task())
    assert len(done["releases"]) == 2
    meta_path = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_path.read_text())
    if edit is None:
        meta["spec"] = "{not json"
    else:
        meta["spec"] = json.dumps(json.loads(meta["spec"]) | edit, sort_keys=True)
    meta_path.write_text(json.dumps(meta))
    grid = FakeGrid(_PLAIN_NODES)
    with pytest.raises(FlowerConfigError, match="spec"):
        _run(grid, dataclasses.replace(settings, rounds=2), _Task())
