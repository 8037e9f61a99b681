"""Outside review r2 (issue #14): a malicious ServerApp against active SecAgg+ on Flower.

Regression tests for attacks that are refused (none of these found a hole):

* the round register cannot be bypassed by a forged ``params_id`` in the envelope
  header (the client role checks the header against its own session);
* a corrupt, malformed or group/other-readable round register fails closed (the node
  drops out of the round; the file is left as it was);
* two ClientApp processes joining one ``(params_id, round id)`` at once: exactly one
  gets in (the register's ``flock``);
* a node with an identity directory is not moved to another backend it does not
  accept, nor to passive SecAgg+, nor to a directory the server names.

Like ``test_flower_active_secagg.py``, a fake Grid calls the real ClientApp handler.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.fedtrain.test_flower_active_secagg import (
    WEIGHTS,
    _run,
    _settings,
    check_sum,
    make_identities,
    node_configs,
)
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
)

import privagg
from fedtrain.flower import client_app
from fedtrain.flower.errors import (
    FlowerProtocolError,
    PolicyError,
    ReleaseRegisterError,
)
from fedtrain.flower.material import SessionSpec
from fedtrain.flower.transport import Envelope, Op, unpack
from privagg.envelope import Header, open_envelope, seal

pytestmark = pytest.mark.skipif(
    "secagg" not in privagg.available_backends(), reason="secagg backend not available"
)

Identities = tuple[Path, Path, str]


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    folder = tmp_path_factory.mktemp("r2-identities")
    directory, pin = make_identities(folder, sorted(WEIGHTS))
    return folder, directory, pin


def _configs(identities: Identities, registers: Path) -> dict[int, dict[str, object]]:
    folder, directory, pin = identities
    configs = node_configs(folder, directory, pin)
    for c in configs.values():
        c["privagg-round-register"] = str(registers / f"{c['party-id']}.rounds")
    return configs


def _stage0(grid: FakeGrid, node: int) -> tuple[Any, Envelope]:
    for msg in grid.sent:
        env = unpack(msg.content)
        if (
            msg.metadata.dst_node_id == node
            and env.op == Op.REQUEST
            and env.meta.get("stage", "0") == "0"
        ):
            return msg, env
    raise AssertionError("no stage-0 request")


def test_forged_params_id_in_the_header_does_not_bypass_the_register(
    identities: Identities, tmp_path: Path
) -> None:
    """Run 1 joins round 77. In run 2 (fresh contexts) the server replays round 77's
    stage-0 request with the envelope resealed under a fresh params_id, so that the
    register sees a new pair: the client role refuses the header (its own session's
    params_id differs), so no signed key advertisement is made for round 77 again."""
    configs = _configs(identities, tmp_path)
    grid = FakeGrid(configs)
    check_sum(
        _run(grid, _settings(identities[1], first_round_id=77))["rounds"][0], WEIGHTS
    )
    msg, env = _stage0(grid, 100)
    header, body = open_envelope(env.payload)
    forged_header = Header(header.scheme, header.kind, b"\x42" * 32, header.round_id)
    forged = dataclasses.replace(env, payload=seal(forged_header, bytes(body)))
    fresh = FakeGrid(configs).contexts[100]
    with pytest.raises(privagg.ParameterMismatchError):
        client_app.handle_envelope(forged, msg, fresh)
    with pytest.raises(FlowerProtocolError, match="already joined"):
        client_app.handle_envelope(env, msg, FakeGrid(configs).contexts[100])


@pytest.mark.parametrize(
    ("content", "mode"),
    [
        (b"\x00garbage", 0o600),
        (b'{"format": "fedtrain-release-register/v1", "released": []}', 0o600),
        (b'{"format": "other", "released": {}}', 0o600),
        (b'{"format": "fedtrain-release-register/v1", "released": {}}', 0o644),
    ],
    ids=["garbage", "malformed", "other-format", "group-readable"],
)
def test_a_bad_round_register_fails_closed(
    identities: Identities, tmp_path: Path, content: bytes, mode: int
) -> None:
    configs = _configs(identities, tmp_path)
    bad = tmp_path / "client-3.rounds"
    bad.write_bytes(content)
    bad.chmod(mode)
    rec = _run(FakeGrid(configs), _settings(identities[1]))["rounds"][0]
    assert rec["dropped"] == ["client-3"]
    assert "ReleaseRegisterError" in rec["errors"]["client-3"]
    assert "client-3" not in rec["contributors"]
    check_sum(rec, WEIGHTS)
    assert bad.read_bytes() == content  # nothing written over it


def test_two_processes_joining_one_round_admit_exactly_one(
    identities: Identities, tmp_path: Path
) -> None:
    configs = _configs(identities, tmp_path)
    grid = FakeGrid(configs)
    _run(grid, _settings(identities[1], first_round_id=500))
    _, env = _stage0(grid, 101)
    spec = SessionSpec.from_json(env.meta["spec"])
    fresh = dict(configs[101], **{"privagg-round-register": str(tmp_path / "race")})
    contexts = list(FakeGrid({i: fresh for i in range(8)}).contexts.values())
    outcomes: list[str] = []
    barrier = threading.Barrier(len(contexts))

    def join(ctx: Any) -> None:
        barrier.wait()
        try:
            client_app._join_once(ctx, spec, env)
            outcomes.append("joined")
        except FlowerProtocolError:
            outcomes.append("refused")
        except ReleaseRegisterError:  # pragma: no cover - would be a failure
            outcomes.append("register error")

    threads = [threading.Thread(target=join, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["joined"] + ["refused"] * (len(contexts) - 1)
    saved = json.loads((tmp_path / "race").read_text())["released"]
    assert saved == {open_envelope(env.payload)[0].params_id.hex(): [500]}


def test_directory_node_refuses_other_backends_and_passive(
    identities: Identities, tmp_path: Path
) -> None:
    configs = _configs(identities, tmp_path)
    for settings in (
        _settings(identities[1], backend="plain", backend_options={}),
        _settings(identities[1], backend_options={"active": False}),
    ):
        with pytest.raises(privagg.InsufficientParticipantsError):
            _run(FakeGrid(configs), settings)
    assert not list(tmp_path.glob("*.rounds"))  # refused before any round was joined


def test_the_server_cannot_name_the_clients_directory(
    identities: Identities, tmp_path: Path
) -> None:
    """The server runs with its own directory (own keys for the same party ids) and
    its own pin: the clients load theirs from their node config only, so the
    params_id differs and no client answers."""
    pin = identities[2]
    theirs = tmp_path / "server-keys"
    theirs.mkdir()
    other, other_pin = make_identities(theirs, sorted(WEIGHTS))
    assert other_pin != pin
    configs = _configs(identities, tmp_path)
    settings = _settings(
        other, identity_directory_fingerprint=other_pin, first_round_id=900
    )
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(FakeGrid(configs), settings)


def test_a_round_of_too_few_participants_is_refused_with_a_floor(
    identities: Identities, tmp_path: Path
) -> None:
    """Found: a malicious server runs a round of two of the directory's four parties
    (the victim and one colluder): the threshold floor is capped at ``n - 1``, so
    ``t = 1`` passes and the sum of two gives the colluder the victim's input. The node
    had no way to refuse that; ``privagg-min-participants`` now gives it one."""
    configs = _configs(identities, tmp_path)
    two = {
        n: dict(c)
        for n, c in configs.items()
        if c["party-id"] in ("client-0", "client-1")
    }
    for c in two.values():
        c["privagg-min-threshold"] = 3  # the operator asked for t >= 3, yet:
    pair = {p: WEIGHTS[p] for p in ("client-0", "client-1")}
    rec = _run(FakeGrid(two), _settings(identities[1], min_nodes=2))["rounds"][0]
    assert sorted(rec["contributors"]) == sorted(pair)  # a sum of two: t = 1 accepted
    check_sum(rec, pair)
    for c in two.values():
        c["privagg-min-participants"] = 3
    grid = FakeGrid(two)
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(grid, _settings(identities[1], min_nodes=2))
    msg, env = _stage0(grid, min(two))
    with pytest.raises(PolicyError, match="privagg-min-participants"):
        client_app.handle_envelope(env, msg, FakeGrid(two).contexts[min(two)])
    for c in configs.values():
        c["privagg-min-participants"] = 3
    full = _run(FakeGrid(configs), _settings(identities[1]))["rounds"][0]
    check_sum(full, WEIGHTS)  # four participants meet the floor
