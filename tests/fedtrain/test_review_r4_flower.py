"""Outside review r4 (#14) of the Flower deployment: the pinned result holder and the
node-config DP floors.

Each test is one attack. One that is refused is a passing test asserting the refusal;
one that works asserts the secure behaviour and is marked ``xfail(strict=True)`` with
its severity ("open (review r4, SEVERITY)"). Fake Grid only, no SuperLink processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message
from test_flower_dp_floors import NODE, _check, _record_cfg
from test_review_flower_client_dp import LAYOUT, _cfg, _ctx, _env, _spec
from tests.fedtrain.test_flower_holder_auth import (
    ATTACKER,
    HOLDER,
    _Recording,
    _setup,
    _signer,
)
from tests.fedtrain.test_flower_transport import (  # noqa: F401 (autouse fixture)
    FakeGrid,
    _task_identity,
    fake_node,
)

import privagg
from fedtrain.errors import ConfigError, FedtrainError
from fedtrain.flower import client_app, run_task, server_app
from fedtrain.flower.errors import FlowerConfigError, FlowerProtocolError, PolicyError
from fedtrain.flower.holder_auth import (
    hello_message,
    parse_holder_pin,
    recovery_message,
    verify_holder_claim,
    verify_recovery,
)
from fedtrain.flower.policy import ClientPolicy, DPFloors
from fedtrain.flower.transport import Envelope, Op, pack, recovery_check, unpack
from privagg import Layout
from privagg.backends.secagg import _context as secagg_context
from privagg.backends.secagg import client as secagg_client

# the Ed25519 group order: S + L is the same scalar, a non-canonical encoding
_L = 2**252 + 27742317777372353535851937790883648493
SECRET = "S3CRET-node-chosen-text"


def _genuine(tmp_path: Path) -> Any:
    return _signer(tmp_path / "holder-machine" / "secagg-identity-holder.key")


HOLDER_NODE = 9  # the Flower node id the holder answers hello from (signed since r8)

# == (a) the pinned result holder ======================================================


def test_r4_a_hello_signature_is_no_recovery_signature_and_back(
    tmp_path: Path,
) -> None:
    """ATTACK (cross-message replay): the holder's hello signature offered as its
    recovery signature, and a recovery signature offered as a hello proof: refused
    (each message has its own context string)."""
    _setup(tmp_path)
    genuine = _genuine(tmp_path)
    c = b"\x05" * 32
    check = "ab" * 32
    hello_sig = genuine.sign(hello_message(c, "holder", HOLDER_NODE))
    with pytest.raises(FlowerProtocolError, match="not signed by the pinned"):
        verify_recovery(genuine.public_key, hello_sig, c, 0, check)
    rec_sig = genuine.sign(recovery_message(c, 0, check))
    pin = privagg.identity.identity_fingerprint(genuine.public_key)
    meta = {"holder-key": genuine.public_key.hex(), "holder-signature": rec_sig}
    assert verify_holder_claim(meta, c, "", pin, HOLDER_NODE) is None
    assert verify_holder_claim(meta, c, "holder", pin, HOLDER_NODE) is None
    # control: the right message is accepted
    meta["holder-signature"] = genuine.sign(hello_message(c, "", HOLDER_NODE))
    assert verify_holder_claim(meta, c, "", pin, HOLDER_NODE) == genuine.public_key


def test_r4_holder_messages_are_domain_separated_from_secagg_signatures() -> None:
    """ATTACK (cross-protocol): the holder key IS a SecAgg+ identity key, which also
    signs SecAgg+ key advertisements, partner attestations and survivor sets. Every
    SecAgg+ signed message starts with privagg's SecAgg+ domain; the holder's start
    with their own context string; neither prefix is a prefix of the other, so no
    signature of one protocol verifies as the other's."""
    import inspect

    domain = secagg_context._DOMAIN
    c = b"\x00" * 32
    for msg in (hello_message(c, "", HOLDER_NODE), recovery_message(c, 0, "")):
        assert msg.startswith(b"fedtrain-flower/holder-")
        assert not msg.startswith(domain)
        assert not domain.startswith(msg[: len(domain)])
    # every SecAgg+ signing call site builds its message with one of these builders,
    # and each builder frames its message with the SecAgg+ domain
    src = inspect.getsource(secagg_client)
    assert src.count("ed25519_sign(") == 3
    for name in ("_key_message", "_partner_message", "_survivor_message"):
        fn = getattr(secagg_client, name)
        assert "_DOMAIN" in inspect.getsource(fn), name


def test_r4_a_non_canonical_signature_is_refused(tmp_path: Path) -> None:
    """ATTACK (malleability): the genuine signature with S replaced by S + L (the same
    scalar, another encoding): refused at hello and at recovery."""
    _setup(tmp_path)
    genuine = _genuine(tmp_path)
    c = b"\x09" * 32

    def malleate(sig_hex: str) -> str:
        sig = bytes.fromhex(sig_hex)
        s = int.from_bytes(sig[32:], "little") + _L
        return (sig[:32] + s.to_bytes(32, "little")).hex()

    pin = privagg.identity.identity_fingerprint(genuine.public_key)
    sig = malleate(genuine.sign(hello_message(c, "", HOLDER_NODE)))
    meta = {"holder-key": genuine.public_key.hex(), "holder-signature": sig}
    assert verify_holder_claim(meta, c, "", pin, HOLDER_NODE) is None
    rsig = malleate(genuine.sign(recovery_message(c, 3, "cd" * 32)))
    with pytest.raises(FlowerProtocolError):
        verify_recovery(genuine.public_key, rsig, c, 3, "cd" * 32)


@pytest.mark.parametrize(
    "kind",
    [
        "uppercase key",
        "key with newline",
        "fullwidth digits",
        "huge key",
        "non-canonical y",
        "uppercase signature",
        "huge signature",
        "nul bytes",
    ],
)
def test_r4_crafted_claim_bytes_are_ignored_without_an_exception(
    kind: str, tmp_path: Path
) -> None:
    """ATTACK (crafted bytes): a hello claim with case, whitespace, unicode, huge or
    non-canonical key/signature text: ignored (None), never an untyped exception."""
    _setup(tmp_path)
    genuine = _genuine(tmp_path)
    c = b"\x01" * 32
    pin = privagg.identity.identity_fingerprint(genuine.public_key)
    key, sig = genuine.public_key.hex(), genuine.sign(hello_message(c, "", HOLDER_NODE))
    if kind == "uppercase key":
        key = key.upper()
    elif kind == "key with newline":
        key += "\n"
    elif kind == "fullwidth digits":
        key = "".join(chr(ord(ch) + 0xFEE0) if ch.isdigit() else ch for ch in key)
    elif kind == "huge key":
        key = key * 100_000
    elif kind == "non-canonical y":
        # y = p + 1 (>= p): a non-canonical encoding of a small-order point
        key = ((2**255 - 19) + 1).to_bytes(32, "little").hex()
    elif kind == "uppercase signature":
        sig = sig.upper()
    elif kind == "huge signature":
        sig = sig * 100_000
    else:
        key, sig = "\x00" * 64, "\x00" * 128
    assert verify_holder_claim(
        {"holder-key": key, "holder-signature": sig}, c, "", pin, NODE
    ) in (None,)


@pytest.mark.parametrize(
    "value", [123, True, None, ["ab" * 32], b"ab" * 32, "0x" + "ab" * 31, "ab" * 33]
)
def test_r4_a_malformed_holder_pin_is_a_typed_config_error(value: Any) -> None:
    """ATTACK (TOML types): run config ``holder-key`` an int, a bool, a list, bytes or
    the wrong length: FlowerConfigError, both parsed directly and via the run config."""
    with pytest.raises(FlowerConfigError):
        parse_holder_pin(value)
    if value is not None:
        with pytest.raises(privagg.PrivaggError):
            server_app.RunSettings.from_run_config(
                {"holder": "node", "holder-key": value}
            )


def test_r4_fullwidth_pin_is_refused() -> None:
    """ATTACK (unicode): a pin written with fullwidth digits is no pin."""
    pin = "\uff41\uff42" * 32  # fullwidth a, b
    with pytest.raises(FlowerConfigError):
        parse_holder_pin(pin)


def test_r4_a_restarted_serverapp_reauthenticates_the_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (resume): the ServerApp stops after round 1 (a bad holder reply) and is
    restarted from its checkpoint. The restarted run asks every node for hello again
    with a *new* challenge and the holder must sign recovery over that one: the first
    run's challenge (and so any reply signed for it) is not accepted after restart."""
    grid, settings = _setup(tmp_path)
    settings = server_app.dataclasses.replace(
        settings, checkpoint_dir=str(tmp_path / "ckpt")
    )
    real = client_app.privagg_query
    state = {"break": True, "n": 0}

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op != Op.RECOVER:
            return None
        state["n"] += 1
        if state["break"] and state["n"] == 2:
            got = unpack(real(msg, grid.contexts[HOLDER]).content)
            meta = dict(got.meta, signature="00" * 64)
            out = Envelope(Op.RECOVER, env.round_id, got.party, got.payload, meta)
            return Message(pack(out), reply_to=msg)
        return None

    fake_node(monkeypatch, HOLDER, fake)
    with pytest.raises(FlowerProtocolError):
        server_app.run(grid, settings, _Recording())
    first = [unpack(m.content) for m in grid.sent]
    first_hello = {e.meta["challenge"] for e in first if e.op == Op.HELLO}
    assert len(first_hello) == 1
    n_sent = len(grid.sent)
    state["break"] = False
    summary = server_app.run(grid, settings, _Recording())
    second = [unpack(m.content) for m in grid.sent[n_sent:]]
    hello2 = {e.meta["challenge"] for e in second if e.op == Op.HELLO}
    rec2 = {e.meta["challenge"] for e in second if e.op == Op.RECOVER}
    assert len(hello2) == 1 and hello2 != first_hello
    assert rec2 == hello2
    assert summary["resumed"]
    # a reply signed over the first run's challenge does not verify after restart
    genuine = _genuine(tmp_path)
    old = bytes.fromhex(next(iter(first_hello)))
    new = bytes.fromhex(next(iter(hello2)))
    sig = genuine.sign(recovery_message(old, 5, "ab" * 32))
    with pytest.raises(FlowerProtocolError):
        verify_recovery(genuine.public_key, sig, new, 5, "ab" * 32)


def test_r4_claim_bytes_are_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """ATTACK (log injection): a node's holder claim with crafted key and signature
    text: the run goes on with the genuine holder and no byte of the claim is
    logged."""
    grid, settings = _setup(tmp_path)

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            meta = {"holder": "1", "holder-key": SECRET, "holder-signature": SECRET}
            reply = Envelope(Op.HELLO, 0, "client-3", b"", meta)
            return Message(pack(reply), reply_to=msg)
        return None

    fake_node(monkeypatch, ATTACKER, fake)
    with caplog.at_level(logging.DEBUG):
        summary = server_app.run(grid, settings, _Recording())
    assert len(summary["rounds"]) == 2
    assert "claim ignored" in caplog.text
    assert SECRET not in caplog.text


def _holder_reply(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **kw: Any
) -> FlowerProtocolError:
    grid, settings = _setup(tmp_path)

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op != Op.RECOVER:
            return None
        if "error" in kw:
            return Message(kw["error"], reply_to=msg)
        out = Envelope(Op.RECOVER, env.round_id, kw["party"], b"", {})
        return Message(pack(out), reply_to=msg)

    fake_node(monkeypatch, HOLDER, fake)
    task = _Recording()
    with pytest.raises(FlowerProtocolError) as info:
        server_app.run(grid, settings, task)
    assert task.applied == []
    return info.value


def test_r4_holder_reply_party_text_is_not_in_the_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (node bytes in exception text): the holder node (or whoever answers for
    it) replies with a party of its choosing: refused, but the refusal should not
    echo the node's text."""
    exc = _holder_reply(monkeypatch, tmp_path, party=SECRET * 1000)
    assert SECRET not in str(exc)


def test_r4_holder_error_reason_is_not_in_the_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (node bytes in exception text): the holder answers with an Error whose
    reason is node-chosen text."""
    from flwr.app import Error

    exc = _holder_reply(monkeypatch, tmp_path, error=Error(code=0, reason=SECRET))
    assert SECRET not in str(exc)


# == (b) the node-config DP floors =====================================================

FLOOR = {"fedtrain-min-noise-multiplier": "2.0"}
RELAX = {
    "fedtrain-min-noise-multiplier": "0",
    "fedtrain-require-dp": "false",
    "fedtrain-min-dp-clients": 1,
}


@pytest.mark.parametrize("level", ["record", "client"])
def test_r4_the_run_config_cannot_relax_the_node_floors(level: str) -> None:
    """ATTACK (floors from the run config): the run config carries floor keys that
    relax the node's: ignored; the node's own floor refuses the run (z = 1 < 2)."""
    cfg = _record_cfg() if level == "record" else _cfg()
    cfg = {**cfg, **RELAX}
    with pytest.raises(PolicyError, match="fedtrain-min-noise-multiplier"):
        _check(cfg, FLOOR)
    assert DPFloors.from_node_config(NODE) == DPFloors()


def test_r4_request_meta_cannot_override_the_run_config() -> None:
    """ATTACK (meta override): the request's meta names a stronger ``fedtrain-run`` and
    floor keys; the node checks its own run config and floors only: refused."""
    strong = _cfg(noise_multiplier=10.0)
    weak = _cfg()
    env = _env("fedtrain")
    env.meta.update({"fedtrain-run": strong["fedtrain-run"], **RELAX})
    with pytest.raises(PolicyError):
        client_app._noise(env, _spec(), LAYOUT, _ctx(weak, FLOOR))


def test_r4_a_run_config_without_task_cannot_switch_to_a_task_without_dp() -> None:
    """ATTACK (task switch): the run config names no task, the request names the
    synthetic task (no DP hook): refused on a node that requires DP."""
    cfg = dict(_cfg())
    del cfg["task"]
    for floors in ({"fedtrain-require-dp": True}, FLOOR):
        with pytest.raises(PolicyError):
            client_app._noise(_env("synthetic"), _spec(), LAYOUT, _ctx(cfg, floors))


@pytest.mark.parametrize("level", ["CLIENT", "Client", " client", "client\n", "rec"])
def test_r4_a_privacy_level_spelled_differently_is_refused(level: str) -> None:
    """ATTACK (spelling): ``privacy.level`` in another case or with whitespace, so that
    the ``== "client"`` branch of the floor check is skipped: a typed error."""
    with pytest.raises(ConfigError, match=r"privacy\.level"):
        _check(_cfg(level=level), FLOOR)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fedtrain-min-dp-clients", True),
        ("fedtrain-min-dp-clients", 2.5),
        ("fedtrain-min-dp-clients", "-1"),
        ("fedtrain-min-dp-clients", 0),
        ("fedtrain-min-noise-multiplier", True),
        ("fedtrain-min-noise-multiplier", "nan"),
        ("fedtrain-min-noise-multiplier", "inf"),
        ("fedtrain-min-noise-multiplier", "1e400"),
        ("fedtrain-min-noise-multiplier", 10**400),
        ("fedtrain-min-noise-multiplier", -0.5),
        ("fedtrain-min-noise-multiplier", [1.0]),
        ("fedtrain-max-epsilon", 0),
        ("fedtrain-max-epsilon", float("nan")),
        ("fedtrain-max-delta", 1.0),
        ("fedtrain-max-delta", "0"),
        ("fedtrain-require-dp", 1),
        ("fedtrain-require-dp", "yes"),
    ],
)
def test_r4_crafted_floor_values_are_a_typed_policy_error(key: str, value: Any) -> None:
    """ATTACK (crafted node config values): bools as numbers, NaN/inf, huge ints,
    out-of-range values, lists: a PolicyError naming the key (the node does not run
    with a floor silently dropped)."""
    with pytest.raises(PolicyError, match=key):
        DPFloors.from_node_config({key: value})


@pytest.mark.parametrize(
    "privacy",
    [
        {"delta": float("nan")},
        {"delta": 0.5},
        {"target_epsilon": float("inf")},
        {"target_epsilon": float("nan")},
        {"noise_multiplier": float("nan")},
    ],
)
def test_r4_nan_and_huge_run_values_do_not_pass_the_ceilings(
    privacy: dict[str, Any],
) -> None:
    """ATTACK (NaN/inf in the run config): a NaN or infinite delta, epsilon or noise
    multiplier compared against the node's ceilings: refused (typed)."""
    floors = {
        "fedtrain-max-epsilon": 8.0,
        "fedtrain-max-delta": 1e-4,
        "fedtrain-min-noise-multiplier": 0.5,
    }
    with pytest.raises((privagg.PrivaggError, FedtrainError)):
        _check(_record_cfg(**privacy), floors)


@pytest.mark.parametrize("level", ["record", "client"])
def test_r4_require_dp_refuses_a_zero_noise_run(level: str) -> None:
    """ATTACK (DP in name only): ``privacy.level`` says DP but the noise multiplier
    is 0, on a node that sets only ``fedtrain-require-dp``: refused (the run config
    itself is invalid: a typed ConfigError)."""
    cfg = {"noise_multiplier": 0.0}
    with pytest.raises(ConfigError, match="noise_multiplier > 0"):
        _check(
            _record_cfg(**cfg) if level == "record" else _cfg(**cfg),
            {"fedtrain-require-dp": True},
        )


def test_r4_the_floor_check_runs_before_any_noise_share_or_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ATTACK (order): the noise share must not be computed before the check: with
    the share builder booby-trapped, a run below the floor is refused with
    PolicyError (not the trap)."""

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("noise computed before the floor check")

    monkeypatch.setattr(run_task, "_client_dp", boom)
    with pytest.raises(PolicyError):
        run_task.session_noise(
            _cfg(noise_multiplier=0.1), _spec().backend_object(), LAYOUT, FLOOR
        )


def test_r4_min_dp_clients_refuses_a_round_with_fewer_participants() -> None:
    """ATTACK (sampling): the run config sizes the noise for ``min_clients = 3`` (at
    the node's floor ``fedtrain-min-dp-clients = 3``) but the ServerApp's SecAgg+ setup
    names this client alone: the node should refuse before anything is sent."""
    from privagg.backends.secagg.messages import SetupRequest

    node = {"privagg-backends": "secagg", "fedtrain-min-dp-clients": 3}
    _check(_cfg(min_clients=3), node)  # the run itself is at the floor
    policy = ClientPolicy.from_node_config(node)
    setup = SetupRequest(b"\x00" * 32, 1, "client-0", ("client-0",), 1, 1)
    with pytest.raises(PolicyError):
        policy.check_secagg_setup(setup.to_bytes())


@pytest.mark.parametrize("round_id", [2**63, -(2**63) - 1, 2**64])
def test_r4_recovery_message_out_of_range_round_id_is_typed(round_id: int) -> None:
    """ATTACK (huge values): a round id that does not fit the signed frame."""
    with pytest.raises(privagg.PrivaggError):
        recovery_message(b"\x00" * 32, round_id, "ab" * 32)


def test_r4_the_holders_hello_reply_replayed_as_its_recovery_reply_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATTACK (cross-message replay over the wire): the holder's own signed hello
    reply, relabelled as the recovery reply of round r (op, round and party set as
    the ServerApp expects, hello signature as the recovery signature): refused,
    nothing applied."""
    grid, settings = _setup(tmp_path)
    real = client_app.privagg_query
    hello: list[Envelope] = []

    def fake(env: Envelope, msg: Message) -> Message | None:
        if env.op == Op.HELLO:
            out = real(msg, grid.contexts[HOLDER])
            hello.append(unpack(out.content))
            return out
        if env.op == Op.RECOVER:
            n = Layout.from_bytes(bytes.fromhex(env.meta["layout"])).size
            vec = np.full(n, 1000.0, dtype="<f8").tobytes()
            text = json.dumps(["client-0"])
            check = recovery_check(env.round_id, env.payload, vec, text)
            meta = dict(hello[0].meta, contributors=text, check=check)
            meta["signature"] = hello[0].meta["holder-signature"]
            reply = Envelope(Op.RECOVER, env.round_id, "holder", vec, meta)
            return Message(pack(reply), reply_to=msg)
        return None

    fake_node(monkeypatch, HOLDER, fake)
    task = _Recording()
    with pytest.raises(FlowerProtocolError, match="not signed by the pinned"):
        server_app.run(grid, settings, task)
    assert hello and hello[0].meta["holder-signature"]
    assert task.applied == []
