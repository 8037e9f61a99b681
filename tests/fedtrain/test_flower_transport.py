"""Unit tests of the Flower runtime without a deployment: routing, records, replay.

A fake Grid calls the real ClientApp handler (``handle_envelope``) with one Flower
``Context`` per node, so the ServerApp's loop, the message records and the ClientApp's
state handling are exercised exactly as in a deployment, minus the processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.errors import FlowerConfigError
from fedtrain.flower.material import Role, SessionSpec, load_session
from fedtrain.flower.tasks import parse_shapes, synthetic_sum
from fedtrain.flower.transport import (
    MESSAGE_TYPE,
    Envelope,
    GridExchange,
    Op,
    drive_aggregator,
    pack,
    unpack,
)

SHAPES = "weight:float32:2x3,bias:float64:3,scale:float16:"


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    """Flower Messages read the process's task identity; give the test process one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class FakeGrid:
    """Delivers messages to in-process ClientApps; ``silent`` nodes never answer."""

    def __init__(self, configs: Mapping[int, dict[str, object]]) -> None:
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config=dict(c),
                state=RecordDict(),
                run_config={},
            )  # type: ignore[arg-type]
            for n, c in configs.items()
        }
        self.silent: set[int] = set()
        self.silent_from: dict[int, int] = {}  # node -> first stage it does not answer
        self.sent: list[Message] = []
        self._outbox: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            self.sent.append(msg)
            mid = f"m{len(self.sent)}"
            ids.append(mid)
            node = msg.metadata.dst_node_id
            stage = int(unpack(msg.content).meta.get("stage", "0"))
            if node in self.silent or stage >= self.silent_from.get(node, 1 << 30):
                continue
            try:
                reply = client_app.privagg_query(msg, self.contexts[node])
            except Exception as exc:
                reply = Message(Error(code=1, reason=repr(exc)), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            self._outbox[mid] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._outbox.pop(m) for m in list(message_ids) if m in self._outbox]


def _nodes(weights: Sequence[float]) -> dict[int, dict[str, object]]:
    return {
        100 + i: {
            "party-id": f"client-{i}",
            "privagg-weight": w,
            "privagg-backends": "plain,secagg,paillier,toy",
        }
        for i, w in enumerate(weights)
    }


def holder_identity(folder: Path) -> tuple[dict[str, object], str]:
    """The result holder's own key, made as its operator would (``privagg keygen
    --backend secagg --party-id holder`` in ``folder``): the node config entries that
    load it and the fingerprint the run config pins as ``holder-key``."""
    from click.testing import CliRunner

    from privagg.cli import cli

    res = CliRunner().invoke(
        cli, ["keygen", "--backend", "secagg", "--party-id", "holder", str(folder)]
    )
    assert res.exit_code == 0, res.output
    pub = json.loads((folder / "secagg-identity-holder.pub").read_text())
    key = folder / "secagg-identity-holder.key"
    return {"privagg-identity-key": str(key)}, str(pub["fingerprint"])


def fake_node(
    monkeypatch: pytest.MonkeyPatch,
    node: int,
    fake: Callable[[Envelope, Message], Message | None],
) -> None:
    """Node ``node`` answers with ``fake(request, msg)`` when that returns a Message
    (a malicious or faulty node); everything else goes to the real ClientApp."""
    real = client_app.privagg_query

    def query(msg: Message, context: Context) -> Message:
        if context.node_id == node:
            out = fake(unpack(msg.content), msg)
            if out is not None:
                return out
        return real(msg, context)

    monkeypatch.setattr(client_app, "privagg_query", query)


_expected = synthetic_sum


def assert_same_arrays(
    got: Mapping[str, object], want: Mapping[str, np.ndarray]
) -> None:
    """``got`` (JSON lists) equals ``want`` up to rounding in each tensor's dtype."""
    assert set(got) == set(want)
    for name, w in want.items():
        eps = float(np.finfo(w.dtype).eps)
        np.testing.assert_allclose(
            np.asarray(got[name], dtype=w.dtype), w, rtol=4 * eps, atol=1e-12
        )


def test_pack_unpack_round_trip() -> None:
    env = Envelope(
        Op.REQUEST, 7, "client-1", bytes(range(256)), {"spec": "{}", "x": "y"}
    )
    back = unpack(pack(env))
    assert back == env
    with pytest.raises(privagg.ProtocolError):
        unpack(RecordDict())


def test_session_spec_round_trip_and_rejects_garbage() -> None:
    spec = SessionSpec(
        "plain", {"bound": 1.5, "flag": True}, max_clients=4, max_weight=2.0
    )
    assert SessionSpec.from_json(spec.to_json()) == spec
    with pytest.raises(privagg.ConfigurationError):
        SessionSpec.from_json("{not json")
    with pytest.raises(privagg.ConfigurationError):
        SessionSpec.from_json(
            '{"backend": "plain", "options": {"a": [1]}, "max_clients": 1, "max_weight": 1}'
        )


def test_server_loop_over_fake_grid_equals_weighted_sum() -> None:
    weights = [0.25, 0.5, 1.0]
    grid = FakeGrid(_nodes(weights))
    settings = server_app.RunSettings(
        shapes=SHAPES, rounds=2, min_nodes=3, stage_timeout=1.0
    )
    summary = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    layout = parse_shapes(SHAPES)
    wmap = {f"client-{i}": w for i, w in enumerate(weights)}
    assert summary["parties"] == sorted(wmap)
    rounds = [rec["round"] for rec in summary["rounds"]]
    assert rounds[1] == rounds[0] + 1  # consecutive ids from a random per-run base
    for rec in summary["rounds"]:
        assert rec["contributors"] == sorted(wmap) and rec["dropped"] == []
        assert_same_arrays(
            rec["aggregate"], layout.unflatten(_expected(layout, wmap, rec["round"]))
        )
    # the layout and spec travel as public metadata; no message carries pickle
    assert all(MESSAGE_TYPE == m.metadata.message_type for m in grid.sent)


class _SampledTask(server_app._SyntheticTask):
    """The synthetic task picking each round's clients (a SamplingTask)."""

    def __init__(self, picks: list[list[str]]) -> None:
        super().__init__(SHAPES)
        self.picks = picks

    def participants(self, round_id: int, clients: Sequence[str]) -> list[str]:
        return self.picks.pop(0)


def test_sampling_task_round_goes_to_its_clients_only() -> None:
    """A SamplingTask's round is run with the clients it picked only (requests and
    sum); a round with none sends nothing and is recorded as skipped; a pick that is
    not a client is refused."""
    weights = [0.25, 0.5, 1.0]
    grid = FakeGrid(_nodes(weights))
    settings = server_app.RunSettings(
        shapes=SHAPES, rounds=2, min_nodes=3, stage_timeout=1.0
    )
    task = _SampledTask([["client-0", "client-2"], []])
    summary = server_app.run(grid, settings, task)  # type: ignore[arg-type]
    first, second = summary["rounds"]
    assert first["contributors"] == ["client-0", "client-2"] and first["dropped"] == []
    layout = parse_shapes(SHAPES)
    wmap = {"client-0": 0.25, "client-2": 1.0}
    assert_same_arrays(
        first["aggregate"], layout.unflatten(_expected(layout, wmap, first["round"]))
    )
    sent_to = {
        m.metadata.dst_node_id for m in grid.sent if unpack(m.content).round_id != 0
    }
    assert sent_to == {100, 102}
    assert second["contributors"] == [] and second["skipped"] == "no client sampled"
    assert not [m for m in grid.sent if unpack(m.content).round_id == second["round"]]
    with pytest.raises(FlowerConfigError, match="not a client"):
        server_app.run(grid, settings, _SampledTask([["client-9"]]))  # type: ignore[arg-type]


def test_silent_and_failing_nodes_are_dropouts() -> None:
    weights = [1.0, 1.0, 1.0, 1.0]
    grid = FakeGrid(_nodes(weights))
    grid.contexts[103].node_config["fault-stall-stage"] = 0  # made to raise below
    grid.contexts[103].node_config["fault-stall-seconds"] = "not a number"
    layout = parse_shapes(SHAPES)
    spec = SessionSpec("plain", max_clients=4)
    session = load_session(spec, layout, Role.AGGREGATOR)
    parties = {f"client-{i}": 100 + i for i in range(4)}
    meta = {"spec": spec.to_json(), "layout": layout.to_bytes().hex()}
    ex = GridExchange(grid, parties, round_id=0, timeout=1.0, meta=meta)  # type: ignore[arg-type]
    grid.silent.add(102)
    res = drive_aggregator(session.aggregator(0, sorted(parties)), ex)
    rec = session.holder().recover(res.result)
    assert rec.contributors == ("client-0", "client-1")
    assert res.missing == {0: ("client-2", "client-3")}
    assert "client-3" in ex.errors
    np.testing.assert_allclose(
        rec.vector, _expected(layout, {"client-0": 1.0, "client-1": 1.0}, 0), atol=1e-12
    )


@pytest.mark.skipif(
    "secagg" not in privagg.available_backends(), reason="secagg backend not available"
)
@pytest.mark.parametrize("drop_stage", [None, 2])
def test_secagg_passive_over_fake_grid(drop_stage: int | None) -> None:
    """Real multi-stage SecAgg+: every stage is a fresh ClientApp call (replay)."""
    weights = [0.25, 0.5, 1.0, 0.75, 1.0]
    grid = FakeGrid(_nodes(weights))
    if drop_stage is not None:
        grid.silent_from[104] = drop_stage  # client-4 vanishes at the masking stage
    settings = server_app.RunSettings(
        backend="secagg",
        backend_options={"active": False},
        shapes=SHAPES,
        min_nodes=5,
        stage_timeout=1.0,
    )
    summary = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    rec = summary["rounds"][0]
    wmap = {f"client-{i}": w for i, w in enumerate(weights)}
    if drop_stage is not None:
        del wmap["client-4"]
        assert rec["dropped"] == ["client-4"]
    assert rec["contributors"] == sorted(wmap) and rec["stages"] >= 4
    layout = parse_shapes(SHAPES)
    tol = privagg.get_backend("secagg").tolerance(n_clients=5, max_abs=1.0)
    want = layout.unflatten(_expected(layout, wmap, rec["round"]))
    for name, w in want.items():
        got = np.asarray(rec["aggregate"][name], dtype=np.float64)
        np.testing.assert_allclose(
            got, w, rtol=0, atol=tol + 4 * float(np.finfo(w.dtype).eps)
        )


@pytest.mark.skipif(
    "paillier" not in privagg.available_backends(),
    reason="paillier backend not available",
)
def test_paillier_keys_dealt_to_roles_over_fake_grid(tmp_path: Path) -> None:
    """Only the holder node's file has the secret key; the server recovers nothing."""
    weights = [0.5, 1.0, 0.25]
    layout = parse_shapes(SHAPES)
    spec = SessionSpec("paillier", {"workers": 1}, max_clients=3)
    paths = material.deal(spec, layout, [f"client-{i}" for i in range(3)], tmp_path)
    assert sorted(paths) == ["aggregator", "client-0", "client-1", "client-2", "holder"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths.values())
    agg = load_session(spec, layout, Role.AGGREGATOR, material=paths["aggregator"])
    with pytest.raises(privagg.PrivaggError):
        agg.holder().recover(b"")  # the aggregator's session has no secret key
    nodes = _nodes(weights)
    for i, cfg in enumerate(nodes.values()):
        cfg["privagg-material"] = str(paths[f"client-{i}"])
    ident, pin = holder_identity(tmp_path / "holder-id")
    nodes[200] = {
        "privagg-holder": True,
        "privagg-holder-material": str(paths["holder"]),
        **ident,
    }
    grid = FakeGrid(nodes)
    settings = server_app.RunSettings(
        backend="paillier",
        backend_options={"workers": 1},
        shapes=SHAPES,
        min_nodes=4,
        stage_timeout=5.0,
        holder="node",
        holder_key=pin,
        aggregator_material=str(paths["aggregator"]),
    )
    summary = server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]
    rec = summary["rounds"][0]
    wmap = {f"client-{i}": w for i, w in enumerate(weights)}
    assert rec["contributors"] == sorted(wmap)
    tol = privagg.get_backend("paillier").tolerance(n_clients=3, max_abs=1.0)
    for name, w in layout.unflatten(_expected(layout, wmap, rec["round"])).items():
        got = np.asarray(rec["aggregate"][name], dtype=np.float64)
        np.testing.assert_allclose(
            got, w, rtol=0, atol=tol + 4 * float(np.finfo(w.dtype).eps)
        )


@pytest.mark.skipif(
    "ckks" not in privagg.available_backends(), reason="ckks backend not available"
)
def test_ckks_keys_dealt_to_roles_over_fake_grid(tmp_path: Path) -> None:
    """CKKS through the generic hook: only the holder node's file has the secret key;
    the ServerApp's session is public-only and refuses the holder's file."""
    from privagg.backends.ckks import CkksSecretContext

    weights = [0.5, 1.0, 0.25]
    layout = parse_shapes(SHAPES)
    options: dict[str, material.OptionValue] = {"preset": "test-fast", "threads": 1}
    spec = SessionSpec("ckks", options, max_clients=3)
    assert not material.holder_needs_no_secret(spec)
    paths = material.deal(spec, layout, [f"client-{i}" for i in range(3)], tmp_path)
    assert sorted(paths) == ["aggregator", "client-0", "client-1", "client-2", "holder"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths.values())
    public = paths["aggregator"].read_bytes()
    assert all(paths[f"client-{i}"].read_bytes() == public for i in range(3))
    with pytest.raises(privagg.MissingKeyError):  # no secret key in the public file
        CkksSecretContext.from_bytes(public, protection=privagg.NoProtection())
    agg = load_session(spec, layout, Role.AGGREGATOR, material=paths["aggregator"])
    with pytest.raises(privagg.MissingKeyError):
        agg.holder()  # the aggregator's session has no secret key
    with pytest.raises(privagg.DeserializationError):  # never loads the secret
        load_session(spec, layout, Role.AGGREGATOR, material=paths["holder"])
    holder = load_session(spec, layout, Role.HOLDER, material=paths["holder"])
    assert holder.params_id == agg.params_id
    nodes = _nodes(weights)
    for i, cfg in enumerate(nodes.values()):
        cfg["privagg-backends"] = "ckks"
        cfg["privagg-material"] = str(paths[f"client-{i}"])
        # test-fast has heuristic flooding only: the nodes' policy must allow it
        cfg["privagg-ckks-presets"] = "test-fast"
        cfg["privagg-min-ckks-flood-bits"] = 0
    ident, pin = holder_identity(tmp_path / "holder-id")
    nodes[200] = {
        "privagg-holder": True,
        "privagg-holder-material": str(paths["holder"]),
        **ident,
    }
    settings = server_app.RunSettings(
        backend="ckks",
        backend_options=dict(options),
        shapes=SHAPES,
        min_nodes=4,
        stage_timeout=5.0,
        holder="node",
        holder_key=pin,
        aggregator_material=str(paths["aggregator"]),
    )
    summary = server_app.run(
        FakeGrid(nodes),  # type: ignore[arg-type]
        settings,
        server_app._SyntheticTask(SHAPES),
    )
    rec = summary["rounds"][0]
    wmap = {f"client-{i}": w for i, w in enumerate(weights)}
    assert rec["contributors"] == sorted(wmap) and rec["dropped"] == []
    tol = spec.backend_object().tolerance(n_clients=3, max_abs=1.0)
    for name, w in layout.unflatten(_expected(layout, wmap, rec["round"])).items():
        got = np.asarray(rec["aggregate"][name], dtype=np.float64)
        np.testing.assert_allclose(
            got, w, rtol=0, atol=tol + 4 * float(np.finfo(w.dtype).eps)
        )
    # a ServerApp-side holder is refused for CKKS (its holder has a secret key)
    server_side = dataclasses.replace(settings, holder="server")
    with pytest.raises(privagg.ConfigurationError, match="holder"):
        server_app.run(
            FakeGrid(nodes),  # type: ignore[arg-type]
            server_side,
            server_app._SyntheticTask(SHAPES),
        )


def test_active_secagg_needs_the_identity_directory() -> None:
    """Active SecAgg+ runs only from each client's own key and the pinned directory
    (``test_flower_active_secagg.py``); without them every role is refused."""
    spec = SessionSpec("secagg", {"active": True}, max_clients=3)
    for role in (Role.CLIENT, Role.AGGREGATOR, Role.HOLDER):
        with pytest.raises(privagg.ConfigurationError, match="directory"):
            load_session(spec, parse_shapes(SHAPES), role, party_id="client-0")


# -- multi-stage replay, with a toy two-stage protocol ------------------------------------


@dataclasses.dataclass
class _TwoStageClient:
    """Stage 0: commit to a random mask; stage 1: send update + mask. Uses its rng."""

    party_id: str
    update: np.ndarray
    rng: privagg.Rng
    _mask: bytes = b""
    _stage: int = 0

    def handle(self, request: bytes) -> bytes:
        if self._stage == 0:
            self._mask = self.rng.random_bytes(16)
            self._stage = 1
            return hashlib.sha256(self._mask).digest()
        if self._stage == 1:
            self._stage = 2
            return self._mask + self.update.tobytes()
        raise privagg.ProtocolError("done")


class _TwoStageAggregator:
    def __init__(self, ids: Sequence[str], size: int) -> None:
        self.ids, self.size, self.commits = list(ids), size, {}
        self._result: bytes | None = None

    def start(self) -> dict[str, bytes]:
        return dict.fromkeys(self.ids, b"commit")

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        if not self.commits:
            self.commits = dict(replies)
            return dict.fromkeys(self.commits, b"reveal")
        total = np.zeros(self.size)
        for pid, data in replies.items():
            if hashlib.sha256(data[:16]).digest() != self.commits[pid]:
                raise privagg.ProtocolError(f"{pid} broke its commitment")
            total += np.frombuffer(data[16:])
        self._result = total.tobytes()
        return {}

    @property
    def done(self) -> bool:
        return self._result is not None

    def result(self) -> bytes:
        assert self._result is not None
        return self._result


class _TwoStageSession:
    def __init__(
        self, layout: privagg.Layout, *, nondeterministic: bool = False
    ) -> None:
        self.layout, self.nondeterministic = layout, nondeterministic

    def client(
        self,
        cid: str,
        round_id: int,
        update: np.ndarray,
        *,
        weight: float = 1.0,
        rng: privagg.Rng | None = None,
    ) -> _TwoStageClient:
        assert rng is not None
        return _TwoStageClient(
            cid, weight * update, privagg.SystemRng() if self.nondeterministic else rng
        )


@pytest.mark.parametrize("nondeterministic", [False, True])
def test_multi_stage_roles_survive_one_process_per_message(
    monkeypatch: pytest.MonkeyPatch, nondeterministic: bool
) -> None:
    layout = parse_shapes(SHAPES)
    monkeypatch.setattr(
        client_app,
        "load_session",
        lambda *a, **k: _TwoStageSession(layout, nondeterministic=nondeterministic),
    )
    nodes = _nodes([1.0, 0.5])
    for cfg in nodes.values():  # a backend the policy cannot judge: options pinned
        cfg["privagg-backend-options"] = "{}"
    grid = FakeGrid(nodes)
    parties = {"client-0": 100, "client-1": 101}
    meta = {"spec": SessionSpec("toy").to_json(), "layout": layout.to_bytes().hex()}
    ex = GridExchange(grid, parties, round_id=3, timeout=1.0, meta=meta)  # type: ignore[arg-type]
    agg = _TwoStageAggregator(sorted(parties), layout.size)
    res = drive_aggregator(agg, ex)
    assert res.stages == 2
    if nondeterministic:
        # stage 1 cannot be replayed faithfully: the client refuses, i.e. drops out
        assert res.missing == {1: ("client-0", "client-1")}
        assert all("not deterministic" in e for e in ex.errors.values())
        return
    assert res.missing == {}
    expected = _expected(layout, {"client-0": 1.0, "client-1": 0.5}, 3)
    np.testing.assert_allclose(np.frombuffer(res.result), expected, atol=1e-12)
    state = grid.contexts[100].state.config_records[client_app._STATE]
    assert int(state["n"]) == 2 and int(state["round"]) == 3  # type: ignore[arg-type]


def test_request_for_another_party_or_stage_is_refused() -> None:
    layout = parse_shapes(SHAPES)
    ctx = Context(
        run_id=1,
        node_id=1,
        node_config={"party-id": "client-0", "privagg-backends": "secagg"},
        state=RecordDict(),
        run_config={},
    )
    meta = {
        "spec": SessionSpec("plain").to_json(),
        "layout": layout.to_bytes().hex(),
        "stage": "0",
    }
    msg = Message(
        pack(Envelope(Op.REQUEST, 0, "client-9", b"x", meta)),
        dst_node_id=1,
        message_type=MESSAGE_TYPE,
    )
    with pytest.raises(privagg.ProtocolError):
        client_app.handle_envelope(unpack(msg.content), msg, ctx)
    # the untrusted server cannot downgrade a client pinned to secagg to plain
    mine = Message(
        pack(Envelope(Op.REQUEST, 0, "client-0", b"x", meta)),
        dst_node_id=1,
        message_type=MESSAGE_TYPE,
    )
    with pytest.raises(privagg.ConfigurationError, match="accepts backends"):
        client_app.handle_envelope(unpack(mine.content), mine, ctx)
    ctx.node_config["privagg-backends"] = "plain"
    late = {**meta, "stage": "2"}
    msg = Message(
        pack(Envelope(Op.REQUEST, 0, "client-0", b"x", late)),
        dst_node_id=1,
        message_type=MESSAGE_TYPE,
    )
    with pytest.raises(privagg.ProtocolError):
        client_app.handle_envelope(unpack(msg.content), msg, ctx)


# -- material --------------------------------------------------------------------------


class _KeyedBackend:
    """A registered backend without the distribution hook."""

    name = "flowertestkeyed"

    def setup(self, layout: privagg.Layout, **kwargs: object) -> object:
        raise AssertionError("a keyed backend must never be set up per process")


@pytest.fixture
def keyed_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``flowertestkeyed`` for one test only: a backend left registered would
    reach every later caller of ``available_backends`` (``privagg bench`` did)."""
    import privagg.registry

    monkeypatch.setitem(privagg.registry._REGISTERED, "flowertestkeyed", _KeyedBackend)


@pytest.mark.usefixtures("keyed_backend")
def test_keyed_backend_without_hook_is_refused(tmp_path: object) -> None:
    layout = parse_shapes(SHAPES)
    spec = SessionSpec("flowertestkeyed")
    for role in Role:
        with pytest.raises(privagg.UnsupportedError):
            load_session(spec, layout, role, material="x")
    with pytest.raises(privagg.UnsupportedError):
        material.deal(spec, layout, ["a"], tmp_path)  # type: ignore[arg-type]
    assert not material.holder_needs_no_secret(spec)
    assert material.deal(SessionSpec("plain"), layout, ["a"], tmp_path) == {}  # type: ignore[arg-type]


@pytest.mark.usefixtures("keyed_backend")
def test_server_refuses_to_hold_a_keyed_holder() -> None:
    grid = FakeGrid(_nodes([1.0]))
    settings = server_app.RunSettings(
        backend="flowertestkeyed", shapes=SHAPES, min_nodes=1
    )
    with pytest.raises(privagg.ConfigurationError, match="holder"):
        server_app.run(grid, settings, server_app._SyntheticTask(SHAPES))  # type: ignore[arg-type]


def test_run_settings_from_run_config() -> None:
    s = server_app.RunSettings.from_run_config(
        {
            "backend": "plain",
            "backend-options": '{"bound": 2.0}',
            "rounds": 3,
            "holder": "node",
            "holder-key": "AB" * 32,
        }
    )
    assert s.backend_options == {"bound": 2.0} and s.rounds == 3 and s.holder == "node"
    assert s.holder_pin() == b"\xab" * 32
    # holder = "node" must pin the holder's key (#14, r3): refused before any round
    for bad in (
        {},
        {"holder-key": ""},
        {"holder-key": "ab" * 31},
        {"holder-key": "zz" * 32},
    ):
        with pytest.raises(FlowerConfigError, match="holder-key"):
            server_app.RunSettings.from_run_config({"holder": "node", **bad})
    with pytest.raises(privagg.ConfigurationError):
        server_app.RunSettings.from_run_config({"holder": "everyone"})
    with pytest.raises(privagg.ConfigurationError):
        server_app.RunSettings.from_run_config({"rounds": "many"})
    with pytest.raises(privagg.ConfigurationError):
        server_app.RunSettings.from_run_config({"backend-options": "[1, 2]"})
