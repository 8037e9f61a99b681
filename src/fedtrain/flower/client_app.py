"""The ClientApp: answers privagg requests with ``ClientRole.handle`` on a SuperNode.

Flower's deployment engine starts a fresh ClientApp process for every Message, so a
privagg client role (an in-memory state machine) cannot live across the stages of a
multi-stage protocol (SecAgg+). The ClientApp keeps, in the node's ``context.state``
(which stays inside the SuperNode process, on the client's machine):

* the round id, the client's flattened update and weight, computed once per round;
* a fresh 32-byte seed for an AES-256-CTR keystream, the only randomness given to the
  role (``rng=``);
* the requests answered so far this round, and a BLAKE2b digest of each reply.

At stage ``k`` it rebuilds the role with the same seed, replays requests ``0..k-1``
(checking that each replay reproduces the digest of what was actually sent), then
handles request ``k``. One-shot backends only ever run stage 0. A backend whose client
draws randomness outside the injected ``Rng`` is detected (digest mismatch) and refused.

Node config keys (``flower-supernode --node-config``):

* ``party-id`` (str): this node's privagg party id (required for clients).
* ``privagg-backends`` (str, required): comma-separated backends this client accepts,
  e.g. ``"secagg"``. The ServerApp is untrusted and names the backend of each round;
  a client refuses any other (a server cannot downgrade it to ``plain``).
* ``privagg-backend-options`` (str, optional): JSON object; if set, the round's backend
  options must equal it (a server cannot weaken thresholds or bounds).
* ``privagg-material`` (str): path of this client's material file (keyed backends).
* ``privagg-holder`` (bool): this node is the result holder.
* ``privagg-holder-material`` (str): path of the holder's material file.
* ``privagg-weight`` (float): the client's weight (``synthetic`` task).
* ``fault-stall-stage`` / ``fault-stall-seconds`` (int / float): fault injection for
  tests: sleep before answering that stage, to play a node that does not reply in time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedtrain.flower.material import Role, SessionSpec, load_session
from fedtrain.flower.tasks import get_task
from fedtrain.flower.transport import Envelope, Op, pack, unpack
from privagg import ConfigurationError, Layout, ProtocolError
from privagg.hazmat import DeterministicRng

__all__ = ["app", "handle_envelope"]

_STATE = "privagg.client"

app = ClientApp()


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _party_id(context: Context) -> str:
    pid = context.node_config.get("party-id")
    if not isinstance(pid, str) or not pid:
        raise ConfigurationError(
            "node config 'party-id' (a non-empty string) is missing"
        )
    return pid


def _material(context: Context, key: str) -> str | None:
    value = context.node_config.get(key)
    return str(value) if value else None


def _check_accepted(spec: SessionSpec, context: Context) -> None:
    """Refuse a session the node's own configuration does not allow."""
    accepted = str(context.node_config.get("privagg-backends", ""))
    allowed = {b.strip() for b in accepted.split(",") if b.strip()}
    if spec.backend not in allowed:
        raise ConfigurationError(
            f"this client accepts backends {sorted(allowed)} (node config "
            f"'privagg-backends'), the server asked for {spec.backend!r}"
        )
    pinned = context.node_config.get("privagg-backend-options")
    if pinned and json.loads(str(pinned)) != dict(spec.options):
        raise ConfigurationError(
            "the server's backend options differ from 'privagg-backend-options'"
        )


def _maybe_stall(context: Context, stage: int) -> None:
    at = int(context.node_config.get("fault-stall-stage", -1))
    if at == stage:
        time.sleep(float(context.node_config.get("fault-stall-seconds", 60.0)))


def _respond(env: Envelope, msg: Message, context: Context) -> bytes:
    """Answer one aggregator request as this node's client role (with replay)."""
    party = _party_id(context)
    if env.party != party:
        raise ProtocolError("request addressed to another party")
    stage = int(env.meta.get("stage", "0"))
    _maybe_stall(context, stage)
    spec = SessionSpec.from_json(env.meta["spec"])
    _check_accepted(spec, context)
    layout = Layout.from_bytes(bytes.fromhex(env.meta["layout"]))
    state = context.state.config_records.get(_STATE)

    if state is None or int(state["round"]) != env.round_id:  # type: ignore[arg-type]
        if stage != 0:
            raise ProtocolError(f"round {env.round_id} joined at stage {stage}")
        task = get_task(env.meta.get("task", "synthetic"))
        update = task(party, env.round_id, layout, msg.content, context)
        vector = layout.flatten(update.arrays, who=f"client {party!r}")
        state = ConfigRecord(
            {
                "round": env.round_id,
                "seed": os.urandom(32),
                "vector": np.ascontiguousarray(vector, dtype="<f8").tobytes(),
                "weight": float(update.weight),
                "n": 0,
            }
        )
    n = int(state["n"])  # type: ignore[arg-type]
    if stage != n:
        raise ProtocolError(f"expected stage {n}, got stage {stage}")

    session = load_session(
        spec,
        layout,
        Role.CLIENT,
        party_id=party,
        material=_material(context, "privagg-material"),
    )
    vector = np.frombuffer(state["vector"], dtype="<f8").copy()  # type: ignore[arg-type]
    role = session.client(
        party,
        env.round_id,
        vector,
        weight=float(state["weight"]),  # type: ignore[arg-type]
        # The project's AES-256-CTR keystream, here under a *secret* seed drawn from
        # os.urandom that never leaves this node: a CSPRNG whose output can be replayed.
        rng=DeterministicRng(state["seed"]),  # type: ignore[arg-type]
    )
    for i in range(n):
        replayed = role.handle(state[f"req.{i}"])  # type: ignore[arg-type]
        if _digest(replayed) != state[f"dig.{i}"]:
            raise ProtocolError(
                f"backend {spec.backend!r}: the client role is not deterministic under "
                "its injected Rng, so it cannot run across ClientApp processes"
            )
    reply = role.handle(env.payload)
    state[f"req.{n}"] = env.payload
    state[f"dig.{n}"] = _digest(reply)
    state["n"] = n + 1
    context.state[_STATE] = state
    return reply


def _recover(env: Envelope, context: Context) -> Envelope:
    """Recover the aggregate as the result holder."""
    if not bool(context.node_config.get("privagg-holder", False)):
        raise ProtocolError("this node is not the result holder")
    spec = SessionSpec.from_json(env.meta["spec"])
    layout = Layout.from_bytes(bytes.fromhex(env.meta["layout"]))
    session = load_session(
        spec,
        layout,
        Role.HOLDER,
        material=_material(context, "privagg-holder-material"),
    )
    rec = session.holder().recover(env.payload)
    return Envelope(
        Op.RECOVER,
        env.round_id,
        env.party,
        np.ascontiguousarray(rec.vector, dtype="<f8").tobytes(),
        {"contributors": json.dumps(list(rec.contributors))},
    )


def handle_envelope(env: Envelope, msg: Message, context: Context) -> Envelope:
    """Answer one privagg envelope on this node.

    Args:
        env: the unpacked request.
        msg: the Flower message it came in (for extra records such as a global model).
        context: the node's Flower context (node config, persistent state).

    Returns:
        The reply envelope.

    Raises:
        privagg.PrivaggError: a protocol or configuration failure (the ServerApp sees
            an error reply, i.e. this party drops out).
    """
    if env.op == Op.HELLO:
        holder = bool(context.node_config.get("privagg-holder", False))
        pid = context.node_config.get("party-id")
        return Envelope(
            Op.HELLO,
            env.round_id,
            str(pid) if pid else "",
            meta={"holder": "1" if holder else "0"},
        )
    if env.op == Op.REQUEST:
        return Envelope(
            Op.REQUEST, env.round_id, env.party, _respond(env, msg, context)
        )
    if env.op == Op.RECOVER:
        return _recover(env, context)
    raise ProtocolError(f"unknown privagg operation {env.op!r}")


@app.query("privagg")
def privagg_query(msg: Message, context: Context) -> Message:
    """Flower entry point for ``query.privagg`` messages."""
    reply = handle_envelope(unpack(msg.content), msg, context)
    return Message(pack(reply), reply_to=msg)
