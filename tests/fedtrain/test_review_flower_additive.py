"""Outside review of additive on Flower: attacks of a malicious ServerApp (server 0)
on the aggregation-server and holder SuperNodes, and their register files.

Function-level: the real ClientApp handler (``client_app.handle_envelope``) on
genuine requests built in process (``test_flower_additive`` helpers), no deployment.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from tests.fedtrain.test_flower_additive import (
    LAYOUT,
    OPTIONS,
    _fresh_holder_cache,  # noqa: F401  (autouse)
    _server_context,
    _server_request,
    _spec,
    _task_identity,  # noqa: F401  (autouse: Flower Messages need a task identity)
    make_keys,
    node_configs,
    pin,
)

import privagg
from fedtrain.flower import client_app
from fedtrain.flower.errors import (
    AlreadyReleasedError,
    PolicyError,
    ReleaseRegisterError,
)
from fedtrain.flower.material import Role, SessionSpec, load_session
from fedtrain.flower.release import ReleaseRegister, register_path_for
from fedtrain.flower.transport import Envelope
from privagg.backends import additive as ad
from privagg.backends.additive import _material as mat


def _server_cfg(keys: dict[str, Path], sid: str = "server-1") -> dict[str, Any]:
    return {n.get("party-id"): n for n in node_configs(keys)}[sid]


def _serve(env: Envelope, cfg: dict[str, Any]) -> Envelope:
    return client_app.handle_envelope(env, None, _server_context(dict(cfg)))  # type: ignore[arg-type]


def _served(keys: dict[str, Path], sid: str = "server-1") -> set[int]:
    path = register_path_for(keys[sid])
    if not path.exists():
        return set()
    reg = json.loads(path.read_text())
    return {r for rounds in reg["released"].values() for r in rounds}


def test_relabelled_round_and_foreign_params_are_refused_and_burn_nothing(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    cfg = _server_cfg(keys)
    env = _server_request(keys, 3, "server-1")
    # routed as another round than the one its payload names
    moved = Envelope(env.op, 4, env.party, env.payload, env.meta)
    with pytest.raises(privagg.ProtocolError, match="routed"):
        _serve(moved, cfg)
    # another max_clients: another params_id, so a fresh register slot; the payload's
    # header no longer matches, and re-sealed under the new params_id the seeds (bound
    # to the genuine params_id) do not open
    other = SessionSpec("additive", OPTIONS, max_clients=4)
    meta = {**env.meta, "spec": other.to_json()}
    with pytest.raises(privagg.ParameterMismatchError):
        _serve(Envelope(env.op, 3, env.party, env.payload, meta), cfg)
    req = ad.ServerRequest.from_bytes(env.payload)
    new_pid = load_session(
        other,
        LAYOUT,
        Role.AGGREGATOR,
        material=keys["directory"],
        directory_fingerprint=pin(keys),
    ).params_id
    assert new_pid != req.params_id
    resealed = ad.ServerRequest(new_pid, 3, "server-1", req.entries).to_bytes()
    with pytest.raises(privagg.DeserializationError):
        _serve(Envelope(env.op, 3, env.party, resealed, meta), cfg)
    assert _served(keys) == set()
    # options other than the pinned ones (min_contributions = 1): refused by policy
    weak = SessionSpec("additive", {**OPTIONS, "min_contributions": 1}, max_clients=3)
    with pytest.raises(PolicyError):
        _serve(
            Envelope(
                env.op, 3, env.party, env.payload, {**env.meta, "spec": weak.to_json()}
            ),
            cfg,
        )
    # the genuine request is still served, once
    assert _serve(env, cfg).payload
    assert _served(keys) == {3}
    with pytest.raises(AlreadyReleasedError):
        _serve(_server_request(keys, 3, "server-1"), cfg)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "wrong-format", "bad-key", "bool-round", "group-readable", "symlink"],
)
def test_a_damaged_server_register_fails_closed(tmp_path: Path, damage: str) -> None:
    keys = make_keys(tmp_path)
    cfg = _server_cfg(keys)
    path = register_path_for(keys["server-1"])
    good = {"format": "fedtrain-release-register/v1", "released": {"ab" * 32: [1]}}
    text = {
        "garbage": "{not json",
        "wrong-format": json.dumps({**good, "format": "v0"}),
        "bad-key": json.dumps({**good, "released": {"zz": [1]}}),
        "bool-round": json.dumps({**good, "released": {"ab" * 32: [True]}}),
        "group-readable": json.dumps(good),
        "symlink": json.dumps(good),
    }[damage]
    if damage == "symlink":
        real = tmp_path / "elsewhere.json"
        privagg.write_secret_file(real, text.encode())
        path.symlink_to(real)
    else:
        privagg.write_secret_file(path, text.encode())
        if damage == "group-readable":
            os.chmod(path, 0o640)
    with pytest.raises(ReleaseRegisterError):
        _serve(_server_request(keys, 5, "server-1"), cfg)


def test_a_crash_before_the_round_is_recorded_returns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial sum leaves the node only after its round is durably recorded."""
    keys = make_keys(tmp_path)
    cfg = _server_cfg(keys)

    def disk_full(self: ReleaseRegister, released: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ReleaseRegister, "_store", disk_full)
    with pytest.raises(OSError):
        _serve(_server_request(keys, 6, "server-1"), cfg)
    monkeypatch.undo()
    assert _served(keys) == set()


def test_a_server_node_keeps_its_key_out_of_logs_and_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = make_keys(tmp_path)
    cfg = _server_cfg(keys)
    sk = mat.read_own_key(privagg.read_secret_file(keys["server-1"]))[2]
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        out = _serve(_server_request(keys, 8, "server-1"), cfg)
        for bad in (
            {**cfg, "privagg-own-key": str(keys["holder"])},
            {**cfg, "privagg-material": str(keys["server-1"])},
        ):
            with pytest.raises(privagg.PrivaggError) as info:
                _serve(_server_request(keys, 9, "server-1"), bad)
            texts.append(repr(info.value) + str(info.value))
    texts += [caplog.text, repr(out)]
    blob = "".join(texts)
    assert sk.hex() not in blob and repr(sk) not in blob
    assert sk not in out.payload


@pytest.mark.parametrize("backend", ["paillier", "ckks"])
def test_holder_register_of_a_dealt_backend_stays_beside_its_key(
    tmp_path: Path, backend: str
) -> None:
    """Adding ``privagg-own-key`` (for additive) to a holder node must not move the
    register of a dealt backend's holder: a fresh register beside the own key would
    accept that backend's already released round ids again."""
    holder_key = tmp_path / "holder.key"
    own = tmp_path / "own-holder.key"
    ctx = _server_context(
        {
            "privagg-holder": True,
            "privagg-holder-material": str(holder_key),
            "privagg-own-key": str(own),
        }
    )
    reg = client_app._register(ctx, SessionSpec(backend), str(holder_key))
    assert reg is not None and reg.path == register_path_for(holder_key)
    reg = client_app._register(ctx, _spec(), str(tmp_path / "directory.bin"))
    assert reg is not None and reg.path == register_path_for(own)


def test_nodes_without_pinned_options_refuse_additive(tmp_path: Path) -> None:
    """The coordinator picks the options (n_servers, min_contributions) only within
    what each node pins: a server or client node that pins nothing refuses additive,
    whose options no policy judges, before loading any key."""
    keys = make_keys(tmp_path)
    env = _server_request(keys, 2, "server-1")
    cfg = {k: v for k, v in _server_cfg(keys).items() if k != "privagg-backend-options"}
    with pytest.raises(PolicyError, match="cannot judge"):
        _serve(env, cfg)
    assert _served(keys) == set()
