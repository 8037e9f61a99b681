"""SecAgg+: a client answering garbage is dropped, not allowed to abort the round.

The aggregator treats a reply that is not a well-formed message of its session, round
and stage, labelled with its sender, as that client dropping at that stage (the case
the protocol recovers from while enough clients remain). These tests run a round of
7 clients, active and passive, and replace client ``c03``'s reply at each stage with
garbage, a cut or empty message, another client's reply, the same client's reply from
another session, or from another round (a replay). The round must end with the exact
sum of the clients it names, ``c03`` among the rejected, and ``c03`` among the
contributors exactly when its masked input was in before the fault.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import numpy as np
import pytest

import privagg
from privagg import Layout
from privagg.backends._shamir import PRIME, SHARE_SIZE
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg import backend as sb
from privagg.backends.secagg import messages as sm
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.envelope import open_envelope
from privagg.hazmat import DeterministicRng

N = 7
SIZE = 16
VICTIM = "c03"
KINDS = ["random", "truncated", "empty", "other-party", "foreign", "replay"]
MASKED_STAGE = 2  # stages 0, 1 come before the masked upload


def _updates() -> dict[str, np.ndarray]:
    g = np.random.default_rng(7)
    return {f"c{i:02d}": g.uniform(-1, 1, SIZE) for i in range(N)}


class _Round:
    """One round's aggregator and clients, driven a stage at a time."""

    def __init__(
        self, session: privagg.Session, ups: Mapping[str, np.ndarray], round_id: int
    ) -> None:
        self.clients = {
            c: session.client(c, round_id, u, rng=DeterministicRng(i))
            for i, (c, u) in enumerate(sorted(ups.items()))
        }
        self.agg = session.aggregator(round_id, sorted(ups))
        assert isinstance(self.agg, SecAggAggregator)
        self.requests = self.agg.start()

    def replies(self) -> dict[str, bytes]:
        return {c: self.clients[c].handle(r) for c, r in self.requests.items()}


def _session(active: bool) -> privagg.Session:
    return SecAggBackend(active=active).setup(
        Layout.from_arrays({"w": np.zeros(SIZE)}), max_clients=N
    )


def _garbage(
    kind: str, honest: bytes, other_party: bytes, other_round: Mapping[str, bytes]
) -> bytes:
    if kind == "random":
        return os.urandom(len(honest))
    if kind == "truncated":
        return honest[: len(honest) // 2]
    if kind == "empty":
        return b""
    if kind == "other-party":
        return other_party
    return other_round[VICTIM]  # foreign or replay


def _run(active: bool, stage: int, kind: str) -> tuple[privagg.Recovered, set[str]]:
    ups = _updates()
    session = _session(active)
    target = _Round(session, ups, round_id=1)
    # the source of foreign / replayed replies, kept in step with the target round
    other = (
        _Round(_session(active), ups, round_id=1)
        if kind == "foreign"
        else _Round(session, ups, round_id=0)
        if kind == "replay"
        else None
    )
    step = 0
    while not target.agg.done:
        replies = target.replies()
        other_replies = other.replies() if other is not None else {}
        if step == stage and VICTIM in replies:
            honest = replies[VICTIM]
            replies[VICTIM] = _garbage(kind, honest, replies["c00"], other_replies)
        target.requests = target.agg.receive(replies)
        if other is not None and not other.agg.done:
            other.requests = other.agg.receive(other_replies)
        step += 1
    assert step > stage, "the fault was never injected"
    res = session.holder().recover(target.agg.result())
    ref = sum(ups[c] for c in res.contributors)
    tol = SecAggBackend().tolerance(n_clients=N, max_abs=1.0)
    assert np.max(np.abs(res.vector - ref)) <= tol
    return res, set(target.agg.rejected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("active", "stage"),
    [(True, s) for s in range(5)] + [(False, s) for s in range(4)],
)
def test_a_client_answering_garbage_is_dropped(
    active: bool, stage: int, kind: str
) -> None:
    res, rejected = _run(active, stage, kind)
    assert VICTIM in rejected
    assert (VICTIM in res.contributors) == (stage > MASKED_STAGE)
    assert set(res.contributors) | {VICTIM} == {f"c{i:02d}" for i in range(N)}


def test_a_noncanonical_unmask_share_drops_its_sender() -> None:
    """An unmask reply carrying a share >= the field prime: its sender is ignored
    whole (none of its shares is used), the round still ends with the exact sum."""
    ups = _updates()
    session = _session(True)
    r = _Round(session, ups, round_id=0)
    while not r.agg.done:
        replies = r.replies()
        first = next(iter(replies.values()))
        if open_envelope(first)[0].kind == sm.SecAggKind.UNMASK_SHARES:
            m = sm.UnmaskShares.from_bytes(replies[VICTIM])
            bad = PRIME.to_bytes(SHARE_SIZE, "big")
            shares = ((o, w, bad) for o, w, _ in m.shares)
            forged = sm.UnmaskShares(m.params_id, m.round_id, m.party, tuple(shares))
            replies[VICTIM] = forged.to_bytes()
        r.requests = r.agg.receive(replies)
    res = session.holder().recover(r.agg.result())
    assert VICTIM in r.agg.rejected and VICTIM in res.contributors
    ref = sum(ups[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= SecAggBackend().tolerance(
        n_clients=N, max_abs=1.0
    )


def test_a_reply_from_a_party_not_asked_is_still_a_routing_error() -> None:
    r = _Round(_session(False), _updates(), round_id=0)
    replies = r.replies()
    replies["c99"] = replies["c00"]
    with pytest.raises(privagg.ProtocolError, match="unexpected party"):
        r.agg.receive(replies)


def test_concurrent_recoveries_of_one_round_release_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads recovering the same result at once: exactly one gets the sum, the
    other a ProtocolError (the round id is checked and recorded in one step)."""
    session = _session(False)
    ups = _updates()
    r = _Round(session, ups, round_id=0)
    while not r.agg.done:
        r.requests = r.agg.receive(r.replies())
    result = r.agg.result()
    holder = session.holder()
    both_decoding = threading.Barrier(2, timeout=10)
    real = sb.decode_total

    def slow_decode(*a: object, **kw: object) -> object:
        both_decoding.wait()  # both calls are past the first check
        return real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sb, "decode_total", slow_decode)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(holder.recover(result))
        except privagg.ProtocolError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(o).__name__ for o in outcomes) == ["ProtocolError", "Recovered"]
