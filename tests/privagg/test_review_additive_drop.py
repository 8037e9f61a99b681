"""Outside security review of badf57c (issue #14): the additive coordinator (server 0)
drops a client whose reply it cannot read instead of aborting the round.

Each test is one attack on that change: malicious clients (alone and in coalitions,
down to ``min_contributions`` and one below), a malicious coordinator (it routes every
message and builds any message it likes, but holds no server's or the holder's key),
replays across rounds and sessions, crafted bytes, the log, the order of the checks,
and the relaxed backend contract. A refused attack is pinned to its exact outcome: the
exact sum of the contributors the result names (and exactly those), or the exact typed
error with nothing released.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import (
    DeserializationError,
    InsufficientParticipantsError,
    Layout,
    PrivaggError,
    ProtocolError,
)
from privagg.backends import additive as ad
from privagg.backends.additive.roles import AdditiveAggregator
from privagg.envelope import _HEADER
from tests.privagg.contract.backend_contract import Recorder, layout_updates

SIZE = 8
VICTIM = "c03"
_LOGGER = "privagg.backends.additive.roles"
_READ_ERRORS = {
    "DeserializationError",
    "FormatVersionError",
    "ParameterMismatchError",
    "ProtocolError",
}


def _ids(n: int) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


def _ups(n: int, seed: int = 11) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {c: g.uniform(-1, 1, SIZE) for c in _ids(n)}


def _backend(min_contributions: int = 2) -> ad.AdditiveBackend:
    return ad.AdditiveBackend(n_servers=3, min_contributions=min_contributions)


def _session(n: int = 5, min_contributions: int = 2) -> ad.AdditiveSession:
    return _backend(min_contributions).setup(
        Layout.from_arrays({"w": np.zeros(SIZE)}), max_clients=n
    )


class _Round:
    """One round: the coordinator started, every client's honest reply collected."""

    def __init__(
        self,
        session: ad.AdditiveSession,
        ups: Mapping[str, np.ndarray],
        rid: int,
    ) -> None:
        self.s = session
        self.ups = dict(ups)
        self.rid = rid
        self.agg: AdditiveAggregator = session.aggregator(rid, sorted(ups))  # type: ignore[assignment]
        self.requests = self.agg.start()
        self.replies = {
            c: session.client(c, rid, ups[c]).handle(r)
            for c, r in self.requests.items()
        }
        self.servers = session.servers(rid)

    def partials(self, to_servers: Mapping[str, bytes]) -> dict[str, bytes]:
        return {s: self.servers[s].handle(r) for s, r in to_servers.items()}

    def finish(self, to_servers: Mapping[str, bytes]) -> privagg.Recovered:
        out = dict(to_servers)
        while not self.agg.done:
            out = self.agg.receive(self.partials(out))
        return self.s.holder().recover(self.agg.result())


def _exact(
    res: privagg.Recovered,
    ups: Mapping[str, np.ndarray],
    names: set[str] | list[str],
    min_contributions: int = 2,
) -> None:
    """The result names exactly ``names`` and is their exact sum."""
    assert tuple(res.contributors) == tuple(sorted(names))
    ref = sum(ups[c] for c in names)
    tol = _backend(min_contributions).tolerance(n_clients=len(ups), max_abs=1.0)
    assert np.max(np.abs(res.vector - ref)) <= tol


def _listed(to_servers: Mapping[str, bytes]) -> set[str]:
    """The clients the coordinator asks the servers to sum (the same for every one)."""
    lists = {
        tuple(e[0] for e in ad.ServerRequest.from_bytes(b).entries)
        for b in to_servers.values()
    }
    assert len(lists) == 1, lists
    return set(next(iter(lists)))


# -- the bad replies -----------------------------------------------------------------
def _flip(data: bytes, pos: int, bit: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= bit
    return bytes(b)


def _relabel(data: bytes, **fields: Any) -> bytes:
    """A well-formed ClientShares (valid digest: it is not keyed) with fields replaced."""
    return dataclasses.replace(ad.ClientShares.from_bytes(data), **fields).to_bytes()


_H = _HEADER.size  # magic 4, version 2, scheme 1, kind 1, params_id 32, round 8, len 8

# Unreadable: not a well-formed ClientShares of this session, round and stage labelled
# with its sender. Each maps (honest reply of VICTIM, the round) to the bytes sent.
UNREADABLE: dict[str, Callable[[bytes, _Round], Any]] = {
    "random": lambda h, r: random.Random(1).randbytes(len(h)),
    "random-bytearray": lambda h, r: bytearray(random.Random(2).randbytes(len(h))),
    "empty": lambda h, r: b"",
    "truncated": lambda h, r: h[: len(h) // 2],
    "cut-last-byte": lambda h, r: h[:-1],
    "extra-byte": lambda h, r: h + b"\x00",
    "header-only": lambda h, r: h[:_H],
    "flip-magic": lambda h, r: _flip(h, 0),
    "flip-version": lambda h, r: _flip(h, 5),
    "flip-scheme": lambda h, r: _flip(h, 6),
    "flip-kind": lambda h, r: _flip(h, 7),
    "flip-params": lambda h, r: _flip(h, 8),
    "flip-round": lambda h, r: _flip(h, 47),
    "flip-length": lambda h, r: _flip(h, 55),
    "flip-after-header": lambda h, r: _flip(h, _H),
    "flip-middle": lambda h, r: _flip(h, len(h) // 2, 0x80),
    "flip-last": lambda h, r: _flip(h, -1),
    "not-bytes": lambda h, r: "a str, not bytes",
    "none": lambda h, r: None,
    "another-clients-reply": lambda h, r: r.replies["c00"],
    "labelled-unknown": lambda h, r: _relabel(h, party="c99"),
    "labelled-other-client": lambda h, r: _relabel(h, party="c00"),
    "labelled-server": lambda h, r: _relabel(h, party="server-1"),
    "other-round-header": lambda h, r: _relabel(h, round_id=r.rid + 1),
    "other-params-header": lambda h, r: _relabel(h, params_id=bytes(32)),
    "request-echoed": lambda h, r: r.requests[VICTIM],
    "server-request-kind": lambda h, r: ad.ServerRequest(
        r.s._cfg.params_id, r.rid, VICTIM, ()
    ).to_bytes(),
    "partial-kind": lambda h, r: ad.PartialSum(
        r.s._cfg.params_id, r.rid, VICTIM, (), bytes(32), b""
    ).to_bytes(),
    "duplicate-seed-server": lambda h, r: _relabel(
        h,
        seeds=(ad.ClientShares.from_bytes(h).seeds[0],) * 2,
    ),
    "share0-float64": lambda h, r: _relabel(h, share0=np.zeros(SIZE, dtype=np.float64)),
}
# Well-formed and readable, but unusable (the pre-existing content checks): skipped too.
UNUSABLE: dict[str, Callable[[bytes, _Round], Any]] = {
    "share0-uint64": lambda h, r: _relabel(h, share0=np.zeros(SIZE, dtype=np.uint64)),
    "share0-short": lambda h, r: _relabel(
        h, share0=np.zeros(SIZE - 1, dtype=np.uint32)
    ),
    "seed-missing": lambda h, r: _relabel(
        h, seeds=ad.ClientShares.from_bytes(h).seeds[:1]
    ),
    "seed-extra-server": lambda h, r: _relabel(
        h,
        seeds=(*ad.ClientShares.from_bytes(h).seeds, ("server-9", bytes(48))),
    ),
    "seed-short": lambda h, r: _relabel(
        h,
        seeds=tuple((s, ct[:-1]) for s, ct in ad.ClientShares.from_bytes(h).seeds),
    ),
    "epk-low-order": lambda h, r: _relabel(h, ephemeral_pk=bytes(32)),
}


@pytest.mark.parametrize("kind", [*UNREADABLE, *UNUSABLE])
def test_one_malicious_client_is_dropped_with_the_exact_sum_of_the_others(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    ups = _ups(5)
    r = _Round(_session(), ups, 1)
    bad = {**UNREADABLE, **UNUSABLE}[kind](r.replies[VICTIM], r)
    with caplog.at_level(logging.DEBUG):
        to_servers = r.agg.receive({**r.replies, VICTIM: bad})
    assert r.agg.rejected == {VICTIM}
    others = set(ups) - {VICTIM}
    assert _listed(to_servers) == others
    warnings = [x for x in caplog.records if x.name == _LOGGER]
    if kind in UNREADABLE:  # logged once, with the error's type only
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert warnings[0].args is not None
        assert warnings[0].args[1] == VICTIM  # type: ignore[index]
        assert warnings[0].args[2] in _READ_ERRORS  # type: ignore[index]
    else:
        assert warnings == []
    _exact(r.finish(to_servers), ups, others)


def test_fuzzed_replies_never_count_the_sender_nor_escape_as_an_untyped_error() -> None:
    """400 random mutations (bit flips, cuts, insertions, byte changes) of one honest
    reply, each handed to a fresh coordinator of the same round: the digest or a header
    check refuses every one, the sender alone is dropped, nothing else is raised."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    honest = r.replies[VICTIM]
    g = random.Random(2026)
    for i in range(400):
        b = bytearray(honest)
        op = i % 4
        pos = g.randrange(len(b))
        if op == 0:
            b[pos] ^= 1 << g.randrange(8)
        elif op == 1:
            del b[pos:]
        elif op == 2:
            b[pos:pos] = g.randbytes(g.randrange(1, 9))
        else:
            b[pos] = (b[pos] + g.randrange(1, 256)) % 256
        agg = AdditiveAggregator(s._cfg, 1, sorted(ups))
        agg.start()
        to_servers = agg.receive({**r.replies, VICTIM: bytes(b)})
        assert agg.rejected == {VICTIM}, i
        assert _listed(to_servers) == set(ups) - {VICTIM}


# -- several malicious clients at once, down to min_contributions ---------------------
@pytest.mark.parametrize("n_bad", [1, 2, 3])
@pytest.mark.parametrize("min_contributions", [2, 3])
def test_a_coalition_of_bad_clients_down_to_min_contributions(
    n_bad: int, min_contributions: int
) -> None:
    """5 clients; ``n_bad`` of them answer garbage of different kinds (one of them an
    unusable but readable entry). At exactly ``min_contributions`` survivors the round
    ends with their exact sum; one below, the coordinator refuses before any server is
    asked, and nothing is released."""
    ups = _ups(5)
    s = _session(5, min_contributions)
    for rid, bad_set in enumerate(itertools.combinations(_ids(5), n_bad), start=1):
        r = _Round(s, ups, rid)
        replies = dict(r.replies)
        for c, kind in zip(bad_set, ["other", "random", "epk-low-order"], strict=False):
            if kind == "other":  # someone else's honest reply
                replies[c] = r.replies[next(x for x in ups if x != c)]
            else:
                replies[c] = {**UNREADABLE, **UNUSABLE}[kind](r.replies[c], r)
        survivors = set(ups) - set(bad_set)
        if len(survivors) < min_contributions:
            with pytest.raises(
                InsufficientParticipantsError, match="min_contributions"
            ):
                r.agg.receive(replies)
            assert not r.agg.done
            with pytest.raises(ProtocolError):
                r.agg.result()
            continue
        to_servers = r.agg.receive(replies)
        assert r.agg.rejected == set(bad_set)
        assert _listed(to_servers) == survivors
        _exact(r.finish(to_servers), ups, survivors, min_contributions)


def test_bad_replies_and_missing_replies_together_at_exactly_min_contributions() -> (
    None
):
    """6 clients, min_contributions=3: one garbage, one unusable, one silent."""
    ups = _ups(6)
    r = _Round(_session(6, 3), ups, 7)
    replies = dict(r.replies)
    replies["c00"] = b"\x00" * 64
    replies["c01"] = UNUSABLE["seed-short"](r.replies["c01"], r)
    del replies["c02"]
    to_servers = r.agg.receive(replies)
    assert r.agg.rejected == {"c00", "c01"}  # the silent one is not "rejected"
    _exact(r.finish(to_servers), ups, {"c03", "c04", "c05"}, 3)
    # one more bad reply: one below, refused
    r2 = _Round(_session(6, 3), ups, 8)
    replies = {**r2.replies, "c00": b"", "c01": b"", "c03": b""}
    del replies["c02"]
    with pytest.raises(InsufficientParticipantsError):
        r2.agg.receive(replies)


def test_explicit_min_contributions_1_releases_one_update_as_documented() -> None:
    """The documented opt-in: with min_contributions=1 garbage from all but one client
    releases that client's update (docs/backends/additive.md, options table)."""
    ups = _ups(3)
    r = _Round(_session(3, 1), ups, 1)
    to_servers = r.agg.receive({**r.replies, "c00": b"x", "c01": b"y"})
    _exact(r.finish(to_servers), ups, {"c02"}, 1)


def test_an_honest_reply_copied_into_another_slot_counts_once() -> None:
    """c01 (malicious) answers with c00's honest reply: c01 is dropped, c00 is summed
    once (not twice)."""
    ups = _ups(5)
    r = _Round(_session(), ups, 1)
    to_servers = r.agg.receive({**r.replies, "c01": r.replies["c00"]})
    assert r.agg.rejected == {"c01"}
    _exact(r.finish(to_servers), ups, set(ups) - {"c01"})


# -- the order of the checks: an unexpected party changes nothing ---------------------
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("who", ["c99", "server-1", "holder", "", None, 7, b"c00"])
def test_a_batch_with_an_unexpected_party_changes_nothing(
    who: object, first: bool
) -> None:
    ups = _ups(5)
    r = _Round(_session(), ups, 1)
    # garbage from an expected client in the same batch; the unexpected party first or
    # last in the batch's order
    batch: dict[Any, Any] = {**r.replies, VICTIM: b"garbage"}
    batch = {who: r.replies["c00"], **batch} if first else {**batch, who: b"x"}
    with pytest.raises(ProtocolError, match="unexpected party"):
        r.agg.receive(batch)
    assert r.agg.rejected == set() and not r.agg.done
    # nothing changed: the honest batch then completes with every client
    _exact(r.finish(r.agg.receive(r.replies)), ups, set(ups))


def test_a_failed_batch_leaves_no_stale_rejections() -> None:
    """Too few readable replies: InsufficientParticipantsError, and the round is over:
    the honest batch given next is refused too (same error family) and there is no
    result (tests/privagg/test_aborted_round.py). The report still names the clients
    rejected in the refused batch (why the round failed), and only them."""
    ups = _ups(3)
    r = _Round(_session(3, 2), ups, 1)
    with pytest.raises(InsufficientParticipantsError):
        r.agg.receive({**r.replies, "c00": b"", "c01": b""})
    assert r.agg.rejected == {"c00", "c01"}
    with pytest.raises(InsufficientParticipantsError, match="aborted"):
        r.agg.receive(r.replies)
    assert r.agg.rejected == {"c00", "c01"} and not r.agg.done


def test_no_reply_at_all_is_insufficient_not_a_crash() -> None:
    r = _Round(_session(), _ups(5), 1)
    with pytest.raises(InsufficientParticipantsError):
        r.agg.receive({})
    assert r.agg.rejected == set()


# -- replays across rounds and sessions -----------------------------------------------
def test_replays_from_another_round_and_another_session_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ups = _ups(5)
    s = _session()
    old = _Round(s, ups, 1)
    _exact(old.finish(old.agg.receive(old.replies)), ups, set(ups))
    other = _Round(_session(), ups, 2)  # another session, same round id
    r = _Round(s, ups, 2)
    with caplog.at_level(logging.WARNING, logger=_LOGGER):
        to_servers = r.agg.receive(
            {**r.replies, "c00": old.replies["c00"], "c01": other.replies["c01"]}
        )
    assert r.agg.rejected == {"c00", "c01"}
    types = sorted(x.args[2] for x in caplog.records)  # type: ignore[index]
    assert types == ["ParameterMismatchError", "ProtocolError"]
    _exact(r.finish(to_servers), ups, {"c02", "c03", "c04"})


def test_a_replay_resealed_under_the_new_round_is_a_clean_typed_abort() -> None:
    """An earlier round's reply re-sealed with the current round id passes the
    coordinator's reading (it cannot open seeds) but not the servers: the seeds are
    bound to their round. Documented limit: one client can abort a round this way;
    never a wrong sum, nothing released."""
    ups = _ups(5)
    s = _session()
    old = _Round(s, ups, 1)
    r = _Round(s, ups, 2)
    resealed = _relabel(old.replies[VICTIM], round_id=2)
    to_servers = r.agg.receive({**r.replies, VICTIM: resealed})
    assert r.agg.rejected == set() and VICTIM in _listed(to_servers)
    with pytest.raises(DeserializationError):
        r.servers["server-1"].handle(to_servers["server-1"])
    assert not r.agg.done


def test_garbage_seed_for_one_server_is_a_clean_typed_abort_never_a_wrong_sum() -> None:
    """The documented limit: a well-formed reply whose seed ciphertext for server-1 is
    garbage (right length) passes the coordinator; server-1 aborts typed; server-2's
    partial sum cannot be combined with any other list, and server-2 refuses the round
    again, so no sum is released, right or wrong."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    msg = ad.ClientShares.from_bytes(r.replies[VICTIM])
    seeds = tuple(
        (sid, random.Random(3).randbytes(48) if sid == "server-1" else ct)
        for sid, ct in msg.seeds
    )
    to_servers = r.agg.receive(
        {**r.replies, VICTIM: _relabel(r.replies[VICTIM], seeds=seeds)}
    )
    assert r.agg.rejected == set() and _listed(to_servers) == set(ups)
    p2 = r.servers["server-2"].handle(to_servers["server-2"])  # server-2 answers first
    with pytest.raises(DeserializationError):
        r.servers["server-1"].handle(to_servers["server-1"])
    # the coordinator cannot finish without server-1
    with pytest.raises(InsufficientParticipantsError):
        r.agg.receive({"server-2": p2})
    # a (malicious or recovering) coordinator re-asks without the victim: server-1 now
    # answers, server-2 refuses the round again, and server-2's earlier partial sum is
    # bound to the other list, so the holder refuses either combination
    without = _entries_without(to_servers, VICTIM, s, 1)
    p1 = s.servers(1)["server-1"].handle(without["server-1"])
    with pytest.raises(ProtocolError, match="already"):
        s.servers(1)["server-2"].handle(without["server-2"])
    others = tuple(sorted(set(ups) - {VICTIM}))
    for contributors in (others, tuple(sorted(ups))):
        result = _forged_result(s, 1, contributors, {"server-1": p1, "server-2": p2})
        with pytest.raises(DeserializationError):
            s.holder().recover(result)


# -- a malicious coordinator ------------------------------------------------------------
def _entries_without(
    to_servers: Mapping[str, bytes], drop: str, s: ad.AdditiveSession, rid: int
) -> dict[str, bytes]:
    out = {}
    for sid, b in to_servers.items():
        req = ad.ServerRequest.from_bytes(b)
        entries = tuple(e for e in req.entries if e[0] != drop)
        out[sid] = ad.ServerRequest(s._cfg.params_id, rid, sid, entries).to_bytes()
    return out


def _forged_result(
    s: ad.AdditiveSession,
    rid: int,
    contributors: tuple[str, ...],
    partials: Mapping[str, bytes],
    partial0: np.ndarray | None = None,
) -> bytes:
    parts = []
    for sid in s._cfg.server_ids:
        m = ad.PartialSum.from_bytes(partials[sid])
        parts.append((sid, m.ephemeral_pk, bytes(m.ciphertext)))
    p0 = np.zeros(SIZE, dtype=s._cfg.dtype) if partial0 is None else partial0
    return ad.ResultMessage(
        s._cfg.params_id, rid, "holder", contributors, p0, tuple(parts)
    ).to_bytes()


def test_coordinator_cannot_have_servers_sum_different_sets_around_a_drop() -> None:
    """After an honest drop of VICTIM, the coordinator tells server-2 to sum one more
    client dropped at server-1 only (or the dropped client back in at one server): the
    partial sums are bound to different lists and the holder refuses every result."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    to_servers = r.agg.receive({**r.replies, VICTIM: b"garbage"})
    honest = {sid: ad.ServerRequest.from_bytes(b) for sid, b in to_servers.items()}
    smaller = _entries_without(to_servers, "c00", s, 1)
    mixed = {"server-1": to_servers["server-1"], "server-2": smaller["server-2"]}
    parts = r.partials(mixed)
    lists = {
        tuple(sorted(e[0] for e in honest["server-1"].entries)),
        tuple(
            sorted(
                e[0] for e in ad.ServerRequest.from_bytes(smaller["server-2"]).entries
            )
        ),
    }
    for contributors in lists:
        with pytest.raises(DeserializationError):
            s.holder().recover(_forged_result(s, 1, contributors, parts))
    # the honest aggregator itself notices the mismatch before the holder
    with pytest.raises(ProtocolError, match="different set"):
        r.agg.receive(parts)


def test_coordinator_cannot_name_the_dropped_client_a_contributor() -> None:
    """The coordinator claims the rejected client contributed (or hides an honest one):
    every server's partial sum is bound to the list it summed; the holder refuses."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    to_servers = r.agg.receive({**r.replies, VICTIM: b"garbage"})
    parts = r.partials(to_servers)
    summed = tuple(sorted(set(ups) - {VICTIM}))
    for contributors in (tuple(sorted(ups)), summed[1:]):
        with pytest.raises(DeserializationError):
            s.holder().recover(_forged_result(s, 1, contributors, parts))
    # the honest path still works afterwards (the holder did not burn the round)
    r.agg.receive(parts)
    _exact(s.holder().recover(r.agg.result()), ups, set(summed))


def test_coordinator_cannot_isolate_a_client_after_dropping_the_others() -> None:
    """min_contributions=2: the coordinator drops all but the victim (claiming their
    replies were garbage) and asks the servers to sum the victim alone: every honest
    server refuses, and the holder refuses a one-contributor result."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    to_servers = r.agg.receive(r.replies)
    alone = to_servers
    for c in set(ups) - {VICTIM}:
        alone = _entries_without(alone, c, s, 1)
    for sid in s._cfg.server_ids:
        with pytest.raises(InsufficientParticipantsError):
            r.servers[sid].handle(alone[sid])
    parts = r.partials(to_servers)
    with pytest.raises(InsufficientParticipantsError):
        s.holder().recover(_forged_result(s, 1, (VICTIM,), parts))


def test_coordinator_cannot_get_a_second_partial_sum_after_a_drop() -> None:
    """Two partial sums of one round over lists differing by one client would reveal
    that client's share: after the round, the servers refuse the same round id again,
    with the dropped client put back or another one taken out."""
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    to_servers = r.agg.receive({**r.replies, VICTIM: b"garbage"})
    _exact(r.finish(to_servers), ups, set(ups) - {VICTIM})
    smaller = _entries_without(to_servers, "c00", s, 1)
    for sid in s._cfg.server_ids:
        for req in (smaller[sid], to_servers[sid]):
            with pytest.raises(ProtocolError, match="already"):
                s.servers(1)[sid].handle(req)
    with pytest.raises(ProtocolError):
        s.holder().recover(r.agg.result())


def test_coordinator_cannot_resurrect_a_dropped_clients_stale_entry() -> None:
    """The coordinator puts a dropped client's entry from an earlier round (its seeds
    and key) into this round's lists: the seeds are bound to their round, the servers
    cannot open them and abort typed."""
    ups = _ups(5)
    s = _session()
    old = _Round(s, ups, 1)
    r = _Round(s, ups, 2)
    to_servers = r.agg.receive({**r.replies, VICTIM: b"garbage"})
    stale = ad.ClientShares.from_bytes(old.replies[VICTIM])
    seeds = dict(stale.seeds)
    for sid, b in to_servers.items():
        req = ad.ServerRequest.from_bytes(b)
        entries = tuple(
            sorted((*req.entries, (VICTIM, stale.ephemeral_pk, seeds[sid])))
        )
        forged = ad.ServerRequest(s._cfg.params_id, 2, sid, entries).to_bytes()
        with pytest.raises(DeserializationError):
            r.servers[sid].handle(forged)


# -- the log --------------------------------------------------------------------------
def test_the_log_carries_no_bytes_of_any_reply_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ups = _ups(5)
    s = _session()
    r = _Round(s, ups, 1)
    bad = {
        "c00": r.replies["c01"],
        "c01": UNREADABLE["other-params-header"](r.replies["c01"], r),
        "c02": UNREADABLE["flip-middle"](r.replies["c02"], r),
    }
    with caplog.at_level(logging.DEBUG):
        res = r.finish(r.agg.receive({**r.replies, **bad}))
    _exact(res, ups, {"c03", "c04"})
    assert r.agg.rejected == {"c00", "c01", "c02"}
    blobs = [*r.replies.values(), *bad.values()]
    secrets = [k.unsafe_material() for k in s.secret_keys()]  # type: ignore[attr-defined]
    texts = []
    for rec in caplog.records:
        assert rec.exc_info is None and rec.exc_text is None
        for a in rec.args if isinstance(rec.args, tuple) else ():
            assert not isinstance(a, (bytes, bytearray, memoryview, np.ndarray))
        texts.append(rec.getMessage())
    ours = [
        t for t, rec in zip(texts, caplog.records, strict=True) if rec.name == _LOGGER
    ]
    assert sorted(ours) == sorted(
        f"additive round 1: ignoring {c}'s unreadable reply ({e}); it is treated as dropped"
        for c, e in [
            ("c00", "ProtocolError"),
            ("c01", "ParameterMismatchError"),
            ("c02", "DeserializationError"),
        ]
    )
    for t in texts:
        assert "b'" not in t and 'b"' not in t
        for blob in [*blobs, *secrets]:
            raw = bytes(blob)
            for off in range(0, len(raw) - 8, 97):  # 8-byte windows across each blob
                chunk = raw[off : off + 8]
                assert chunk.hex() not in t and chunk.hex().upper() not in t


# -- the relaxed backend contract --------------------------------------------------------
def _contract_run(
    session: privagg.Session,
    vecs: Mapping[str, np.ndarray],
    bad: Callable[[bytes], bytes],
    round_id: int = 0,
) -> privagg.Recovered:
    def tamper(pid: str, rep: bytes, stage: int) -> bytes:
        return bad(rep) if pid == "c0" and stage == 0 else rep

    return Recorder().run(session, vecs, round_id=round_id, tamper=tamper)


def _contract_scenarios(
    make: Callable[[Layout], privagg.Session], bound: float
) -> Iterator[tuple[str, Callable[[], privagg.Recovered], dict[str, np.ndarray]]]:
    """The three scenarios of the contract (tampered, foreign session, replayed), as
    the contract builds them."""
    rng = np.random.default_rng(5)
    ups = layout_updates(rng, 3, bound)
    layout = Layout.from_arrays(ups[0])
    vecs = {f"c{i}": layout.flatten(u) for i, u in enumerate(ups)}
    s = make(layout)
    yield (
        "tampered",
        lambda: _contract_run(s, vecs, lambda b: _flip(b, len(b) // 2, 0x80)),
        vecs,
    )
    s_a, s_b = make(layout), make(layout)
    foreign = s_b.client("c0", 0, np.zeros(layout.size)).handle(
        s_b.aggregator(0, list(vecs)).start()["c0"]
    )
    yield "foreign", lambda: _contract_run(s_a, vecs, lambda _: foreign), vecs
    s_r = make(layout)
    stale = s_r.client("c0", 1, vecs["c0"]).handle(
        s_r.aggregator(1, list(vecs)).start()["c0"]
    )
    yield "replayed", lambda: _contract_run(s_r, vecs, lambda _: stale, 2), vecs


def test_contract_scenarios_take_the_drop_branch_for_additive() -> None:
    """Not vacuous for additive: each relaxed contract scenario ends with the exact sum
    of *both* other clients (no abort hides behind the relaxation)."""
    be = ad.AdditiveBackend(bound=2.0, n_servers=3, min_contributions=1)
    for _name, run, vecs in _contract_scenarios(
        lambda lay: be.setup(lay, max_clients=3), 2.0
    ):
        res = run()
        assert tuple(res.contributors) == ("c1", "c2")
        ref = vecs["c1"] + vecs["c2"]
        assert np.max(np.abs(res.vector - ref)) <= be.tolerance(
            n_clients=3, max_abs=2.0
        )


_ABORTS = {  # backend -> scenario -> the typed abort it gives (pinned)
    "plain": {
        "tampered": DeserializationError,
        "foreign": None,  # unkeyed: a second session of the same layout is the same
        "replayed": ProtocolError,
    },
    "ckks": {
        "tampered": DeserializationError,
        "foreign": privagg.ParameterMismatchError,
        "replayed": ProtocolError,
    },
    "paillier": {
        "tampered": DeserializationError,
        "foreign": privagg.ParameterMismatchError,
        "replayed": ProtocolError,
    },
}


@pytest.mark.parametrize("name", sorted(_ABORTS))
def test_contract_scenarios_still_abort_typed_for_the_one_shot_backends(
    name: str,
) -> None:
    """CKKS, Paillier and plain still abort (typed) in each relaxed scenario: the
    relaxation did not let them start counting a bad reply."""
    if name not in privagg.available_backends():
        pytest.skip(f"{name} not installed")
    opts: dict[str, Any] = {
        "ckks": {"threads": 1},
        "paillier": {"workers": 1},
    }.get(name, {})
    if name == "paillier":
        from tests.privagg.test_paillier import _backend as paillier_backend

        be = paillier_backend()
    else:
        be = privagg.get_backend(name, **opts)
    bound = 1.0 if be.value_bound is None else min(float(be.value_bound), 1.0)
    for scen, run, _ in _contract_scenarios(
        lambda lay: be.setup(lay, max_clients=3), bound
    ):
        want = _ABORTS[name][scen]
        if want is None:
            continue
        with pytest.raises(want):
            run()


def test_contract_scenarios_for_secagg_abort_only_for_lack_of_survivors() -> None:
    """SecAgg+ at the contract's 3 clients drops c0 and then has too few clients with
    enough neighbours: a typed InsufficientParticipantsError, never a result."""
    be = privagg.get_backend("secagg", bound=2.0)
    for _scen, run, _ in _contract_scenarios(
        lambda lay: be.setup(lay, max_clients=3), 1.0
    ):
        with pytest.raises(InsufficientParticipantsError, match="threshold"):
            run()


def test_the_relaxed_contract_rejects_a_backend_that_also_drops_an_honest_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vacuity check of the relaxed contract: a (mutant) additive coordinator that,
    when it drops a bad reply, also drops an honest client still gives "the exact sum of
    the contributors it names"; the contract must refuse it ("the exact sum of the
    others" means all the others)."""
    from tests.privagg.test_additive import TestAdditiveContract

    real = AdditiveAggregator._on_shares

    def mutant(
        self: AdditiveAggregator, replies: Mapping[str, bytes]
    ) -> dict[str, bytes]:
        try:
            m = ad.ClientShares.from_bytes(replies["c0"])
            readable = (m.params_id, m.round_id) == (self._cfg.params_id, self._round)
        except PrivaggError:
            readable = False
        if not readable:
            replies = {**replies, "c1": b""}  # the mutation: c1 goes too
        return real(self, replies)

    monkeypatch.setattr(AdditiveAggregator, "_on_shares", mutant)
    contract = TestAdditiveContract()
    for test in (
        contract.test_tampered_client_reply_rejected_by_aggregator,
        contract.test_replayed_reply_from_other_round_rejected,
        contract.test_reply_from_other_session_rejected,
    ):
        with pytest.raises(AssertionError):
            test()


# -- Flower reads the drop ------------------------------------------------------------
@pytest.fixture
def _flower(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("flwr")
    from flwr.supercore.task_identity import TaskIdentity

    from fedtrain.flower import client_app
    from tests.fedtrain import test_flower_faults as ff

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield ff, ff._additive(tmp_path / "additive")
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
        client_app._HOLDERS.clear()


@pytest.mark.parametrize(
    "kind", ["random", "truncated", "other-party", "replayed-payload"]
)
def test_flower_reports_the_dropped_client_and_sums_exactly_the_others(
    _flower: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """client-1's reply reaches the coordinator but is unreadable: the run's summary
    names client-1 dropped (not missing: it answered), the two others as the
    contributors, and the aggregate is exactly theirs; the other round is complete."""
    from fedtrain.flower import client_app, server_app
    from fedtrain.flower.tasks import synthetic_sum
    from tests.fedtrain.test_flower_transport import FakeGrid

    ff, setup = _flower
    fault = ff._Fault(101, ff.Op.REQUEST, 0, kind, other=100)
    monkeypatch.setattr(client_app, "privagg_query", fault)
    summary = server_app.run(
        FakeGrid(setup.nodes),  # type: ignore[arg-type]
        setup.settings,
        server_app._SyntheticTask(ff.SHAPES),
    )
    assert fault.fired is not None and not fault.broken
    everyone = sorted(setup.weights)
    for rec in summary["rounds"]:
        if rec["round"] == fault.fired:
            want = [c for c in everyone if c != "client-1"]
            assert rec["dropped"] == ["client-1"] and rec["missing"] == {}
            assert rec["errors"] == {}  # the ClientApp did not fail: it sent bytes
        else:
            want = everyone
            assert rec["dropped"] == []
        assert rec["contributors"] == want
        ref = ff.LAYOUT.unflatten(
            synthetic_sum(ff.LAYOUT, {c: setup.weights[c] for c in want}, rec["round"])
        )
        for name, w in ref.items():
            np.testing.assert_allclose(
                np.asarray(rec["aggregate"][name], dtype=np.float64),
                w,
                rtol=0,
                atol=setup.tolerance + 4 * float(np.finfo(w.dtype).eps),
            )
