"""The ServerApp: drives privagg rounds over a Flower Grid and applies the result.

One run = ``rounds`` privagg rounds:

1. wait until ``min-nodes`` SuperNodes are connected, then a ``hello`` stage maps each
   node to its privagg party id (node config ``party-id``), tells the clients from the
   aggregation servers (``privagg-role = "server"``: the additive backend's servers
   ``1 .. n-1``, each in its own SuperNode with its own key) and finds the result holder;
2. build the *aggregator* session from public material only
   (:func:`fedtrain.flower.material.load_session` with ``Role.AGGREGATOR``);
3. per round, :func:`~fedtrain.flower.transport.drive_aggregator` routes the
   aggregator's requests to the clients' ClientApps (dropouts: no reply within
   ``stage-timeout``);
4. the protected aggregate goes to the result holder: a SuperNode with
   ``privagg-holder=true`` (``holder = "node"``), or this process for backends whose
   holder has no secret (``holder = "server"``: plain and passive SecAgg+);
5. the task applies the recovered sum (synthetic: record it; lora: update the global
   adapter) and the run summary is written as JSON to ``result-path`` if set.

Run config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``): ``backend``,
``backend-options`` (JSON object), ``task``, ``shapes`` (synthetic), ``rounds``,
``min-nodes``, ``node-wait``, ``stage-timeout``, ``holder``, ``aggregator-material``,
``max-weight``, ``result-path``, ``holder-key`` (``holder = "node"``: the result
holder's identity fingerprint, required; :mod:`fedtrain.flower.holder_auth`),
``identity-directory`` (active SecAgg+: the
public-key directory file), ``directory-fingerprint`` (its pinned fingerprint, optional
for active SecAgg+; required for additive, whose directory is ``aggregator-material``;
``identity-directory-fingerprint`` is the older name, still read), ``first-round-id`` (default -1: a random 62-bit base,
so that runs never reuse round ids; see :meth:`RunSettings.round_ids`).

``checkpoint-dir`` (optional): a folder where the ServerApp checkpoints the run after
every round and before every round's first request; a ServerApp restarted with the same
run config resumes from it, with its release ledger, never re-running a round id
(:mod:`fedtrain.flower.resume`).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

from fedtrain.flower.errors import (
    FlowerConfigError,
    FlowerProtocolError,
    NotEnoughNodesError,
)
from fedtrain.flower.holder_auth import (
    new_challenge,
    parse_holder_pin,
    verify_holder_claim,
    verify_party_claim,
    verify_recovery,
)
from fedtrain.flower.interfaces import NoisyTask, SamplingTask, ServerTask
from fedtrain.flower.material import (
    Role,
    SessionSpec,
    holder_needs_no_secret,
    key_holders,
    load_directory,
    load_session,
    needs_identity_directory,
    needs_setup_seed,
)
from fedtrain.flower.resume import RunCheckpoint
from fedtrain.flower.settings import settings_from_config
from fedtrain.flower.tasks import DEFAULT_SHAPES, SyntheticServerTask, get_server_task
from fedtrain.flower.transport import (
    MESSAGE_TYPE,
    DriveResult,
    Envelope,
    GridExchange,
    Op,
    drive_aggregator,
    is_party_id,
    pack,
    recovery_check,
    send_and_receive,
    unpack,
)
from privagg import (
    Dealing,
    Layout,
    PrivaggError,
    SystemRng,
    UnsupportedError,
    get_backend,
)
from privagg import distribution as _distribution
from privagg.identity import IdentityDirectory

__all__ = ["RunSettings", "ServerTask", "app", "run"]

# the most characters of a node's own error text logged (review r8)
_REASON_CHARS = 200
log = logging.getLogger(__name__)

# Round ids travel as signed 64-bit ints in Flower records and as u64 in privagg headers.
_MAX_ROUND_ID = 1 << 62

app = ServerApp()


@dataclass(frozen=True)
class RunSettings:
    """The ServerApp's settings, read from the run config."""

    backend: str = "plain"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    task: str = "synthetic"
    shapes: str = DEFAULT_SHAPES
    rounds: int = 1
    min_nodes: int = 2
    node_wait: float = 60.0
    stage_timeout: float = 30.0
    holder: str = "server"
    aggregator_material: str = ""
    identity_directory: str = ""
    identity_directory_pin: str = ""
    identity_directory_fingerprint: str = ""
    directory_fingerprint: str = ""
    max_weight: float = 1.0
    result_path: str = ""
    first_round_id: int = -1
    checkpoint_dir: str = ""
    holder_key: str = ""

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        """Read settings from a Flower run config (missing keys take defaults).

        Raises:
            privagg.ConfigurationError: a malformed value.
        """
        out = settings_from_config(cls, cfg, skip=("backend_options",))
        try:
            options = json.loads(str(cfg.get("backend-options", "{}")) or "{}")
        except (ValueError, RecursionError) as exc:
            raise FlowerConfigError("run config 'backend-options' is not JSON") from exc
        if not isinstance(options, dict):
            raise FlowerConfigError(
                "run config 'backend-options' must be a JSON object"
            )
        out = dataclasses.replace(out, backend_options=options)
        if out.holder not in ("server", "node"):
            raise FlowerConfigError(
                f"holder must be 'server' or 'node', got {out.holder!r}"
            )
        out.holder_pin()
        if out.rounds < 1 or out.min_nodes < 1:
            raise FlowerConfigError("rounds and min-nodes must be >= 1")
        if out.first_round_id < -1 or out.first_round_id + out.rounds > _MAX_ROUND_ID:
            raise FlowerConfigError(
                f"first-round-id must be -1 (random) or in [0, 2**62 - rounds], "
                f"got {out.first_round_id}"
            )
        return out

    def pin(self) -> str:
        """The directory's pinned fingerprint: run config ``directory-fingerprint``
        or, the older name, ``identity-directory-fingerprint`` (both set: they must
        agree).

        Raises:
            privagg.ConfigurationError: the two disagree.
        """
        new = self.directory_fingerprint.strip().lower()
        old = self.identity_directory_fingerprint.strip().lower()
        if new and old and new != old:
            raise FlowerConfigError(
                "run config 'directory-fingerprint' and "
                "'identity-directory-fingerprint' disagree"
            )
        return new or old

    def holder_pin(self) -> bytes | None:
        """The pinned holder key's fingerprint (run config ``holder-key``) for
        ``holder = "node"``; None for ``holder = "server"``.

        Raises:
            FlowerConfigError: ``holder = "node"`` without a well-formed pin.
        """
        if self.holder != "node":
            return None
        return parse_holder_pin(self.holder_key)

    def round_ids(self) -> range:
        """This run's round ids: ``rounds`` consecutive ids from ``first_round_id``,
        or, by default (-1), from a fresh random 62-bit base.

        Round ids are public. A random base keeps runs from reusing round ids: a result
        holder releases each ``(params_id, round id)`` once, for good (its release
        register survives restarts), so a second run with the same dealt keys that
        started again at round 0 would be refused.
        """
        base = self.first_round_id
        if base < 0:
            base = int.from_bytes(SystemRng().random_bytes(8), "big") >> 2
            base = min(base, _MAX_ROUND_ID - self.rounds)
        return range(base, base + self.rounds)


_SyntheticTask = SyntheticServerTask  # the name the deployment tests use


def _make_task(settings: RunSettings, context: Context) -> ServerTask:
    """The server side of the run's task, from the one task table."""
    return get_server_task(settings.task, context.run_config)


def _wait_for_nodes(grid: Grid, n: int, wait: float) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= n:
            return ids
        if time.monotonic() > deadline:
            raise NotEnoughNodesError(
                f"{len(ids)} node(s) connected within {wait}s, {n} needed"
            )
        time.sleep(0.2)


@dataclass(frozen=True)
class _Holder:
    """The holder node accepted at hello: its node id, the public key it proved (the
    pinned one) and the run's challenge it signed."""

    node: int
    key: bytes
    challenge: bytes


def _hello(
    grid: Grid,
    nodes: list[int],
    timeout: float,
    servers: set[str] | None = None,
    *,
    holder_pin: bytes | None = None,
    directory: IdentityDirectory | None = None,
) -> tuple[dict[str, int], _Holder | None]:
    """Ask every node for its party id; return party -> node and the holder node.

    The party ids of nodes that announce ``role = "server"`` are added to ``servers``
    (when given): they answer the aggregator but are not clients. With ``directory``
    (run config ``identity-directory``), the hello asks for a party proof (meta
    ``party-proof``) and a claim counts only if the directory lists the id and the
    node signed this hello's fresh challenge, that id and its node id with the
    directory's key for it (:func:`fedtrain.flower.holder_auth.verify_party_claim`),
    whatever role it announces (an additive run's servers are listed too: review
    r8); any other claim is logged and ignored, so it neither takes an id nor knocks
    out the node that owns it. A party id that more than one node announces (and, with
    a directory, proves) is left out with all its claimants (a warning, not the end
    of the run). With ``holder_pin`` (the run config's ``holder-key``), the holder is
    the first node that proves that key by signing the challenge and its node id
    (:func:`fedtrain.flower.holder_auth.verify_holder_claim`); any other claim is
    logged and ignored. Without a pin no holder node is accepted.
    """
    challenge = new_challenge()
    ask = {"challenge": challenge.hex()}
    if directory is not None:
        ask["party-proof"] = "1"
    msgs = [
        Message(
            pack(Envelope(Op.HELLO, 0, "", b"", ask)),
            dst_node_id=n,
            message_type=MESSAGE_TYPE,
        )
        for n in nodes
    ]
    parties: dict[str, int] = {}
    claimed: dict[str, list[int]] = {}
    roles: dict[str, str] = {}
    holder: _Holder | None = None
    for reply in send_and_receive(grid, msgs, timeout=timeout):
        if reply.has_error():
            log.warning(
                "node %s failed hello: %r",  # the node's text: quoted, one line, cut
                reply.metadata.src_node_id,
                str(reply.error.reason)[:_REASON_CHARS],
            )
            continue
        node = reply.metadata.src_node_id
        try:
            env = unpack(reply.content)
        except FlowerProtocolError as exc:
            log.warning(
                "node %s: unreadable hello reply (%s)", node, type(exc).__name__
            )
            continue
        if env.party and not is_party_id(env.party):
            # the id is the node's choice: never logged or kept as it is
            log.warning("node %s announced a malformed party id; left out", node)
            continue
        if env.party and directory is not None and env.party not in directory.keys:
            log.warning(
                "node %s announced a party id the identity directory does not list; "
                "claim ignored",
                node,
            )
        elif (
            env.party
            and directory is not None
            and not verify_party_claim(
                env.meta, challenge, env.party, directory.keys[env.party], node
            )
        ):
            log.warning(
                "node %s announced a party id of the identity directory without "
                "proving its key; claim ignored",
                node,
            )
        elif env.party:
            claimed.setdefault(env.party, []).append(node)
            roles.setdefault(env.party, env.meta.get("role", "client"))
        if env.meta.get("holder") == "1" and holder_pin is not None:
            key = verify_holder_claim(env.meta, challenge, env.party, holder_pin, node)
            if key is None:
                log.warning(
                    "node %s claims the result-holder role without proving the "
                    "pinned holder key; claim ignored",
                    node,
                )
            elif holder is not None:
                log.warning(
                    "node %s also proves the pinned holder key (one key on two "
                    "machines?); node %s stays the holder",
                    node,
                    holder.node,
                )
            else:
                holder = _Holder(node, key, challenge)
    for party, claimants in claimed.items():
        if len(claimants) > 1:
            log.warning(
                "nodes %s announced the same party id; all of them left out",
                sorted(claimants),
            )
            continue
        parties[party] = claimants[0]
        if roles[party] == "server" and servers is not None:
            servers.add(party)
    return parties, holder


def _recover_remote(
    grid: Grid,
    holder: _Holder,
    round_id: int,
    result: bytes,
    meta: Mapping[str, str],
    timeout: float,
    *,
    size: int,
    clients: Sequence[str],
) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]:
    """Ask the holder node to recover ``result``; check its reply (a reply of another
    operation, round or party, one that fails its check value
    (:func:`~fedtrain.flower.transport.recovery_check`) or is not signed by the
    holder's pinned key over this run's challenge, round and check value
    (:func:`~fedtrain.flower.holder_auth.verify_recovery`), a vector of the wrong size
    or not finite, contributors that are not distinct clients of the round:
    :class:`FlowerProtocolError`)."""
    request_meta = {**meta, "challenge": holder.challenge.hex()}
    msg = Message(
        pack(Envelope(Op.RECOVER, round_id, "holder", result, request_meta)),
        dst_node_id=holder.node,
        message_type=MESSAGE_TYPE,
    )
    replies = send_and_receive(grid, [msg], timeout=timeout)
    if not replies:
        raise FlowerProtocolError("the result holder did not answer")
    if replies[0].has_error():
        # the node's text goes to the log (quoted, one line), never into the error
        log.warning(
            "the result holder failed round %d: %r",
            round_id,
            str(replies[0].error.reason)[:_REASON_CHARS],
        )
        raise FlowerProtocolError(
            f"the result holder failed round {round_id} (its reason is in the log)"
        )
    env = unpack(replies[0].content)
    if env.op != Op.RECOVER or env.round_id != round_id or env.party != "holder":
        raise FlowerProtocolError(
            f"the result holder's reply is not the recovery of round {round_id} as "
            "'holder' (another operation, round or party)"
        )
    if len(env.payload) != 8 * size:
        raise FlowerProtocolError(
            f"the result holder's vector has {len(env.payload)} bytes, "
            f"{8 * size} expected"
        )
    text = env.meta.get("contributors", "")
    check = recovery_check(round_id, result, env.payload, text)
    if not hmac.compare_digest(env.meta.get("check", ""), check):
        raise FlowerProtocolError(
            "the result holder's reply does not match its check value (damaged, or "
            "the reply to another request)"
        )
    verify_recovery(
        holder.key, env.meta.get("signature"), holder.challenge, round_id, check
    )
    try:
        contributors = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise FlowerProtocolError("the result holder sent no contributor list") from exc
    if (
        not isinstance(contributors, list)
        or not all(isinstance(c, str) for c in contributors)
        or len(set(contributors)) != len(contributors)
        or not set(contributors) <= set(clients)
    ):
        raise FlowerProtocolError(
            "the result holder's contributors are not distinct clients of the round"
        )
    vector = np.frombuffer(env.payload, dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(vector)):
        raise FlowerProtocolError("the result holder's vector is not finite")
    return vector, tuple(contributors)


def _known_parties(
    parties: Mapping[str, int], directory: IdentityDirectory, servers: set[str]
) -> dict[str, int]:
    """The servers and the clients the identity directory lists (hello accepts no
    other claim; a client it does not list could not, on active SecAgg+, sign its
    keys either, so the honest clients would refuse it).

    Raises:
        NotEnoughNodesError: no client is left.
    """
    known = {p: n for p, n in parties.items() if p in directory.keys}
    if not set(known) - servers:
        raise NotEnoughNodesError("no node's party id is in the identity directory")
    return known


def _check_servers(
    parties: Mapping[str, int], servers: set[str], spec: SessionSpec
) -> dict[str, int]:
    """``parties`` without the nodes that announced ``role = "server"`` for an id that
    is not one of the backend's aggregation servers (logged; they are no clients
    either), after checking every aggregation server answered hello (review r10).

    Raises:
        NotEnoughNodesError: an aggregation server of the backend is missing (it did not
            answer hello, or, with an identity directory, did not prove its id): no
            request of any round is sent.
    """
    try:
        holders = key_holders(spec)
    except UnsupportedError:  # not distributable: refused later, with its reason
        holders = {}
    expected = {p for p, role in holders.items() if role is Role.SERVER}
    stray = sorted(servers - expected)
    if stray:
        log.warning(
            "nodes announced role 'server' for ids that are not this backend's "
            "aggregation servers; left out: %s",
            stray,
        )
        servers.difference_update(stray)
    missing = sorted(expected - servers)
    if missing:
        raise NotEnoughNodesError(
            f"aggregation servers {missing} did not answer hello (or did not prove "
            "their ids): no round is run"
        )
    return {p: n for p, n in parties.items() if p not in stray}


def _run_directory(settings: RunSettings) -> IdentityDirectory | None:
    """The run's identity directory (run config ``identity-directory``), or None.

    Read once per run, before hello, and checked against its pin: run config
    ``identity-directory-pin`` (any backend), or on every backend but additive
    ``directory-fingerprint`` (both set: they must agree). Additive's
    ``directory-fingerprint`` pins its own key directory, so an additive run with an
    identity directory needs ``identity-directory-pin`` (review r10). Without a pin
    (other backends) the file is the ServerApp operator's own. Active SecAgg+ loads its
    session from the same file with the same pin, so the two reads agree (review r8).

    Raises:
        FlowerConfigError: the two pins disagree, or additive without
            ``identity-directory-pin``.
        privagg.PrivaggError: an unreadable, malformed or (pinned) substituted
            directory.
    """
    if not settings.identity_directory:
        return None
    backend = get_backend(settings.backend, **settings.backend_options)
    additive = _distribution.dealing(backend) is Dealing.OWN_KEYS
    own = settings.identity_directory_pin.strip().lower()
    shared = "" if additive else settings.pin()
    if own and shared and own != shared:
        raise FlowerConfigError(
            "run config 'identity-directory-pin' and 'directory-fingerprint' disagree"
        )
    if additive and not own:
        raise FlowerConfigError(
            f"backend {settings.backend!r} with 'identity-directory' needs run config "
            "'identity-directory-pin' (the identity directory's fingerprint; "
            "'directory-fingerprint' pins its key directory): an unpinned directory "
            "could bind a party id to any key"
        )
    return load_directory(settings.identity_directory, pinned=(own or shared) or None)


def _resumed_spec(spec: SessionSpec, checkpoint: RunCheckpoint) -> SessionSpec:
    """The checkpoint's session spec: this run's spec but for the public setup seed.

    Raises:
        FlowerConfigError: the checkpoint's spec is unreadable or differs from this
            run's in anything but the setup seed (an edited checkpoint).
    """
    try:
        saved = SessionSpec.from_json(checkpoint.spec)
    except PrivaggError as exc:
        raise FlowerConfigError(
            f"checkpoint-dir {checkpoint.folder}: unreadable session spec ({exc})"
        ) from exc
    if dataclasses.replace(saved, setup_seed=spec.setup_seed) != spec or bool(
        saved.setup_seed
    ) != bool(spec.setup_seed):
        raise FlowerConfigError(
            f"checkpoint-dir {checkpoint.folder}: the checkpoint's session spec is not "
            "this run's"
        )
    return saved


def _open_checkpoint(
    settings: RunSettings, spec: SessionSpec, layout: Layout, task: ServerTask
) -> RunCheckpoint | None:
    """The run's checkpoint (run config ``checkpoint-dir``), loaded or new; None if
    the run keeps none."""
    if not settings.checkpoint_dir:
        return None
    identity = {
        "backend": spec.backend,
        "options": json.loads(json.dumps(dict(spec.options))),
        "task": settings.task,
        "layout": layout.fingerprint.hex(),
        "holder": settings.holder,
        "rounds": settings.rounds,
    }
    return RunCheckpoint.open(
        settings.checkpoint_dir,
        identity,
        spec=spec.to_json(),
        first_round_id=settings.round_ids().start,
        task=task,
    )


def drop_reasons(
    client_ids: Sequence[str],
    contributors: Sequence[str],
    aggregator: object,
    transport: Mapping[str, str],
    driven: DriveResult,
) -> dict[str, str]:
    """Why each client of the round is not a contributor, in a few fixed words.

    The transport's reason (``GridExchange.reasons``: ``"client error"`` when its
    ClientApp failed, the text being under ``errors``; ``"unreadable envelope"``;
    ``"mismatched routing fields"``), the aggregator's reason (``"unreadable reply: <ErrorType>"``
    from ``rejection_reasons`` of the SecAgg+ and additive aggregators, or another fixed
    phrase; for a SecAgg+ client whose share record a neighbour refused, the refusing
    neighbours too), ``"no reply (stage N)"`` (the first stage it did not answer), else
    ``"left out by the protocol"`` (e.g. too few live neighbours). Never an error's
    text or a byte of a reply: either can carry client-chosen labels or secrets.
    """
    rejected: Mapping[str, str] = getattr(aggregator, "rejection_reasons", {})
    disputes: Mapping[str, frozenset[str]] = getattr(aggregator, "disputes", {})
    silent: dict[str, int] = {}
    for stage in sorted(driven.missing, reverse=True):
        silent.update(dict.fromkeys(driven.missing[stage], stage))
    out: dict[str, str] = {}
    for cid in client_ids:
        if cid in contributors:
            continue
        if cid in transport:
            out[cid] = transport[cid]
        elif cid in rejected:
            out[cid] = rejected[cid]
            if cid in disputes:  # SecAgg+: a refusal that names both sides
                out[cid] += f" (refused by {', '.join(sorted(disputes[cid]))})"
        elif cid in silent:
            out[cid] = f"no reply (stage {silent[cid]})"
        else:
            out[cid] = "left out by the protocol"
    return out


def _empty_round(
    round_id: int, task: ServerTask, checkpoint: RunCheckpoint | None, t0: float
) -> dict[str, Any]:
    """A round in which the task sampled no client: nothing is sent or released;
    the task applies the empty round (e.g. evaluates) and the round id is used."""
    task.broadcast(round_id)
    if checkpoint is not None:
        checkpoint.begin(round_id, task)
    facts = task.apply(round_id, {}, ())
    record = {
        "round": round_id,
        "contributors": [],
        "dropped": [],
        "drop_reasons": {},
        "stages": 0,
        "missing": {},
        "errors": {},
        "seconds": time.monotonic() - t0,
        "recover_seconds": 0.0,
        "skipped": "no client sampled",
        **facts,
    }
    if checkpoint is not None:
        checkpoint.complete(record, task)
    return record


def run(grid: Grid, settings: RunSettings, task: ServerTask) -> dict[str, Any]:
    """Run ``settings.rounds`` secure-aggregation rounds over ``grid``.

    Args:
        grid: the ServerApp's grid.
        settings: run settings.
        task: the task's server side.

    Returns:
        A JSON-able summary: parties, and per round the contributors, dropouts, stages,
        timings and the task's facts.

    Raises:
        privagg.PrivaggError: configuration or protocol failures.
    """
    t0 = time.monotonic()
    nodes = _wait_for_nodes(grid, settings.min_nodes, settings.node_wait)
    holder_pin = settings.holder_pin()  # before any message: a missing pin fails
    servers: set[str] = set()
    directory = _run_directory(settings)
    parties, holder_node = _hello(
        grid,
        nodes,
        settings.stage_timeout,
        servers,
        holder_pin=holder_pin,
        directory=directory,
    )
    clients = sorted(set(parties) - servers)
    if not clients:
        raise NotEnoughNodesError("no node announced a client party id")
    layout = task.layout()
    spec = SessionSpec(
        settings.backend,
        settings.backend_options,
        max_clients=len(clients),
        max_weight=settings.max_weight,
    )
    if needs_setup_seed(spec):
        spec = dataclasses.replace(spec, setup_seed=SystemRng().random_bytes(32).hex())
    if directory is None and needs_identity_directory(spec):
        raise FlowerConfigError(
            "active SecAgg+ needs the public-key directory: run config "
            "'identity-directory'"
        )
    if directory is not None:
        parties = _known_parties(parties, directory, servers)
        clients = sorted(set(parties) - servers)
        spec = dataclasses.replace(spec, max_clients=len(clients))
    parties = _check_servers(parties, servers, spec)
    if settings.holder == "server" and not holder_needs_no_secret(spec):
        raise FlowerConfigError(
            f"backend {spec.backend!r}: the result holder holds a secret key, so it "
            "must run on a node (holder = 'node'), not in the ServerApp"
        )
    if settings.holder == "node" and holder_node is None:
        raise NotEnoughNodesError(
            "holder = 'node' but no node proved the pinned holder key ('holder-key') "
            "at hello: no round is run"
        )
    checkpoint = _open_checkpoint(settings, spec, layout, task)
    if checkpoint is not None:
        spec = _resumed_spec(spec, checkpoint)  # the same setup seed
    session = load_session(
        spec,
        layout,
        Role.AGGREGATOR,
        material=settings.aggregator_material or None,
        identity_directory=settings.identity_directory or None,
        directory_fingerprint=settings.pin() or None,
        # client-level DP: the clients' noise share (the nodes compute the same one)
        noise=task.session_noise(spec.backend_object(), layout)
        if isinstance(task, NoisyTask)
        else None,
    )
    meta = {
        "spec": spec.to_json(),
        "layout": layout.to_bytes().hex(),
        "task": settings.task,
    }
    rounds: list[dict[str, Any]] = [] if checkpoint is None else list(checkpoint.rounds)
    fresh_ids = iter(settings.round_ids())
    while len(rounds) < settings.rounds:
        round_id = next(fresh_ids) if checkpoint is None else checkpoint.next_round_id
        if round_id >= _MAX_ROUND_ID:
            raise FlowerConfigError("round ids exhausted")
        t_round = time.monotonic()
        client_ids = clients
        if isinstance(task, SamplingTask):  # the round's clients only
            client_ids = task.participants(round_id, clients)
            if not set(client_ids) <= set(clients):
                raise FlowerConfigError("the task sampled a party that is not a client")
        if not client_ids:
            rounds.append(_empty_round(round_id, task, checkpoint, t_round))
            continue
        aggregator = session.aggregator(round_id, client_ids)
        extra = task.broadcast(round_id)
        exchange = GridExchange(
            grid,
            parties,
            round_id=round_id,
            timeout=settings.stage_timeout,
            meta=meta,
            extra=dict.fromkeys(client_ids, extra) if extra is not None else None,
        )
        if checkpoint is not None:
            checkpoint.begin(round_id, task)  # before any request of the round
        driven = drive_aggregator(aggregator, exchange)
        t_recover = time.monotonic()
        if holder_node is not None and settings.holder == "node":
            vector, contributors = _recover_remote(
                grid,
                holder_node,
                round_id,
                driven.result,
                meta,
                settings.stage_timeout,
                size=layout.size,
                clients=client_ids,
            )
        else:
            recovered = session.holder().recover(driven.result)
            vector, contributors = recovered.vector, tuple(recovered.contributors)
        facts = task.apply(round_id, layout.unflatten(vector), contributors)
        rounds.append(
            {
                "round": round_id,
                "contributors": list(contributors),
                "dropped": [c for c in client_ids if c not in contributors],
                "drop_reasons": drop_reasons(
                    client_ids, contributors, aggregator, exchange.reasons, driven
                ),
                "stages": driven.stages,
                "missing": {str(k): list(v) for k, v in driven.missing.items()},
                "errors": exchange.errors,
                "seconds": time.monotonic() - t_round,
                "recover_seconds": time.monotonic() - t_recover,
                **facts,
            }
        )
        if checkpoint is not None:
            checkpoint.complete(rounds[-1], task)
        log.info(
            "round %d: %d contributors, dropped %s",
            round_id,
            len(contributors),
            rounds[-1]["dropped"],
        )
    return {
        "backend": spec.backend,
        "parties": clients,
        "servers": sorted(servers),
        "holder": settings.holder,
        "rounds": rounds,
        "seconds": time.monotonic() - t0,
        **(
            {}
            if checkpoint is None
            else {"resumed": checkpoint.resumed, "releases": checkpoint.releases}
        ),
        **task.summary(),
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run the configured rounds and write the summary."""
    settings = RunSettings.from_run_config(context.run_config)
    summary = run(grid, settings, _make_task(settings, context))
    text = json.dumps(summary, sort_keys=True)
    print(f"privagg-summary {text}", flush=True)
    if settings.result_path:
        path = Path(settings.result_path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
