"""Fuzzing the wire: crafted bytes at every stage of every backend's protocol.

Two harnesses, both driven by hypothesis:

* ``test_fuzz_decoders``: every message kind seen in an honest round of every backend is
  mutated (bit flips, byte edits, truncation, insertion, inflated length fields, header
  fields) and, half of the time, **re-sealed** with a valid envelope digest so that the
  payload parser itself is exercised. ``privagg.from_bytes`` must return a message or
  raise :class:`~privagg.errors.DeserializationError`; nothing else, and its peak
  allocation stays within a fixed multiple of the input size.
* ``test_fuzz_stateful_roles``: a fresh round in which one request or reply, at one stage,
  to or from one party, is replaced by a mutated one. Every role must answer with a
  message or a typed :class:`~privagg.errors.PrivaggError`; the round then ends with a
  result or a typed abort, never with another exception.

``PRIVAGG_FUZZ_EXAMPLES`` sets the hypothesis examples per decoder test case, each
feeding one hypothesis-built input and ``PRIVAGG_FUZZ_BATCH - 1`` seeded mutations;
``PRIVAGG_FUZZ_ROUND_EXAMPLES`` the fuzzed rounds per backend (CI default: small;
``make hardening`` runs the large counts).
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import privagg
from privagg.envelope import Header, open_envelope, seal
from privagg.errors import DeserializationError, PrivaggError
from privagg.layout import Layout
from tests.hardening_counts import BATCH, EXAMPLES, count, fuzz_settings
from tests.privagg.test_fuzz_parsers import feed, huge_claims, mutate_bytes

pytestmark = pytest.mark.slow

# Whole fuzzed rounds per backend (each is a protocol run: slower than a decode).
ROUND_EXAMPLES = int(os.environ.get("PRIVAGG_FUZZ_ROUND_EXAMPLES", str(EXAMPLES)))
SIZE = 6
N_CLIENTS = 4

# backend name -> options (small, fast parameter sets; the wire format is the same)
BACKENDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "secagg": {"bound": 1.0},
    "secagg-passive": {"bound": 1.0, "active": False},
    "additive": {"bound": 1.0, "n_servers": 2},
    "paillier": {"bound": 1.0},
    "ckks": {},
}


def _backend(name: str) -> Any:
    opts = dict(BACKENDS[name])
    base = name.split("-")[0]
    if base == "paillier":
        # A small test modulus keeps key generation cheap; the wire format is the same.
        from privagg.backends.paillier import PaillierBackend

        return PaillierBackend._insecure_for_tests(key_bits=512, **opts)
    return privagg.get_backend(base, **opts)


def _session(name: str) -> Any:
    layout = Layout.from_arrays({"w": np.zeros(SIZE)})
    try:
        return _backend(name).setup(layout, max_clients=N_CLIENTS)
    except PrivaggError as exc:  # a backend whose extra is missing
        pytest.skip(f"{name}: {exc}")


_SESSIONS: dict[str, Any] = {}


def _cached_session(name: str) -> Any:
    """Sessions are reused across examples (key generation is the slow part); each
    example runs under a fresh round id."""
    if name not in _SESSIONS:
        _SESSIONS[name] = _session(name)
    return _SESSIONS[name]


Hook = Callable[[int, str, str, bytes], bytes]


def _round(session: Any, hook: Hook | None = None) -> tuple[list[bytes], Any]:
    """One round, routing every message through ``hook(stage, direction, party, data)``.
    Returns the transcript (every message, after the hook) and the recovered result (or
    the typed error that ended the round)."""
    rng = np.random.default_rng(0)
    vecs = {f"c{i}": rng.uniform(-1, 1, SIZE) for i in range(N_CLIENTS)}
    rid = session.next_round_id()
    parties: dict[str, Any] = {
        cid: session.client(cid, rid, v) for cid, v in vecs.items()
    }
    parties.update(session.servers(rid))
    agg = session.aggregator(rid, sorted(vecs))
    seen: list[bytes] = []
    hook = hook or (lambda s, d, p, b: b)
    try:
        outbox = agg.start()
        stage = 0
        while not agg.done:
            if stage > 20:
                raise AssertionError("protocol did not finish")
            replies = {}
            for pid, req in outbox.items():
                req = hook(stage, "request", pid, req)
                seen.append(req)
                try:
                    rep = parties[pid].handle(req)
                except PrivaggError:
                    continue  # the party refuses: a dropout
                rep = hook(stage, "reply", pid, rep)
                seen.append(rep)
                replies[pid] = rep
            outbox = agg.receive(replies)
            stage += 1
        result = agg.result()
        seen.append(result)
        return seen, session.holder().recover(result)
    except PrivaggError as exc:
        return seen, exc


_TRANSCRIPTS: dict[str, list[bytes]] = {}


def _transcript(name: str) -> list[bytes]:
    if name not in _TRANSCRIPTS:
        seen, res = _round(_cached_session(name))
        assert not isinstance(res, Exception), res
        _TRANSCRIPTS[name] = seen
    return _TRANSCRIPTS[name]


# -- mutations ------------------------------------------------------------------------------
@st.composite
def mutations(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """A function that mutates a message: raw bytes or a re-sealed payload."""
    reseal = draw(st.booleans(), label="reseal")
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    ["flip", "set", "truncate", "insert", "delete", "u32", "dup"]
                ),
                st.integers(0, 1 << 30),
                st.integers(0, 255),
                st.binary(max_size=16),
            ),
            min_size=1,
            max_size=4,
        ),
        label="ops",
    )
    header_edit = draw(
        st.sampled_from([None, "kind", "round", "params", "scheme"]), label="header"
    )

    def apply(buf: bytes) -> bytes:
        b = bytearray(buf)
        for op, pos, val, blob in ops:
            if not b and op not in ("insert",):
                continue
            i = pos % (len(b) + 1) if op == "insert" else pos % max(len(b), 1)
            if op == "flip":
                b[i] ^= 1 << (val % 8)
            elif op == "set":
                b[i] = val
            elif op == "truncate":
                del b[i:]
            elif op == "insert":
                b[i:i] = blob
            elif op == "delete":
                del b[i : i + 1 + val % 8]
            elif op == "u32" and len(b) >= 4:
                j = min(i, len(b) - 4)
                b[j : j + 4] = struct.pack(">I", (val << 24) | (pos & 0xFFFFFF))
            elif op == "dup":
                b[i:i] = b[i : i + 1 + val % 32]
        return bytes(b)

    def mutate(data: bytes) -> bytes:
        if not reseal:
            return apply(data)
        try:
            h, payload = open_envelope(data)
        except DeserializationError:
            return apply(data)
        scheme, kind, params, rnd = h.scheme, h.kind, h.params_id, h.round_id
        if header_edit == "kind":
            kind = (kind + 1 + ops[0][2]) % 256
        elif header_edit == "round":
            rnd = (rnd + 1 + ops[0][1]) % (1 << 64)
        elif header_edit == "params":
            params = bytes(32 - len(params[:1])) + bytes([params[0] ^ 1])
        elif header_edit == "scheme":
            scheme = type(scheme)(
                list(type(scheme))[
                    (list(type(scheme)).index(scheme) + 1) % len(type(scheme))
                ]
            )
        return seal(Header(scheme, kind, params, rnd), apply(bytes(payload)))

    return mutate


_FUZZ = fuzz_settings()


@pytest.mark.parametrize("name", list(BACKENDS))
@_FUZZ
@given(data=st.data())
def test_fuzz_decoders(name: str, data: st.DataObject) -> None:
    msgs = _transcript(name)
    msg = data.draw(st.sampled_from(msgs), label="message")
    bad = data.draw(mutations())(msg)
    # One structured mutation from hypothesis, then BATCH - 1 seeded ones.
    rnd = random.Random(data.draw(st.integers(0, 2**64 - 1), label="batch seed"))
    inputs = [bad] + [mutate_bytes(rnd, rnd.choice(msgs)) for _ in range(BATCH - 1)]
    n, escapes = feed(privagg.from_bytes, (DeserializationError,), inputs)
    row = f"privagg.from_bytes ({name} messages)"
    count("fuzz", row, inputs=n, escapes=len(escapes))
    assert not escapes, escapes[:3]


_ROUNDS_FUZZ = fuzz_settings(ROUND_EXAMPLES)


@pytest.mark.parametrize("name", list(BACKENDS))
@_ROUNDS_FUZZ
@given(
    stage=st.integers(0, 5),
    direction=st.sampled_from(["request", "reply"]),
    party=st.sampled_from([f"c{i}" for i in range(N_CLIENTS)] + ["server-1", "*"]),
    data=st.data(),
)
def test_fuzz_stateful_roles(
    name: str, stage: int, direction: str, party: str, data: st.DataObject
) -> None:
    mutate = data.draw(mutations())
    hits: list[int] = []

    def hook(s: int, d: str, p: str, b: bytes) -> bytes:
        if s == stage and d == direction and (party == "*" or p == party):
            hits.append(1)
            return mutate(b)
        return b

    session = _cached_session(name)
    count("rounds", name, rounds=1)
    # Anything but a PrivaggError propagates out of _round and fails the test.
    try:
        _, res = _round(session, hook)
    except Exception:
        count("rounds", name, escapes=1)
        raise
    assert res is not None
    count("rounds", name, **{"aborted" if isinstance(res, Exception) else "result": 1})


@pytest.mark.parametrize("name", list(BACKENDS))
def test_fuzz_decoders_huge_claims_refused_before_allocation(name: str) -> None:
    """One message of every kind the backend sends, re-sealed with each 4- and 8-byte
    window of the payload's first 128 bytes set to a huge length or count: decoded or
    refused with DeserializationError, within the heap bound (never allocated)."""
    kinds: dict[tuple[int, int], bytes] = {}
    for msg in _transcript(name):
        h, _ = open_envelope(msg)
        kinds.setdefault((int(h.scheme), h.kind), msg)
    inputs = (x for msg in kinds.values() for x in huge_claims(msg, 128))
    n, escapes = feed(privagg.from_bytes, (DeserializationError,), inputs)
    row = f"privagg.from_bytes ({name} messages)"
    count("fuzz", row, inputs=n, huge_claims=n, escapes=len(escapes))
    assert n > 0
    assert not escapes, escapes[:5]
