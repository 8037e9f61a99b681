"""Every additive node and the ServerApp pin the key directory's fingerprint.

Whoever hands a node its directory file (the coordinator, a server operator) must not
be able to substitute the servers' or the holder's keys: the directory's fingerprint
travels out of band (node config ``privagg-directory-fingerprint``, run config
``directory-fingerprint``) and a node refuses any other directory, or none pinned.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.fedtrain.test_flower_additive import (
    LAYOUT,
    OPTIONS,
    SHAPES,
    WEIGHTS,
    _server_context,
    _server_request,
    _spec,
    holder_key,
    make_keys,
    node_configs,
    pin,
)
from tests.fedtrain.test_flower_transport import (  # the fake Grid and its fixture
    FakeGrid,
    _task_identity,  # noqa: F401  (autouse: Flower Messages need a task identity)
)

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.material import Role, load_session

PIN_KEY = "privagg-directory-fingerprint"


def _substitute(keys: dict[str, Path], root: Path, victim: str) -> Path:
    """The operator's directory with ``victim``'s public key replaced by one the
    attacker made: what a malicious coordinator would hand a node."""
    spec = _spec()
    pubs = []
    for pid in material.key_holders(spec):
        if pid == victim:
            _, pub = material.make_own_key(spec, pid, root / "attacker")
        else:
            pub = keys[pid].with_suffix(".pub")
        pubs.append(pub)
    return material.write_directory(spec, pubs, root / "attacker" / "directory.bin")


def _role_args(keys: dict[str, Path], role: Role) -> dict[str, Any]:
    if role is Role.CLIENT:
        return {"party_id": "client-0"}
    if role is Role.SERVER:
        return {"party_id": "server-1", "own_key": keys["server-1"]}
    if role is Role.HOLDER:
        return {"own_key": keys["holder"]}
    return {}


@pytest.mark.parametrize("victim", ["server-1", "server-2", "holder"])
@pytest.mark.parametrize(
    "role", [Role.CLIENT, Role.SERVER, Role.HOLDER, Role.AGGREGATOR]
)
def test_every_role_refuses_a_substituted_directory(
    tmp_path: Path, role: Role, victim: str
) -> None:
    keys = make_keys(tmp_path)
    fake = _substitute(keys, tmp_path, victim)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        load_session(
            _spec(),
            LAYOUT,
            role,
            material=fake,
            directory_fingerprint=pin(keys),
            **_role_args(keys, role),
        )
    # the genuine directory under the same pin loads
    assert load_session(
        _spec(),
        LAYOUT,
        role,
        material=keys["directory"],
        directory_fingerprint=pin(keys),
        **_role_args(keys, role),
    ).params_id


@pytest.mark.parametrize(
    "role", [Role.CLIENT, Role.SERVER, Role.HOLDER, Role.AGGREGATOR]
)
def test_no_pin_is_refused(tmp_path: Path, role: Role) -> None:
    keys = make_keys(tmp_path)
    for missing in (None, ""):
        with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
            load_session(
                _spec(),
                LAYOUT,
                role,
                material=keys["directory"],
                directory_fingerprint=missing,
                **_role_args(keys, role),
            )


def test_server_node_refuses_a_swapped_directory_file(tmp_path: Path) -> None:
    """A server node whose directory file was replaced (its pin unchanged), or whose
    pin is missing, serves nothing."""
    keys = make_keys(tmp_path)
    cfg = {n.get("party-id"): n for n in node_configs(keys)}["server-1"]
    assert cfg[PIN_KEY] == pin(keys)
    fake = _substitute(keys, tmp_path, "holder")
    env = _server_request(keys, 3, "server-1")
    swapped = {**cfg, "privagg-material": str(fake)}
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        client_app.handle_envelope(env, None, _server_context(swapped))  # type: ignore[arg-type]
    unpinned = {k: v for k, v in cfg.items() if k != PIN_KEY}
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        client_app.handle_envelope(env, None, _server_context(unpinned))  # type: ignore[arg-type]
    # the older key name pins too; two names that disagree are refused
    old = {**unpinned, "privagg-identity-directory-fingerprint": pin(keys)}
    assert client_app.handle_envelope(env, None, _server_context(old)).payload  # type: ignore[arg-type]
    both = {**cfg, "privagg-identity-directory-fingerprint": "00" * 32}
    with pytest.raises(privagg.ConfigurationError, match="disagree"):
        client_app.handle_envelope(
            _server_request(keys, 4, "server-1"),
            None,
            _server_context(both),  # type: ignore[arg-type]
        )


def test_holder_node_refuses_a_swapped_directory_file(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    fake = _substitute(keys, tmp_path, "server-2")
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        client_app._holder_for(
            _spec(), LAYOUT, str(fake), (None, pin(keys)), str(keys["holder"])
        )
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        client_app._holder_for(
            _spec(), LAYOUT, str(keys["directory"]), (None, None), str(keys["holder"])
        )
    client_app._HOLDERS.clear()


def test_serverapp_pins_the_directory(tmp_path: Path) -> None:
    """The ServerApp (server 0) loads the directory with its pin; without one, or with
    a swapped file, no round starts. A coordinator that pins its own directory gets a
    params_id no genuine node shares: every client refuses its requests."""
    keys = make_keys(tmp_path)
    nodes = dict(enumerate(node_configs(keys), start=100))
    base = server_app.RunSettings(
        backend="additive",
        backend_options=OPTIONS,
        shapes=SHAPES,
        rounds=1,
        min_nodes=len(nodes),
        stage_timeout=5.0,
        holder="node",
        holder_key=holder_key(keys),
        aggregator_material=str(keys["directory"]),
    )
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        server_app.run(FakeGrid(nodes), base, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    fake = _substitute(keys, tmp_path, "server-1")
    swapped = dataclasses.replace(
        base, aggregator_material=str(fake), directory_fingerprint=pin(keys)
    )
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        server_app.run(FakeGrid(nodes), swapped, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    # run config: the new key, and the older name, both read
    cfg = {"backend": "additive", "directory-fingerprint": pin(keys)}
    assert server_app.RunSettings.from_run_config(cfg).pin() == pin(keys)
    cfg = {"backend": "additive", "identity-directory-fingerprint": pin(keys)}
    assert server_app.RunSettings.from_run_config(cfg).pin() == pin(keys)
    cfg = {
        "backend": "additive",
        "directory-fingerprint": pin(keys),
        "identity-directory-fingerprint": "00" * 32,
    }
    with pytest.raises(privagg.ConfigurationError, match="disagree"):
        server_app.RunSettings.from_run_config(cfg).pin()
    # a coordinator pinning its own directory: its params_id is not the nodes'
    evil = load_session(
        _spec(),
        LAYOUT,
        Role.AGGREGATOR,
        material=fake,
        directory_fingerprint=material.directory_fingerprint(fake),
    )
    genuine = load_session(
        _spec(),
        LAYOUT,
        Role.CLIENT,
        party_id="client-0",
        material=keys["directory"],
        directory_fingerprint=pin(keys),
    )
    assert evil.params_id != genuine.params_id
    reqs = evil.aggregator(1, sorted(WEIGHTS)).start()
    with pytest.raises(privagg.PrivaggError):
        genuine.client("client-0", 1, np.zeros(LAYOUT.size)).handle(reqs["client-0"])


def test_the_fingerprint_is_of_the_file(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    copy = shutil.copy(keys["directory"], tmp_path / "copy.bin")
    assert material.directory_fingerprint(copy) == pin(keys)
    assert len(bytes.fromhex(pin(keys))) == 32
