"""The ClientApp: answers privagg requests with ``ClientRole.handle`` on a SuperNode.

**The ServerApp is untrusted.** It names the backend, its options, ``max_clients``,
``max_weight`` and the layout of every round. Before this node computes its update,
builds a role or sends a byte for a round, it checks that session against its own local
minimum policy (:class:`fedtrain.flower.policy.ClientPolicy`), read **only from the node
config** (the SuperNode operator's file; never from the run config or a message, which
come from the ServerApp), and refuses anything weaker with
:class:`fedtrain.flower.errors.PolicyError` (a ``privagg.ConfigurationError``): the
ServerApp sees an error reply and the node drops out of the round. The defaults are
safe whether or not ``privagg-backend-options`` is pinned: SecAgg+ ``corruption_rate``
>= 0.1, ``sigma`` >= 40, ``dropout_rate`` <= 1/3 (privagg's defaults), a stage-0
threshold ``t`` >= 2 and graph degree ``k`` >= 2 (both capped at ``n - 1``),
``max_clients`` <= 1000, ``max_weight`` <= 1.0, CKKS presets ``secure`` /
``secure-large`` with ``flood_bits`` >= 40, Paillier keys >= 2048 bits, and backends
the policy cannot judge only with pinned options.

Flower's deployment engine starts a fresh ClientApp process for every Message, so a
privagg client role (an in-memory state machine) cannot live across the stages of a
multi-stage protocol (SecAgg+). The ClientApp keeps, in the node's ``context.state``
(which stays inside the SuperNode process, on the client's machine):

* the round id, a digest of the round's session (spec and layout, fixed at stage 0),
  the client's flattened update and weight, computed once per round;
* a fresh 32-byte seed for an AES-256-CTR keystream, drawn from the system CSPRNG, the
  only randomness given to the role (``rng=``);
* the requests answered so far this round, and a SHA-256 digest of each reply.

At stage ``k`` it rebuilds the role with the same seed, replays requests ``0..k-1``
(checking that each replay reproduces the digest of what was actually sent), then
handles request ``k``. One-shot backends only ever run stage 0. A backend whose client
draws randomness outside the injected ``Rng`` is detected (digest mismatch) and refused.
A round id is joined once: a stage-0 request for a round that is not newer than the
last one this node joined in the run is refused, and a later stage must carry the same
session as stage 0.

**Result holder.** A node with ``privagg-holder=true`` recovers aggregates. Its holder
object is cached per session in the process, and every release goes through a
:class:`fedtrain.flower.release.ReleaseRegister`: a 0600 file beside the holder's key
(``<privagg-holder-material>.released``, or ``privagg-holder-register``), rewritten
atomically (temporary file, fsync, ``os.replace``) under a file lock. A
``(params_id, round id)`` released once is refused the second time with
:class:`fedtrain.flower.errors.AlreadyReleasedError`, by any process and after
restarts. A holder without a secret key (plain, passive SecAgg+) uses a register only
if ``privagg-holder-register`` is set, and otherwise keeps only the in-process rule: its
aggregate is no secret from the ServerApp anyway.
The recovered sum goes back to the ServerApp (it applies it): ``holder = "node"`` keeps
the *secret key* off the ServerApp, not the aggregate.

**Aggregation server.** A node with ``privagg-role = "server"`` is one of the additive
backend's non-colluding servers ``server-k`` (``k >= 1``; server 0 is the ServerApp's
aggregator, which holds no secret): it answers the aggregator's server request with
its partial sum, encrypted to the result holder. It loads only the public directory
(``privagg-material``) and its own key (``privagg-own-key``, made on this machine by
:func:`fedtrain.flower.material.make_own_key`), checks the session against its node
policy like a client, and serves each ``(params_id, round id)`` once, for good: a
register file (``<privagg-own-key>.released``, or ``privagg-server-register``) as for
the holder, so the coordinator cannot obtain two partial sums of one round over
different client sets, even across ClientApp processes and restarts.

Node config keys (``flower-supernode --node-config``):

* ``party-id`` (str): this node's privagg party id (required for clients and servers).
* ``privagg-role`` (str, optional): ``"client"`` (default) or ``"server"`` (an
  aggregation server, e.g. ``party-id = "server-1"``).
* ``privagg-own-key`` (str): path of this node's own key file (servers and the holder
  of backends whose key holders make their own keys: ``additive``).
* ``privagg-server-register`` (str, optional): path of a server's register of served
  rounds (default ``<privagg-own-key>.released``).
* ``privagg-backends`` (str, required): comma-separated backends this client accepts,
  e.g. ``"secagg"``; a server cannot downgrade a client to ``plain``.
* ``privagg-backend-options`` (str, optional): JSON object; if set, the round's backend
  options must equal it exactly (the bounds below apply as well).
* policy bounds (optional; defaults above): ``privagg-max-clients``,
  ``privagg-max-weight``, ``privagg-layout-fingerprint`` (hex of
  ``Layout.fingerprint``), ``privagg-min-corruption-rate``, ``privagg-min-sigma``,
  ``privagg-max-dropout-rate``, ``privagg-min-threshold``, ``privagg-min-degree``,
  ``privagg-ckks-presets``, ``privagg-min-ckks-flood-bits``,
  ``privagg-min-paillier-key-bits``.
* ``privagg-material`` (str): path of this client's material file (keyed backends).
* ``privagg-identity-key`` (str): active SecAgg+: path of this node's own Ed25519
  identity key file (``privagg keygen --backend secagg``; 0600, made on this machine).
* ``privagg-identity-password-env`` (str, optional): the environment variable of the
  SuperNode that holds the password of a key file written with
  ``privagg keygen --password-env`` (scrypt + AES-256-GCM).
* ``privagg-identity-directory`` (str): active SecAgg+: path of the public-key
  directory; setting it also makes this node refuse passive SecAgg+ (no downgrade).
* ``privagg-directory-fingerprint`` (str): hex of the directory's fingerprint,
  received out of band; required on every node of an ``OWN_KEYS`` backend (additive:
  clients, servers, holder; the directory is their ``privagg-material`` /
  ``privagg-holder-material``) and on every client of active SecAgg+; a node refuses
  any other directory. ``privagg-identity-directory-fingerprint``: the older name,
  still read.
* ``privagg-round-register`` (str, optional): active SecAgg+: the file recording the
  ``(params_id, round id)`` pairs this node joined, across runs (default
  ``<privagg-identity-key>.rounds``, 0600); a pair is joined once.
* ``privagg-holder`` (bool): this node is the result holder. It needs its own
  Ed25519 key, ``privagg-identity-key`` (``privagg keygen --backend secagg
  --party-id holder`` on its machine; optional ``privagg-identity-password-env``),
  whose fingerprint the run config pins as ``holder-key``: it signs the ServerApp's
  hello challenge and every recovery reply (:mod:`fedtrain.flower.holder_auth`).
* ``privagg-holder-material`` (str): path of the holder's material file.
* ``privagg-holder-register`` (str, optional): path of the holder's release register
  (default ``<privagg-holder-material>.released``).
* ``privagg-weight`` (float): the client's weight (``synthetic`` task).
* ``fedtrain-min-noise-multiplier``, ``fedtrain-min-dp-clients``,
  ``fedtrain-require-dp``, ``fedtrain-max-epsilon``, ``fedtrain-max-delta``
  (optional): the node's floors on a run's differential privacy
  (:class:`fedtrain.flower.policy.DPFloors`); a task without DP is refused by
  :func:`_task_name` when they ask for DP, the ``fedtrain`` task checks them itself.
* ``fault-stall-stage`` / ``fault-stall-seconds`` (int / float): fault injection for
  tests: sleep before answering that stage, to play a node that does not reply in time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

import privagg
from fedtrain.flower.errors import (
    AlreadyReleasedError,
    FlowerConfigError,
    FlowerProtocolError,
)
from fedtrain.flower.holder_auth import (
    HolderSigner,
    hello_message,
    parse_challenge,
    party_hello_message,
    recovery_message,
)
from fedtrain.flower.material import (
    Role,
    SessionSpec,
    holder_needs_no_secret,
    key_holders,
    load_session,
    needs_identity_directory,
)
from fedtrain.flower.policy import ClientPolicy
from fedtrain.flower.release import ReleaseRegister, register_path_for
from fedtrain.flower.tasks import check_dp_floors_of, get_session_noise, get_task
from fedtrain.flower.transport import (
    Envelope,
    Op,
    is_party_id,
    pack,
    recovery_check,
    unpack,
)
from privagg import HolderRole, Layout, NoiseShare, SystemRng
from privagg.encoding import noise_headroom
from privagg.envelope import open_envelope
from privagg.hazmat import DeterministicRng
from privagg.keys import Protection

__all__ = ["app", "handle_envelope"]

_STATE = "privagg.client"
_LAST_ROUND = "privagg.client.last-round"
_HOLDER_CACHE_SIZE = 8

app = ClientApp()

# Result holders of this process, one per session (see ``_holder_for``).
_HOLDERS: OrderedDict[tuple[str, ...], HolderRole] = OrderedDict()


def _digest(data: bytes) -> bytes:
    """SHA-256 of a reply this client sent, kept in ``context.state`` to check that a
    replay in a later ClientApp process re-derives the *same* reply. Security depends on
    it: a replay that produced a different reply (e.g. another masked input under the
    same round's masks) and went undetected could leak the update, so this needs a
    collision-resistant hash (SHA-256, as :func:`privagg.keys.fingerprint` uses)."""
    return hashlib.sha256(data).digest()


def _party_id(context: Context) -> str:
    pid = context.node_config.get("party-id")
    if not isinstance(pid, str) or not pid:
        raise FlowerConfigError(
            "node config 'party-id' (a non-empty string) is missing"
        )
    if not is_party_id(pid):
        raise FlowerConfigError(
            "node config 'party-id' must be 1-128 characters of letters, digits and "
            "'._:@+-', starting with a letter or a digit"
        )
    return pid


def _material(context: Context, key: str) -> str | None:
    value = context.node_config.get(key)
    return str(value) if value else None


def _directory(context: Context) -> tuple[str | None, str | None]:
    """The identity directory (active SecAgg+) and the pinned fingerprint of this
    node's directory (active SecAgg+ or additive), from the node config only (the
    ServerApp cannot name them). ``privagg-directory-fingerprint`` is the key for both;
    the older ``privagg-identity-directory-fingerprint`` still works (both set: they
    must agree)."""
    pin = _material(context, "privagg-directory-fingerprint")
    old = _material(context, "privagg-identity-directory-fingerprint")
    if pin and old and pin.strip().lower() != old.strip().lower():
        raise FlowerConfigError(
            "node config 'privagg-directory-fingerprint' and "
            "'privagg-identity-directory-fingerprint' disagree"
        )
    return (_material(context, "privagg-identity-directory"), pin or old)


def _identity_protection(context: Context) -> Protection | None:
    """``PasswordProtection`` from the environment variable that node config
    ``privagg-identity-password-env`` names (the SuperNode's environment), or None."""
    var = _material(context, "privagg-identity-password-env")
    if var is None:
        return None
    password = os.environ.get(var)
    if password is None:
        raise FlowerConfigError(
            f"node config 'privagg-identity-password-env': the environment variable "
            f"{var!r} is not set in this SuperNode's environment"
        )
    return privagg.PasswordProtection(password)


def _node_role(context: Context) -> str:
    role = str(context.node_config.get("privagg-role", "client") or "client")
    if role not in ("client", "server"):
        raise FlowerConfigError(
            f"node config 'privagg-role' must be 'client' or 'server', got {role!r}"
        )
    return role


def _maybe_stall(context: Context, stage: int) -> None:
    at = int(context.node_config.get("fault-stall-stage", -1))
    if at == stage:
        time.sleep(float(context.node_config.get("fault-stall-seconds", 60.0)))


def _task_name(env: Envelope, context: Context) -> str:
    """The task the request names, which must be the node's run config ``task``
    where that names one.

    The request names the task, and the task's noise hook decides whether the
    node's privagg role adds any noise: a ServerApp could otherwise have the nodes of
    a client-level run train on their data and load their roles without noise by
    naming a task without a hook (review of #14).

    A task without differential privacy is refused on a node whose DP floors
    (node config ``fedtrain-...``, :class:`fedtrain.flower.policy.DPFloors`) ask for
    it, before it runs; a task with DP checks the floors against the run itself.

    Raises:
        FlowerProtocolError: the request's task is not the run config's ``task``.
        PolicyError: a task without DP on a node that asks for DP.
    """
    task = str(env.meta.get("task", "synthetic"))
    want = context.run_config.get("task")
    if want is not None and str(want) != task:
        raise FlowerProtocolError(
            "the request names another task than this run's run config"
        )
    check_dp_floors_of(task, context.node_config)
    return task


def _noise(
    env: Envelope, spec: SessionSpec, layout: Layout, context: Context
) -> NoiseShare | None:
    """The session's distributed-DP noise share, from the task and this node's own
    run config (client-level DP; the ServerApp sends no noise parameter; the task is
    checked by :func:`_task_name`), after the run is checked against this node's DP
    floors (node config; a run below them is a ``PolicyError``)."""
    task = _task_name(env, context)
    fn = get_session_noise(task)
    if fn is None:
        return None
    return fn(context.run_config, spec.backend_object(), layout, context.node_config)


def _session_digest(env: Envelope) -> bytes:
    """Digest of the round's public session (spec and layout), fixed at stage 0."""
    return _digest(
        env.meta["spec"].encode("utf-8") + b"\x00" + env.meta["layout"].encode("ascii")
    )


def _respond(env: Envelope, msg: Message, context: Context) -> bytes:
    """Answer one aggregator request as this node's client role (with replay)."""
    party = _party_id(context)
    if env.party != party:
        raise FlowerProtocolError("request addressed to another party")
    stage = int(env.meta.get("stage", "0"))
    spec = SessionSpec.from_json(env.meta["spec"])
    layout = Layout.from_bytes(bytes.fromhex(env.meta["layout"]))
    # The local policy comes first: nothing is computed, built or sent for a session
    # weaker than what this node's operator allows (review #11, finding 3).
    policy = ClientPolicy.from_node_config(context.node_config)
    policy.check_session(spec, layout)
    if stage == 0 and spec.backend == "secagg":
        policy.check_secagg_setup(env.payload)
    _maybe_stall(context, stage)
    state = context.state.config_records.get(_STATE)
    session_digest = _session_digest(env)

    if state is None or int(state["round"]) != env.round_id:  # type: ignore[arg-type]
        if stage != 0:
            raise FlowerProtocolError(f"round {env.round_id} joined at stage {stage}")
        last = context.state.config_records.get(_LAST_ROUND)
        last_round = -1 if last is None else int(last["round"])  # type: ignore[arg-type]
        if env.round_id <= last_round:
            raise FlowerProtocolError(
                f"round {env.round_id} is not newer than round {last_round}, which "
                "this node already joined (a round id is joined once)"
            )
        _join_once(context, spec, env)
        context.state[_LAST_ROUND] = ConfigRecord({"round": env.round_id})
        task = get_task(_task_name(env, context))
        update = task(party, env.round_id, layout, msg.content, context)
        vector = layout.flatten(update.arrays, who=f"client {party!r}")
        state = ConfigRecord(
            {
                "round": env.round_id,
                "session": session_digest,
                # secret: the seed of this round's role stream; it never leaves the node
                "seed": SystemRng().random_bytes(32),
                "vector": np.ascontiguousarray(vector, dtype="<f8").tobytes(),
                "weight": float(update.weight),
                "n": 0,
            }
        )
    elif state["session"] != session_digest:
        raise FlowerProtocolError(
            f"round {env.round_id}: the session (spec or layout) changed after stage 0"
        )
    n = int(state["n"])  # type: ignore[arg-type]
    if stage != n:
        raise FlowerProtocolError(f"expected stage {n}, got stage {stage}")

    session = load_session(
        spec,
        layout,
        Role.CLIENT,
        party_id=party,
        material=_material(context, "privagg-material"),
        identity_key=_material(context, "privagg-identity-key"),
        identity_protection=_identity_protection(context),
        identity_directory=_directory(context)[0],
        directory_fingerprint=_directory(context)[1],
        noise=_noise(env, spec, layout, context),
    )
    vector = np.frombuffer(state["vector"], dtype="<f8").copy()  # type: ignore[arg-type]
    role = session.client(
        party,
        env.round_id,
        vector,
        weight=float(state["weight"]),  # type: ignore[arg-type]
        # The project's AES-256-CTR keystream, here under a *secret* seed drawn from
        # the system CSPRNG that never leaves this node: a CSPRNG whose output can be
        # replayed.
        rng=DeterministicRng(state["seed"]),  # type: ignore[arg-type]
    )
    for i in range(n):
        replayed = role.handle(state[f"req.{i}"])  # type: ignore[arg-type]
        if _digest(replayed) != state[f"dig.{i}"]:
            raise FlowerProtocolError(
                f"backend {spec.backend!r}: the client role is not deterministic under "
                "its injected Rng, so it cannot run across ClientApp processes"
            )
    reply = role.handle(env.payload)
    state[f"req.{n}"] = env.payload
    state[f"dig.{n}"] = _digest(reply)
    state["n"] = n + 1
    context.state[_STATE] = state
    return reply


def _join_once(context: Context, spec: SessionSpec, env: Envelope) -> None:
    """Active SecAgg+: record ``(params_id, round id)`` in this node's round register
    (a 0600 file beside its identity key, or ``privagg-round-register``) before taking
    part, and refuse a pair recorded before, by any run or process.

    ``context.state`` lives for one run only, and a directory (hence ``params_id``)
    lives for many: without the register a malicious ServerApp could start a new run
    with an old round id and replay signed key advertisements of that round, whose
    mask keys it had reconstructed by declaring their owners dropped.
    """
    if not needs_identity_directory(spec):
        return
    path = _material(context, "privagg-round-register")
    key = _material(context, "privagg-identity-key")
    if path is None:
        if key is None:
            return  # refused later: a client of active SecAgg+ needs its key file
        path = str(Path(key).with_name(Path(key).name + ".rounds"))
    params_id = bytes(open_envelope(env.payload)[0].params_id)
    try:
        ReleaseRegister(path).release(params_id, env.round_id, lambda: None)
    except AlreadyReleasedError:
        raise FlowerProtocolError(
            f"round {env.round_id} of this session was already joined by this node "
            "(in this or an earlier run): a round id is joined once"
        ) from None


def _serve(env: Envelope, context: Context) -> bytes:
    """Answer the aggregator's request as this node's aggregation server (once per
    ``(params_id, round id)``: see the module doc)."""
    party = _party_id(context)
    if env.party != party:
        raise FlowerProtocolError("request addressed to another party")
    spec = SessionSpec.from_json(env.meta["spec"])
    layout = Layout.from_bytes(bytes.fromhex(env.meta["layout"]))
    ClientPolicy.from_node_config(context.node_config).check_session(spec, layout)
    own_key = _material(context, "privagg-own-key")
    if own_key is None:
        raise FlowerConfigError("a server node needs 'privagg-own-key' (its own key)")
    header, _ = open_envelope(env.payload)  # DeserializationError on junk
    if header.round_id != env.round_id:
        raise FlowerProtocolError(
            f"the request is for round {header.round_id}, routed as round {env.round_id}"
        )
    session = load_session(
        spec,
        layout,
        Role.SERVER,
        party_id=party,
        material=_material(context, "privagg-material"),
        directory_fingerprint=_directory(context)[1],
        own_key=own_key,
        noise=_noise(env, spec, layout, context),
    )
    server = session.servers(env.round_id).get(party)
    if server is None:
        raise FlowerProtocolError(f"backend {spec.backend!r} has no server {party!r}")
    path = _material(context, "privagg-server-register")
    register = ReleaseRegister(path or register_path_for(own_key))
    return register.release(
        bytes(header.params_id), header.round_id, lambda: server.handle(env.payload)
    )


def _noise_key(
    noise: NoiseShare | None, spec: SessionSpec, layout: Layout
) -> tuple[str, ...]:
    """What the holder cache keys a noise share by: at least what a session's
    ``params_id`` binds of it (its type, its ``stddev`` and its headroom for this
    session), plus its repr. A third-party share whose repr leaves out its
    parameters still gets its own holder (review r5)."""
    if noise is None:
        return ("none",)
    t = type(noise)
    headroom = noise_headroom(noise, spec.max_clients, dim=layout.size)
    return (
        f"{t.__module__}.{t.__qualname__}",
        repr(getattr(noise, "stddev", None)),
        float(headroom).hex(),
        repr(noise),
    )


def _holder_for(
    spec: SessionSpec,
    layout: Layout,
    material: str | None,
    directory: tuple[str | None, str | None] = (None, None),
    own_key: str | None = None,
    noise: NoiseShare | None = None,
) -> HolderRole:
    """This process's holder for a session, built once and cached.

    The key covers the spec, the layout and the material files' identity (path, inode,
    size, mtime), so a re-dealt key file gets a new holder. A holder without a secret
    (plain, passive SecAgg+) reads no material, as in :func:`load_session`.
    """
    if holder_needs_no_secret(spec):
        material = own_key = None
    ident: tuple[str, ...] = ("",)
    for path in (material, own_key):
        if path is None:
            continue
        try:
            st = Path(path).stat()
        except OSError as exc:
            raise FlowerConfigError(
                f"the holder's material file {path!r} cannot be read"
            ) from exc
        ident += (path, str(st.st_ino), str(st.st_size), str(st.st_mtime_ns))
    key = (
        spec.to_json(),
        layout.to_bytes().hex(),
        *ident,
        *map(str, directory),
        *_noise_key(noise, spec, layout),
    )
    holder = _HOLDERS.get(key)
    if holder is None:
        session = load_session(
            spec,
            layout,
            Role.HOLDER,
            material=material,
            identity_directory=directory[0],
            directory_fingerprint=directory[1],
            own_key=own_key,
            noise=noise,
        )
        holder = session.holder()
        _HOLDERS[key] = holder
        while len(_HOLDERS) > _HOLDER_CACHE_SIZE:
            _HOLDERS.popitem(last=False)
    _HOLDERS.move_to_end(key)
    return holder


def _register(
    context: Context, spec: SessionSpec, material: str | None
) -> ReleaseRegister | None:
    """The holder's release register: the configured path, else beside its secret key
    (its own key file for a backend whose key holders make their own keys, else its
    dealt material). Which file is the secret depends on the backend only, never on
    which keys the node config happens to name: a ``privagg-own-key`` added for
    ``additive`` must not move a Paillier or CKKS holder's register (an empty register
    beside another file would accept that backend's old round ids again).

    None for a holder without a secret key and no configured path: it keeps only the
    in-process rule (its aggregate is no secret from the ServerApp).
    """
    path = _material(context, "privagg-holder-register")
    if path is not None:
        return ReleaseRegister(path)
    secret = _material(context, "privagg-own-key") if key_holders(spec) else material
    if secret is not None and not holder_needs_no_secret(spec):
        return ReleaseRegister(register_path_for(secret))
    return None


def _recover(env: Envelope, context: Context) -> Envelope:
    """Recover the aggregate as the result holder (once per round: see the module doc)."""
    if not bool(context.node_config.get("privagg-holder", False)):
        raise FlowerProtocolError("this node is not the result holder")
    spec = SessionSpec.from_json(env.meta["spec"])
    layout = Layout.from_bytes(bytes.fromhex(env.meta["layout"]))
    # The ServerApp's challenge: sign the reply with this node's own key (checked
    # before anything is released). A request without one gets an unsigned reply,
    # which a ServerApp with a pinned holder key refuses.
    signer = None
    if "challenge" in env.meta:
        challenge = parse_challenge(env.meta["challenge"])
        signer = _holder_signer(context)
    material = _material(context, "privagg-holder-material")
    header, _ = open_envelope(env.payload)  # DeserializationError on junk
    if header.round_id != env.round_id:
        raise FlowerProtocolError(
            f"the aggregate is for round {header.round_id}, the request for round "
            f"{env.round_id}"
        )
    holder = _holder_for(
        spec,
        layout,
        material,
        _directory(context),
        _material(context, "privagg-own-key"),
        _noise(env, spec, layout, context),
    )
    register = _register(context, spec, material)
    if register is None:
        rec = holder.recover(env.payload)  # keyless: the holder's in-process rule only
    else:
        rec = register.release(
            bytes(header.params_id),
            header.round_id,
            lambda: holder.recover(env.payload),
        )
    vector = np.ascontiguousarray(rec.vector, dtype="<f8").tobytes()
    contributors = json.dumps(list(rec.contributors))
    check = recovery_check(env.round_id, env.payload, vector, contributors)
    meta = {"contributors": contributors, "check": check}
    if signer is not None:
        meta["signature"] = signer.sign(
            recovery_message(challenge, env.round_id, check)
        )
    return Envelope(Op.RECOVER, env.round_id, env.party, vector, meta)


def _holder_signer(context: Context) -> HolderSigner:
    """The holder's own signing key (node config ``privagg-identity-key``).

    Raises:
        FlowerConfigError: the holder node has no key configured.
    """
    signer = HolderSigner.from_node_config(context, _identity_protection(context))
    if signer is None:
        raise FlowerConfigError(
            "a result holder node needs 'privagg-identity-key' (its own key, made "
            "on its machine with 'privagg keygen --backend secagg'), whose "
            "fingerprint the run config pins as 'holder-key'"
        )
    return signer


def _hello(env: Envelope, context: Context) -> Envelope:
    """Announce this node's party id and roles. With the ServerApp's challenge and a
    key (``privagg-identity-key``), the node proves, as the holder, its holder key and,
    when the hello asks for it (meta ``party-proof``: the run has an identity
    directory), its party id, by signing the challenge and its node id
    (:mod:`fedtrain.flower.holder_auth`). A run that asks for neither never reads the
    key, so an unreadable key changes nothing there."""
    holder = bool(context.node_config.get("privagg-holder", False))
    pid = context.node_config.get("party-id")
    party = str(pid) if pid else ""
    meta = {"holder": "1" if holder else "0", "role": _node_role(context)}
    prove_party = bool(party) and env.meta.get("party-proof") == "1"
    if "challenge" not in env.meta or not (holder or prove_party):
        return Envelope(Op.HELLO, env.round_id, party, meta=meta)
    # no key configured: the claims carry no proof; a ServerApp that asks for one
    # ignores them (logged there); the node still answers hello
    signer = HolderSigner.from_node_config(context, _identity_protection(context))
    if signer is not None:
        challenge = parse_challenge(env.meta["challenge"])
        node = int(context.node_id)
        if prove_party:
            meta["party-signature"] = signer.sign(
                party_hello_message(challenge, party, node)
            )
        if holder:
            meta["holder-key"] = signer.public_key.hex()
            meta["holder-signature"] = signer.sign(
                hello_message(challenge, party, node)
            )
    return Envelope(Op.HELLO, env.round_id, party, meta=meta)


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
        return _hello(env, context)
    if env.op == Op.REQUEST:
        if _node_role(context) == "server":
            return Envelope(Op.REQUEST, env.round_id, env.party, _serve(env, context))
        return Envelope(
            Op.REQUEST, env.round_id, env.party, _respond(env, msg, context)
        )
    if env.op == Op.RECOVER:
        return _recover(env, context)
    raise FlowerProtocolError(f"unknown privagg operation {env.op!r}")


@app.query("privagg")
def privagg_query(msg: Message, context: Context) -> Message:
    """Flower entry point for ``query.privagg`` messages."""
    reply = handle_envelope(unpack(msg.content), msg, context)
    return Message(pack(reply), reply_to=msg)
