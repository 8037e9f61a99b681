"""Active SecAgg+ over a real deployment (issue #14): SuperLink and four SuperNodes as
separate processes on 127.0.0.1, with TLS and SuperNode authentication.

Each SuperNode's identity key is made by ``privagg keygen`` in its own folder and
named only in that node's config; the operator's directory (``privagg directory``) is
pinned by every node; the ServerApp is given the directory only (run config
``identity-directory``), and is the result holder (SecAgg+'s holder has no secret).
The aggregate equals the in-process runtime's on the same round id (the same
ServerApp and ClientApp code over a fake Grid) within SecAgg+'s rounding tolerance;
with one SuperNode SIGKILLed at the masking stage, the survivors (3 >= the
consistency quorum 3, t = 2) recover the sum of the others. Every process group is
stopped and checked gone in teardown.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fedtrain.test_flower_active_secagg import (
    SHAPES,
    WEIGHTS,
    check_sum,
    make_identities,
    node_configs,
)
from tests.fedtrain.test_flower_deployment import _stopped
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
)

import privagg
from fedtrain.flower import server_app
from fedtrain.flower.launch import LocalDeployment

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        "secagg" not in privagg.available_backends(), reason="no secagg backend"
    ),
]

APP = Path(__file__).resolve().parents[2] / "examples" / "flower_deployment"
FIRST_ROUND = 4_000_000_007


def _setup(tmp_path: Path) -> tuple[list[dict[str, Any]], Path, str]:
    keys = tmp_path / "identities"
    directory, pin = make_identities(keys, sorted(WEIGHTS))
    nodes = [dict(c) for c in node_configs(keys, directory, pin).values()]
    return nodes, directory, pin


def _run(d: LocalDeployment, directory: Path, name: str, **extra: Any) -> Any:
    result = d.workdir / f"{name}.json"
    config = {
        "backend": "secagg",
        "backend-options": json.dumps({"active": True}),
        "identity-directory": str(directory),
        "shapes": SHAPES,
        "min-nodes": len(WEIGHTS),
        "stage-timeout": 40.0,
        "node-wait": 60.0,
        "first-round-id": FIRST_ROUND,
        "result-path": str(result),
        **extra,
    }
    try:
        d.run_app(APP, config, timeout=240.0, name=name)
    except Exception:
        print(d.logs())
        raise
    if not result.exists():
        print(d.logs())
        pytest.fail("the ServerApp wrote no result")
    return json.loads(result.read_text())


def test_active_secagg_over_a_real_deployment(tmp_path: Path) -> None:
    nodes, directory, pin = _setup(tmp_path)
    d = LocalDeployment(tmp_path / "flower", nodes)
    try:
        d.start()
        out = _run(d, directory, "active")
    finally:
        _stopped(d)
    rec = out["rounds"][0]
    assert rec["round"] == FIRST_ROUND and rec["dropped"] == []
    assert rec["stages"] == 5 and out["holder"] == "server"
    check_sum(rec, WEIGHTS)
    # the in-process runtime (same apps, fake Grid) on the same round agrees; its
    # nodes keep another round register (each SuperNode refuses to join a round twice)
    grid = FakeGrid(
        {
            100 + i: c | {"privagg-round-register": str(tmp_path / f"ref-{i}.rounds")}
            for i, c in enumerate(nodes)
        }
    )
    settings = server_app.RunSettings(
        backend="secagg",
        backend_options={"active": True},
        shapes=SHAPES,
        min_nodes=len(WEIGHTS),
        stage_timeout=5.0,
        identity_directory=str(directory),
        first_round_id=FIRST_ROUND,
    )
    ref = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))["rounds"][0]  # type: ignore[arg-type]
    assert ref["contributors"] == rec["contributors"]
    tol = privagg.get_backend("secagg").tolerance(n_clients=len(WEIGHTS), max_abs=1.0)
    for name, values in ref["aggregate"].items():
        np.testing.assert_allclose(
            np.asarray(rec["aggregate"][name], dtype=np.float64),
            np.asarray(values, dtype=np.float64),
            rtol=0,
            atol=2 * tol + 1e-6,
        )
    # the run config the ServerApp got names the directory, no node's key file
    run_toml = (tmp_path / "flower" / "active.toml").read_text()
    assert str(directory) in run_toml and "secagg-identity-" not in run_toml
    assert pin not in run_toml  # the pin is each node's, in its own node config


def _wait_for_count(path: Path, needle: str, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(needle) >= n:
            return True
        time.sleep(0.1)
    return False


def test_active_secagg_survives_a_supernode_killed_mid_round(tmp_path: Path) -> None:
    """client-3 gets the masking stage's request (stage 2: after it sent its key
    shares), stalls, and its SuperNode is SIGKILLed: the three survivors unmask."""
    nodes, directory, _ = _setup(tmp_path)
    nodes[3] |= {"fault-stall-stage": 2, "fault-stall-seconds": 120.0}
    d = LocalDeployment(tmp_path / "flower", nodes)
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run_round() -> None:
        try:
            result.update(_run(d, directory, "killed", **{"stage-timeout": 30.0}))
        except BaseException as exc:  # re-raised in the test thread below
            failure.append(exc)

    try:
        d.start()
        run = threading.Thread(target=run_round)
        run.start()
        # the hello and stages 0, 1 and 2 of the round reached client-3's SuperNode
        # (the SuperNode logs "Receiving: <type> message" for each one it pulls)
        reached = _wait_for_count(
            tmp_path / "flower" / "supernode-3.log",
            "Receiving: query.privagg",
            4,
            150.0,
        )
        d.kill_node(3)
        run.join(timeout=300.0)
        assert reached, "client-3 never received the masking stage's request"
        assert d.supernodes[3].poll() is not None
        assert not run.is_alive()
        if failure:
            raise failure[0]
    finally:
        _stopped(d)
    rec = result["rounds"][0]
    assert rec["dropped"] == ["client-3"]
    assert rec["missing"] == {"2": ["client-3"]}
    check_sum(rec, WEIGHTS)
    assert rec["contributors"] == ["client-0", "client-1", "client-2"]
