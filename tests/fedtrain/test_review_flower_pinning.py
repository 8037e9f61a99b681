"""Outside security review of the pinned additive directory on Flower (issue #14).

The ServerApp (the coordinator, server 0) is malicious: it names the session, sends
every message and its metadata, and sets the run config. A node's directory file and
its pin come from the node config only. Each test is one attack through the real
ClientApp handler (``client_app.handle_envelope``) or the ServerApp's settings; a
refused attack is a regression test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from tests.fedtrain.test_flower_additive import (
    LAYOUT,
    OPTIONS,
    WEIGHTS,
    _fresh_holder_cache,  # noqa: F401  (autouse)
    _server_request,
    _spec,
    make_keys,
    node_configs,
    pin,
)
from tests.fedtrain.test_flower_additive_pinning import _substitute
from tests.fedtrain.test_flower_transport import (
    _task_identity,  # noqa: F401  (autouse: Flower Messages need a task identity)
)

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.errors import AlreadyReleasedError, PolicyError
from fedtrain.flower.material import Role, SessionSpec, load_session
from fedtrain.flower.policy import ClientPolicy
from fedtrain.flower.release import register_path_for
from fedtrain.flower.transport import Envelope, Op

PIN = "privagg-directory-fingerprint"
OLD = "privagg-identity-directory-fingerprint"
#: what a malicious ServerApp may put in the run config or a message's metadata
SERVER_KEYS = (
    PIN,
    OLD,
    "directory-fingerprint",
    "identity-directory-fingerprint",
    "privagg-material",
    "privagg-holder-material",
    "aggregator-material",
)
REFUSED = (privagg.ConfigurationError, privagg.ParameterMismatchError)


def _cfgs(keys: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {str(n.get("party-id", "holder")): dict(n) for n in node_configs(keys)}


def _ctx(config: dict[str, Any], run_config: dict[str, Any] | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=config,
        state=RecordDict(),
        run_config=run_config or {},
    )  # type: ignore[arg-type]


def _meta(
    extra: dict[str, str] | None = None, spec: SessionSpec | None = None
) -> dict[str, str]:
    return {
        "spec": (spec or _spec()).to_json(),
        "layout": LAYOUT.to_bytes().hex(),
        "task": "synthetic",
        **(extra or {}),
    }


def _client_request(
    keys: dict[str, Path], round_id: int, party: str = "client-0", **meta: str
) -> Envelope:
    """The aggregator's genuine stage-0 request to ``party``."""
    agg = load_session(
        _spec(),
        LAYOUT,
        Role.AGGREGATOR,
        material=keys["directory"],
        directory_fingerprint=pin(keys),
    )
    reqs = agg.aggregator(round_id, sorted(WEIGHTS)).start()
    return Envelope(
        Op.REQUEST, round_id, party, reqs[party], _meta({"stage": "0", **meta})
    )


def _answer(env: Envelope, config: dict[str, Any], **run_config: Any) -> Envelope:
    msg = SimpleNamespace(content=RecordDict())
    return client_app.handle_envelope(env, msg, _ctx(config, run_config))  # type: ignore[arg-type]


def _aggregate(keys: dict[str, Path], round_id: int) -> bytes:
    """A genuine round run in process; returns the result the holder recovers."""
    spec, fp = _spec(), pin(keys)
    d = keys["directory"]
    agg = load_session(
        spec, LAYOUT, Role.AGGREGATOR, material=d, directory_fingerprint=fp
    )
    a = agg.aggregator(round_id, sorted(WEIGHTS))
    reqs = a.start()
    replies = {
        c: load_session(
            spec, LAYOUT, Role.CLIENT, party_id=c, material=d, directory_fingerprint=fp
        )
        .client(c, round_id, np.full(LAYOUT.size, 0.5))
        .handle(reqs[c])
        for c in sorted(WEIGHTS)
    }
    to_servers = a.receive(replies)
    partial = {}
    for sid in ("server-1", "server-2"):
        s = load_session(
            spec,
            LAYOUT,
            Role.SERVER,
            party_id=sid,
            material=d,
            directory_fingerprint=fp,
            own_key=keys[sid],
        )
        partial[sid] = s.servers(round_id)[sid].handle(to_servers[sid])
    assert a.receive(partial) == {}
    return a.result()


def _recover_env(keys: dict[str, Path], round_id: int, **meta: str) -> Envelope:
    return Envelope(Op.RECOVER, round_id, "", _aggregate(keys, round_id), _meta(meta))


# -- the pin in the node config, in every form -------------------------------------------
def test_review_node_config_pin_forms(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    fp = pin(keys)
    base = {k: v for k, v in _cfgs(keys)["server-1"].items() if k not in (PIN, OLD)}
    accepted = [
        {PIN: fp.upper()},
        {PIN: f"  {fp}\n"},
        {OLD: fp.upper()},
        {PIN: fp, OLD: f" {fp.upper()} "},  # both names, agreeing up to case/space
        {PIN: "", OLD: fp},  # an empty new name falls back to the old
    ]
    for rnd, extra in enumerate(accepted, start=10):
        out = _answer(_server_request(keys, rnd, "server-1"), {**base, **extra})
        assert out.payload, extra
    refused: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: ""}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: None, OLD: None}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: " "}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: fp[:-2]}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: "0x" + fp[2:]}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: fp + "00"}, privagg.ConfigurationError, "fingerprint"),
        ({PIN: "00" * 32}, privagg.ParameterMismatchError, "pinned"),
        ({PIN: fp, OLD: "00" * 32}, privagg.ConfigurationError, "disagree"),
        ({PIN: "00" * 32, OLD: fp}, privagg.ConfigurationError, "disagree"),
        ({PIN: " ", OLD: fp}, privagg.ConfigurationError, "disagree"),
        ({PIN: fp, OLD: "garbage"}, privagg.ConfigurationError, "disagree"),
    ]
    for rnd, (extra, exc, match) in enumerate(refused, start=40):
        env = _server_request(keys, rnd, "server-1")
        with pytest.raises(exc, match=match):
            _answer(env, {**base, **extra})
        assert rnd not in _served(keys)  # a refusal burns no round


def _served(keys: dict[str, Path]) -> set[int]:
    path = register_path_for(keys["server-1"])
    if not path.exists():
        return set()
    reg = json.loads(path.read_text())
    return {r for rounds in reg["released"].values() for r in rounds}


# -- the ServerApp cannot supply the pin or the directory --------------------------------
@pytest.mark.parametrize("node", ["client-0", "server-1", "holder"])
def test_review_serverapp_cannot_supply_pin_or_directory(
    tmp_path: Path, node: str
) -> None:
    """Neither the run config nor a message's metadata can pin (even the genuine
    fingerprint does not make an unpinned node take part), nor point a node at
    another directory file."""
    keys = make_keys(tmp_path)
    fp = pin(keys)
    fake = _substitute(keys, tmp_path, "holder")
    fake_fp = material.directory_fingerprint(fake)
    cfg = _cfgs(keys)[node]
    unpinned = {k: v for k, v in cfg.items() if k not in (PIN, OLD)}

    def request(rnd: int, meta: dict[str, str]) -> Envelope:
        if node == "server-1":
            env = _server_request(keys, rnd, node)
            return Envelope(env.op, rnd, node, env.payload, {**env.meta, **meta})
        if node == "holder":
            return _recover_env(keys, rnd, **meta)
        return _client_request(keys, rnd, node, **meta)

    for rnd, supplied in enumerate((fp, fake_fp), start=1):
        extra = {k: supplied for k in SERVER_KEYS[:4]}
        extra.update({k: str(keys["directory"]) for k in SERVER_KEYS[4:]})
        with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
            _answer(request(rnd, extra), unpinned, **extra)
    # a pinned node whose file was swapped is not rescued by a path in the metadata
    swapped = {
        **cfg,
        "privagg-material" if node != "holder" else "privagg-holder-material": str(
            fake
        ),
    }
    extra = {k: str(keys["directory"]) for k in SERVER_KEYS[4:]}
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        _answer(request(5, extra), swapped, **extra)
    # ... and the attacker's pin and file in run config and metadata do not move a
    # genuine node off its own: it answers under its own directory
    extra = {k: fake_fp for k in SERVER_KEYS[:4]}
    extra.update({k: str(fake) for k in SERVER_KEYS[4:]})
    out = _answer(request(6, extra), cfg, **extra)
    assert out.payload


def test_review_serverapp_settings_pin_forms(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    fp = pin(keys)
    for cfg in (
        {"directory-fingerprint": f" {fp.upper()} "},
        {"identity-directory-fingerprint": fp.upper()},
        {"directory-fingerprint": fp, "identity-directory-fingerprint": fp.upper()},
    ):
        settings = server_app.RunSettings.from_run_config(
            {"backend": "additive", **cfg}
        )
        assert settings.pin() == fp
        assert load_session(
            _spec(),
            LAYOUT,
            Role.AGGREGATOR,
            material=keys["directory"],
            directory_fingerprint=settings.pin() or None,
        ).params_id
    settings = server_app.RunSettings.from_run_config({"backend": "additive"})
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        load_session(
            _spec(),
            LAYOUT,
            Role.AGGREGATOR,
            material=keys["directory"],
            directory_fingerprint=settings.pin() or None,
        )


# -- every node role: swapped file, no pin, key file as the directory --------------------
@pytest.mark.parametrize("node", ["client-0", "server-1", "holder"])
def test_review_every_node_refuses_a_swapped_unpinned_or_key_file_directory(
    tmp_path: Path, node: str
) -> None:
    keys = make_keys(tmp_path)
    cfg = _cfgs(keys)[node]
    mkey = "privagg-holder-material" if node == "holder" else "privagg-material"

    def request(rnd: int) -> Envelope:
        if node == "server-1":
            return _server_request(keys, rnd, node)
        if node == "holder":
            return _recover_env(keys, rnd)
        return _client_request(keys, rnd, node)

    for victim in ("server-1", "server-2", "holder"):
        (tmp_path / "attacker").mkdir(exist_ok=True)
        for f in (tmp_path / "attacker").iterdir():
            f.unlink()
        fake = _substitute(keys, tmp_path, victim)
        with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
            _answer(request(1), {**cfg, mkey: str(fake)})
    with pytest.raises(privagg.ConfigurationError, match="fingerprint"):
        _answer(request(2), {k: v for k, v in cfg.items() if k != PIN})
    # a key file given as the directory: refused as no directory, nothing of it shown
    for which in ("server-1", "holder"):
        with pytest.raises(privagg.DeserializationError) as err:
            _answer(request(3), {**cfg, mkey: str(keys[which])})
        secret = keys[which].read_bytes()
        text = str(err.value)
        assert hashlib.sha256(secret).hexdigest()[:8] not in text
        assert secret.hex()[-64:][:16] not in text
    # the genuine node still takes part afterwards (no refusal burnt the round)
    assert _answer(request(4), cfg).payload


# -- downgrade ---------------------------------------------------------------------------
def test_review_a_pinned_additive_node_cannot_be_downgraded(tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    cfg = _cfgs(keys)["client-0"]
    env = _client_request(keys, 1)
    weaker = [
        SessionSpec("plain", max_clients=3),
        SessionSpec("secagg", {"active": False}, max_clients=3),
        SessionSpec("additive", {**OPTIONS, "n_servers": 2}, max_clients=3),
        SessionSpec("additive", {**OPTIONS, "min_contributions": 1}, max_clients=3),
    ]
    for spec in weaker:
        bad = Envelope(
            env.op, env.round_id, env.party, env.payload, _meta({"stage": "0"}, spec)
        )
        with pytest.raises(PolicyError):
            _answer(bad, cfg)
    # a node without pinned options refuses additive outright (policy) ...
    free = {k: v for k, v in cfg.items() if k != "privagg-backend-options"}
    spec2 = SessionSpec("additive", {**OPTIONS, "n_servers": 2}, max_clients=3)
    bad = Envelope(env.op, 2, env.party, env.payload, _meta({"stage": "0"}, spec2))
    with pytest.raises(PolicyError):
        _answer(bad, free)
    # ... and below the policy, the pinned directory (three servers' keys) is no
    # directory for a two-server session, in every role
    for role, extra in (
        (Role.CLIENT, {"party_id": "client-0"}),
        (Role.AGGREGATOR, {}),
        (Role.HOLDER, {"own_key": keys["holder"]}),
    ):
        with pytest.raises(privagg.ParameterMismatchError, match="key holders"):
            load_session(
                spec2,
                LAYOUT,
                role,
                material=keys["directory"],
                directory_fingerprint=pin(keys),
                **extra,  # type: ignore[arg-type]
            )
    # active SecAgg+ -> passive: a node with an identity directory refuses passive
    policy = ClientPolicy.from_node_config(
        {"privagg-backends": "secagg", "privagg-identity-directory": "/x/dir.json"}
    )
    with pytest.raises(PolicyError):
        policy.check_session(SessionSpec("secagg", {"active": False}), LAYOUT)


# -- replay across runs; the holder's release register -----------------------------------
def test_review_rounds_are_served_and_released_once_across_runs(tmp_path: Path) -> None:
    """A new run (fresh Context and ClientApp process, holder cache gone) replaying a
    round of the same directory: the server and the holder refuse it (registers on
    disk, per params_id and round id)."""
    keys = make_keys(tmp_path)
    cfgs = _cfgs(keys)
    env = _server_request(keys, 9, "server-1")
    assert _answer(env, cfgs["server-1"]).payload
    with pytest.raises(AlreadyReleasedError):
        _answer(env, dict(cfgs["server-1"]))
    renv = _recover_env(keys, 11)
    out = _answer(renv, cfgs["holder"])
    np.testing.assert_allclose(
        np.frombuffer(out.payload, dtype="<f8"), np.full(LAYOUT.size, 1.5), atol=1e-3
    )
    client_app._HOLDERS.clear()
    with pytest.raises(AlreadyReleasedError):
        _answer(renv, dict(cfgs["holder"]))
    # the holder's register sits beside its own key, 0600
    reg = register_path_for(keys["holder"])
    assert reg.exists() and reg.stat().st_mode & 0o777 == 0o600


# -- the replay digest --------------------------------------------------------------------
def test_review_replay_digest_is_sha256_and_documented_so() -> None:
    assert client_app._digest(b"reply") == hashlib.sha256(b"reply").digest()
    doc = client_app.__doc__ or ""
    assert "BLAKE2b" not in doc and "SHA-256 digest of each reply" in doc
    flower_md = (Path(__file__).parents[2] / "docs" / "flower.md").read_text()
    assert "BLAKE2b digest of each reply" not in flower_md
    assert "SHA-256 digest of each reply" in flower_md


def test_review_a_pin_of_the_wrong_file_fails_closed(tmp_path: Path) -> None:
    """``material.directory_fingerprint`` hashes whatever file it is given (its doc
    said it refused a non-directory; it does not, the doc now says so): an operator who
    publishes the fingerprint of a key file gets nodes that refuse the real directory,
    never nodes that accept another one. The CLI refuses such a file."""
    from click.testing import CliRunner

    from privagg.cli import cli

    keys = make_keys(tmp_path)
    wrong = material.directory_fingerprint(keys["holder"])
    assert wrong != pin(keys)
    cfg = {**_cfgs(keys)["server-1"], PIN: wrong}
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        _answer(_server_request(keys, 1, "server-1"), cfg)
    out = CliRunner().invoke(cli, ["directory", str(keys["holder"]), "--json"])
    assert out.exit_code != 0 and wrong not in out.output
    ok = CliRunner().invoke(cli, ["directory", str(keys["directory"]), "--json"])
    assert ok.exit_code == 0 and pin(keys) in ok.output


def test_review_one_pin_never_pins_both_directory_kinds(tmp_path: Path) -> None:
    """Node config has one pin key for both self-keyed modes. A node given the
    additive directory's pin that is also sent an active SecAgg+ session (or the
    other way round) refuses it: one pin never accepts the other kind's directory
    (fail closed; such a node takes part in one self-keyed backend only)."""
    from tests.privagg.test_identity_directory import _directory, _keys

    keys = make_keys(tmp_path)
    ident = _directory(_keys())
    ipath = tmp_path / "identity.json"
    ipath.write_bytes(ident.to_bytes())
    active = SessionSpec("secagg", {"active": True}, max_clients=3)
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        load_session(
            active,
            LAYOUT,
            Role.AGGREGATOR,
            identity_directory=ipath,
            directory_fingerprint=pin(keys),
        )
    assert load_session(
        active,
        LAYOUT,
        Role.AGGREGATOR,
        identity_directory=ipath,
        directory_fingerprint=ident.fingerprint.hex(),
    ).params_id
    with pytest.raises(privagg.ParameterMismatchError, match="pinned"):
        load_session(
            _spec(),
            LAYOUT,
            Role.AGGREGATOR,
            material=keys["directory"],
            directory_fingerprint=ident.fingerprint.hex(),
        )
