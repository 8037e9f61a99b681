"""Additive sharing over a real loopback deployment (issue #14).

One SuperLink and six SuperNodes, each a separate process group with TLS and SuperNode
authentication: three clients, two aggregation servers (``privagg-role = "server"``:
``server-1`` and ``server-2``, each with only the directory and its own key) and the
result holder (its own key). The ServerApp is the coordinator (server 0) and is given
the public directory only. The recovered sums must equal the in-process runtime's on
the same inputs within the backend's tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.fedtrain.test_flower_additive import (
    LAYOUT,
    OPTIONS,
    WEIGHTS,
    holder_key,
    in_process_sum,
    make_keys,
    node_configs,
    pin,
)
from tests.fedtrain.test_flower_deployment import _run, _stopped

import privagg
from fedtrain.flower.launch import LocalDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_additive_two_server_nodes_three_clients(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "parties")
    nodes = node_configs(keys)
    d = LocalDeployment(tmp_path / "deployment", nodes)
    try:
        d.start()
        out = _run(
            d,
            "additive",
            timeout=180.0,
            backend="additive",
            **{
                "backend-options": json.dumps(OPTIONS),
                "holder": "node",
                "holder-key": holder_key(keys),
                "rounds": 2,
                "aggregator-material": str(keys["directory"]),
                "directory-fingerprint": pin(keys),
            },
        )
        server_logs = {
            sid: (d.workdir / f"supernode-{i}.log").read_text(errors="replace")
            for i, sid in ((3, "server-1"), (4, "server-2"))
        }
    finally:
        _stopped(d)
    assert out["parties"] == sorted(WEIGHTS)
    assert out["servers"] == ["server-1", "server-2"]
    assert out["holder"] == "node"
    tol = privagg.get_backend("additive", **OPTIONS).tolerance(
        n_clients=len(WEIGHTS), max_abs=1.0
    )
    for rec in out["rounds"]:
        assert rec["contributors"] == sorted(WEIGHTS) and rec["dropped"] == []
        assert rec["stages"] == 2 and rec["errors"] == {}
        got = np.concatenate(
            [np.ravel(rec["aggregate"][s.name]) for s in LAYOUT.specs]
        ).astype(np.float64)
        want = in_process_sum(rec["round"])
        np.testing.assert_allclose(got, want, rtol=0, atol=2 * tol + 1e-6)
    # each server process served both rounds, recorded beside its own key
    for sid in ("server-1", "server-2"):
        reg = keys[sid].with_name(keys[sid].name + ".released")
        data = json.loads(reg.read_text())
        served = sorted(r for rounds in data["released"].values() for r in rounds)
        assert served == sorted(r["round"] for r in out["rounds"])
        assert "Traceback" not in server_logs[sid]
    # what each process was given: the ServerApp the directory only; each server node
    # the directory and its own key, never another party's key
    run_toml = (d.workdir / "additive.toml").read_text()
    assert str(keys["directory"]) in run_toml
    assert all(str(keys[p]) not in run_toml for p in ("server-1", "server-2", "holder"))
    given: dict[str, str] = {}
    for i, cfg in enumerate(nodes):
        text = (d.workdir / f"node-{i}.toml").read_text()
        given[str(cfg.get("party-id", "holder"))] = text
    for pid, text in given.items():
        for other in ("server-1", "server-2", "holder"):
            assert (str(keys[other]) in text) == (other == pid), (pid, other)
