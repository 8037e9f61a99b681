"""Flower's simulation runtime (Ray): the deployment's apps with 100 virtual clients.

The e2e tests run :func:`fedtrain.flower.simulation.simulate` (the deployment's own
ServerApp loop and ClientApp handler on ``flwr.simulation.run_simulation``) with 100
virtual SuperNodes for 2 rounds, for passive SecAgg+ and for CKKS (the ``secure``
preset, keys dealt to one folder per node, the holder a virtual SuperNode), and compare
each round's sum with the same rounds run in-process (``privagg.run_round``) on the same
round ids, within the backend's tolerance. Each starts and stops its own Ray instance
(10-17 s); 105-142 s in all on the shared 2-core machine at load 5-13. The other
tests need no Ray.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.supercore.task_identity import TaskIdentity

import privagg
from fedtrain.flower import server_app, simulation
from fedtrain.flower.simulation import (
    SimulationConfig,
    compare_with_inprocess,
    deal_per_node,
    node_configs,
    round_vector,
    simulate,
)
from fedtrain.flower.tasks import SyntheticServerTask, parse_shapes, synthetic_sum
from fedtrain.flower.transport import MESSAGE_TYPE, Envelope, Op, pack, unpack

SHAPES = "weight:float64:4x3,bias:float64:5"
NODES = 100
FIRST_ROUND = 7_000
# the CKKS `secure` preset with value_bound 4: sums of 100 client-weights fit
CKKS_OPTIONS = {"threads": 1, "value_bound": 4.0}


def _weights(n: int) -> list[float]:
    return [0.25 * (1 + i % 4) for i in range(n)]


@pytest.fixture
def _task_identity() -> Iterator[None]:
    """Flower Messages read the process's task identity; give the test process one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _ray_processes() -> set[str]:
    """Live processes of Ray instances started by simulate() (their temp folders)."""
    out = set()
    for p in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        if "fedtrain-ray-" in cmd and state != "Z":
            out.add(f"{p.name} {cmd[:200]}")
    return out


def test_per_node_material_and_node_configs(tmp_path: Path) -> None:
    """Each virtual node is pointed at its own folder, which holds only its file."""
    if "ckks" not in privagg.available_backends():
        pytest.skip("ckks backend not available")
    cfg = SimulationConfig(
        nodes=3,
        backend="ckks",
        backend_options={"preset": "test-fast", "threads": 1},
        shapes=SHAPES,
        weights=[0.5, 1.0, 0.25],
        node_config={"privagg-ckks-presets": "test-fast"},
    )
    layout = parse_shapes(SHAPES)
    paths = deal_per_node(cfg.spec(), layout, cfg.party_ids(), tmp_path / "m")
    assert set(paths) == {
        "aggregator",
        "holder",
        "holder-identity",  # the holder's signing key, pinned by the run (#14)
        "client-0",
        "client-1",
        "client-2",
    }
    folders = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert folders == ["aggregator", "holder", "node-0", "node-1", "node-2"]
    assert paths["holder-identity"].parent == paths["holder"].parent
    for role, path in paths.items():
        if role.startswith("holder"):
            continue
        assert [f.name for f in path.parent.iterdir()] == [path.name]
    assert sorted(f.name for f in paths["holder"].parent.iterdir()) == [
        "holder-identity.key",
        "holder.key",
    ]
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    nodes = node_configs(cfg, paths)
    assert len(nodes) == 4  # three clients, then the holder
    for i, node in enumerate(nodes[:3]):
        assert node["party-id"] == f"client-{i}"
        assert node["privagg-material"] == str(paths[f"client-{i}"])
        assert node["privagg-weight"] == cfg.weight_map()[f"client-{i}"]
        assert node["privagg-backends"] == "ckks"
        assert node["privagg-ckks-presets"] == "test-fast"
        named = {str(v) for v in node.values()}
        assert not named & {str(p) for k, p in paths.items() if k != f"client-{i}"}
    assert nodes[3] == {
        "privagg-holder": True,
        "privagg-holder-material": str(paths["holder"]),
        "privagg-identity-key": str(paths["holder-identity"]),
    }
    # no dealer, no files: every node builds its session from the public spec
    plain = SimulationConfig(nodes=2, backend="plain", shapes=SHAPES)
    assert deal_per_node(plain.spec(), layout, plain.party_ids(), tmp_path / "p") == {}
    assert [n["party-id"] for n in node_configs(plain, {})] == ["client-0", "client-1"]


@pytest.mark.usefixtures("_task_identity")
def test_client_app_gives_each_partition_its_own_node_config() -> None:
    nodes = node_configs(SimulationConfig(nodes=3, backend="plain"), {})
    app = simulation._make_client_app(nodes)

    def hello(partition: Any) -> Envelope:
        msg = Message(
            pack(Envelope(Op.HELLO, 0, "")), dst_node_id=11, message_type=MESSAGE_TYPE
        )
        ctx = Context(
            run_id=1,
            node_id=11,
            node_config={"partition-id": partition, "num-partitions": 3},
            state=RecordDict(),
            run_config={},
        )  # type: ignore[arg-type]
        return unpack(app(msg, ctx).content)

    assert hello(2).party == "client-2"
    assert hello(0).party == "client-0"
    for bad in (3, "x"):
        with pytest.raises(simulation.SimulationError, match="partition-id"):
            hello(bad)


def test_no_app_is_a_module_attribute() -> None:
    """A Flower app folder cannot name the simulation's apps in a deployment."""
    apps = [
        k for k, v in vars(simulation).items() if isinstance(v, ClientApp | ServerApp)
    ]
    assert apps == []


class _SilentGrid:
    """Nodes that never answer: the ServerApp would wait out its stage timeout."""

    def get_node_ids(self) -> list[int]:
        return [1]

    def push_messages(self, messages: Any) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Any) -> list[Message]:
        return []


@pytest.mark.usefixtures("_task_identity")
def test_serverapp_loop_ends_when_the_runtime_stops() -> None:
    """After a runtime failure the ServerApp's thread must not keep the process up."""
    stop = threading.Event()
    grid = simulation._StoppableGrid(_SilentGrid(), stop)  # type: ignore[arg-type]
    settings = server_app.RunSettings(min_nodes=1, stage_timeout=600.0)
    threading.Timer(0.5, stop.set).start()
    t = time.monotonic()
    with pytest.raises(simulation.SimulationError, match="stopped"):
        server_app.run(grid, settings, SyntheticServerTask())
    assert time.monotonic() - t < 10


def test_config_checks() -> None:
    with pytest.raises(simulation.SimulationError, match="weights"):
        SimulationConfig(nodes=3, weights=[1.0]).weight_map()
    with pytest.raises(simulation.SimulationError, match=">= 1"):
        simulate(SimulationConfig(nodes=0))
    with pytest.raises(SystemExit):
        simulation.main(["--backend-options", "[1]"])


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("backend", "options"),
    [("secagg", {"active": False}), ("ckks", CKKS_OPTIONS)],
)
def test_100_virtual_clients_equal_inprocess(
    tmp_path: Path, backend: str, options: dict[str, Any]
) -> None:
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} backend not available")
    cfg = SimulationConfig(
        nodes=NODES,
        backend=backend,
        backend_options=options,
        shapes=SHAPES,
        rounds=2,
        first_round_id=FIRST_ROUND,
        weights=_weights(NODES),
        client_cpus=1.0,
    )
    before = _ray_processes()
    summary = simulate(cfg, tmp_path)
    assert _ray_processes() <= before, "Ray processes left running"
    layout = parse_shapes(SHAPES)
    parties = cfg.party_ids()
    assert summary["parties"] == sorted(parties)
    assert summary["holder"] == ("node" if backend == "ckks" else "server")
    assert summary["virtual_nodes"] == NODES + (backend == "ckks")
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [FIRST_ROUND, FIRST_ROUND + 1]
    tol = cfg.spec().backend_object().tolerance(n_clients=NODES, max_abs=1.0)
    for rec in rounds:
        assert rec["contributors"] == sorted(parties) and rec["dropped"] == []
        assert rec["stages"] == (4 if backend == "secagg" else 1)
        exact = synthetic_sum(layout, cfg.weight_map(), rec["round"])
        got = round_vector(layout, rec["aggregate"])
        np.testing.assert_allclose(got, exact, rtol=0, atol=tol)
    # the same rounds in one process (privagg.run_round), same parties, weights, ids
    cmp = compare_with_inprocess(cfg, summary)
    assert cmp["tolerance"] == tol > 0
    assert cmp["within_tolerance"], cmp
    assert cmp["max_abs_diff_vs_inprocess"] <= 2 * tol


@pytest.mark.e2e
def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m fedtrain.flower.simulation ... --compare`` prints a JSON report."""
    if "secagg" not in privagg.available_backends():
        pytest.skip("secagg backend not available")
    before = _ray_processes()
    code = simulation.main(
        [
            "--nodes",
            "10",
            "--backend",
            "secagg",
            "--backend-options",
            '{"active": false}',
            "--values",
            "1000",
            "--rounds",
            "2",
            "--compare",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["nodes"] == 10 and report["values"] == 1000
    assert report["contributors"] == [10, 10] and report["dropped"] == [[], []]
    assert report["stages"] == [4, 4]
    assert len(report["round_seconds"]) == 2
    assert report["within_tolerance"] is True
    assert _ray_processes() <= before
