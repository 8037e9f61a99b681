"""Security review #11: a malicious ServerApp against the Flower runtime's defences.

* Finding 3: the ClientApp enforces its operator's local minimum policy (node config
  only) on every session the ServerApp proposes, pinned options or not, and refuses a
  weaker one before computing or sending anything.
* Finding 5: the result holder releases each ``(params_id, round id)`` once, across
  messages, holder objects and processes (a 0600 register beside its key).
* Finding 6: sessions set up from the shared *public* seed draw every secret (SecAgg+
  identity keys) from the system CSPRNG, never from the seed.
* Finding 9 (b): dealt material cannot be pickled and its repr shows no secret.

Like ``test_flower_transport.py``, the ClientApp is exercised in process through its
real handler with a Flower ``Context`` per node.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import privagg
from fedtrain.errors import FedtrainError
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.errors import (
    AlreadyReleasedError,
    PolicyError,
    ReleaseRegisterError,
)
from fedtrain.flower.material import DealtMaterial, Role, SessionSpec, load_session
from fedtrain.flower.policy import ClientPolicy
from fedtrain.flower.release import ReleaseRegister, register_path_for
from fedtrain.flower.tasks import parse_shapes
from fedtrain.flower.transport import MESSAGE_TYPE, Envelope, Op, pack, unpack
from privagg.hazmat import DeterministicRng

SHAPES = "weight:float32:2x3,bias:float64:3"
LAYOUT = parse_shapes(SHAPES)
SECAGG = "secagg" in privagg.available_backends()
CKKS = "ckks" in privagg.available_backends()


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    """Flower Messages read the process's task identity; give the test process one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(autouse=True)
def _fresh_holder_cache() -> Iterator[None]:
    client_app._HOLDERS.clear()
    yield
    client_app._HOLDERS.clear()


def _context(
    node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=dict(node_config),
        state=RecordDict(),
        run_config=dict(run_config or {}),
    )  # type: ignore[arg-type]


def _request(
    spec: SessionSpec,
    *,
    payload: bytes = b"x",
    round_id: int = 0,
    stage: int = 0,
    party: str = "client-0",
    layout: privagg.Layout = LAYOUT,
) -> Message:
    meta = {
        "spec": spec.to_json(),
        "layout": layout.to_bytes().hex(),
        "stage": str(stage),
    }
    return Message(
        pack(Envelope(Op.REQUEST, round_id, party, payload, meta)),
        dst_node_id=7,
        message_type=MESSAGE_TYPE,
    )


def _call(msg: Message, ctx: Context) -> Envelope:
    return client_app.handle_envelope(unpack(msg.content), msg, ctx)


class _TaskSpy:
    """Stands in for the task: records that the client computed its update."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: object) -> object:
        self.calls += 1
        raise AssertionError("the update must not be computed for a refused session")


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _TaskSpy:
    task = _TaskSpy()
    monkeypatch.setattr(client_app, "get_task", lambda name: task)
    return task


def _refused(msg: Message, ctx: Context, spy: _TaskSpy, match: str) -> None:
    """The ClientApp refuses with the typed policy error and has computed nothing."""
    with pytest.raises(PolicyError, match=match) as info:
        _call(msg, ctx)
    assert isinstance(info.value, FedtrainError)
    assert isinstance(info.value, privagg.ConfigurationError)
    assert spy.calls == 0
    assert client_app._STATE not in ctx.state.config_records


CLIENT = {"party-id": "client-0", "privagg-backends": "secagg,plain,ckks,paillier"}


# -- finding 3: the client's local minimum policy --------------------------------------


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_corruption_rate_zero_really_gives_threshold_one() -> None:
    """The attack the policy stops: with corruption_rate=0, t = 1 (a share is the secret)."""
    be = privagg.get_backend("secagg", corruption_rate=0.0, active=False)
    assert be.setup(LAYOUT, max_clients=3).graph(3).threshold == 1  # type: ignore[attr-defined]


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
@pytest.mark.parametrize("pinned", [False, True])
def test_client_refuses_corruption_rate_zero(spy: _TaskSpy, pinned: bool) -> None:
    """Refused whether the node pins nothing or pins exactly these weak options."""
    options = {"active": False, "corruption_rate": 0.0}
    cfg = dict(CLIENT)
    if pinned:
        cfg["privagg-backend-options"] = json.dumps(options)
    spec = SessionSpec("secagg", options, max_clients=3)
    _refused(_request(spec), _context(cfg), spy, "corruption_rate")


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sigma": 20}, "sigma"),
        ({"dropout_rate": 0.6}, "dropout_rate"),
        ({"corruption_rate": 0.05}, "corruption_rate"),
    ],
)
def test_client_refuses_weaker_secagg_options(
    spy: _TaskSpy, options: dict[str, Any], match: str
) -> None:
    spec = SessionSpec("secagg", {"active": False, **options}, max_clients=3)
    _refused(_request(spec), _context(CLIENT), spy, match)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (SessionSpec("plain", max_clients=10**9), "max_clients"),
        (SessionSpec("plain", max_clients=3, max_weight=1e6), "max_weight"),
        (SessionSpec("secagg", {"active": False}, max_clients=10**6), "max_clients"),
    ],
)
def test_client_refuses_huge_max_clients_or_max_weight(
    spy: _TaskSpy, spec: SessionSpec, match: str
) -> None:
    if spec.backend not in privagg.available_backends():
        pytest.skip(f"{spec.backend} not available")
    _refused(_request(spec), _context(CLIENT), spy, match)


def test_policy_comes_from_the_node_config_only(spy: _TaskSpy) -> None:
    """Relaxations in the run config (the ServerApp's) or the message change nothing."""
    relax = {"privagg-max-clients": 10**9, "privagg-min-corruption-rate": 0.0}
    ctx = _context(CLIENT, run_config=relax)
    msg = _request(SessionSpec("plain", max_clients=10**9))
    msg.content.config_records["privagg-policy"] = _record(relax)
    _refused(msg, ctx, spy, "max_clients")
    # the node's own operator may relax it
    ctx = _context({**CLIENT, "privagg-max-clients": 10**9})
    with pytest.raises(AssertionError, match="must not be computed"):
        _call(_request(SessionSpec("plain", max_clients=10**9)), ctx)
    assert spy.calls == 1


def _record(values: Mapping[str, Any]) -> Any:
    from flwr.app import ConfigRecord

    return ConfigRecord(dict(values))


def test_layout_fingerprint_is_enforced_when_configured(spy: _TaskSpy) -> None:
    other = parse_shapes("weight:float32:4x4")
    cfg = {**CLIENT, "privagg-layout-fingerprint": LAYOUT.fingerprint.hex()}
    spec = SessionSpec("plain", max_clients=3)
    _refused(_request(spec, layout=other), _context(cfg), spy, "layout")
    policy = ClientPolicy.from_node_config(cfg)
    policy.check_session(spec, LAYOUT)  # the expected layout passes


def test_backend_the_policy_cannot_judge_needs_pinned_options(spy: _TaskSpy) -> None:
    cfg = {**CLIENT, "privagg-backends": "additive"}
    spec = SessionSpec("additive", max_clients=3)
    _refused(_request(spec), _context(cfg), spy, "cannot judge")


def test_unlisted_backend_is_refused(spy: _TaskSpy) -> None:
    cfg = {**CLIENT, "privagg-backends": "secagg"}
    _refused(_request(SessionSpec("plain")), _context(cfg), spy, "accepts backends")


@pytest.mark.skipif(not CKKS, reason="ckks backend not available")
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"preset": "test-fast"}, "preset"),
        ({"preset": "compact"}, "preset"),
        ({"preset": "secure", "flood_bits": 0}, "flood_bits"),
    ],
)
def test_client_refuses_weak_ckks_parameters(
    spy: _TaskSpy, options: dict[str, Any], match: str
) -> None:
    spec = SessionSpec("ckks", options, max_clients=3)
    _refused(_request(spec), _context(CLIENT), spy, match)
    ClientPolicy.from_node_config(CLIENT).check_session(
        SessionSpec("ckks", {"preset": "secure"}, max_clients=3), LAYOUT
    )


@pytest.mark.skipif(
    "paillier" not in privagg.available_backends(), reason="paillier not available"
)
def test_client_enforces_minimum_paillier_key_size(spy: _TaskSpy) -> None:
    spec = SessionSpec("paillier", {"key_bits": 2048}, max_clients=3)
    ClientPolicy.from_node_config(CLIENT).check_session(spec, LAYOUT)
    cfg = {**CLIENT, "privagg-min-paillier-key-bits": 3072}
    _refused(_request(spec), _context(cfg), spy, "key size")


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_stage0_setup_with_threshold_one_is_refused(spy: _TaskSpy) -> None:
    """The round's own SetupRequest is checked too: t = 1 is refused even when the spec
    names acceptable options (the role would also refuse; the policy does it first)."""
    weak = privagg.get_backend("secagg", corruption_rate=0.0, active=False)
    ids = ["client-0", "client-1", "client-2"]
    setup = weak.setup(LAYOUT, max_clients=3).aggregator(0, ids).start()["client-0"]
    spec = SessionSpec("secagg", {"active": False}, max_clients=3)
    _refused(_request(spec, payload=setup), _context(CLIENT), spy, "threshold")


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_stage0_setup_with_too_many_participants_is_refused(spy: _TaskSpy) -> None:
    be = privagg.get_backend("secagg", active=False)
    ids = [f"client-{i}" for i in range(6)]
    setup = be.setup(LAYOUT, max_clients=6).aggregator(0, ids).start()["client-0"]
    spec = SessionSpec("secagg", {"active": False}, max_clients=4)
    cfg = {**CLIENT, "privagg-max-clients": 4}
    _refused(_request(spec, payload=setup), _context(cfg), spy, "participants")
    # not a setup request at all: nothing to check, nothing sent
    _refused(_request(spec, payload=b"junk"), _context(cfg), spy, "setup request")


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_secagg_policy_floors_per_round_size() -> None:
    """t and k floors are capped at n - 1: a two-client round (t = k = 1) stays legal."""
    be = privagg.get_backend("secagg", active=False)
    policy = ClientPolicy.from_node_config(CLIENT)
    for n in (2, 3, 5, 12):
        ids = [f"client-{i}" for i in range(n)]
        req = be.setup(LAYOUT, max_clients=n).aggregator(0, ids).start()["client-0"]
        policy.check_secagg_setup(req)


def test_policy_parsing_is_strict() -> None:
    with pytest.raises(PolicyError, match="privagg-backends"):
        ClientPolicy.from_node_config({"party-id": "a"})
    with pytest.raises(PolicyError, match="privagg-max-clients"):
        ClientPolicy.from_node_config({**CLIENT, "privagg-max-clients": True})
    with pytest.raises(PolicyError, match="privagg-min-sigma"):
        ClientPolicy.from_node_config({**CLIENT, "privagg-min-sigma": "many"})
    with pytest.raises(PolicyError, match="finite"):
        ClientPolicy.from_node_config({**CLIENT, "privagg-max-weight": "inf"})
    p = ClientPolicy.from_node_config(CLIENT)
    assert (p.min_corruption_rate, p.min_sigma, p.max_clients) == (0.1, 40, 1000)
    with pytest.raises(PolicyError, match="JSON"):
        ClientPolicy.from_node_config(
            {**CLIENT, "privagg-backend-options": "{nope"}
        ).check_session(SessionSpec("plain"), LAYOUT)


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_policy_defaults_are_privagg_defaults() -> None:
    """The defaults are no weaker than privagg's own SecAgg+ defaults."""
    import inspect

    from privagg.backends.secagg import SecAggBackend

    sig = inspect.signature(SecAggBackend).parameters
    p = ClientPolicy()
    assert p.min_corruption_rate >= sig["corruption_rate"].default
    assert p.min_sigma >= sig["sigma"].default >= 40
    assert p.max_dropout_rate <= sig["dropout_rate"].default


def test_round_ids_are_joined_once_and_the_session_is_fixed() -> None:
    ctx = _context(CLIENT)
    spec = SessionSpec("plain", max_clients=3)

    def request(round_id: int) -> bytes:
        session = load_session(spec, LAYOUT, Role.AGGREGATOR)
        return session.aggregator(round_id, ["client-0"]).start()["client-0"]

    _call(_request(spec, payload=request(5), round_id=5), ctx)  # plain's one stage
    with pytest.raises(privagg.ProtocolError, match="not newer"):
        _call(_request(spec, payload=request(3), round_id=3), ctx)
    with pytest.raises(privagg.ProtocolError):
        _call(_request(spec, payload=request(5), round_id=5), ctx)  # again
    # a later stage must carry the stage-0 session
    other = SessionSpec("plain", max_clients=2)
    with pytest.raises(privagg.ProtocolError, match="changed after stage 0"):
        _call(_request(other, round_id=5, stage=1), ctx)


def test_server_round_ids_are_fresh_per_run() -> None:
    a = server_app.RunSettings(rounds=3).round_ids()
    b = server_app.RunSettings(rounds=3).round_ids()
    assert len(a) == 3 and a.step == 1 and a.start != b.start
    assert a.stop <= 1 << 62
    pinned = server_app.RunSettings.from_run_config({"first-round-id": 7, "rounds": 2})
    assert list(pinned.round_ids()) == [7, 8]
    with pytest.raises(privagg.ConfigurationError):
        server_app.RunSettings.from_run_config({"first-round-id": -5})


# -- finding 5: one release per round, across messages and processes -----------------


def _holder_request(spec: SessionSpec, round_id: int, result: bytes) -> Envelope:
    meta = {"spec": spec.to_json(), "layout": LAYOUT.to_bytes().hex()}
    return Envelope(Op.RECOVER, round_id, "holder", result, meta)


def _plain_aggregate(round_id: int) -> tuple[SessionSpec, bytes]:
    """A real plain aggregate of two clients for ``round_id`` (as the ServerApp has it)."""
    spec = SessionSpec("plain", max_clients=3)
    session = load_session(spec, LAYOUT, Role.AGGREGATOR)
    ids = ["client-0", "client-1"]
    agg = session.aggregator(round_id, ids)
    requests = agg.start()
    replies = {
        c: session.client(c, round_id, np.full(LAYOUT.size, 0.25)).handle(requests[c])
        for c in ids
    }
    agg.receive(replies)
    assert agg.done
    return spec, agg.result()


def _holder_context(register: Path) -> Context:
    return _context({"privagg-holder": True, "privagg-holder-register": str(register)})


def test_second_recover_of_a_round_is_refused(tmp_path: Path) -> None:
    reg = tmp_path / "holder.released"
    spec, result = _plain_aggregate(4)
    ctx = _holder_context(reg)
    out = client_app.handle_envelope(_holder_request(spec, 4, result), None, ctx)  # type: ignore[arg-type]
    np.testing.assert_allclose(np.frombuffer(out.payload, "<f8"), 0.5)
    with pytest.raises(AlreadyReleasedError, match="round 4"):
        client_app.handle_envelope(_holder_request(spec, 4, result), None, ctx)  # type: ignore[arg-type]
    # a new holder object (cache dropped) and a fresh node state: still refused
    client_app._HOLDERS.clear()
    with pytest.raises(AlreadyReleasedError):
        client_app.handle_envelope(
            _holder_request(spec, 4, result),
            None,  # type: ignore[arg-type]
            _holder_context(reg),
        )
    # other rounds are not blocked; the register is 0600 and lists public values only
    spec5, result5 = _plain_aggregate(5)
    client_app.handle_envelope(_holder_request(spec5, 5, result5), None, ctx)  # type: ignore[arg-type]
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    data = json.loads(reg.read_text())
    assert sorted(r for rounds in data["released"].values() for r in rounds) == [4, 5]


def test_holder_object_is_cached_per_session(tmp_path: Path) -> None:
    spec, _ = _plain_aggregate(0)
    a = client_app._holder_for(spec, LAYOUT, None)
    assert client_app._holder_for(spec, LAYOUT, None) is a
    other = SessionSpec("plain", max_clients=2)
    assert client_app._holder_for(other, LAYOUT, None) is not a


def test_holder_refuses_an_aggregate_relabelled_to_another_round(
    tmp_path: Path,
) -> None:
    spec, result = _plain_aggregate(4)
    with pytest.raises(privagg.ProtocolError, match="round 4"):
        client_app.handle_envelope(
            _holder_request(spec, 9, result),
            None,  # type: ignore[arg-type]
            _holder_context(tmp_path / "r"),
        )


_RESTARTED_HOLDER = """
import json, sys
from flwr.app import Context, RecordDict
from fedtrain.flower import client_app
from fedtrain.flower.errors import AlreadyReleasedError
from fedtrain.flower.transport import Envelope, Op
d = json.load(open(sys.argv[1]))
env = Envelope(Op.RECOVER, d["round"], "holder", bytes.fromhex(d["payload"]), d["meta"])
ctx = Context(run_id=1, node_id=200, node_config=d["node_config"], state=RecordDict(),
              run_config={})
try:
    client_app.handle_envelope(env, None, ctx)
except AlreadyReleasedError:
    sys.exit(3)
sys.exit(0)
"""


@pytest.mark.skipif(not CKKS, reason="ckks backend not available")
def test_keyed_holder_refuses_a_replay_after_a_restart(tmp_path: Path) -> None:
    """CKKS, keys dealt to files: the register sits beside the holder's key, and a new
    holder process with the same key dir refuses the round the first one released."""
    options: dict[str, material.OptionValue] = {"preset": "test-fast", "threads": 1}
    spec = SessionSpec("ckks", options, max_clients=3)
    ids = ["client-0", "client-1"]
    paths = material.deal(spec, LAYOUT, ids, tmp_path)
    agg_session = load_session(
        spec, LAYOUT, Role.AGGREGATOR, material=paths["aggregator"]
    )
    agg = agg_session.aggregator(11, ids)
    requests = agg.start()
    replies = {}
    for c in ids:
        s = load_session(spec, LAYOUT, Role.CLIENT, party_id=c, material=paths[c])
        replies[c] = s.client(c, 11, np.full(LAYOUT.size, 0.5)).handle(requests[c])
    agg.receive(replies)
    result = agg.result()
    node_config = {
        "privagg-holder": True,
        "privagg-holder-material": str(paths["holder"]),
    }
    env = _holder_request(spec, 11, result)
    out = client_app.handle_envelope(env, None, _context(node_config))  # type: ignore[arg-type]
    np.testing.assert_allclose(
        np.frombuffer(out.payload, "<f8"),
        1.0,
        atol=spec.backend_object().tolerance(n_clients=2, max_abs=1.0),
    )
    register = register_path_for(paths["holder"])
    assert register == tmp_path / "holder.key.released"
    assert stat.S_IMODE(register.stat().st_mode) == 0o600
    job = tmp_path / "replay.json"
    job.write_text(
        json.dumps(
            {
                "round": 11,
                "payload": result.hex(),
                "meta": dict(env.meta),
                "node_config": node_config,
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-c", _RESTARTED_HOLDER, str(job)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 3, proc.stderr.decode()[-2000:]


def test_register_is_exclusive_between_concurrent_holders(tmp_path: Path) -> None:
    path = tmp_path / "reg"
    wins: list[int] = []
    refused: list[int] = []
    barrier = threading.Barrier(4)

    def holder(i: int) -> None:
        reg = ReleaseRegister(path)  # one object per "process"
        barrier.wait()
        try:
            reg.release(b"\x01" * 32, 3, lambda: wins.append(i))
        except AlreadyReleasedError:
            refused.append(i)

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refused) == 3


def test_failed_recovery_burns_no_round_and_a_bad_register_fails_closed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reg"
    reg = ReleaseRegister(path)

    def broken() -> None:
        raise privagg.DeserializationError()

    with pytest.raises(privagg.DeserializationError):
        reg.release(b"\x02" * 32, 1, broken)
    assert not reg.is_released(b"\x02" * 32, 1)
    assert reg.release(b"\x02" * 32, 1, lambda: "ok") == "ok"
    assert reg.is_released(b"\x02" * 32, 1)
    assert not reg.is_released(b"\x03" * 32, 1)  # keyed by (params_id, round id)
    os.chmod(path, 0o644)
    with pytest.raises(ReleaseRegisterError):
        reg.release(b"\x02" * 32, 2, lambda: "no")
    os.chmod(path, 0o600)
    path.write_text('{"format": "something else"}')
    with pytest.raises(ReleaseRegisterError, match="malformed"):
        reg.release(b"\x02" * 32, 2, lambda: "no")
    with pytest.raises(TypeError):
        pickle.dumps(reg)


# -- finding 6: secrets never from the public setup seed -------------------------------


@pytest.mark.skipif(not SECAGG, reason="secagg backend not available")
def test_public_seed_does_not_reach_identity_secrets() -> None:
    """Two parties set up from the same public seed agree on the public parameters but
    get different (unreproducible) identity keys, even with the active variant."""
    seed = bytes(range(32))
    spec = SessionSpec("secagg", {"active": True}, max_clients=3, setup_seed=seed.hex())
    a = material._seeded_setup(spec, LAYOUT)
    b = material._seeded_setup(spec, LAYOUT)
    assert a.params_id == b.params_id  # type: ignore[attr-defined]
    update = np.zeros(LAYOUT.size)
    a.client("client-0", 0, update)
    b.client("client-0", 0, update)
    pk_a = a.identity_public("client-0")  # type: ignore[attr-defined]
    pk_b = b.identity_public("client-0")  # type: ignore[attr-defined]
    assert pk_a != pk_b
    # what the public seed alone would give (secret stream = public stream) is neither
    be = privagg.get_backend("secagg", active=True)
    naive = be.setup(  # type: ignore[call-arg]
        LAYOUT,
        max_clients=3,
        rng=DeterministicRng(seed),
        secret_rng=DeterministicRng(seed),
    )
    naive.client("client-0", 0, update)
    assert naive.params_id == a.params_id  # type: ignore[attr-defined]
    assert naive.identity_public("client-0") not in (pk_a, pk_b)  # type: ignore[attr-defined]


# -- finding 9 (b): dealt material --------------------------------------------------------


def test_dealt_material_is_unpicklable_and_its_repr_shows_no_secret() -> None:
    secret = b"\x13PLANTED-HOLDER-SECRET\x37" * 4
    client_secret = b"\x42PLANTED-CLIENT-SECRET\x24" * 4
    dealt = DealtMaterial(b"public-params", secret, {"client-0": client_secret})
    for obj in (dealt,):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
        with pytest.raises(TypeError):
            copy.copy(obj)
    text = repr(dealt) + str(dealt) + f"{dealt}"
    for s in (secret, client_secret):
        for form in (s.hex(), repr(s), s[1:20].decode(), "PLANTED"):
            assert form not in text
    assert "aggregator_fp=" in text and "clients=1" in text


def test_keyless_holder_reads_no_material_and_keeps_the_in_process_rule(
    tmp_path: Path,
) -> None:
    """A holder without a secret key ignores a (missing) material path, as
    ``load_session`` does, and writes no register unless one is configured."""
    missing = tmp_path / "nothing" / "holder.key"
    ctx = _context({"privagg-holder": True, "privagg-holder-material": str(missing)})
    spec, result = _plain_aggregate(2)
    client_app.handle_envelope(_holder_request(spec, 2, result), None, ctx)  # type: ignore[arg-type]
    assert not missing.parent.exists()
    with pytest.raises(privagg.ProtocolError, match="already recovered"):
        client_app.handle_envelope(_holder_request(spec, 2, result), None, ctx)  # type: ignore[arg-type]
