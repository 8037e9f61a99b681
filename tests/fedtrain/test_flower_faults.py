"""Faulty SuperNodes on every Flower backend (issue #14, "faults, each a test").

``test_flower_active_secagg.py`` covers active SecAgg+; this file gives the same faults
to CKKS, Paillier, passive SecAgg+ and additive (client replies and the aggregation
servers' replies), and to the result holder's reply. In process: the fake Grid of
``test_flower_transport.py`` calls the real ClientApp handler; one node's reply of one
stage of the run's *second* round is replaced by

* ``random``: random bytes of the same length;
* ``truncated``: the first half of the real reply;
* ``other-party``: another party's reply of the same round and stage (a node answering
  for another party id);
* ``replayed``: this node's own reply of the same stage in the first round, verbatim;
* ``replayed-payload``: that reply's privagg bytes under this round's routing fields;
* ``routed-as-other``: the real reply, with the envelope's party field naming another
  party.

Each case must end in a correct aggregate of the honest survivors (the faulty party
left out when its input was faulty) or a clean typed abort (a ``privagg.PrivaggError``
that is not a configuration error) with nothing released for the round: never a wrong
aggregate, never a partial reveal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from tests.fedtrain import test_flower_additive as additive_tests
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
    holder_identity,
)
from tests.hardening_counts import count

import privagg
from fedtrain.flower import client_app, material, server_app
from fedtrain.flower.holder_auth import HolderSigner, recovery_message
from fedtrain.flower.material import SessionSpec
from fedtrain.flower.tasks import parse_shapes, synthetic_sum
from fedtrain.flower.transport import Envelope, Op, pack, recovery_check, unpack

pytestmark = pytest.mark.slow

SHAPES = "weight:float32:2x3,bias:float64:3"
LAYOUT = parse_shapes(SHAPES)
KINDS = [
    "random",
    "truncated",
    "other-party",
    "replayed",
    "replayed-payload",
    "routed-as-other",
]
AVAILABLE = set(privagg.available_backends())


@pytest.fixture(autouse=True)
def _fresh_holder_cache() -> Iterator[None]:
    client_app._HOLDERS.clear()
    yield
    client_app._HOLDERS.clear()


@dataclass
class _Fault:
    """Wraps the ClientApp entry point: in the run's second round, node ``node``'s
    reply to ``op`` at ``stage`` is replaced by a fault of ``kind``."""

    node: int
    op: str
    stage: int
    kind: str
    other: int  # the node whose reply ``other-party`` replays
    real: Any = field(default=client_app.privagg_query)
    seen: dict[tuple[int, int, int], Envelope] = field(default_factory=dict)
    rounds: list[int] = field(default_factory=list)
    fired: int | None = None  # the round id the fault was injected in
    broken: str = ""

    def __call__(self, msg: Message, context: Any) -> Message:
        reply = self.real(msg, context)
        req = unpack(msg.content)
        if req.round_id not in self.rounds and req.op == Op.REQUEST:
            self.rounds.append(req.round_id)
        if req.op != self.op:
            return reply
        stage = int(req.meta.get("stage", "0"))
        env = unpack(reply.content)
        ordinal = self.rounds.index(req.round_id) if req.round_id in self.rounds else 0
        self.seen[(context.node_id, ordinal, stage)] = env
        if context.node_id != self.node or stage != self.stage or ordinal != 1:
            return reply
        self.fired = req.round_id
        payload = env.payload
        party, round_id, meta = env.party, env.round_id, dict(env.meta)
        if self.kind == "random":
            payload = os.urandom(max(len(payload), 1))
        elif self.kind == "truncated":
            payload = payload[: len(payload) // 2]
        elif self.kind == "other-party":
            other = self.seen.get((self.other, 1, stage))
            if other is None:  # the test's mistake, not a fault: fail the test
                self.broken = f"node {self.other} had not answered stage {stage} yet"
                raise AssertionError(self.broken)
            payload, meta = other.payload, dict(other.meta)
        elif self.kind == "replayed":
            old = self.seen[(self.node, 0, stage)]
            payload, round_id, meta = old.payload, old.round_id, dict(old.meta)
        elif self.kind == "replayed-payload":
            payload = self.seen[(self.node, 0, stage)].payload
        elif self.kind == "routed-as-other":
            party = "client-0" if party != "client-0" else "client-1"
        else:
            raise AssertionError(self.kind)
        return Message(
            pack(Envelope(env.op, round_id, party, payload, meta)), reply_to=msg
        )


@dataclass
class _Setup:
    """A backend's nodes and run settings; ``weights``: the clients' weights."""

    nodes: dict[int, dict[str, object]]
    settings: server_app.RunSettings
    weights: dict[str, float]
    tolerance: float


def _clients(
    weights: Mapping[str, float], backends: str
) -> dict[int, dict[str, object]]:
    return {
        100 + i: {"party-id": p, "privagg-weight": w, "privagg-backends": backends}
        for i, (p, w) in enumerate(weights.items())
    }


_W3 = {"client-0": 0.5, "client-1": 1.0, "client-2": 0.25}
_W5 = {
    "client-0": 0.25,
    "client-1": 0.5,
    "client-2": 1.0,
    "client-3": 0.75,
    "client-4": 1.0,
}


def _dealt(
    backend: str, options: dict[str, material.OptionValue], root: Path
) -> _Setup:
    """CKKS or Paillier: keys dealt to files; the holder is a node."""
    spec = SessionSpec(backend, options, max_clients=3)
    paths = material.deal(spec, LAYOUT, sorted(_W3), root)
    nodes = _clients(_W3, backend)
    for i, p in enumerate(sorted(_W3)):
        nodes[100 + i]["privagg-material"] = str(paths[p])
        if backend == "ckks":
            nodes[100 + i]["privagg-ckks-presets"] = "test-fast"
            nodes[100 + i]["privagg-min-ckks-flood-bits"] = 0
    ident, holder_key = holder_identity(root / "holder-identity")
    nodes[200] = {
        "privagg-holder": True,
        "privagg-holder-material": str(paths["holder"]),
        **ident,
    }
    settings = server_app.RunSettings(
        backend=backend,
        backend_options=dict(options),
        shapes=SHAPES,
        rounds=2,
        min_nodes=4,
        stage_timeout=5.0,
        holder="node",
        holder_key=holder_key,
        aggregator_material=str(paths["aggregator"]),
    )
    tol = spec.backend_object().tolerance(n_clients=3, max_abs=1.0)
    return _Setup(nodes, settings, dict(_W3), tol)


def _additive(root: Path) -> _Setup:
    keys = additive_tests.make_keys(root)
    nodes = dict(enumerate(additive_tests.node_configs(keys), start=100))
    extra: dict[str, Any] = {}
    if hasattr(additive_tests, "pin"):  # the pinned directory (wt-a, #16)
        extra["directory_fingerprint"] = additive_tests.pin(keys)
    settings = server_app.RunSettings(
        backend="additive",
        backend_options=additive_tests.OPTIONS,
        shapes=SHAPES,
        rounds=2,
        min_nodes=len(nodes),
        stage_timeout=5.0,
        holder="node",
        holder_key=additive_tests.holder_key(keys),
        aggregator_material=str(keys["directory"]),
        **extra,
    )
    opts = additive_tests.OPTIONS
    tol = privagg.get_backend("additive", **opts).tolerance(n_clients=3, max_abs=1.0)
    return _Setup(nodes, settings, dict(additive_tests.WEIGHTS), tol)


def _passive(root: Path) -> _Setup:
    settings = server_app.RunSettings(
        backend="secagg",
        backend_options={"active": False},
        shapes=SHAPES,
        rounds=2,
        min_nodes=5,
        stage_timeout=1.0,
    )
    tol = privagg.get_backend("secagg").tolerance(n_clients=5, max_abs=1.0)
    return _Setup(_clients(_W5, "secagg"), settings, dict(_W5), tol)


@pytest.fixture(scope="module")
def setups(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _Setup]:
    """One set of keys per backend for the module (round ids are random per run, so
    the holders' and servers' registers never see a round twice)."""
    root = tmp_path_factory.mktemp("faults")
    out: dict[str, _Setup] = {}
    if "ckks" in AVAILABLE:
        opts: dict[str, material.OptionValue] = {"preset": "test-fast", "threads": 1}
        out["ckks"] = _dealt("ckks", opts, root / "ckks")
    if "paillier" in AVAILABLE:
        out["paillier"] = _dealt("paillier", {"workers": 1}, root / "paillier")
    if "secagg" in AVAILABLE:
        out["secagg-passive"] = _passive(root)
    if "additive" in AVAILABLE:
        out["additive"] = _additive(root / "additive")
    return out


def _check(
    setup: _Setup,
    fault: _Fault,
    monkeypatch: pytest.MonkeyPatch,
    *,
    faulty: str | None,
    input_stage: int,
) -> str:
    """Run with ``fault``; assert a typed abort with nothing released for the faulted
    round, or correct sums; ``faulty``: the party whose input the fault touches (left
    out of the round if it was faulty at or before ``input_stage``). Returns
    ``"aborted"`` or ``"correct"``."""
    monkeypatch.setattr(client_app, "privagg_query", fault)
    grid = FakeGrid(setup.nodes)
    try:
        summary = server_app.run(
            grid,  # type: ignore[arg-type]
            setup.settings,
            server_app._SyntheticTask(SHAPES),
        )
    except privagg.PrivaggError as exc:
        assert not fault.broken, fault.broken
        assert fault.fired is not None, exc
        assert not isinstance(exc, privagg.ConfigurationError), exc
        if fault.op == Op.REQUEST:  # nothing of the faulted round went to the holder
            asked = [unpack(m.content) for m in grid.sent]
            assert not any(
                e.op == Op.RECOVER and e.round_id == fault.fired for e in asked
            )
        count(
            "faults",
            f"flower {setup.settings.backend}: {fault.kind}",
            injected=1,
            ok=1,
            aborted=1,
        )
        return "aborted"
    assert not fault.broken, fault.broken
    assert fault.fired is not None
    assert [r["round"] for r in summary["rounds"]][1] == fault.fired
    for rec in summary["rounds"]:
        contributors = rec["contributors"]
        assert set(contributors) <= set(setup.weights)
        if rec["round"] == fault.fired and faulty and fault.stage <= input_stage:
            assert faulty not in contributors
        # every dropped client has a reason in fixed words ("dropped" is unchanged)
        assert sorted(rec["drop_reasons"]) == sorted(rec["dropped"])
        if rec["round"] == fault.fired and faulty in rec["dropped"]:
            why = rec["drop_reasons"][faulty]
            if fault.kind in ("replayed", "routed-as-other"):  # the transport's
                assert why == "mismatched routing fields"
            else:  # the aggregator's: the error's type, never its text
                assert why.startswith("unreadable reply: ")
                assert why.removeprefix("unreadable reply: ").isidentifier()
        want = LAYOUT.unflatten(
            synthetic_sum(
                LAYOUT, {c: setup.weights[c] for c in contributors}, rec["round"]
            )
        )
        for name, w in want.items():
            np.testing.assert_allclose(
                np.asarray(rec["aggregate"][name], dtype=np.float64),
                w,
                rtol=0,
                atol=setup.tolerance + 4 * float(np.finfo(w.dtype).eps),
            )
    count(
        "faults",
        f"flower {setup.settings.backend}: {fault.kind}",
        injected=1,
        ok=1,
        correct=1,
    )
    return "correct"


def _need(setups: Mapping[str, _Setup], name: str) -> _Setup:
    if name not in setups:
        pytest.skip(f"{name} backend not available")
    return setups[name]


# -- client replies ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["ckks", "paillier", "additive"])
def test_fault_one_shot_client_reply(
    setups: dict[str, _Setup],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    kind: str,
) -> None:
    """client-1's only reply (stage 0) is faulty: client-1 is left out and the sum is
    the others', or the round aborts typed before anything reaches the holder."""
    setup = _need(setups, backend)
    fault = _Fault(101, Op.REQUEST, 0, kind, other=100)
    outcome = _check(setup, fault, monkeypatch, faulty="client-1", input_stage=0)
    if backend == "additive":  # the coordinator drops a client it cannot read
        assert outcome == "correct"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fault_passive_secagg_client_reply(
    setups: dict[str, _Setup],
    monkeypatch: pytest.MonkeyPatch,
    stage: int,
    kind: str,
) -> None:
    """Passive SecAgg+, 5 clients: client-4's reply at stage 0-3 (advertise, shares,
    masked input, unmasking) is faulty: the aggregator drops client-4 (as if it had
    gone at that stage) and the round ends with the exact sum of the others."""
    setup = _need(setups, "secagg-passive")
    fault = _Fault(104, Op.REQUEST, stage, kind, other=100)
    outcome = _check(setup, fault, monkeypatch, faulty="client-4", input_stage=1)
    assert outcome == "correct"


# -- the aggregation servers' replies (additive) ----------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_fault_additive_server_reply(
    setups: dict[str, _Setup], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """server-2's partial sum (stage 1) is faulty (another party: server-1's): every
    server is needed, so the round aborts typed, or the holder's checks leave a
    correct sum; never a wrong one."""
    setup = _need(setups, "additive")
    nodes = {v.get("party-id"): k for k, v in setup.nodes.items()}
    fault = _Fault(nodes["server-2"], Op.REQUEST, 1, kind, other=nodes["server-1"])
    outcome = _check(setup, fault, monkeypatch, faulty=None, input_stage=-1)
    if kind != "routed-as-other":
        assert outcome == "aborted"


# -- the result holder's reply ----------------------------------------------------------
@pytest.mark.parametrize(
    "kind",
    [
        "random",
        "truncated",
        "replayed",
        "replayed-payload",
        "routed-as-other",
        "contributors",
    ],
)
@pytest.mark.parametrize("backend", ["ckks", "additive"])
def test_fault_holder_reply(
    setups: dict[str, _Setup],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    kind: str,
) -> None:
    """The holder's recovered vector is cut, random, the previous round's, routed for
    another round or party, or names a contributor that is not a client: the
    ServerApp aborts typed (the reply's check value, size, routing and contributor
    list are verified), never applies it."""
    setup = _need(setups, backend)
    holder = next(k for k, v in setup.nodes.items() if v.get("privagg-holder"))
    if kind == "contributors":
        fault = _HolderContributors(holder, Op.RECOVER, 0, kind, other=holder)
    else:
        fault = _Fault(holder, Op.RECOVER, 0, kind, other=holder)
    outcome = _check(setup, fault, monkeypatch, faulty=None, input_stage=-1)
    assert outcome == "aborted"


class _HolderContributors(_Fault):
    """The holder's reply names ``intruder`` among the contributors (its check value
    recomputed, so only the contributor check can catch it)."""

    def __call__(self, msg: Message, context: Any) -> Message:
        reply = self.real(msg, context)
        req = unpack(msg.content)
        if req.op != Op.RECOVER or context.node_id != self.node:
            if req.op == Op.REQUEST and req.round_id not in self.rounds:
                self.rounds.append(req.round_id)
            return reply
        if self.rounds.index(req.round_id) != 1:
            return reply
        self.fired = req.round_id
        env = unpack(reply.content)
        text = '["client-0", "intruder"]'  # with a matching check value
        check = recovery_check(req.round_id, req.payload, env.payload, text)
        # signed by the genuine holder's key: a holder that lies about its
        # contributors (only the contributor check can catch it)
        signer = HolderSigner.from_node_config(context, None)
        assert signer is not None
        challenge = bytes.fromhex(req.meta["challenge"])
        signature = signer.sign(recovery_message(challenge, req.round_id, check))
        meta = dict(env.meta) | {
            "contributors": text,
            "check": check,
            "signature": signature,
        }
        return Message(
            pack(Envelope(env.op, env.round_id, env.party, env.payload, meta)),
            reply_to=msg,
        )
