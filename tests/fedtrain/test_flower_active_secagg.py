"""Active SecAgg+ on the Flower runtime, and faulty SuperNodes (issue #14).

Each node makes its own identity key (``privagg keygen``, as the docs say), the operator
builds the public-key directory (``privagg directory``), each node pins its fingerprint
in its node config; the ServerApp gets the directory only. A fake Grid calls the real
ClientApp handler with one Flower ``Context`` per node (as ``test_flower_transport.py``
does), so the ServerApp's loop and every ClientApp check run as in a deployment, minus
the processes (``test_flower_deployment_active.py`` runs the real ones).

Faults: a SuperNode answering garbage at any stage, or answering for another party id,
ends with that node dropped and the exact sum of the others, never a wrong aggregate.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flwr.app import Message
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
)
from tests.hardening_counts import count

import privagg
from fedtrain.flower import client_app, server_app
from fedtrain.flower.errors import FlowerProtocolError, PolicyError
from fedtrain.flower.tasks import parse_shapes, synthetic_sum
from fedtrain.flower.transport import Envelope, pack, unpack
from privagg.cli import cli

pytestmark = pytest.mark.skipif(
    "secagg" not in privagg.available_backends(), reason="secagg backend not available"
)

SHAPES = "weight:float32:2x3,bias:float64:3"
WEIGHTS = {"client-0": 0.25, "client-1": 0.5, "client-2": 1.0, "client-3": 0.75}


def make_identities(folder: Path, parties: list[str]) -> tuple[Path, str]:
    """Each party's own key (``privagg keygen``) and the operator's directory
    (``privagg directory``); returns the directory's path and fingerprint."""
    runner = CliRunner()
    for p in parties:
        res = runner.invoke(
            cli, ["keygen", "--backend", "secagg", "--party-id", p, str(folder / p)]
        )
        assert res.exit_code == 0, res.output
    pubs = [str(folder / p / f"secagg-identity-{p}.pub") for p in parties]
    path = folder / "directory.json"
    res = runner.invoke(cli, ["directory", str(path), *pubs, "--json", "--force"])
    assert res.exit_code == 0, res.output
    return path, str(json.loads(res.stdout)["fingerprint"])


def node_configs(
    folder: Path, directory: Path, pin: str, weights: Mapping[str, float] = WEIGHTS
) -> dict[int, dict[str, object]]:
    """Node configs of the client SuperNodes: own key file, directory, pin."""
    return {
        100 + i: {
            "party-id": p,
            "privagg-weight": w,
            "privagg-backends": "secagg",
            "privagg-identity-key": str(folder / p / f"secagg-identity-{p}.key"),
            "privagg-identity-directory": str(directory),
            "privagg-identity-directory-fingerprint": pin,
        }
        for i, (p, w) in enumerate(weights.items())
    }


def _settings(directory: Path, **kw: Any) -> server_app.RunSettings:
    base: dict[str, Any] = {
        "backend": "secagg",
        "backend_options": {"active": True},
        "shapes": SHAPES,
        "min_nodes": len(WEIGHTS),
        "stage_timeout": 1.0,
        "identity_directory": str(directory),
    }
    return server_app.RunSettings(**(base | kw))


def _run(grid: FakeGrid, settings: server_app.RunSettings) -> dict[str, Any]:
    out: dict[str, Any] = server_app.run(
        grid,  # type: ignore[arg-type]
        settings,
        server_app._SyntheticTask(SHAPES),
    )
    return out


def check_sum(rec: Mapping[str, Any], weights: Mapping[str, float]) -> None:
    """The round's aggregate is the weighted sum of exactly its contributors."""
    layout = parse_shapes(SHAPES)
    contributors = rec["contributors"]
    assert set(contributors) <= set(weights)
    want = layout.unflatten(
        synthetic_sum(layout, {c: weights[c] for c in contributors}, int(rec["round"]))
    )
    tol = privagg.get_backend("secagg").tolerance(n_clients=len(weights), max_abs=1.0)
    for name, w in want.items():
        np.testing.assert_allclose(
            np.asarray(rec["aggregate"][name], dtype=np.float64),
            w,
            rtol=0,
            atol=tol + 4 * float(np.finfo(w.dtype).eps),
        )


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("identities")
    directory, pin = make_identities(folder, sorted(WEIGHTS))
    return folder, directory, pin


# -- active SecAgg+ over the Flower runtime ---------------------------------------------
@pytest.mark.parametrize("drop_stage", [None, 2, 3])
def test_active_secagg_over_fake_grid(
    identities: tuple[Path, Path, str], drop_stage: int | None
) -> None:
    """Every stage a fresh ClientApp call; a node lost at the masking (2) or
    consistency (3) stage is recovered (4 clients: t = 2, quorum 3)."""
    folder, directory, pin = identities
    grid = FakeGrid(node_configs(folder, directory, pin))
    if drop_stage is not None:
        grid.silent_from[103] = drop_stage  # client-3
    settings = _settings(directory)
    summary = _run(grid, settings)
    rec = summary["rounds"][0]
    expect = sorted(WEIGHTS)
    if drop_stage == 2:
        expect.remove("client-3")
    assert rec["contributors"] == expect
    assert rec["stages"] == 5  # advertise, shares, masked, consistency, unmask
    check_sum(rec, WEIGHTS)


def test_identity_files_are_each_nodes_own(identities: tuple[Path, Path, str]) -> None:
    """keygen wrote each secret 0600 beside its public record; the directory holds
    public keys only."""
    folder, directory, _ = identities
    for p in WEIGHTS:
        key = folder / p / f"secagg-identity-{p}.key"
        assert key.stat().st_mode & 0o777 == 0o600
    text = directory.read_text()
    for p in WEIGHTS:
        secret = privagg.NoProtection().unwrap(
            privagg.read_secret_file(folder / p / f"secagg-identity-{p}.key")
        )[2]
        assert secret.hex() not in text


@pytest.mark.parametrize(
    ("pin_value", "error"),
    [(None, "pin"), ("ab" * 32, "ParameterMismatchError")],
    ids=["unpinned", "another-directory"],
)
def test_client_refuses_without_pin_or_with_another_directory(
    identities: tuple[Path, Path, str], pin_value: str | None, error: str
) -> None:
    """client-0 has no pin, or pins another directory: it refuses (dropped at stage
    0); the others finish and the sum is theirs."""
    folder, directory, pin = identities
    configs = node_configs(folder, directory, pin)
    if pin_value is None:
        del configs[100]["privagg-identity-directory-fingerprint"]
    else:
        configs[100]["privagg-identity-directory-fingerprint"] = pin_value
    summary = _run(FakeGrid(configs), _settings(directory))
    rec = summary["rounds"][0]
    assert rec["dropped"] == ["client-0"]
    assert error in rec["errors"]["client-0"]
    check_sum(rec, WEIGHTS)


def test_server_with_a_substituted_directory_gets_nothing(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A malicious ServerApp swaps client-3's key for its own in its directory (to
    answer as client-3): every client, pinned to the genuine directory, refuses its
    first request (the directory is bound into params_id), so the round aborts with a
    typed error before anyone shared a key."""
    folder, directory, pin = identities
    forged = tmp_path / "forged"
    parties = ["client-0", "client-1", "client-2", "client-3"]
    make_identities(forged, ["client-3"])
    records = [folder / p / f"secagg-identity-{p}.pub" for p in parties[:3]]
    records.append(forged / "client-3" / "secagg-identity-client-3.pub")
    res = CliRunner().invoke(
        cli, ["directory", str(tmp_path / "evil.json"), *map(str, records)]
    )
    assert res.exit_code == 0, res.output
    grid = FakeGrid(node_configs(folder, directory, pin))
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(grid, _settings(tmp_path / "evil.json"))
    # every client answered stage 0 with an error: none kept a round state (no keys)
    for ctx in grid.contexts.values():
        assert "privagg.client" not in ctx.state.config_records


def test_node_with_a_directory_refuses_passive_secagg(
    identities: tuple[Path, Path, str],
) -> None:
    """No downgrade: a node configured for active SecAgg+ refuses a passive round."""
    folder, directory, pin = identities
    grid = FakeGrid(node_configs(folder, directory, pin))
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(grid, _settings(directory, backend_options={"active": False}))
    msg = grid.sent[-1]
    with pytest.raises(PolicyError, match="active SecAgg\\+ only"):
        ctx = grid.contexts[msg.metadata.dst_node_id]
        client_app.handle_envelope(unpack(msg.content), msg, ctx)


def test_node_with_another_partys_key_or_id(
    identities: tuple[Path, Path, str],
) -> None:
    """A node claiming client-3's party id with its own (client-2's) key cannot prove
    that id at hello (its signature does not verify under the directory's key for
    client-3): the claim is ignored and the run goes on without client-3. A node
    announcing client-1 with its own key is ignored the same way, so the genuine
    client-1 keeps its id (before the hello proof, #14: both claimants were left
    out). A party id outside the directory is left out by the ServerApp."""
    folder, directory, pin = identities
    configs = node_configs(folder, directory, pin)
    configs[103]["privagg-identity-key"] = configs[102]["privagg-identity-key"]
    # (its own round register: beside the borrowed key it would be client-2's)
    configs[103]["privagg-round-register"] = str(folder / "client-3.rounds")
    grid = FakeGrid(configs)
    summary = _run(grid, _settings(directory, min_nodes=4))
    assert summary["parties"] == ["client-0", "client-1", "client-2"]
    rec = summary["rounds"][0]
    assert rec["contributors"] == ["client-0", "client-1", "client-2"]
    check_sum(rec, WEIGHTS)

    configs = node_configs(folder, directory, pin)
    configs[103]["party-id"] = "client-1"
    summary = _run(FakeGrid(configs), _settings(directory))
    assert summary["parties"] == ["client-0", "client-1", "client-2"]
    check_sum(
        summary["rounds"][0],
        {p: WEIGHTS[p] for p in ("client-0", "client-1", "client-2")},
    )

    configs = node_configs(folder, directory, pin)
    configs[104] = dict(configs[103]) | {"party-id": "intruder"}
    summary = _run(FakeGrid(configs), _settings(directory, min_nodes=5))
    assert summary["parties"] == sorted(WEIGHTS)
    check_sum(summary["rounds"][0], WEIGHTS)


def test_a_round_id_is_joined_once_across_runs(
    identities: tuple[Path, Path, str], tmp_path: Path
) -> None:
    """A new run (fresh Flower contexts, as Flower gives every run) pinned to a round
    id the nodes already joined: each refuses at stage 0, from its round register (a
    0600 file that outlives the run), so no round's signed keys are made twice."""
    folder, directory, pin = identities
    configs = node_configs(folder, directory, pin)
    for c in configs.values():
        c["privagg-round-register"] = str(tmp_path / f"{c['party-id']}.rounds")
    _run(FakeGrid(configs), _settings(directory, first_round_id=77))
    again = FakeGrid(configs)
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(again, _settings(directory, first_round_id=77))
    msg = again.sent[-1]
    with pytest.raises(FlowerProtocolError, match="already joined"):
        ctx = again.contexts[msg.metadata.dst_node_id]
        client_app.handle_envelope(unpack(msg.content), msg, ctx)
    assert (tmp_path / "client-0.rounds").stat().st_mode & 0o777 == 0o600
    rec = _run(FakeGrid(configs), _settings(directory, first_round_id=78))["rounds"][0]
    check_sum(rec, WEIGHTS)


def test_password_protected_identity_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys written with ``keygen --password-env``: each node names the environment
    variable holding its password; a node without it (or a wrong one) is left out at
    hello, where it signs its party-id proof (its reason is in the log)."""
    monkeypatch.setenv("NODE_PW", "correct horse battery")
    runner = CliRunner()
    parties = sorted(WEIGHTS)
    for p in parties:
        args = ["keygen", "--backend", "secagg", "--party-id", p, str(tmp_path / p)]
        res = runner.invoke(cli, [*args, "--password-env", "NODE_PW"])
        assert res.exit_code == 0, res.output
    pubs = [str(tmp_path / p / f"secagg-identity-{p}.pub") for p in parties]
    directory = tmp_path / "directory.json"
    res = runner.invoke(cli, ["directory", str(directory), *pubs, "--json"])
    pin = str(json.loads(res.stdout)["fingerprint"])
    configs = node_configs(tmp_path, directory, pin)
    for c in configs.values():
        c["privagg-identity-password-env"] = "NODE_PW"
    configs[103]["privagg-identity-password-env"] = "UNSET_PW"  # not in the env
    with caplog.at_level(logging.WARNING, logger="fedtrain.flower.server_app"):
        summary = _run(FakeGrid(configs), _settings(directory))
    assert summary["parties"] == ["client-0", "client-1", "client-2"]
    assert "UNSET_PW" in caplog.text
    rec = summary["rounds"][0]
    assert rec["contributors"] == ["client-0", "client-1", "client-2"]
    check_sum(rec, WEIGHTS)
    monkeypatch.setenv("NODE_PW", "a wrong password")
    with pytest.raises(privagg.InsufficientParticipantsError):
        _run(FakeGrid(configs), _settings(directory))


def test_server_needs_the_directory(identities: tuple[Path, Path, str]) -> None:
    folder, directory, pin = identities
    grid = FakeGrid(node_configs(folder, directory, pin))
    with pytest.raises(privagg.ConfigurationError, match="identity-directory"):
        _run(grid, _settings(directory, identity_directory=""))


# -- faults: a SuperNode answering garbage, or for another party -----------------------
def _garbage(kind: str, payload: bytes, other: bytes) -> bytes:
    if kind == "random":
        return os.urandom(max(len(payload), 1))
    if kind == "truncated":
        return payload[: len(payload) // 2]
    if kind == "trailing":
        return payload + b"\x00" * 16
    if kind == "header":
        return bytes([payload[0] ^ 0xFF]) + payload[1:]
    if kind == "empty":
        return b""
    if kind == "other-party":  # another party's reply of this stage, replayed
        return other
    raise AssertionError(kind)


GARBAGE = ["random", "truncated", "trailing", "header", "empty", "other-party"]


class _Corrupt:
    """Wraps the ClientApp entry point: node ``node`` answers stage ``stage`` with
    garbage of ``kind`` (or a reply whose routing names another party)."""

    def __init__(self, node: int, stage: int, kind: str) -> None:
        self.node, self.stage, self.kind = node, stage, kind
        self.real = client_app.privagg_query
        self.last: dict[int, bytes] = {}  # stage -> the last honest reply payload
        self.fired = False

    def __call__(self, msg: Message, context: Any) -> Message:
        reply = self.real(msg, context)
        req = unpack(msg.content)
        stage = int(req.meta.get("stage", "-1"))
        env = unpack(reply.content)
        if req.op != "request" or context.node_id != self.node or stage != self.stage:
            if req.op == "request":
                self.last[stage] = env.payload
            return reply
        self.fired = True
        if self.kind == "routed-as-other":
            bad = Envelope(env.op, env.round_id, "client-0", env.payload, env.meta)
        else:
            payload = _garbage(self.kind, env.payload, self.last.get(stage, b""))
            bad = Envelope(env.op, env.round_id, env.party, payload, env.meta)
        return Message(pack(bad), reply_to=msg)


@pytest.mark.parametrize("kind", [*GARBAGE, "routed-as-other"])
@pytest.mark.parametrize("stage", [0, 1, 2, 3, 4])
def test_supernode_answering_garbage_never_gives_a_wrong_aggregate(
    identities: tuple[Path, Path, str],
    monkeypatch: pytest.MonkeyPatch,
    stage: int,
    kind: str,
) -> None:
    """client-3's SuperNode answers one stage with garbage (random, cut, extended,
    a broken header, empty), with client-0's reply of that stage (answering for
    another party id), or with routing fields naming client-0: client-3 is dropped
    (the aggregator ignores a reply it cannot read, as if the node had gone) and the
    sum is exactly that of the contributors; the round does not abort."""
    folder, directory, pin = identities
    corrupt = _Corrupt(103, stage, kind)
    monkeypatch.setattr(client_app, "privagg_query", corrupt)
    grid = FakeGrid(node_configs(folder, directory, pin))
    summary = _run(grid, _settings(directory))
    assert corrupt.fired
    rec = summary["rounds"][0]
    check_sum(rec, WEIGHTS)
    if stage <= 2:  # before its masked input was in, client-3 cannot contribute
        assert "client-3" not in rec["contributors"]
    # every dropped client has a reason, in fixed words (the "dropped" list unchanged)
    assert sorted(rec["drop_reasons"]) == sorted(rec["dropped"])
    if "client-3" in rec["dropped"]:
        why = rec["drop_reasons"]["client-3"]
        if kind == "routed-as-other":
            assert why == "mismatched routing fields"
        else:
            assert why.startswith("unreadable reply: ")
            assert why.removeprefix("unreadable reply: ").endswith("Error")
            assert why.removeprefix("unreadable reply: ").isidentifier()
    count("faults", f"flower: {kind} reply", injected=1, ok=1, correct=1)


def test_drop_reason_carries_no_payload_bytes(
    identities: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """client-3 answers stage 0 with a reply that carries a client-chosen label (and,
    for the second case, client-0's honest reply relabelled: an error text would name
    client-0's label): the summary names the error's type, never the label, the
    error's text or any 8-byte window of the reply."""
    folder, directory, pin = identities
    label = b"TOP-SECRET-LABEL-\xfe\x01"
    corrupt = _Corrupt(103, 0, "random")
    sent: list[bytes] = []

    def garbage(kind: str, payload: bytes, other: bytes) -> bytes:
        bad = label + payload[: len(payload) // 2]
        sent.append(bad)
        return bad

    monkeypatch.setattr(client_app, "privagg_query", corrupt)
    monkeypatch.setitem(globals(), "_garbage", garbage)  # what _Corrupt calls
    grid = FakeGrid(node_configs(folder, directory, pin))
    summary = _run(grid, _settings(directory))
    assert corrupt.fired and sent
    rec = summary["rounds"][0]
    check_sum(rec, WEIGHTS)
    assert rec["dropped"] == ["client-3"]
    why = rec["drop_reasons"]["client-3"]
    assert why.startswith("unreadable reply: ")
    text = json.dumps(summary)
    assert "TOP-SECRET" not in text and label.hex() not in text
    for bad in sent:  # (the honest half names "client-3", which the summary lists)
        for i in range(len(bad) - 8):
            assert bad[i : i + 8].hex() not in text
    for i in range(len(label) - 8):
        assert label[i : i + 8].decode("latin-1") not in text


def test_drop_reasons_for_every_kind_of_drop() -> None:
    """The transport's reason first, then the aggregator's, then the first stage a
    client did not answer; contributors get none."""

    class _Agg:
        def __init__(self) -> None:
            self.rejection_reasons = {"c2": "unreadable reply: DeserializationError"}

    driven = server_app.DriveResult(b"", 5, {1: ("c3", "c4"), 3: ("c4", "c5")})
    got = server_app.drop_reasons(
        ["c0", "c1", "c2", "c3", "c4", "c5", "c6"],
        ["c0"],
        _Agg(),
        {"c1": "client error", "c3": "mismatched routing fields"},
        driven,
    )
    assert got == {
        "c1": "client error",
        "c2": "unreadable reply: DeserializationError",
        "c3": "mismatched routing fields",
        "c4": "no reply (stage 1)",
        "c5": "no reply (stage 3)",
        "c6": "left out by the protocol",
    }
    # an aggregator without a report (the one-shot backends)
    assert server_app.drop_reasons(["c0", "c1"], [], object(), {}, driven) == {
        "c0": "left out by the protocol",
        "c1": "left out by the protocol",
    }


def test_drop_reasons_name_both_sides_of_a_refused_share_record() -> None:
    """Review r12 (LOW, fixed): a client left out because neighbours refused its
    share record is reported with the refusing neighbours, so an accuser is named
    beside the client it accused (either may have lied)."""

    class _Agg:
        def __init__(self) -> None:
            self.rejection_reasons = {"c2": "share refused by a neighbour"}
            self.disputes = {"c2": frozenset({"c3", "c0"})}

    driven = server_app.DriveResult(b"", 5, {})
    got = server_app.drop_reasons(["c0", "c2", "c3"], ["c0", "c3"], _Agg(), {}, driven)
    assert got == {"c2": "share refused by a neighbour (refused by c0, c3)"}
