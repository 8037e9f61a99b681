"""Run all roles of a round in one process: :func:`run_round` and :func:`secure_sum`.

The driver only routes bytes. It is the reference for a network runtime: replace the
dictionary hand-offs below with messages and it is a deployment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng, SystemRng
from privagg.errors import ConfigurationError, PrivaggError, ProtocolError
from privagg.layout import FloatVector, Layout
from privagg.protocols import (
    Backend,
    ClientRole,
    Responder,
    Session,
    check_round_id,
)
from privagg.registry import get_backend

__all__ = ["RoundResult", "run_round", "secure_sum"]

_MAX_STAGES = 64


@dataclass(frozen=True)
class RoundResult:
    """What one round produced.

    Attributes:
        aggregate: sum over ``contributors`` of ``weight * update``, by tensor name.
        vector: the same sum as one flat float64 vector (layout order).
        contributors: clients whose update is in the sum.
        dropped: clients that were asked but are not in the sum (dropouts, failures).
        failed: client id -> "ErrorType: message" for clients whose own step raised.
        timings: seconds spent in "protect" (all client steps), "aggregate" and "recover".
        bytes_sent: client id -> bytes the client uploaded over the whole round.
    """

    aggregate: dict[str, npt.NDArray[np.floating]]
    vector: FloatVector
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)


def _check_weights(
    ids: Sequence[str], weights: Mapping[str, float] | None, max_weight: float | None
) -> dict[str, float]:
    if weights is None:
        return dict.fromkeys(ids, 1.0)
    if set(weights) != set(ids):
        raise ConfigurationError(
            "weights must name exactly the clients that send updates"
        )
    out = {}
    for cid in ids:
        w = weights[cid]
        if isinstance(w, bool) or not isinstance(
            w, (int, float, np.integer, np.floating)
        ):
            raise ConfigurationError(
                f"weight of client {cid!r} must be a number, got {type(w).__name__}"
            )
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ConfigurationError(
                f"weight of client {cid!r} must be finite and >= 0, got {w}"
            )
        if max_weight is not None and w > max_weight:
            raise ConfigurationError(
                f"weight of client {cid!r} is {w}, above the session's max_weight {max_weight}"
            )
        out[cid] = w
    return out


def run_round(
    session: Session,
    updates: Mapping[str, Mapping[str, npt.ArrayLike]],
    *,
    weights: Mapping[str, float] | None = None,
    round_id: int | None = None,
    dropouts: Mapping[int, Collection[str]] | None = None,
    isolate_failures: bool = False,
    rng: Rng | None = None,
) -> RoundResult:
    """Run one round of ``session``'s protocol with every role in this process.

    Args:
        session: from ``backend.setup(layout, ...)``.
        updates: client id -> update (mapping of tensor name -> float array).
        weights: client id -> weight applied by that client before protection.
        round_id: the round number bound into every message (replays are rejected);
            by default ``session.next_round_id()``, a round id the session has not used.
            A session without ``next_round_id`` needs an explicit, fresh ``round_id``.
        dropouts: stage index -> client ids that stop answering from that stage on
            (stage 0 is the first request); to simulate failures.
        isolate_failures: if True, a client whose own step raises is treated as a
            dropout and listed in ``failed`` instead of aborting the round.
        rng: randomness for the clients (the OS CSPRNG by default).

    Returns:
        The :class:`RoundResult`.

    Raises:
        ConfigurationError: empty ``updates``, bad weights, NaN/Inf values, no
            ``round_id`` for a session without ``next_round_id``.
        ParameterMismatchError: an update whose layout differs from the session's.
        ProtocolError, InsufficientParticipantsError: the protocol could not complete.
    """
    if not isinstance(updates, Mapping) or not updates:
        raise ConfigurationError(
            "updates must be a non-empty mapping of client id -> update"
        )
    ids = list(updates)
    for cid in ids:
        if not isinstance(cid, str) or not cid:
            raise ConfigurationError(
                f"client ids must be non-empty strings, got {cid!r}"
            )
    w = _check_weights(ids, weights, getattr(session, "max_weight", None))
    if round_id is None:
        # Never a constant default: a fixed id would let messages of an earlier round
        # fit this one. The session hands out ids it has not used.
        next_id = getattr(session, "next_round_id", None)
        if not callable(next_id):
            raise ConfigurationError(
                f"{type(session).__name__} has no next_round_id(): pass a round_id "
                "that this session has not used before"
            )
        round_id = next_id()
    check_round_id(round_id)
    rng = rng or SystemRng()
    layout = session.layout
    failed: dict[str, str] = {}
    clients: dict[str, ClientRole] = {}
    for cid in ids:
        try:
            # run_round holds the caller's arrays unchanged until it returns, so a
            # one-tensor update is read in place (no copy)
            vec = layout.flatten(updates[cid], who=f"client {cid!r}", copy=False)
            clients[cid] = session.client(cid, round_id, vec, weight=w[cid], rng=rng)
        except PrivaggError as exc:
            if not isolate_failures:
                raise
            failed[cid] = f"{type(exc).__name__}: {exc}"
    parties: dict[str, Responder] = {**clients, **session.servers(round_id)}
    agg = session.aggregator(round_id, [c for c in ids if c not in failed])
    plan = {int(k): set(v) for k, v in (dropouts or {}).items()}
    gone: set[str] = set(failed)
    timings = {"protect": 0.0, "aggregate": 0.0, "recover": 0.0}
    sent = dict.fromkeys(ids, 0)

    t = time.perf_counter()
    outbox = agg.start()
    timings["aggregate"] += time.perf_counter() - t
    stage = 0
    while not agg.done:
        if stage >= _MAX_STAGES:
            raise ProtocolError("protocol did not finish")
        gone |= plan.get(stage, set())
        replies: dict[str, bytes] = {}
        for pid, request in outbox.items():
            if pid in gone:
                continue
            party = parties.get(pid)
            if party is None:
                raise ProtocolError(f"aggregator addressed unknown party {pid!r}")
            t = time.perf_counter()
            try:
                replies[pid] = party.handle(request)
            except Exception as exc:
                if not (isolate_failures and pid in clients):
                    raise
                failed[pid] = f"{type(exc).__name__}: {exc}"
                gone.add(pid)
                continue
            finally:
                timings["protect"] += time.perf_counter() - t
            if pid in sent:
                sent[pid] += len(replies[pid])
        t = time.perf_counter()
        outbox = agg.receive(replies)
        timings["aggregate"] += time.perf_counter() - t
        stage += 1

    t = time.perf_counter()
    recovered = session.holder().recover(agg.result())
    timings["recover"] += time.perf_counter() - t
    contributors = tuple(recovered.contributors)
    dropped = tuple(c for c in ids if c not in set(contributors))
    return RoundResult(
        aggregate=layout.unflatten(recovered.vector),
        vector=recovered.vector,
        contributors=contributors,
        dropped=dropped,
        failed=failed,
        timings=timings,
        bytes_sent=sent,
    )


def secure_sum(
    updates: Sequence[Mapping[str, npt.ArrayLike]],
    *,
    backend: str | Backend,
    weights: Sequence[float] | None = None,
    rng: Rng | None = None,
    **options: Any,
) -> dict[str, npt.NDArray[np.floating]]:
    """Sum ``weights[i] * updates[i]`` with every role of ``backend`` in this process.

    Args:
        updates: one mapping of tensor name -> float array per client; all must have the
            same names, shapes and dtypes.
        backend: required, no default: "ckks", "paillier", "secagg", "additive",
            "plain" (the insecure reference: protects nothing), another registered
            name, or a configured backend object.
        weights: one non-negative weight per update (default: all 1).
        rng: randomness (the OS CSPRNG by default).
        **options: the backend's options (for example ``bound=`` for integer backends).

    Returns:
        The weighted sum, with the input names, shapes and dtypes.

    Raises:
        ConfigurationError: empty list, NaN/Inf, bad weights, bad options.
        ParameterMismatchError: updates whose layouts differ.
        EncodingOverflowError: a value outside an integer backend's range.
    """
    if (
        isinstance(updates, Mapping)
        or not isinstance(updates, Sequence)
        or len(updates) == 0
    ):
        raise ConfigurationError("updates must be a non-empty sequence of mappings")
    if weights is not None:
        if isinstance(weights, (str, bytes)) or len(weights) != len(updates):
            raise ConfigurationError(
                f"weights must have one entry per update ({len(updates)}), got "
                f"{len(weights) if hasattr(weights, '__len__') else weights!r}"
            )
    be = get_backend(backend, **options)
    layout = Layout.from_arrays(updates[0])
    ids = [f"client-{i}" for i in range(len(updates))]
    wmap = None if weights is None else dict(zip(ids, weights, strict=True))
    wcheck = _check_weights(ids, wmap, None)
    max_weight = max(wcheck.values())
    if max_weight <= 0:
        max_weight = 1.0
    session = be.setup(layout, max_clients=len(updates), max_weight=max_weight, rng=rng)
    result = run_round(
        session, dict(zip(ids, updates, strict=True)), weights=wmap, rng=rng
    )
    return result.aggregate
