"""Additive sharing on Flower (issue #14): the aggregation servers as their own nodes.

Each server ``server-k`` (``k >= 1``) and the result holder make their own key on their
own machine (:func:`fedtrain.flower.material.make_own_key`); the operator builds the
public directory from the public halves; the ServerApp (the coordinator, server 0)
loads the directory only. Exercised in process through the real ClientApp handler
over :class:`FakeGrid` (as in ``test_flower_transport.py``); the real loopback
deployment is in ``test_flower_deployment_additive.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from tests.fedtrain.test_flower_transport import (  # the fake Grid and its fixture
    FakeGrid,
    _task_identity,  # noqa: F401  (autouse: Flower Messages need a task identity)
    holder_identity,
)

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.errors import AlreadyReleasedError, PolicyError
from fedtrain.flower.material import Role, SessionSpec, load_session
from fedtrain.flower.tasks import parse_shapes, synthetic_sum, synthetic_update
from fedtrain.flower.transport import Envelope, Op

SHAPES = "weight:float32:3x4,bias:float64:4"
LAYOUT = parse_shapes(SHAPES)
OPTIONS: dict[str, material.OptionValue] = {"n_servers": 3, "bound": 1.0}
WEIGHTS = {"client-0": 0.25, "client-1": 0.5, "client-2": 1.0}
PINNED = {
    "privagg-backends": "additive",
    "privagg-backend-options": json.dumps(OPTIONS),
}


@pytest.fixture(autouse=True)
def _fresh_holder_cache() -> Iterator[None]:
    yield
    client_app._HOLDERS.clear()


def _spec(max_clients: int = 3) -> SessionSpec:
    return SessionSpec("additive", OPTIONS, max_clients=max_clients)


def make_keys(root: Path) -> dict[str, Path]:
    """Each key holder on its own "machine" (folder); the operator's directory."""
    spec = _spec()
    pubs = []
    keys: dict[str, Path] = {}
    for pid in material.key_holders(spec):
        secret, public = material.make_own_key(spec, pid, root / f"machine-{pid}")
        keys[pid] = secret
        pubs.append(public)
    keys["directory"] = material.write_directory(
        spec, pubs, root / "operator" / "directory.bin"
    )
    # the holder node's signing key (privagg keygen; the run config pins it, #14)
    ident, _ = holder_identity(root / "machine-holder" / "identity")
    keys["holder-identity"] = Path(str(ident["privagg-identity-key"]))
    return keys


def holder_key(keys: dict[str, Path]) -> str:
    """The holder's identity fingerprint: the run config's ``holder-key``."""
    pub = keys["holder-identity"].with_suffix(".pub")
    return str(json.loads(pub.read_text())["fingerprint"])


def pin(keys: dict[str, Path]) -> str:
    """The directory's fingerprint: what the operator publishes out of band and every
    node and the ServerApp pin."""
    return material.directory_fingerprint(keys["directory"])


def node_configs(keys: dict[str, Path]) -> list[dict[str, Any]]:
    """3 clients, 2 aggregation servers, 1 result holder: each names only its files
    and pins the directory's fingerprint."""
    directory = str(keys["directory"])
    fp = {"privagg-directory-fingerprint": pin(keys)}
    nodes: list[dict[str, Any]] = [
        {
            "party-id": pid,
            "privagg-weight": w,
            "privagg-material": directory,
            **fp,
            **PINNED,
        }
        for pid, w in WEIGHTS.items()
    ]
    nodes += [
        {
            "party-id": sid,
            "privagg-role": "server",
            "privagg-material": directory,
            "privagg-own-key": str(keys[sid]),
            **fp,
            **PINNED,
        }
        for sid in ("server-1", "server-2")
    ]
    nodes.append(
        {
            "privagg-holder": True,
            "privagg-holder-material": directory,
            "privagg-own-key": str(keys["holder"]),
            "privagg-identity-key": str(keys["holder-identity"]),
            **fp,
        }
    )
    return nodes


def in_process_sum(round_id: int) -> np.ndarray:
    """The in-process runtime's result on the same inputs (one process, every role)."""
    be = privagg.get_backend("additive", **OPTIONS)
    ids = sorted(WEIGHTS)
    out = privagg.secure_sum(
        [synthetic_update(c, round_id, LAYOUT) for c in ids],
        backend=be,
        weights=[WEIGHTS[c] for c in ids],
    )
    return LAYOUT.flatten(out)


def test_key_files_directory_and_modes(tmp_path: Path) -> None:
    spec = _spec()
    assert material.key_holders(spec) == {
        "server-1": Role.SERVER,
        "server-2": Role.SERVER,
        "holder": Role.HOLDER,
    }
    keys = make_keys(tmp_path)
    for p in keys.values():
        assert p.stat().st_mode & 0o777 == 0o600
    # a party's machine holds its own key and nobody else's
    for pid in ("server-1", "server-2", "holder"):
        assert sorted(
            f.name for f in (tmp_path / f"machine-{pid}").iterdir() if f.is_file()
        ) == [f"own-{pid}.key", f"own-{pid}.pub"]
    # and the holder's signing key (keygen's folder on its machine, #14)
    assert keys["holder-identity"].parent.parent == tmp_path / "machine-holder"
    # nothing for a dealer to write; no own key for clients or other backends
    assert material.deal(spec, LAYOUT, sorted(WEIGHTS), tmp_path / "dealer") == {}
    with pytest.raises(privagg.ConfigurationError, match="no key of its own"):
        material.make_own_key(spec, "client-0", tmp_path)
    assert material.key_holders(SessionSpec("plain")) == {}
    # the directory must list every key holder
    pubs = [tmp_path / "machine-server-1" / "own-server-1.pub"]
    with pytest.raises(privagg.ConfigurationError, match="no public key"):
        material.write_directory(spec, pubs, tmp_path / "d.bin")
    # the ServerApp's material cannot recover or serve
    agg = load_session(
        spec,
        LAYOUT,
        Role.AGGREGATOR,
        material=keys["directory"],
        directory_fingerprint=pin(keys),
    )
    assert agg.servers(1) == {}
    with pytest.raises(privagg.MissingKeyError):
        agg.holder()


def test_additive_over_fake_grid_equals_in_process(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    nodes = dict(enumerate(node_configs(keys), start=100))
    grid = FakeGrid(nodes)
    settings = server_app.RunSettings(
        backend="additive",
        backend_options=OPTIONS,
        shapes=SHAPES,
        rounds=2,
        min_nodes=len(nodes),
        stage_timeout=5.0,
        holder="node",
        holder_key=holder_key(keys),
        aggregator_material=str(keys["directory"]),
        directory_fingerprint=pin(keys),
    )
    summary = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    assert summary["parties"] == sorted(WEIGHTS)
    assert summary["servers"] == ["server-1", "server-2"]
    tol = privagg.get_backend("additive", **OPTIONS).tolerance(n_clients=3, max_abs=1.0)
    for rec in summary["rounds"]:
        assert rec["contributors"] == sorted(WEIGHTS) and rec["dropped"] == []
        assert rec["stages"] == 2 and rec["errors"] == {}
        got = np.concatenate(
            [np.ravel(rec["aggregate"][s.name]) for s in LAYOUT.specs]
        ).astype(np.float64)
        exact = synthetic_sum(LAYOUT, WEIGHTS, rec["round"])
        np.testing.assert_allclose(got, exact, rtol=0, atol=tol + 1e-6)
        np.testing.assert_allclose(
            got, in_process_sum(rec["round"]), rtol=0, atol=2 * tol + 1e-6
        )
    # each server served each round once, recorded beside its own key only
    for sid in ("server-1", "server-2"):
        reg = json.loads(
            (tmp_path / f"machine-{sid}" / f"own-{sid}.key.released").read_text()
        )
        served = sorted(r for rounds in reg["released"].values() for r in rounds)
        assert served == sorted(r["round"] for r in summary["rounds"])
    # the ServerApp was never given a key holder's file
    assert not any(
        str(keys[p]) in repr(settings) for p in ("server-1", "server-2", "holder")
    )
    # a missing server aborts the round (additive needs every server)
    grid.silent_from[104] = 1  # server-2 answers hello, then goes silent
    later = dataclasses.replace(
        settings, rounds=1, first_round_id=summary["rounds"][-1]["round"] + 1
    )
    with pytest.raises(privagg.InsufficientParticipantsError, match="server-2"):
        server_app.run(grid, later, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]


def _server_context(config: dict[str, Any]) -> Context:
    return Context(
        run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={}
    )  # type: ignore[arg-type]


def _server_request(keys: dict[str, Path], round_id: int, sid: str) -> Envelope:
    """A genuine server request of ``round_id`` (clients answered in process)."""
    spec = _spec()
    agg = load_session(
        spec,
        LAYOUT,
        Role.AGGREGATOR,
        material=keys["directory"],
        directory_fingerprint=pin(keys),
    )
    a = agg.aggregator(round_id, sorted(WEIGHTS))
    reqs = a.start()
    replies = {}
    for c in sorted(WEIGHTS):
        s = load_session(
            spec,
            LAYOUT,
            Role.CLIENT,
            party_id=c,
            material=keys["directory"],
            directory_fingerprint=pin(keys),
        )
        replies[c] = s.client(c, round_id, np.zeros(LAYOUT.size)).handle(reqs[c])
    to_servers = a.receive(replies)
    meta = {"spec": spec.to_json(), "layout": LAYOUT.to_bytes().hex(), "stage": "1"}
    return Envelope(Op.REQUEST, round_id, sid, to_servers[sid], meta)


def test_a_server_node_uses_only_its_own_key_and_serves_a_round_once(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    by_party = {n.get("party-id"): n for n in node_configs(keys)}
    cfg = by_party["server-1"]
    # the node config names the directory and its own key, nothing else
    assert {k: v for k, v in cfg.items() if "material" in k or "key" in k} == {
        "privagg-material": str(keys["directory"]),
        "privagg-own-key": str(keys["server-1"]),
    }
    env = _server_request(keys, 3, "server-1")
    out = client_app.handle_envelope(env, None, _server_context(cfg))  # type: ignore[arg-type]
    assert out.op == Op.REQUEST and out.party == "server-1" and out.payload
    # a second request for the round, from a fresh process: refused (register)
    env2 = _server_request(keys, 3, "server-1")
    with pytest.raises(AlreadyReleasedError):
        client_app.handle_envelope(env2, None, _server_context(dict(cfg)))  # type: ignore[arg-type]
    # server-2's key, or the holder's, in server-1's node: refused before serving
    for other in ("server-2", "holder"):
        bad = {**cfg, "privagg-own-key": str(keys[other])}
        with pytest.raises(privagg.ParameterMismatchError):
            client_app.handle_envelope(
                _server_request(keys, 4, "server-1"),
                None,
                _server_context(bad),  # type: ignore[arg-type]
            )
    # a request addressed to server-2 is not served by server-1
    with pytest.raises(privagg.ProtocolError, match="another party"):
        client_app.handle_envelope(
            _server_request(keys, 5, "server-2"),
            None,
            _server_context(cfg),  # type: ignore[arg-type]
        )
    # no own key: refused with a typed configuration error
    nokey = {k: v for k, v in cfg.items() if k != "privagg-own-key"}
    with pytest.raises(privagg.ConfigurationError, match="own-key"):
        client_app.handle_envelope(
            _server_request(keys, 6, "server-1"),
            None,
            _server_context(nokey),  # type: ignore[arg-type]
        )
    # the server's operator policy applies like a client's
    weaker = {**cfg, "privagg-backends": "plain"}
    with pytest.raises(PolicyError):
        client_app.handle_envelope(
            _server_request(keys, 7, "server-1"),
            None,
            _server_context(weaker),  # type: ignore[arg-type]
        )
    with pytest.raises(privagg.ConfigurationError, match="privagg-role"):
        client_app.handle_envelope(
            env,
            None,
            _server_context({**cfg, "privagg-role": "janitor"}),  # type: ignore[arg-type]
        )


def test_hello_tells_servers_from_clients(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    hello = Envelope(Op.HELLO, 0, "")
    roles = {}
    for cfg in node_configs(keys):
        out = client_app.handle_envelope(hello, None, _server_context(cfg))  # type: ignore[arg-type]
        roles[out.party] = (out.meta["role"], out.meta["holder"])
    assert roles == {
        "client-0": ("client", "0"),
        "client-1": ("client", "0"),
        "client-2": ("client", "0"),
        "server-1": ("server", "0"),
        "server-2": ("server", "0"),
        "": ("client", "1"),
    }


def test_serverapp_refuses_to_recover_additive_itself(tmp_path: Path) -> None:
    """The additive holder has a secret key: never in the ServerApp."""
    assert not material.holder_needs_no_secret(_spec())
    keys = make_keys(tmp_path)
    grid = FakeGrid(dict(enumerate(node_configs(keys), start=100)))
    settings = server_app.RunSettings(
        backend="additive",
        backend_options=OPTIONS,
        shapes=SHAPES,
        min_nodes=6,
        holder="server",
        aggregator_material=str(keys["directory"]),
        directory_fingerprint=pin(keys),
    )
    with pytest.raises(privagg.ConfigurationError, match="holder"):
        server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
