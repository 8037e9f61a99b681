"""Fault matrix: every backend x every protocol stage x every network fault.

A round of each backend (plain, CKKS, Paillier, SecAgg+ active and passive, additive
shares) runs with its roles exchanging bytes through :func:`_drive`, which lets one
fault hit one message at one stage:

* ``drop``: the party's reply at stage ``s`` never arrives (it is silent from then on).
* ``duplicate``: the party receives request ``s`` twice and its second answer is
  delivered; a reply is delivered at stage ``s`` and again, unasked, at stage ``s + 1``;
  the holder is handed the result twice.
* ``replay``: the message is replaced by the same party's message of the same stage
  from an earlier round of the same session.
* ``foreign``: the message is replaced by the same party's message of the same stage
  from a round of another session (same backend, same layout, its own keys).
* ``out_of_order``: a reply arrives one stage late (at ``s + 1``, not at ``s``); a
  party is handed the previous stage's request again before the current one.
* ``truncate``: the message is cut short (header only, half, all but the last byte).

Faults hit requests (aggregator -> party), replies (party -> aggregator) and the
result (aggregator -> holder). Every faulty round must end with a **correct** result
(the recovered sum equals the sum of this round's updates of exactly the clients it
names, every client the fault did not touch is among them, and none is named that
was not asked) or a **clean abort**: a typed :class:`~privagg.errors.PrivaggError`.
Never a wrong aggregate, a sum over a single client, or another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from privagg.errors import PrivaggError
from privagg.layout import Layout
from tests.hardening_counts import count
from tests.privagg.test_fuzz_protocols import BACKENDS, N_CLIENTS, SIZE, _backend

pytestmark = pytest.mark.slow

FAULTS = ("drop", "duplicate", "replay", "foreign", "out_of_order", "truncate")
TARGETS = ("c0", "c1", "server-1")  # the parties faults hit (every stage)
RESULT = -1  # the "stage" of the aggregator -> holder message


def _vectors(rid: int, salt: int) -> dict[str, np.ndarray]:
    """Updates that differ from round to round (a replay would show in the sum)."""
    rng = np.random.default_rng([rid, salt])
    return {f"c{i}": rng.uniform(-1, 1, SIZE) for i in range(N_CLIENTS)}


Key = tuple[int, str, str]  # (stage, "request" | "reply" | "result", party)


@dataclass
class Transcript:
    """Every message of one round, by (stage, direction, party)."""

    messages: dict[Key, bytes] = field(default_factory=dict)


@dataclass
class Fault:
    """One fault: which message it hits and what it does to it."""

    kind: str
    stage: int
    direction: str
    party: str
    earlier: Transcript | None = None  # replay
    foreign: Transcript | None = None  # another session's round
    cut: int = 0  # truncate: 0 header only, 1 half, 2 all but one byte
    fired: bool = False

    def hits(self, stage: int, direction: str, party: str) -> bool:
        return (stage, direction, party) == (self.stage, self.direction, self.party)

    def substitute(self, data: bytes, stage: int, direction: str, party: str) -> bytes:
        """The replacement for a message (replay, foreign, truncate)."""
        if self.kind == "truncate":
            n = (56, len(data) // 2, len(data) - 1)[self.cut]
            return data[: max(0, min(n, len(data) - 1))]
        source = self.earlier if self.kind == "replay" else self.foreign
        assert source is not None
        return source.messages[(stage, direction, party)]  # same party, same stage


@dataclass
class Outcome:
    transcript: Transcript
    recovered: Any = None
    error: PrivaggError | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)


def _drive(session: Any, salt: int, fault: Fault | None = None) -> Outcome:
    """One round of ``session``, with at most one fault; returns how it ended."""
    rid = session.next_round_id()
    vecs = _vectors(rid, salt)
    out = Outcome(Transcript(), vectors=vecs, asked=set(vecs))
    parties: dict[str, Any] = {
        cid: session.client(cid, rid, v) for cid, v in vecs.items()
    }
    parties.update(session.servers(rid))
    agg = session.aggregator(rid, sorted(vecs))
    msgs = out.transcript.messages
    silent: set[str] = set()
    late: dict[str, bytes] = {}
    prev_requests: dict[str, bytes] = {}

    def hit(stage: int, direction: str, party: str) -> bool:
        if fault is not None and fault.hits(stage, direction, party):
            fault.fired = True
            out.touched.add(party)
            return True
        return False

    def answer(pid: str, req: bytes) -> bytes | None:
        try:
            rep: bytes = parties[pid].handle(req)
            return rep
        except PrivaggError:
            return None  # the party refuses the request: it drops out

    try:
        outbox = agg.start()
        stage = 0
        while not agg.done:
            if stage > 20:
                raise AssertionError("the protocol did not finish")
            replies: dict[str, bytes] = {}
            if late:
                replies.update(late)  # out_of_order / duplicate: unasked, a stage late
                late.clear()
            for pid, req in outbox.items():
                msgs[(stage, "request", pid)] = req
                if pid in silent:
                    continue
                rep: bytes | None
                if hit(stage, "request", pid) and fault is not None:
                    if fault.kind == "drop":
                        silent.add(pid)
                        continue
                    if fault.kind == "duplicate":
                        answer(pid, req)
                        rep = answer(pid, req)
                    elif fault.kind == "out_of_order":
                        if pid in prev_requests:
                            answer(pid, prev_requests[pid])  # a stale request first
                        rep = answer(pid, req)
                    else:
                        rep = answer(pid, fault.substitute(req, stage, "request", pid))
                else:
                    rep = answer(pid, req)
                prev_requests[pid] = req
                if rep is None:
                    continue
                msgs[(stage, "reply", pid)] = rep
                if hit(stage, "reply", pid) and fault is not None:
                    if fault.kind == "drop":
                        silent.add(pid)
                        continue
                    if fault.kind == "duplicate":
                        late[pid] = rep
                    elif fault.kind == "out_of_order":
                        late[pid] = rep
                        continue
                    else:
                        rep = fault.substitute(rep, stage, "reply", pid)
                replies[pid] = rep
            outbox = agg.receive(replies)
            stage += 1
        result = agg.result()
        msgs[(RESULT, "result", "holder")] = result
        holder = session.holder()
        if hit(RESULT, "result", "holder") and fault is not None:
            if fault.kind == "duplicate":
                first = holder.recover(result)
                try:
                    second = holder.recover(result)
                except PrivaggError:
                    second = first
                # A second release of the same round may be refused, never different.
                assert np.array_equal(second.vector, first.vector)
                assert second.contributors == first.contributors
                out.recovered = first
                return out
            if fault.kind in ("replay", "foreign", "truncate"):
                result = fault.substitute(result, RESULT, "result", "holder")
        out.recovered = holder.recover(result)
    except PrivaggError as exc:
        out.error = exc
    return out


def _check(name: str, out: Outcome) -> str:
    """Assert a correct result or a clean abort; return which."""
    if out.error is not None:
        return "aborted"
    rec = out.recovered
    contributors = set(rec.contributors)
    assert contributors <= out.asked, f"{name}: unknown contributors {contributors}"
    assert len(contributors) == len(rec.contributors), "a contributor named twice"
    assert out.asked - out.touched <= contributors, (
        f"{name}: an untouched client is missing: {sorted(out.asked - contributors)}"
    )
    assert len(contributors) >= 2, f"{name}: a sum over a single client was released"
    want = sum(out.vectors[c] for c in sorted(contributors))
    be = _backend(name)
    tol = be.tolerance(n_clients=len(contributors), max_abs=1.0) + 1e-9
    err = float(np.max(np.abs(np.asarray(rec.vector) - want)))
    assert err <= tol, f"{name}: wrong aggregate (error {err:.3g} > {tol:.3g})"
    return "correct"


@dataclass
class _Fixture:
    session: Any
    other: Any
    honest: Transcript
    keys: list[Key]


_FIXTURES: dict[str, _Fixture] = {}


def _fixture(name: str) -> _Fixture:
    if name not in _FIXTURES:
        layout = Layout.from_arrays({"w": np.zeros(SIZE)})
        try:
            session = _backend(name).setup(layout, max_clients=N_CLIENTS)
            other = _backend(name).setup(layout, max_clients=N_CLIENTS)
        except PrivaggError as exc:  # an extra that is not installed
            pytest.skip(f"{name}: {exc}")
        honest = _drive(session, 0)
        assert honest.error is None, honest.error
        assert _check(name, honest) == "correct"
        keys = sorted(honest.transcript.messages)
        _FIXTURES[name] = _Fixture(session, other, honest.transcript, keys)
    return _FIXTURES[name]


def _targets(fx: _Fixture, kind: str) -> list[tuple[int, str, str]]:
    """The (stage, direction, party) points a fault of ``kind`` is injected at: the
    target client's (and the first server's) every request and reply, and the
    result."""
    out = []
    for stage, direction, party in fx.keys:
        if direction == "result":
            if kind in ("duplicate", "replay", "foreign", "truncate"):
                out.append((stage, direction, party))
        elif party in TARGETS:
            out.append((stage, direction, party))
    return out


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_fault_matrix(name: str, kind: str) -> None:
    fx = _fixture(name)
    injected = ok = correct = 0
    # Messages of an earlier round of this session, and of a round of another one.
    earlier = _drive(fx.session, 1).transcript if kind == "replay" else None
    foreign = _drive(fx.other, 2).transcript if kind == "foreign" else None
    for stage, direction, party in _targets(fx, kind):
        cuts = range(3) if kind == "truncate" else range(1)
        variants = [
            Fault(kind, stage, direction, party, earlier, foreign, cut) for cut in cuts
        ]
        for fault in variants:
            out = _drive(fx.session, 3, fault)
            if not fault.fired:
                continue  # the round ended before this point (an earlier refusal)
            injected += 1
            count("faults", f"{name} / {kind}", injected=1)
            how = _check(name, out)
            ok += 1
            correct += how == "correct"
            count("faults", f"{name} / {kind}", ok=1, **{how: 1})
    assert injected > 0, f"{name}/{kind}: no fault was injected"
    assert ok == injected
