"""Additive sharing: a client answering garbage is dropped, not allowed to abort.

The coordinator (server 0) treats a client reply that is not a well-formed message of
its session, round and stage labelled with its sender as that client not answering:
it is listed in ``aggregator.rejected``, left out of every server's list, and the
round ends with the exact sum of the others. A reply from a party that was not asked
is still the caller's routing error, raised before anything is read or changed.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import privagg
from privagg import Layout
from privagg.backends.additive import AdditiveBackend

N = 5
SIZE = 12
VICTIM = "c03"
KINDS = ["random", "truncated", "empty", "other-party", "foreign", "replay"]


def _updates() -> dict[str, np.ndarray]:
    g = np.random.default_rng(11)
    return {f"c{i:02d}": g.uniform(-1, 1, SIZE) for i in range(N)}


def _session() -> privagg.Session:
    return AdditiveBackend().setup(
        Layout.from_arrays({"w": np.zeros(SIZE)}), max_clients=N
    )


def _client_replies(
    session: privagg.Session, ups: dict[str, np.ndarray], rid: int
) -> tuple[object, dict[str, bytes]]:
    agg = session.aggregator(rid, sorted(ups))
    reqs = agg.start()
    return agg, {c: session.client(c, rid, ups[c]).handle(r) for c, r in reqs.items()}


def _bad(kind: str, session: privagg.Session, replies: dict[str, bytes]) -> bytes:
    ups = _updates()
    honest = replies[VICTIM]
    if kind == "random":
        return os.urandom(len(honest))
    if kind == "truncated":
        return honest[: len(honest) // 2]
    if kind == "empty":
        return b""
    if kind == "other-party":
        return replies["c00"]
    assert kind == "foreign"
    return _client_replies(_session(), ups, 1)[1][VICTIM]


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_answering_garbage_is_dropped(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ups = _updates()
    session = _session()
    bad = None
    if kind == "replay":  # c03's reply of round 0, handed in at round 1
        bad = _client_replies(session, ups, 0)[1][VICTIM]
    agg, replies = _client_replies(session, ups, 1)
    replies[VICTIM] = bad if bad is not None else _bad(kind, session, replies)
    with caplog.at_level(logging.WARNING, logger="privagg"):
        out = agg.receive(replies)  # type: ignore[attr-defined]
    assert agg.rejected == {VICTIM}  # type: ignore[attr-defined]
    # logged with the error's type only, never the bytes
    assert any(VICTIM in r.getMessage() for r in caplog.records)
    head = replies[VICTIM][:8].hex()
    assert not head or all(head not in r.getMessage() for r in caplog.records)
    servers = session.servers(1)
    while not agg.done:  # type: ignore[attr-defined]
        out = agg.receive({s: servers[s].handle(r) for s, r in out.items()})  # type: ignore[attr-defined]
    res = session.holder().recover(agg.result())  # type: ignore[attr-defined]
    assert VICTIM not in res.contributors and len(res.contributors) == N - 1
    ref = sum(ups[c] for c in res.contributors)
    assert np.max(np.abs(res.vector - ref)) <= AdditiveBackend().tolerance(
        n_clients=N, max_abs=1.0
    )


def test_a_reply_from_a_party_not_asked_raises_before_anything_changes() -> None:
    ups = _updates()
    agg, replies = _client_replies(_session(), ups, 0)
    replies[VICTIM] = b"garbage"
    replies["c99"] = replies["c00"]
    with pytest.raises(privagg.ProtocolError, match="unexpected party"):
        agg.receive(replies)  # type: ignore[attr-defined]
    assert agg.rejected == set()  # type: ignore[attr-defined]
