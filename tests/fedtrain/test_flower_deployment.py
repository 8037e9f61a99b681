"""Real deployments: a SuperLink and SuperNodes as separate processes on 127.0.0.1.

Each test starts ``flower-superlink`` and ``flower-supernode`` processes with TLS and
SuperNode authentication (see ``test_flower_tls.py``) on free loopback ports, submits the app folder ``examples/flower_deployment``
with ``flwr run``, and checks the ServerApp's recovered sums against the exact weighted
sum of the clients' deterministic updates. Every process group is stopped in teardown
and checked gone.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fedtrain.test_flower_transport import holder_identity

import privagg
from fedtrain.flower.launch import DeploymentError, LocalDeployment
from fedtrain.flower.material import Role, SessionSpec, deal, load_session
from fedtrain.flower.tasks import parse_shapes, synthetic_sum

pytestmark = pytest.mark.e2e

APP = Path(__file__).resolve().parents[2] / "examples" / "flower_deployment"
SHAPES = "weight:float32:3x4,bias:float64:4"
WEIGHTS = {"client-0": 0.25, "client-1": 0.5, "client-2": 1.0}


def _client_nodes(material_dir: Path | None = None) -> list[dict[str, Any]]:
    nodes = []
    for pid, w in WEIGHTS.items():
        cfg: dict[str, Any] = {
            "party-id": pid,
            "privagg-weight": w,
            "privagg-backends": "plain,secagg,paillier,ckks",
            # the CKKS test uses test-fast (heuristic flooding): relax the node policy
            "privagg-ckks-presets": "secure,secure-large,test-fast",
            "privagg-min-ckks-flood-bits": 0,
        }
        if material_dir is not None:
            cfg["privagg-material"] = str(material_dir / f"client-{pid}.key")
        nodes.append(cfg)
    return nodes


def _run(
    d: LocalDeployment, name: str, *, timeout: float = 180.0, **config: Any
) -> dict[str, Any]:
    result = d.workdir / f"{name}.json"
    run_config = {
        "shapes": SHAPES,
        "min-nodes": len(d.node_configs),
        "stage-timeout": 40.0,
        "node-wait": 30.0,
        "result-path": str(result),
        **config,
    }
    try:
        d.run_app(APP, run_config, timeout=timeout, name=name)
    except Exception:
        print(d.logs())
        raise
    if not result.exists():
        print(d.logs())
        pytest.fail(f"the ServerApp wrote no result for run {name!r}")
    out: dict[str, Any] = json.loads(result.read_text())
    return out


def _check_round(
    rec: Mapping[str, Any], weights: Mapping[str, float], tol: float = 0.0
) -> None:
    layout = parse_shapes(SHAPES)
    assert rec["contributors"] == sorted(weights)
    want = layout.unflatten(synthetic_sum(layout, weights, int(rec["round"])))
    for name, w in want.items():
        eps = float(np.finfo(w.dtype).eps)
        np.testing.assert_allclose(
            np.asarray(rec["aggregate"][name], dtype=w.dtype),
            w,
            rtol=4 * eps,
            atol=max(tol, 1e-12),
        )


def _stopped(d: LocalDeployment) -> None:
    d.stop()
    assert d.leftover_processes() == [], "processes left running after teardown"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """3 client SuperNodes + 1 result-holder SuperNode (holder material preset; its
    own signing key made with ``privagg keygen``, pinned by the runs: #14)."""
    work = tmp_path_factory.mktemp("flower")
    nodes = _client_nodes(work / "material")
    ident, _ = holder_identity(work / "holder-machine")
    nodes.append(
        {
            "privagg-holder": True,
            "privagg-holder-material": str(work / "material" / "holder.key"),
            **ident,
        }
    )
    d = LocalDeployment(work, nodes)
    try:
        d.start()
        yield d
    finally:
        _stopped(d)


def test_components_are_separate_processes(deployment: LocalDeployment) -> None:
    pids = deployment.process_groups()
    assert len(set(pids)) == 1 + 4
    assert deployment.superlink is not None and deployment.superlink.poll() is None
    assert all(p.poll() is None for p in deployment.supernodes)


def test_plain_two_rounds(deployment: LocalDeployment) -> None:
    out = _run(deployment, "plain", backend="plain", rounds=2, holder="server")
    assert out["parties"] == sorted(WEIGHTS)
    first, second = (r["round"] for r in out["rounds"])  # random per-run base
    assert second == first + 1
    for rec in out["rounds"]:
        assert rec["dropped"] == [] and rec["stages"] == 1
        _check_round(rec, WEIGHTS)


@pytest.mark.parametrize(
    ("backend", "options"),
    [("paillier", {"workers": 1}), ("ckks", {"preset": "test-fast", "threads": 1})],
)
def test_serverapp_failure_fails_the_run(
    deployment: LocalDeployment, backend: str, options: dict[str, Any]
) -> None:
    """A keyed backend's holder may not run in the ServerApp: the run must fail."""
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} backend not available")
    with pytest.raises(DeploymentError, match="finished:failed"):
        deployment.run_app(
            APP,
            {
                "backend": backend,
                "backend-options": json.dumps(options),
                "holder": "server",
                "min-nodes": 4,
                "shapes": SHAPES,
            },
            timeout=90.0,
            name=f"must-fail-{backend}",
        )


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        ("secagg", {"active": False}),
        ("paillier", {"workers": 1}),
        ("ckks", {"preset": "test-fast", "threads": 1}),
    ],
)
def test_secure_backend(
    deployment: LocalDeployment, backend: str, options: dict[str, Any]
) -> None:
    if backend not in privagg.available_backends():
        pytest.skip(f"backend {backend!r} is not in privagg.available_backends()")
    spec = SessionSpec(backend, options, max_clients=len(WEIGHTS), max_weight=1.0)
    layout = parse_shapes(SHAPES)
    try:
        paths = deal(spec, layout, sorted(WEIGHTS), deployment.workdir / "material")
    except privagg.UnsupportedError as exc:
        pytest.skip(f"backend {backend!r} cannot be distributed yet: {exc}")
    config: dict[str, Any] = {
        "backend": backend,
        "backend-options": json.dumps(options),
        # the holder SuperNode recovers (required where the holder has a secret key)
        "holder": "node",
        "holder-key": _holder_key(deployment),
    }
    if paths:
        _check_aggregator_material_is_public(spec, layout, paths)
        config["aggregator-material"] = str(paths["aggregator"])
    out = _run(deployment, backend, **config)
    rec = out["rounds"][0]
    assert rec["dropped"] == [] and out["holder"] == "node"
    tol = spec.backend_object().tolerance(n_clients=len(WEIGHTS), max_abs=1.0)
    _check_round(rec, WEIGHTS, tol)
    if paths:
        # The ServerApp was pointed at the aggregator's file only (the run config names
        # no other material), and it still recovered nothing itself: the sum came from
        # the holder SuperNode.
        run_toml = (deployment.workdir / f"{backend}.toml").read_text()
        assert str(paths["aggregator"]) in run_toml
        assert str(paths["holder"]) not in run_toml
        assert all(str(paths[p]) not in run_toml for p in WEIGHTS)


def _holder_key(deployment: LocalDeployment) -> str:
    """The holder SuperNode's key fingerprint (its keygen ``.pub``): ``holder-key``."""
    pub = deployment.workdir / "holder-machine" / "secagg-identity-holder.pub"
    return str(json.loads(pub.read_text())["fingerprint"])


def _check_aggregator_material_is_public(
    spec: SessionSpec, layout: privagg.Layout, paths: Mapping[str, Path]
) -> None:
    """What the ServerApp loads holds no secret: its session cannot recover."""
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths.values())
    agg = load_session(spec, layout, Role.AGGREGATOR, material=paths["aggregator"])
    with pytest.raises(privagg.MissingKeyError):
        agg.holder()
    if spec.backend == "ckks":
        from privagg.backends.ckks import CkksSecretContext

        with pytest.raises(privagg.MissingKeyError):
            CkksSecretContext.from_bytes(
                paths["aggregator"].read_bytes(), protection=privagg.NoProtection()
            )
        # pointed at the holder's file by mistake, the aggregator refuses to load it
        with pytest.raises(privagg.DeserializationError):
            load_session(spec, layout, Role.AGGREGATOR, material=paths["holder"])


def _wait_for_log(path: Path, needle: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_supernode_killed_mid_round_is_a_dropout(tmp_path: Path) -> None:
    """client-2 receives the round's request, then its SuperNode is SIGKILLed."""
    nodes = _client_nodes()
    # hold client-2's answer back long enough to kill it before it can reply
    nodes[2] |= {"fault-stall-stage": 0, "fault-stall-seconds": 60.0}
    d = LocalDeployment(tmp_path, nodes)
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run_round() -> None:
        try:
            result.update(
                _run(d, "dropout", backend="plain", **{"stage-timeout": 15.0})
            )
        except BaseException as exc:  # re-raised in the test thread below
            failure.append(exc)

    try:
        d.start()
        run = threading.Thread(target=run_round)
        run.start()
        got_request = _wait_for_log(
            tmp_path / "supernode-2.log", "ROUND privagg-", timeout=60.0
        )
        d.kill_node(2)
        run.join(timeout=100.0)
        assert got_request, "client-2 never received the round's request"
        assert d.supernodes[2].poll() is not None
        assert not run.is_alive()
        if failure:
            raise failure[0]
    finally:
        _stopped(d)
    rec = result["rounds"][0]
    assert rec["dropped"] == ["client-2"]
    assert rec["missing"] == {"0": ["client-2"]}
    _check_round(rec, {k: v for k, v in WEIGHTS.items() if k != "client-2"})


@pytest.mark.slow
def test_fedtrain_lora_round_over_deployment(tmp_path: Path) -> None:
    """Two SuperNodes fine-tune MiniLM+LoRA on their partitions; the ServerApp applies
    the securely aggregated mean delta to the global adapter."""
    pytest.importorskip("peft")
    backend, options = "plain", {}
    if "secagg" in privagg.available_backends():
        backend, options = "secagg", {"active": False}
    nodes = [
        {
            "party-id": f"client-{i}",
            "partition-id": i,
            "num-partitions": 2,
            "privagg-backends": backend,
        }
        for i in range(2)
    ]
    d = LocalDeployment(tmp_path, nodes)
    try:
        d.start()
        out = _run(
            d,
            "lora",
            # each stage starts ClientApp processes that load MiniLM: slow on 2 busy cores
            timeout=300.0,
            task="lora",
            backend=backend,
            **{
                "backend-options": json.dumps(options),
                "holder": "server",
                "stage-timeout": 120.0,
                "lora-rows": 16,
                "lora-steps": 1,
                "lora-max-len": 32,
            },
        )
    finally:
        _stopped(d)
    rec = out["rounds"][0]
    assert out["task"] == "lora" and out["backend"] == backend
    assert rec["contributors"] == ["client-0", "client-1"] and rec["dropped"] == []
    # each client's delta is clipped to L2 <= 1, so their mean is <= 1 (and not zero)
    assert 0.0 < rec["mean_delta_norm"] <= 1.0 + 1e-6
    assert out["global_change_norm"] == pytest.approx(rec["mean_delta_norm"], rel=1e-3)
